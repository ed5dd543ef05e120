"""One place that turns what a user can mend into one line on stderr and an exit status, for the
`tsloc` command and for the stage scripts alike (which call their pipeline module through
`stage_main`, never the command line: editing the CLI reruns no stage).

A bug keeps its traceback; bad input, params, model files, a full disk, a GPU out of memory, a lost
rank and Ctrl-C do not.
"""
from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable

from .errors import EXIT_USER_ERROR, INTERRUPTED, LOST_RANK, UserError

# What to lower when the GPU runs out of memory, per command (a stage: the params of its own device).
OUT_OF_MEMORY = {"train": "a smaller train.batch_size (dvc exp run -S train.batch_size=16), or a smaller data.image_size",
                 "features": "the CPU (-S train.device=cpu): features runs once",
                 "detector_train": "a smaller detector.batch_size or detector.window (dvc exp run -S "
                                   "detector.batch_size=4), or the CPU (-S detector.device=cpu)",
                 "refiner_train": "a smaller refiner.batch_size (dvc exp run -S refiner.batch_size=16), or the CPU "
                                  "(-S refiner.device=cpu)",
                 "scenes_evaluate": "the CPU (-S detector.device=cpu): whole frames, one at a time",
                 "predict": "a smaller --batch-size (e.g. --batch-size 8)",
                 "detect": "the CPU (--device cpu): whole frames, one at a time",
                 "serve": "a smaller --max-batch (e.g. --max-batch 8), or the CPU (--device cpu)"}
# torch.distributed's errors, told apart by type without importing torch here.
DISTRIBUTED_ERRORS = ("DistBackendError", "DistNetworkError", "DistError", "DistStoreError")


def ranked() -> bool:
    """One of torchrun's ranks (its messages say which)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def guarded(command: str, work: Callable[[], object]) -> int:
    """Run `work()`; return 0, or print one line `tsloc COMMAND: ...` and return the exit status."""
    name = f"tsloc {command}" + (f" (rank {os.environ.get('RANK', '?')})" if ranked() else "")
    try:
        work()
    except UserError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as exc:  # torch.OutOfMemoryError and torch.distributed's errors
        kind = type(exc).__name__
        if kind in DISTRIBUTED_ERRORS or (ranked() and any(w in str(exc) for w in ("gloo", "NCCL", "Connection"))):
            # one of several ranks whose peer went away: the launcher names the one that failed
            print(f"{name}: stopped: lost contact with another rank ({str(exc).splitlines()[0][:160]})",
                  file=sys.stderr)
            return LOST_RANK
        if kind != "OutOfMemoryError":
            raise
        lower = OUT_OF_MEMORY.get(command, "a smaller batch size, or the CPU (train.device: cpu)")
        print(f"{name}: error: out of GPU memory ({str(exc).splitlines()[0][:160]}); try {lower}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `tsloc predict ... | head`: the reader left; not an error of ours
        sys.stdout = None
        return 0
    except OSError as exc:  # a full disk outside tsloc.io's writes: DVCLive's logs, predict's stdout, --draw
        if exc.errno != errno.ENOSPC:
            raise
        print(f"{name}: error: {exc.filename or 'an output'}: no space left on device; free some "
              "space and run it again", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outputs are written whole (temporary file, then rename) or not at all
        from .paths import RESUME
        saved = f" ({RESUME} holds the last complete epoch: run it again to continue)" if command == "train" else ""
        print(f"\n{name}: interrupted; no output was half-written{saved}", file=sys.stderr)
        return INTERRUPTED
    return 0


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def stage_main(stage: str, run: Callable[[str], object], argv: list[str] | None = None) -> int:
    """What a script in stages/ runs: its pipeline module's `run(params_file)`, the result printed
    as JSON (None: a rank other than 0 of a distributed train prints nothing). `--params FILE`
    reads another params file (default: params.yaml)."""
    argv = sys.argv[1:] if argv is None else argv
    params = argv[argv.index("--params") + 1] if "--params" in argv[:-1] else "params.yaml"

    def work():
        result = run(params)
        if result is not None:
            print_json(result)
    return guarded(stage, work)
