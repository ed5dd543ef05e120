"""Choose between recipes without the test set.

`tsloc compare`: score experiments on validation images that none of them trained on. Runs with
different `split.valid_fraction` validate on different images, so their validation figures do not
compare. The pole-grouped split takes validation signs per class in one seeded
order until the share is reached, so a smaller share's validation set lies inside a larger one's.
`tsloc compare EXP ... --on REF` scores each experiment's own model, on its own stored images (its
`data.image_size`), on REF's validation images, after checking that the experiment trained on none
of them.

`tsloc cv`: pool cross-validation runs (`split.folds`) into one row per configuration. The test
set is never touched by either.
"""
from __future__ import annotations

import io
import json
import statistics

import numpy as np
import pandas as pd
import yaml

from ..crops.evaluation import constant_box, evaluate_subset, predict_images
from ..data.table import DTYPES
from ..errors import DataError, ModelFileError
from ..params import flatten
from ..paths import EVALUATE_REPORT, IMAGE_STORE, INGEST_REPORT, MODEL, SPLIT_TABLE
from ..serving.backend import load_backend


def _read(rev: str, path) -> io.BytesIO:
    """A file of an experiment (or any Git revision) as DVC stored it, from git or the DVC cache."""
    import dvc.api  # imported here: `tsloc --help` stays fast
    try:
        with dvc.api.open(str(path), rev=rev, mode="rb") as f:
            return io.BytesIO(f.read())
    except Exception as exc:  # unknown revision, output not in the cache, ...
        raise DataError(f"{rev}: cannot read {path} ({type(exc).__name__}: {exc}); is `{rev}` an experiment "
                        f"listed by `dvc exp list`, with its outputs in the DVC cache?") from exc


def _split(rev: str) -> pd.DataFrame:
    return pd.read_csv(_read(rev, SPLIT_TABLE), dtype=DTYPES)


def heldout_rows(reference: pd.DataFrame, split: pd.DataFrame, name: str) -> np.ndarray:
    """Row positions of the reference's validation images; an error if `name` trained on any of them."""
    if len(reference) != len(split) or not np.array_equal(reference["path"].to_numpy(), split["path"].to_numpy()):
        raise DataError(f"{name}: its {SPLIT_TABLE} lists other images than the reference's (another data set?)")
    rows = np.flatnonzero(reference["subset"].to_numpy() == "valid")
    if len(rows) == 0:
        raise DataError(f"the reference's {SPLIT_TABLE} has no validation images")
    seen = rows[split["subset"].to_numpy()[rows] == "train"]
    if len(seen):
        raise DataError(f"{name}: trained on {len(seen)} of the reference's {len(rows)} validation images "
                        f"(e.g. {split['path'].iloc[seen[0]]}); take as reference the run with the smallest "
                        f"validation set")
    return rows


def _store_digest(rev: str) -> str:
    """The md5 that dvc.lock records for a run's image store: runs at one image size share the file."""
    lock = yaml.safe_load(_read(rev, "dvc.lock"))
    outs = lock["stages"]["features"]["outs"]
    return next(o["md5"] for o in outs if o["path"] == str(IMAGE_STORE))


def _errors(metrics: dict) -> int:
    return round(metrics["images"] * (1 - metrics["accuracy"]))


def compare(names: list[str], reference: str, device) -> pd.DataFrame:
    """One row per experiment: its metrics on the reference's validation images."""
    ref = _split(reference)
    stores = {}  # digest -> the reference's validation images from that store (read each store once)
    table = []
    for name in names:
        split = _split(name)
        rows = heldout_rows(ref, split, name)
        try:
            backend = load_backend(f"{name}:{MODEL}", device, _read(name, MODEL))
            ckpt = backend.meta
        except ModelFileError as exc:
            raise DataError(str(exc)) from exc
        digest = _store_digest(name)
        if digest not in stores:
            stores[digest] = np.load(_read(name, IMAGE_STORE))[rows]
        images = stores[digest]
        if images.shape[1] != ckpt["image_size"]:
            raise DataError(f"{name}: its image store holds {images.shape[1]}-px images, its model expects "
                            f"{ckpt['image_size']}")
        metrics, _ = evaluate_subset(predict_images(backend, images), ref.iloc[rows], constant_box(split))
        table.append({"experiment": name, "image_size": ckpt["image_size"], "images": metrics["images"],
                      "errors": _errors(metrics),
                      **{k: round(metrics[k], 5) for k in ("accuracy", "balanced_accuracy", "mean_iou")}})
    return pd.DataFrame(table)


def cross_validation(runs: dict[str, dict]) -> pd.DataFrame:
    """One row per configuration (the runs' params but `split.fold`), its K folds pooled.

    `runs` maps a name to its `params` (params.yaml), `valid` (evaluate.json's) and `data`
    (ingest.json). Every Training image that can be validated is validated by exactly one fold,
    so errors add up and accuracy and mean IoU are pooled over all of them; balanced accuracy is
    the mean of the folds' (each fold has its own classes). Refuses runs of other data, runs that
    are not cross-validation, and a configuration without each fold exactly once.
    """
    if not runs:
        raise DataError("no runs given")
    first = next(iter(runs))
    flat = {}
    for name, run in runs.items():
        if run["data"] != runs[first]["data"]:
            raise DataError(f"{name}: read other data than {first} (their {INGEST_REPORT} differ)")
        flat[name] = flatten(run["params"])
        if not flat[name].get("split.folds"):
            raise DataError(f"{name}: not a cross-validation run (split.folds is "
                            f"{flat[name].get('split.folds', 0)}; see README, Splits)")
    groups: dict[tuple, list[str]] = {}
    for name, params in flat.items():
        config = tuple(sorted((k, repr(v)) for k, v in params.items() if k != "split.fold"))
        groups.setdefault(config, []).append(name)
    keys = sorted({k for params in flat.values() for k in params} - {"split.fold"})
    differing = [k for k in keys if len({repr(params.get(k)) for params in flat.values()}) > 1]
    table = []
    for names in groups.values():
        names.sort(key=lambda n: flat[n]["split.fold"])
        k = flat[names[0]]["split.folds"]
        folds = [flat[n]["split.fold"] for n in names]
        if folds != list(range(k)):
            missing = sorted(set(range(k)) - set(folds))
            twice = sorted({f for f in folds if folds.count(f) > 1})
            problems = [f"fold {', '.join(map(str, missing))} missing" if missing else "",
                        f"fold {', '.join(map(str, twice))} given twice" if twice else ""]
            raise DataError(f"{', '.join(names)}: one configuration needs each of folds 0 to {k - 1} once; "
                            + "; ".join(filter(None, problems)))
        valid = [runs[n]["valid"] for n in names]
        images = sum(v["images"] for v in valid)
        errors = [_errors(v) for v in valid]
        table.append({**{key: flat[names[0]].get(key) for key in differing}, "runs": " ".join(names),
                      "images": images, "errors": sum(errors), "errors_per_fold": "/".join(map(str, errors)),
                      "accuracy": round(1 - sum(errors) / images, 5),
                      "balanced_accuracy": round(statistics.mean(v["balanced_accuracy"] for v in valid), 5),
                      "mean_iou": round(sum(v["mean_iou"] * v["images"] for v in valid) / images, 5)})
    return pd.DataFrame(table)


def load_runs(names: list[str]) -> dict[str, dict]:
    """What `cross_validation` reads of each experiment: small files from git, no DVC cache needed."""
    return {name: {"params": yaml.safe_load(_read(name, "params.yaml")),
                   "valid": json.load(_read(name, EVALUATE_REPORT))["valid"],
                   "data": json.load(_read(name, INGEST_REPORT))} for name in names}
