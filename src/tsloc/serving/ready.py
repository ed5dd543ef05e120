"""Ready models: trained files that ship inside the package, so that a fresh install names real
signs before any training (`tsloc predict IMAGES --model belgiumtsc`, `tsloc serve --model
belgiumtsc`, `tsloc.load("belgiumtsc")`). Each is the int8 ONNX export of a pipeline run, its
description extended with a card: the data it learnt from, its test figures (the int8 file's own,
from the export stage), the command and the commit that made it.

    python -m tsloc.serving.ready belgiumtsc --run DIR --command "dvc exp run ..."   # bundle DIR's run

the one exception to "nothing made from the data is committed" (a few MB; docs/serve.md)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from ..describe import dataset_name
from ..errors import ModelFileError
from ..io import atomic_path
from ..onnxfile import read_meta, set_meta
from ..paths import (DETECTOR_EXPORT_REPORT, DETECTOR_INT8, DETECTOR_ONNX, EXPORT_REPORT, INGEST_REPORT, INT8,
                     MODEL_CARD, OPERATING_POINT, REFINER_ONNX, REFINER_REPORT, SCENES_REPORT)
from .backend import refiner_beside

FOLDER = Path(__file__).parent / "models"
READY = {"belgiumtsc": "belgiumtsc.int8.onnx", "gtsrb": "gtsrb.int8.onnx"}  # crop models
# Ready pairs for street frames: the name, its detector's file and the ready crop model that names its finds.
PAIRS = {"gtsdb": ("gtsdb.detector.onnx", "gtsrb")}
OFFICIAL = {"belgiumtsc": "e3f2108c"}  # the official release's Training list digest (reports/ingest.json)
SOURCES = {"gtsrb": "the official training set as ../shared/data/gtsrb holds it (WebP q90), its test tracks carved"}


def _packaged(name: str, file: str) -> Path:
    path = FOLDER / file
    if not path.is_file():
        raise ModelFileError(f"{path}: the ready model {name!r} is missing from this install (reinstall tsloc)")
    return path


def resolve(model: str | Path) -> Path:
    """A ready model's name to its file (a pair's name: its crop model); anything else is a path. A
    bare word that is neither (no suffix, no such file: `--model belgium`) is one message naming the
    ready models."""
    if str(model) in PAIRS:
        model = PAIRS[str(model)][1]
    if str(model) in READY:
        return _packaged(str(model), READY[str(model)])
    path = Path(model)
    if not path.suffix and path.parent == Path(".") and not path.exists():
        raise ModelFileError(f"{model}: neither a model file nor a ready model (the ready models: "
                             f"{', '.join([*READY, *PAIRS])})")
    return path


def ready_detector(model: str | Path | None) -> Path | None:
    """The detector of a ready pair's name (`--model gtsdb`), else None."""
    return _packaged(str(model), PAIRS[str(model)][0]) if str(model) in PAIRS else None


def default_model(pipeline: Path, ready: str = "belgiumtsc") -> tuple[Path, str]:
    """The model a command uses without --model: the pipeline's (`pipeline`) where it exists, else
    the ready one; and how to name it to the user."""
    if pipeline.is_file():
        return pipeline, f"{pipeline} (the pipeline's)"
    return resolve(ready), f"the ready model {ready} ({pipeline} does not exist)"


def bundle(name: str, run: Path, command: str) -> Path:
    """The int8 file of the pipeline run in `run` (a working tree after `dvc repro`) as the ready
    model `name`, with its card; refuses a run that was not on the official data. A pair's name
    (`gtsdb`): its crop model as the ready crop model it names, and the run's detector beside it."""
    if name in PAIRS:
        out = bundle(PAIRS[name][1], run, command)
        _bundle_detector(name, run, command)
        return out
    ingest = json.loads((run / INGEST_REPORT).read_text())
    digest = ingest["Training"]["fingerprint"]["digest"]
    if name in OFFICIAL and not digest.startswith(OFFICIAL[name]):
        raise ModelFileError(f"{run / INGEST_REPORT}: not the official {name} release (Training digest {digest[:12]})")
    test = json.loads((run / EXPORT_REPORT).read_text())["test"]["onnx_int8"]
    commit = _commit(run)
    meta = read_meta(run / INT8)
    meta["card"] = {
        "data": {"name": f"{dataset_name(ingest['format'])} "
                         f"({SOURCES.get(name) or ('official release' if name in OFFICIAL else 'own data')})",
                 "format": ingest["format"], "classes": ingest["classes"], "training_digest": digest},
        "test": {k: test[k] for k in ("images", "accuracy", "balanced_accuracy", "macro_f1", "mean_iou")},
        "command": command,
        "commit": commit,
    }
    out = _install(run / INT8, READY[name], meta)
    card = (run / MODEL_CARD).read_text()
    with atomic_path(out.with_suffix("").with_suffix(".md")) as tmp:
        Path(tmp).write_text(
            f"<!-- the ready model `{name}`: {READY[name]}, made by `{command}` at commit {commit}; "
            f"its int8 test accuracy {100 * test['accuracy']:.2f}% on {test['images']} images -->\n{card}")
    return out


def _bundle_detector(name: str, run: Path, command: str) -> Path:
    """The run's detector as `tsloc detect` picks it (int8 where it kept AP50, else fp32 ONNX), with a card
    (its validation AP50 and the scene test figures of the run: reports/detector_export.json,
    scenes_evaluate) and the run's operating point, chosen on validation (models/operating_point.json);
    the run's refiner beside it (its validation figures: reports/refiner_train.json)."""
    export = json.loads((run / DETECTOR_EXPORT_REPORT).read_text())
    scenes = json.loads((run / SCENES_REPORT).read_text())
    source = run / DETECTOR_INT8 if export["onnx_int8"].get("kept") else run / DETECTOR_ONNX
    meta = read_meta(source)
    meta["card"] = {"valid": {k: export[k]["ap50"] for k in ("pytorch", "onnx_fp32", "onnx_int8")},
                    "test": scenes["test"], "command": command, "commit": _commit(run)}
    meta["operating_point"] = json.loads((run / OPERATING_POINT).read_text())  # tsloc detect's defaults for the pair
    out = _install(source, PAIRS[name][0], meta)
    refiner = refiner_beside(out)  # the run's refiner beside it (load_detector puts it behind the detector), or none
    if (run / REFINER_ONNX).is_file():
        meta = read_meta(run / REFINER_ONNX)
        meta["card"] = {"valid": json.loads((run / REFINER_REPORT).read_text())["valid"], "command": command,
                        "commit": _commit(run)}
        _install(run / REFINER_ONNX, refiner.name, meta)
    else:
        refiner.unlink(missing_ok=True)
    return out


def _commit(run: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=run, capture_output=True, text=True).stdout.strip()


def _install(source: Path, file: str, meta: dict) -> Path:
    """`source` copied into the package's models/ as `file`, its metadata (with the card) replaced."""
    FOLDER.mkdir(exist_ok=True)
    out = FOLDER / file
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
        set_meta(tmp, meta)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tsloc.serving.ready", description=bundle.__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted([*READY, *PAIRS]))
    parser.add_argument("--run", type=Path, required=True, metavar="DIR", help="the working tree of the run")
    parser.add_argument("--command", required=True, help="the command that made the run (recorded in the card)")
    args = parser.parse_args(argv)
    print(bundle(args.name, args.run, args.command))


if __name__ == "__main__":
    main()
