"""The ready German pair (`--model gtsdb`: int8 detector, refiner and namer through ONNX Runtime) on the
frames of GTSDB's shared training part that the run behind it held out: the default scene split's
validation or test frames (as tests/test_scenes.py scores the test ones), at the pair's own operating
point (chosen on validation, in its metadata), at the constant one of the first bundle, or at given ones.

    python ../shared/data/gtsdb/restore.py /tmp/gtsdb --jpeg
    python benchmarks/ready_pair.py /tmp/gtsdb --subset valid
"""
from __future__ import annotations

import argparse
import json

import tsloc
from tsloc.data import gtsdb
from tsloc.data.frames import decode_frame
from tsloc.pipeline.scenes_evaluate import score_scenes
from tsloc.scenes.split import split_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gtsdb", help="GTSDB's folder (restore.py's output)")
    ap.add_argument("--subset", choices=["valid", "test"], default="test")
    ap.add_argument("--point", type=float, nargs=2, action="append", metavar=("MIN_SCORE", "MIN_PROBABILITY"),
                    help="another operating point to score (several: repeat)")
    args = ap.parse_args()
    data = gtsdb.read_frames(args.gtsdb)
    split, _ = split_frames(data.table, 0.2, 0.2, 0)  # the default scene split (scenes.* params), as the run's
    truth = split[split["subset"] == args.subset]
    pair = tsloc.load("gtsdb", device="cpu")
    rows = [{"frame": f, **d, "scene_class_id": d["class_id"]} for f in dict.fromkeys(truth["frame"])
            for d in pair.finder(decode_frame(f))]
    category = dict(zip(data.classes["class_id"], data.classes["category"]))
    points = {"chosen": (pair.point["min_score"], pair.point["min_probability"]), "constant": (0.3, 0.5),
              **{f"given {s} / {p}": (s, p) for s, p in args.point or []}}
    print(f"# {args.subset}: {truth['frame'].nunique()} frames; {pair!r}")
    for label, (score, probability) in points.items():
        figures, _, _ = score_scenes(truth, rows, category, score, probability)
        print(f"{label} ({score} / {probability}):", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                                 for k, v in figures.items() if k != "ap50_category"}))


if __name__ == "__main__":
    main()
