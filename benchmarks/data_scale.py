"""Time and peak memory of ingest and features as the data set grows: BelgiumTSC's size and GTSRB's.

    python benchmarks/data_scale.py [--images 7125 50000] [--format gtsrb] [--image-size 128] [--keep DIR]

For each size, a synthetic data set of that many images is generated in `--format`'s layout (not
timed), then the real stages run in a scratch folder, each in its own process: `tsloc ingest`
(reads and checks every image, fingerprints every file) and `tsloc features` (decodes every image
into the store and runs the frozen backbone once per image). Printed per stage: wall time, images
per second and the peak resident memory of that process (`wait4`'s ru_maxrss), which is what
"bounded memory" is about: the store of 50,000 images at 128 px is 2.5 GB on disk.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tsloc.data.synthetic import generate


def run_stage(stage: str, cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `tsloc <stage>` run alone in a child process."""
    log = cwd / f"{stage}.log"  # a file, not a pipe: progress bars would fill a pipe and stall the stage
    with open(log, "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tsloc.cli", stage], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tsloc {stage} failed:\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[7125, 50000])
    ap.add_argument("--format", default="gtsrb", choices=("belgiumtsc", "gtsrb", "manifest"))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--keep", help="generate the data sets under this folder and keep them (reused when present)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tsloc-scale-"))
    data_root = Path(args.keep) if args.keep else scratch / "data"
    rows = []
    try:
        for n in args.images:
            data = data_root / f"{args.format}-{n}"
            if not data.exists():
                print(f"generating {n} synthetic {args.format} images (not timed) ...", file=sys.stderr)
                partial = data.with_name(data.name + ".partial")  # an interrupted generation is not reused
                shutil.rmtree(partial, ignore_errors=True)
                generate(partial, size=n, seed=0, fmt=args.format)
                partial.rename(data)
            work = scratch / f"run-{n}"
            work.mkdir(parents=True)
            params = {"data": {"source": "local", "path": str(data), "format": args.format,
                               "image_size": args.image_size}}
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            for stage in ("ingest", "features"):
                seconds, rss = run_stage(stage, work)
                images = sum(1 for _ in open(work / "data" / "metadata.csv")) - 1
                rows.append((images, stage, seconds, images / seconds, rss))
                print(f"{images:>7} images  {stage:<9} {seconds:8.1f} s  {images / seconds:8.1f} img/s  "
                      f"peak RSS {rss:7.0f} MiB", flush=True)
            store = work / "data" / "features" / "images.npy"
            print(f"{'':>7}         store {store.stat().st_size / 2**20:.0f} MiB on disk", flush=True)
            shutil.rmtree(work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| images | stage | seconds | images/s | peak RSS (MiB) |\n| ---: | --- | ---: | ---: | ---: |")
    for images, stage, seconds, rate, rss in rows:
        print(f"| {images} | {stage} | {seconds:.1f} | {rate:.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
