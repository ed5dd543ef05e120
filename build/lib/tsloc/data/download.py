"""The official archives: download (with a progress bar), extract, and check against known digests."""
from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from ..io import atomic_path
from .archives import extract
from .belgiumtsc import SPLITS, folder_digest, locate

ARCHIVES = {"Training": "BelgiumTSC_Training.zip", "Testing": "BelgiumTSC_Testing.zip"}
# From ../shared/data/belgiumtsc/README.md, "Checking a download": the digest of the file list.
OFFICIAL_DIGESTS = {
    "Training": {"files": 4638, "digest": "e3f2108ce1822be8e897581f5742af1b19361d3bbc22bda4fe0a6f3fd946fea9"},
    "Testing": {"files": 2583, "digest": "34b13e4fb0c6f80d8ef66cf21b77a4b30c0108f71a1be202189409bb48b43d84"},
}


def download(url: str, dest: Path) -> Path:
    """Fetch `url` to `dest` through a temporary file; an interrupted transfer leaves nothing behind."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(dest) as tmp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total else None
            got = 0
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                            desc=f"download {dest.name}") as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if total is not None and got != total:
                raise DataError(f"{url}: interrupted download ({got} of {total} bytes)")
    except DataError:
        raise
    except http.client.IncompleteRead as exc:
        raise DataError(f"{url}: interrupted download ({len(exc.partial)} bytes, "
                        f"{exc.expected} more expected)") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"{url}: download failed ({exc})") from exc
    return dest


def find_layout(folder: Path) -> Path:
    """The folder holding `Training/` and `Testing/`: `folder` itself or one of its subfolders."""
    root = locate(folder)
    if root is None:
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_dir())[:10]
        raise DataError(f"{folder}: no Training/ and Testing/ folders after extraction (found: {found})")
    return root


def verify(root: Path, expected: dict = OFFICIAL_DIGESTS) -> dict:
    """Digest each split folder; a mismatch with `expected` is a DataError."""
    digests = {}
    for split in SPLITS:
        digests[split] = folder_digest(root, split)
        want = expected[split]
        if digests[split] != want:
            raise DataError(f"{root / split}: checksum mismatch: {digests[split]['files']} files with list digest "
                            f"{digests[split]['digest']}, expected {want['files']} files with {want['digest']}")
    return digests


def fetch_official(base_url: str, downloads: Path, out: Path, expected: dict = OFFICIAL_DIGESTS) -> Path:
    """Download (or reuse from `downloads`) both official zips, extract them into `out`, verify.

    Returns the folder holding Training/ and Testing/."""
    downloads.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES.values():
        archive = downloads / name
        if not archive.exists():
            download(base_url.rstrip("/") + "/" + name, archive)
        extract(archive, out)
    root = find_layout(out)
    try:
        verify(root, expected)
    except DataError as exc:
        raise DataError(f"{exc}. Delete {downloads} to download the archives again.") from exc
    return root
