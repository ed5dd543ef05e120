"""Atomic writes: outputs appear whole or not at all (a temporary path, then a rename)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiskFull


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        # Keep the suffix: some writers (torch.export.save) insist on it.
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskFull(f"{path}: no space left on device; free some space and run it again (the file was "
                           "not half-written)") from exc
        raise


def significant(value: float, digits: int = 6) -> float:
    """`value` to `digits` significant digits: figures beyond them are float noise that differs between
    machines and thread counts, and would show as changes in `dvc metrics diff` and git."""
    return float(f"{value:.{digits}g}")


def _rounded(obj):
    if isinstance(obj, float):
        return significant(obj)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> None:
    """A report or metrics file, floats to 6 significant digits (`significant`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_rounded(obj), indent=2, sort_keys=False) + "\n")


def write_torch(path: str | os.PathLike, obj) -> None:
    """torch.save through a file object: given a path, torch names the archive's inner folder after
    the (temporary, random) file name, so equal checkpoints would differ in bytes and in DVC's md5."""
    import torch
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_csv(path: str | os.PathLike, df, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_figure(path: str | os.PathLike, fig) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
