"""Continuing an interrupted training: the whole state after every epoch in one file, read back
only by the run it belongs to, and the fault points the tests kill a run at."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .io import write_torch

FORMAT = 2  # 2: the loss balance's parameters saved with the objective, not the model


@dataclass
class Resume:
    """Where `fit` keeps its whole state after every epoch (objective, optimizer, schedule, moving
    average, random generators, the checkpoint kept so far), and what that state belongs to: a file
    with another `key` (other params or data, or another format) is discarded, not continued."""
    path: Path
    key: str
    _state: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.key = f"{FORMAT}:{self.key}"

    def load(self) -> dict | None:
        """The saved state if it is this run's; read once (it holds the model several times over)."""
        if self._state is None:
            self._state = self._read()
        return self._state

    def _read(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated file: the write is atomic, so only a damaged disk
            tqdm.write(f"{self.path}: unreadable ({type(exc).__name__}), starting from epoch 1", file=sys.stderr)
            return None
        if state.get("key") != self.key:
            tqdm.write(f"{self.path}: from other params or data, discarded; starting from epoch 1", file=sys.stderr)
            self.path.unlink()
            return None
        return state

    def epochs_done(self) -> int:
        state = self.load()
        return state["epoch"] if state else 0

    def save(self, state: dict) -> None:
        write_torch(self.path, {"key": self.key, **state})


def torch_streams(device) -> dict:
    """PyTorch's global random streams as a resume state keeps them: the CPU's, and on a GPU the device's
    (dropout draws there), so that resumed epochs draw what an uninterrupted run would have."""
    device = torch.device(device)
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_torch_streams(state: dict, device) -> None:
    """Put back what `torch_streams` kept (a state saved before the GPU's stream was kept has none)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], torch.device(device))


def resume_key(config: dict, read=(), stamped=()) -> str:
    """What a saved training state belongs to: the params the training reads (`config`), the bytes of
    the small inputs (`read`) and the size and time of the large ones (`stamped`: hashing gigabytes at
    every start would cost more than an epoch)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in read:
        h.update(Path(path).read_bytes())
    for path in stamped:
        st = Path(path).stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def fault_point(variable: str, here: str) -> None:
    """Fault injection for the tests: TSLOC_KILL_AFTER_EPOCH=N kills this process (SIGKILL, as a
    lost machine or `kill -9` would) right after epoch N's state is written; TSLOC_KILL_RANK=R:N
    kills rank R as epoch N starts (the other ranks then wait in a collective for it)."""
    if os.environ.get(variable) == here:
        os.kill(os.getpid(), signal.SIGKILL)
