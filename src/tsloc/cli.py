"""`tsloc`: the console entry point. One subcommand per pipeline stage (what dvc.yaml runs), plus tools.

Bad input ends with one clear line on stderr and exit status 2, not a traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys

from .errors import LOST_RANK, DataError, DiskFull, ExportError, ModelFileError, WeightsError
from .params import ParamsError

DEFAULT_MODEL = "models/model.pt"
# What to lower when the GPU runs out of memory, per command.
OUT_OF_MEMORY = {"train": "a smaller train.batch_size (dvc exp run -S train.batch_size=16), or a smaller data.image_size",
                 "features": "the CPU (-S train.device=cpu): features runs once",
                 "predict": "a smaller --batch-size (e.g. --batch-size 8)"}
STAGES = ("ingest", "split", "features", "train", "evaluate", "export", "visualize")


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tsloc", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ingest", help="read the data set (data.source, data.format) into data/metadata.csv")
    sub.add_parser("split", help="split data/metadata.csv into train/valid/test (data/split.csv)")
    sub.add_parser("features", help="decode images once into data/features/ and compute backbone features")
    sub.add_parser("train", help="train the heads; best validation checkpoint to models/model.pt")
    ev = sub.add_parser("evaluate", help="metrics/evaluate.json, per-class table, confusion data")
    ev.add_argument("--model", metavar="FILE", help="only score this model file (.pt or .onnx) on the validation and "
                                                    "test images, print the metrics, write nothing")
    ev.add_argument("--device", default="cpu", help="with --model: cpu (default), auto or cuda")
    sub.add_parser("visualize", help="history, training gallery and prediction gallery under plots/")
    pred = sub.add_parser("predict", help="classes and boxes for image files and folders (recursively)")
    pred.add_argument("paths", nargs="+", metavar="PATH")
    pred.add_argument("--model", help=f"a model file: .pt (PyTorch) or .onnx (ONNX Runtime, fp32 or int8) "
                                      f"(default: {DEFAULT_MODEL}, the pipeline's; which one it is goes to stderr)")
    pred.add_argument("--top-k", type=int, default=5)
    pred.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    pred.add_argument("--draw", metavar="DIR", help="also write each image with its box and label to DIR")
    pred.add_argument("--batch-size", type=int, default=32, help="images per inference call (1 to 256)")
    pred.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    exp = sub.add_parser("export", help="models/model.onnx and models/model.int8.onnx for ONNX Runtime, checked "
                                        "against the PyTorch model (reports/export.json); with options, one file")
    exp.add_argument("--format", choices=("onnx", "pt2"), help="one file: ONNX or torch.export's .pt2")
    exp.add_argument("--quantize", choices=("int8",), help="with --format onnx: static int8, calibrated on training "
                     "images of this pipeline's image store (export.calibration_images, export.seed)")
    exp.add_argument("--model", help=f"the model to export (default: {DEFAULT_MODEL})")
    exp.add_argument("--out", help="output file (default: models/model.onnx, .int8.onnx or .pt2)")
    cmp = sub.add_parser("compare", help="score experiments on validation images none of them trained on "
                                         "(one experiment's validation set)")
    cmp.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names or Git revisions")
    cmp.add_argument("--on", required=True, metavar="REF",
                     help="the experiment whose validation images are used (the one with the smallest share)")
    cmp.add_argument("--csv", metavar="FILE", help="also write the table to FILE")
    cmp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    cv = sub.add_parser("cv", help="pool cross-validation runs (split.folds) into one row per configuration")
    cv.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names or Git revisions, "
                    "every fold of each configuration")
    cv.add_argument("--csv", metavar="FILE", help="also write the table to FILE")
    gen = sub.add_parser("synthetic", help="write a synthetic data set in a format's layout to a folder")
    gen.add_argument("out")
    gen.add_argument("--size", type=int, default=1800)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--format", choices=("belgiumtsc", "gtsrb", "manifest"), default="belgiumtsc")
    args = parser.parse_args(argv)
    ranked = int(os.environ.get("WORLD_SIZE", "1")) > 1  # one of torchrun's ranks: say which one speaks
    name = f"tsloc {args.command}" + (f" (rank {os.environ.get('RANK', '?')})" if ranked else "")

    try:
        if args.command == "evaluate" and args.model:
            from .pipeline.evaluate import score
            _print(score(args.model, args.device))
        elif args.command == "export" and (args.format or args.quantize or args.model or args.out):
            from .pipeline.export import export_one
            print(export_one(args.params, args.model or DEFAULT_MODEL, args.format or "onnx", args.quantize, args.out))
        elif args.command in STAGES:  # each stage's module imports only what that stage uses (dvc.yaml's deps)
            result = importlib.import_module(f"{__package__}.pipeline.{args.command}").run(args.params)
            if result is not None:  # None: a rank other than 0 of a distributed train
                _print(result)
        elif args.command == "predict":
            from .inference import load_backend
            from .predict import NoImages, predict_files
            from .training import select_device
            if args.top_k < 1:
                raise DataError("--top-k must be at least 1")
            backend = load_backend(args.model or DEFAULT_MODEL, select_device(args.device))
            if args.model is None:  # say which model answers: after the Quickstart, the synthetic data's
                from .model_card import one_line
                print(f"tsloc predict: {DEFAULT_MODEL}: {one_line(backend.meta)}", file=sys.stderr)
            try:
                failed = predict_files(backend, args.paths, top_k=args.top_k, fmt=args.format, draw_dir=args.draw,
                                       batch_size=args.batch_size)
            except NoImages as exc:
                print(f"tsloc predict: {exc}", file=sys.stderr)
                return 1
            if failed:
                print(f"tsloc predict: {failed} file(s) could not be read", file=sys.stderr)
                return 1
        elif args.command in ("compare", "cv"):
            from .compare import compare, cross_validation, load_runs
            from .io import write_csv
            from .training import select_device
            if args.command == "compare":
                table = compare(args.experiments, args.on, select_device(args.device))
            else:
                table = cross_validation(load_runs(args.experiments))
            print(table.to_string(index=False))
            if args.csv:
                write_csv(args.csv, table)
        elif args.command == "synthetic":
            from pathlib import Path

            from .data.synthetic import generate
            generate(Path(args.out), size=args.size, seed=args.seed, fmt=args.format)
    except (DataError, ParamsError, WeightsError, ModelFileError, ExportError, DiskFull) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch.OutOfMemoryError and torch.distributed's errors, without importing torch here
        lost = type(exc).__name__ in ("DistBackendError", "DistNetworkError", "DistError") or (
            ranked and any(w in str(exc) for w in ("gloo", "NCCL", "Connection")))
        if lost:  # one of several ranks whose peer went away: the launcher names the one that failed
            print(f"{name}: stopped: lost contact with another rank ({str(exc).splitlines()[0][:160]})",
                  file=sys.stderr)
            return LOST_RANK
        if type(exc).__name__ != "OutOfMemoryError":
            raise
        lower = OUT_OF_MEMORY.get(args.command, "a smaller batch size, or the CPU (train.device: cpu)")
        print(f"{name}: error: out of GPU memory ({str(exc).splitlines()[0][:160]}); try {lower}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tsloc predict ... | head`: the reader left; not an error of ours
        sys.stdout = None
        return 0
    except OSError as exc:  # a full disk outside tsloc.io's writes: DVCLive's logs, predict's stdout, --draw
        if exc.errno != errno.ENOSPC:
            raise
        print(f"{name}: error: {exc.filename or 'an output'}: no space left on device; free some "
              "space and run it again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written whole (temporary file, then rename) or not at all
        saved = " (checkpoints/train.pt holds the last complete epoch: run it again to continue)" \
            if args.command == "train" else ""
        print(f"\n{name}: interrupted; no output was half-written{saved}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
