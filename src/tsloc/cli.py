"""tsloc: the traffic-sign pipeline's stages, and the tools around a trained model.

The stages are what dvc.yaml runs (through stages/, not through this module); the tools are
predict, evaluate --model, export of one file, compare, cv and synthetic.

Each subcommand is one function; `build_parser` says what each takes. A usage error (an argument
out of its range) shows the usage; bad input, params and model files end with one line on stderr
and exit status 2 (tsloc.guard), not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .describe import package_version
from .errors import ModelFileError, UsageError
from .guard import guarded, print_json
from .paths import (DETECTOR, DETECTOR_INT8, DETECTOR_ONNX, EVALUATE_METRICS, EVALUATE_REPORT, EXPORT_REPORT, INT8,
                    METADATA, MODEL, MODEL_CARD, ONNX, RESUME, SCENE_SPLIT, SCENE_TABLE, SPLIT_TABLE, first_existing)

STAGES = {
    "ingest": f"read the data set (data.source, data.format) into {METADATA} and the class list",
    "split": f"split {METADATA} into train / valid / test ({SPLIT_TABLE})",
    "features": "decode every image once into data/features/ and compute the frozen backbone's features",
    "train": f"train the model; {MODEL} is the checkpoint train.keep names (best: the lowest validation loss; "
             f"last: the final epoch); an interrupted run continues from {RESUME}",
    "evaluate": f"{EVALUATE_METRICS}, {EVALUATE_REPORT}, the per-class table and {MODEL_CARD} "
                "(with --model: score any model file, write nothing)",
    "export": f"{ONNX} and {INT8} for ONNX Runtime, checked against the PyTorch model "
              f"({EXPORT_REPORT}); with --format, --quantize, --model or --out: one file",
    "visualize": "the training history and the galleries of training and test images under plots/",
    "scenes_ingest": f"read the scene data set (scenes.source, scenes.format) into {SCENE_TABLE} and its classes",
    "scenes_split": f"split the scenes' frames into train / valid / test ({SCENE_SPLIT})",
    "detector_train": f"train the detector on windows of the training frames ({DETECTOR})",
    "refiner_train": "train the second stage that tightens the detector's boxes on the training frames' signs "
                     "(models/refiner.pt, models/refiner.onnx)",
    "detector_export": f"{DETECTOR_ONNX} and {DETECTOR_INT8} for ONNX Runtime, checked against the PyTorch "
                       "detector on the validation frames (reports/detector_export.json)",
    "scenes_evaluate": "find and name the signs of the test frames: COCO's AP, recall, frames per second "
                       "(metrics/scenes.json), precision-recall curves, a gallery",
    "drive_ingest": "write the synthetic drive (drive.*): a dashcam video with its true tracks (data/drive/raw)",
    "drive_evaluate": "tsloc detect --track --inventory on the drive: IDF1, identity switches, the inventory's "
                      "precision, recall and class accuracy (metrics/drive.json), a timeline",
}
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsloc", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="use a model:      predict, detect, serve (a ready model needs no training: --model belgiumtsc)\n"
               "tools:            compare, cv, synthetic, scene-signs\n"
               f"pipeline stages:  {', '.join(STAGES)} (what `dvc repro` runs)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--params", default="params.yaml", metavar="FILE",
                        help="the parameters file the stages read (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pred = sub.add_parser("predict", help="classes and boxes for image files and folders (recursively)",
                          description="Name the sign in each image (a crop holding one sign) and box it: one JSON "
                                      "line (or CSV row) per image, boxes in pixels of the upright image.")
    pred.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    pred.add_argument("--model", metavar="FILE", help=f"a model file: .pt (PyTorch) or .onnx (ONNX Runtime, fp32 or "
                      f"int8), or a ready model: belgiumtsc, gtsrb (default: {MODEL}, the pipeline's, where it exists, else "
                      "the ready belgiumtsc; which one it is goes to stderr)")
    pred.add_argument("--min-probability", type=float, default=0.0, metavar="P",
                      help="under this probability the answer's class is null (not a known sign, or not sure "
                           "which); its top-k stays (default: 0, always a class)")
    pred.add_argument("--top-k", type=int, default=5, metavar="K",
                      help="how many of the most probable classes each answer lists (default: 5)")
    pred.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                      help="jsonl: one JSON object per image; csv: a header, then one row per image (default: jsonl)")
    pred.add_argument("--draw", metavar="DIR", help="also write each image with its box and label to DIR")
    pred.add_argument("--batch-size", type=int, default=32, help="images per inference call, 1 to 256 (default: 32)")
    pred.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")

    det = sub.add_parser("detect", help="find and name every sign in camera frames or a dashcam video",
                         description="Find every sign in each frame (the detector), name it and refine its box (the "
                                     "crop model): one JSON line (or CSV rows) per frame, boxes in pixels of the "
                                     "upright frame. A video (any container FFmpeg reads: .mp4, .mkv, .mov, ...): "
                                     "one line per frame with its index and time; --track gives each sign a track "
                                     "id and --inventory writes one row per physical sign.")
    det.add_argument("paths", nargs="+", metavar="FRAME", help="frame files, folders searched recursively, or one video")
    det.add_argument("--detector", metavar="FILE",
                     help=f"the detector, .onnx (ONNX Runtime) or .pt (default: the pipeline's: {DETECTOR_INT8} where it "
                          f"kept AP50 within detector_export.max_ap50_loss, else {DETECTOR_ONNX}, else {DETECTOR}; "
                          "which one goes to stderr); a refiner beside it (models/refiner.onnx, refiner.pt for a .pt "
                          "detector) tightens its boxes")
    det.add_argument("--no-refine", action="store_true",
                     help="the detector's boxes as it found them, without the refiner beside it (about 20 ms a found "
                          "box faster on 2 CPU cores, the boxes looser: docs/scenes.md)")
    det.add_argument("--model", metavar="FILE",
                     help=f"the crop model that names each detection, .onnx or .pt, or a ready model; gtsdb: the ready "
                          f"German pair, GTSDB's detector and GTSRB's namer, nothing trained (default: {ONNX} if it "
                          f"exists, else {MODEL}, else the ready belgiumtsc)")
    det.add_argument("--min-score", type=float, metavar="S",
                     help="the detector's score a detection needs, 0 to 1 (default: detect.min_score in params.yaml; "
                          "auto: the point chosen on validation for the detector, said on stderr)")
    det.add_argument("--min-probability", type=float, metavar="P",
                     help="the crop model's probability a named detection needs, 0 to 1 (default: "
                          "detect.min_probability in params.yaml; auto: as --min-score)")
    det.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                     help="jsonl: one JSON object per frame; csv: a row per detection (default: jsonl)")
    det.add_argument("--draw", metavar="DIR", help="also write each frame with its boxes and names to DIR (a video: "
                                                   "to this video file, e.g. out.mp4)")
    det.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    vid = det.add_argument_group("video")
    vid.add_argument("--track", action="store_true",
                     help="give each detection a track id, one per physical sign (ByteTrack; track.* in params.yaml)")
    vid.add_argument("--inventory", metavar="CSV", help="write one row per physical sign to CSV (class by the vote of "
                     "its views, first and last time, best view), its crop into a folder beside it (implies --track)")
    vid.add_argument("--every", type=int, default=1, metavar="N", help="search every Nth frame only (default: 1)")
    vid.add_argument("--gpx", metavar="FILE", help="the camera's GPX track: each inventory row gets the place of its "
                     "best view (lat, lon), and the rows are also written as GeoJSON beside the CSV (needs --inventory)")
    vid.add_argument("--gpx-offset", type=float, default=0.0, metavar="S",
                     help="the track's time at the video's first frame, in seconds after its first point (default: 0)")

    srv = sub.add_parser("serve", help="the model behind an HTTP API, with a page to try it (FastAPI, uvicorn)",
                         description="Serve the model: POST /v1/predict (an image), POST /v1/detect (a street frame, "
                                     "with --detector), GET /v1/model, GET /healthz, the OpenAPI page at /docs and a "
                                     "page to try it at /. Requests that arrive together run as one batch.")
    srv.add_argument("--model", default="belgiumtsc", metavar="FILE",
                     help="a model file (.onnx or .pt) or a ready model: belgiumtsc, gtsrb, or the German pair gtsdb "
                          "(its detector serves /v1/detect too) (default: belgiumtsc)")
    srv.add_argument("--detector", metavar="FILE", help="a detector file (.onnx or .pt) to serve /v1/detect too")
    srv.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1, this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    srv.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    srv.add_argument("--max-batch", type=int, default=32, metavar="N", help="images per batch at most (default: 32)")
    srv.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                     help="how long a request waits for others to batch with (default: 5)")
    srv.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, metavar="N",
                     help="the largest request body accepted (default: 20 MB)")
    srv.add_argument("--top-k", type=int, default=5, metavar="K", help="classes listed per answer (default: 5)")
    srv.add_argument("--min-probability", type=float, default=0.0, metavar="P",
                     help="under this probability an answer's class is null (default: 0)")
    srv.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")

    cmp = sub.add_parser("compare", help="score experiments on validation images none of them trained on",
                         description="Score experiments on validation images none of them trained on.")
    cmp.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names or Git revisions")
    cmp.add_argument("--on", required=True, metavar="REF",
                     help="the experiment whose validation images are used (the one with the smallest share)")
    cmp.add_argument("--csv", metavar="FILE", help="also write the table to FILE")
    cmp.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    cv = sub.add_parser("cv", help="pool cross-validation runs (split.folds) into one row per configuration",
                         description="Pool cross-validation runs (split.folds) into one row per configuration.")
    cv.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names or Git revisions, "
                    "every fold of each configuration")
    cv.add_argument("--csv", metavar="FILE", help="also write the table to FILE")
    gen = sub.add_parser("synthetic", help="write a synthetic data set in a format's layout to a folder",
                         description="Write a synthetic data set in a format's layout to a folder.")
    gen.add_argument("out", metavar="DIR", help="the folder to write")
    gen.add_argument("--size", type=int, default=1800, help="images in all (default: 1800)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    gen.add_argument("--format", choices=("belgiumtsc", "gtsrb", "manifest"), default="belgiumtsc",
                     help="the layout written (default: belgiumtsc)")
    signs_help = ("the signs of some subsets of the scene split as a crop manifest (a namer trained on the scenes' "
                  "own signs, none of the test frames')")
    signs = sub.add_parser("scene-signs", help=signs_help, description=signs_help[0].upper() + signs_help[1:] + ".")
    signs.add_argument("out", metavar="DIR", help="the folder to write manifest.csv and classes.csv into")
    signs.add_argument("--subsets", nargs="+", default=["train", "valid"], metavar="SUBSET",
                       help="the split's subsets whose signs are written (default: train valid)")
    # the pipeline's stages come last: `tsloc --help` lists the everyday commands first
    stages = {name: sub.add_parser(name, help=text, description=text) for name, text in STAGES.items()}
    ev = stages["evaluate"]
    ev.add_argument("--model", metavar="FILE", help="only score this model file (.pt or .onnx) on the validation and "
                                                    "test images, print the metrics, write nothing")
    ev.add_argument("--device", default="cpu", help=f"with --model: {DEVICE_HELP} (default: cpu)")
    exp = stages["export"]
    exp.add_argument("--format", choices=("onnx", "pt2"), help="one file: ONNX or torch.export's .pt2 (default: onnx)")
    exp.add_argument("--quantize", choices=("int8",), help="with --format onnx: static int8, calibrated on training "
                     "images of this pipeline's image store (export.calibration_images, export.seed)")
    exp.add_argument("--model", metavar="FILE", help=f"the checkpoint to export (default: {MODEL})")
    exp.add_argument("--out", metavar="FILE", help="the output file (default: beside the checkpoint, its suffix "
                     "replaced by .onnx, .int8.onnx or .pt2)")

    for name, subparser in sub.choices.items():  # a usage error shows the subcommand's own usage
        subparser.set_defaults(subparser=subparser)
    return parser


def stage(args) -> int | None:
    """One stage, as DVC runs it (its module imports only what that stage uses: dvc.yaml's deps)."""
    result = importlib.import_module(f"{__package__}.pipeline.{args.command}").run(args.params)
    if result is not None:  # None: a rank other than 0 of a distributed train
        print_json(result)


def evaluate(args) -> int | None:
    if not args.model:
        return stage(args)
    from .pipeline.evaluate import score
    print_json(score(args.model, args.device))


def export(args) -> int | None:
    if not (args.format or args.quantize or args.model or args.out):
        return stage(args)
    from .pipeline.export import export_one
    print(export_one(args.params, args.model or str(MODEL), args.format or "onnx", args.quantize, args.out))


def predict(args) -> int:
    from .serving.backend import load_backend, pick_device
    from .serving.predict import predict_files
    from .serving.ready import default_model, resolve
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    _probability(args.min_probability)
    model, which = (resolve(args.model), None) if args.model else default_model(MODEL)
    backend = load_backend(model, pick_device(args.device, [model]))
    if which:  # say which model answers: after the Quickstart, the synthetic data's; before it, the ready one
        from .describe import one_line
        print(f"tsloc predict: {which}: {one_line(backend.meta)}", file=sys.stderr)
    return _over_files("predict", lambda: predict_files(
        backend, args.paths, top_k=args.top_k, min_probability=args.min_probability, fmt=args.format,
        draw_dir=args.draw, batch_size=args.batch_size))


def _probability(value: float | None, flag: str = "--min-probability") -> float | None:
    if value is not None and not 0 <= value <= 1:
        raise UsageError(f"{flag} must be from 0 to 1, not {value}")
    return value


def _over_files(command: str, work) -> int:
    """A command over files: 1 when a folder held no image or a file could not be read (each was
    named as it came), 0 when every file was answered."""
    from .serving.predict import NoImages
    try:
        failed = work()
    except NoImages as exc:
        print(f"tsloc {command}: {exc}", file=sys.stderr)
        return 1
    if failed:
        print(f"tsloc {command}: {failed} file(s) could not be read", file=sys.stderr)
        return 1
    return 0


def _detect_params(params: str):
    """The operating point (detect.*) and the tracking settings (track.*) of params.yaml where there
    is one, else their defaults."""
    from .params import Params, load_params
    p = load_params(params) if Path(params).is_file() else Params()
    return p.detect, p.track


def detect(args) -> int:
    from .serving.backend import default_detector, load_backend, load_detector, pick_device
    from .serving.detect import detect_files
    from .serving.find import Finder, operating_point
    from .serving.ready import default_model, ready_detector, resolve
    params, track = _detect_params(args.params)
    video = _video_args(args)
    gpx = None
    if args.gpx:  # read first: a bad track is told before any model loads
        from .serving.geo import read_gpx
        gpx = read_gpx(args.gpx, args.gpx_offset)
    _probability(args.min_score, "--min-score")
    _probability(args.min_probability)
    files = (args.detector or ready_detector(args.model) or default_detector(),
             resolve(args.model) if args.model else default_model(first_existing(ONNX, MODEL))[0])
    if args.detector is None and not Path(files[0]).is_file():
        raise ModelFileError(f"{files[0]}: no detector here; train one with `dvc repro detector_train` (the "
                             "Quickstart's `dvc repro` does), give one with --detector, or use the ready German "
                             "pair: --model gtsdb")
    device = pick_device(args.device, files)
    detector, namer = load_detector(files[0], device, refine=not args.no_refine), load_backend(files[1], device)
    if args.detector is None or args.model is None:
        print(f"tsloc detect: detector {files[0]} ({detector.name}), namer {files[1]} ({namer.name})", file=sys.stderr)
    point = operating_point(detector, files[0], params.min_score if args.min_score is None else args.min_score,
                            params.min_probability if args.min_probability is None else args.min_probability)
    finder = Finder(detector, namer, box=point["box"], vote_iou=point["vote_iou"])
    min_score, min_probability = point["min_score"], point["min_probability"]
    if point["chosen"] != "given":
        voted = f", voted over IoU {point['vote_iou']:g}" if point["vote_iou"] else ""
        print(f"tsloc detect: operating point min score {min_score:g}, min probability {min_probability:g}, "
              f"the {point['box']}'s boxes{voted} (auto: {point['chosen']})", file=sys.stderr)
    if video:
        from .serving.detect import VIDEO_CSV_FIELDS, RecordWriter, detect_video
        track = track if args.track or args.inventory else None
        detect_video(finder, video, min_score=min_score, min_probability=min_probability, every=args.every,
                     track=track, inventory=args.inventory, draw_to=args.draw, gpx=gpx,
                     emit=RecordWriter(sys.stdout, args.format, VIDEO_CSV_FIELDS), progress=sys.stderr.isatty())
        return 0
    return _over_files("detect", lambda: detect_files(finder, args.paths, min_score=min_score,
                                                      min_probability=min_probability, fmt=args.format,
                                                      draw_dir=args.draw))


def _video_args(args) -> str | None:
    """The video `tsloc detect` was given (one, alone), or None for frames; the video flags need one."""
    from .video import is_video
    videos = [p for p in args.paths if is_video(p)]
    if videos and len(args.paths) > 1:
        raise UsageError(f"give one video at a time, without frames ({len(args.paths)} paths given, "
                         f"{len(videos)} of them video)")
    if args.every < 1:
        raise UsageError(f"--every must be at least 1, not {args.every}")
    if not videos:
        used = [flag for flag, on in (("--track", args.track), ("--inventory", args.inventory),
                                      ("--every", args.every != 1), ("--gpx", args.gpx)) if on]
        if used:
            raise UsageError(f"{', '.join(used)}: for a video (.mp4, .mkv, .mov, ...), not frames")
        return None
    if args.draw and not is_video(args.draw):
        raise UsageError(f"--draw with a video writes a video: name it .mp4 (or .mkv, .mov), not {args.draw!r}")
    if args.inventory and Path(args.inventory).suffix.lower() != ".csv":
        raise UsageError(f"--inventory writes a CSV file: name it .csv, not {args.inventory!r}")
    if args.gpx and not args.inventory:
        raise UsageError("--gpx places the inventory's signs: give --inventory signs.csv too")
    return videos[0]


def serve(args) -> None:
    from .serving.serve import ServeConfig
    from .serving.serve import serve as run_server
    for flag, value, low in (("--workers", args.workers, 1), ("--max-batch", args.max_batch, 1),
                             ("--top-k", args.top_k, 1), ("--max-bytes", args.max_bytes, 1),
                             ("--max-wait-ms", args.max_wait_ms, 0), ("--port", args.port, 0)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, not {value}")
    point, _ = _detect_params(args.params)
    config = ServeConfig(model=args.model, detector=args.detector, device=args.device, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_bytes=args.max_bytes, top_k=args.top_k,
                         min_probability=_probability(args.min_probability), min_score=point.min_score,
                         detect_min_probability=point.min_probability)
    run_server(config, args.host, args.port, args.workers)


def compare(args) -> None:
    from .device import select_device
    from .io import write_csv
    from .pipeline.compare import compare as run_compare
    _table(run_compare(args.experiments, args.on, select_device(args.device)), args.csv, write_csv)


def cv(args) -> None:
    from .io import write_csv
    from .pipeline.compare import cross_validation, load_runs
    _table(cross_validation(load_runs(args.experiments)), args.csv, write_csv)


def _table(table, csv: str | None, write_csv) -> None:
    print(table.to_string(index=False))
    if csv:
        write_csv(csv, table)


def synthetic(args) -> None:
    from .data.synthetic import generate
    generate(Path(args.out), size=args.size, seed=args.seed, fmt=args.format)


def scene_signs(args) -> None:
    import pandas as pd

    from .data.frames import load_scene_table
    from .paths import SCENE_CLASSES, SCENE_SPLIT
    from .scenes.split import signs_manifest
    count = signs_manifest(load_scene_table(SCENE_SPLIT), pd.read_csv(SCENE_CLASSES, keep_default_na=False),
                           args.subsets, Path(args.out))
    print(f"{count} signs of {' and '.join(args.subsets)} frames: {Path(args.out) / 'manifest.csv'}")


COMMANDS = {**{name: stage for name in STAGES}, "evaluate": evaluate, "export": export, "predict": predict,
            "detect": detect, "serve": serve, "compare": compare, "cv": cv, "synthetic": synthetic,
            "scene-signs": scene_signs}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    status = 0

    def work():
        nonlocal status
        try:
            status = COMMANDS[args.command](args) or 0
        except UsageError as exc:  # an argument out of its range: the usage, as argparse shows it (exit 2)
            args.subparser.error(str(exc))
    code = guarded(args.command, work)
    return code or status


if __name__ == "__main__":
    sys.exit(main())
