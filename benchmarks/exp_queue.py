"""DVC's experiment queue with N workers against 1, on this machine, in one run.

    python benchmarks/exp_queue.py [--workers 2] [--experiments 4] [--set train.epochs=20]

In a fresh clone of this repository's HEAD (beside it, so that ../shared resolves the same way), it
runs `dvc repro` once, then queues `--experiments` experiments (train.seed = 1, 2, ...) and runs them
with `dvc queue start -j 1` (all cores to the one worker), then queues the same number again
(train.seed = 101, ...) and runs them with `-j N` and OMP_NUM_THREADS = cores / N. Prints the wall
time of each and experiments per minute, and the ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(args, cwd, env=None):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def drain(clone: Path, env: dict, workers: int, names: list[str]) -> float:
    """Start the queue with `workers` workers and wait until the named experiments are done."""
    started = time.perf_counter()
    # The workers keep the stdout/stderr they inherit: not pipes to wait on.
    subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", str(workers)], cwd=clone, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        status = sh([BIN / "dvc", "queue", "status"], clone, env)
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(1)
    took = time.perf_counter() - started
    sh([BIN / "dvc", "queue", "stop"], clone, env)
    done = sh([BIN / "dvc", "exp", "ls", "--name-only"], clone, env).split()
    missing = [n for n in names if n not in done]
    if missing:
        raise SystemExit(f"experiments that did not finish: {missing}\n{status}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--experiments", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="extra -S key=value for every experiment")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    commit = sh(["git", "rev-parse", "--short", "HEAD"], REPO).strip()
    with tempfile.TemporaryDirectory(dir=REPO.parent, ignore_cleanup_errors=True) as tmp:
        clone = Path(tmp) / "main"
        sh(["git", "clone", "-q", REPO, clone], REPO)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
        sh([BIN / "dvc", "repro"], clone, env)
        extra = [x for s in args.set for x in ("-S", s)]
        rates = {}
        for workers, first in ((1, 1), (args.workers, 101)):
            run_env = {**env, "OMP_NUM_THREADS": str(max(1, cores // workers))}
            names = [f"w{workers}-seed{first + i}" for i in range(args.experiments)]
            for i, name in enumerate(names):
                sh([BIN / "dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={first + i}", *extra],
                   clone, run_env)
            took = drain(clone, run_env, workers, names)
            rates[workers] = args.experiments / took * 60
            print(f"-j {workers}, OMP_NUM_THREADS={run_env['OMP_NUM_THREADS']}: {args.experiments} experiments in "
                  f"{took:.0f} s ({rates[workers]:.2f} per minute)", flush=True)
        print(f"# commit {commit}, {cores} cores; -j {args.workers} / -j 1 throughput: "
              f"{rates[args.workers] / rates[1]:.2f}x", flush=True)
        for _ in range(30):  # the workers stop after their last task: let them go before the clone is removed
            if "0 active" in sh([BIN / "dvc", "queue", "status"], clone, env):
                break
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
