"""Another commit's src/, for benchmarks that run this tree against it side by side."""
from __future__ import annotations

import contextlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def src_at(commit: str):
    """The src/ folder of `commit` (from `git archive`), in a temporary folder for the block."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "old.tar"
        subprocess.run(["git", "archive", "-o", str(archive), commit, "src"], cwd=REPO, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "old", filter="data")
        yield Path(tmp) / "old" / "src"
