"""Archives a data set comes in (.zip, .tar.*): recognised by name and unpacked, with one message for a broken one."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, out: Path) -> None:
    """Unpack a .zip or .tar.* archive into `out`; a broken archive is a DataError naming it."""
    try:
        kwargs = {} if archive.name.lower().endswith(".zip") else {"filter": "data"}
        shutil.unpack_archive(str(archive), str(out), **kwargs)
    except Exception as exc:  # zipfile, tarfile and shutil raise many kinds
        raise DataError(f"{archive}: cannot extract ({exc})") from exc
