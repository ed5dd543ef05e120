"""torch.distributed for the train stage: whether this process is one of N ranks, and the few
collectives the loop needs. With one process every helper is a no-op, so the single-process path
runs exactly as it did before ranks existed.

Ranks are started by torchrun (`torch.distributed.run`), which sets RANK, WORLD_SIZE, LOCAL_RANK
and the rendezvous address: `train.processes: N` has the train stage start N local ranks through
torchrun's own launcher (`launch`); on several machines a user runs `torchrun --nnodes ...` on each
(README, "Scaling out"). gloo on the CPU, NCCL on CUDA.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import LOST_RANK, DataError

TIMEOUT = timedelta(minutes=10)  # a collective that waits longer than this for a lost rank fails


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: rank 0 of 1 without torchrun."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes outputs and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a batch or subset: every `size`-th element from `rank`."""
        return idx[self.rank::self.size] if self.distributed else idx

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def average(self, tensors) -> None:
        """Floating tensors (BatchNorm's running statistics) set to their mean over the ranks, in place."""
        if self.distributed:
            for t in tensors:
                if t.dtype.is_floating_point:
                    dist.all_reduce(t)
                    t.div_(self.size)

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (a picklable object)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, indexed by rank, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def launched() -> bool:
    """Started by torchrun as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device, expected: int) -> World:
    """Join torchrun's process group (gloo on the CPU, NCCL on CUDA); one process: World(). The
    ranks torchrun started must be `expected` (train.processes), so that params say what ran."""
    if not launched():
        return World()
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if size != expected:
        raise DataError(f"torchrun started {size} processes but train.processes is {expected}; "
                        f"set -S train.processes={size} (the number of ranks in all, over every node)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return World(rank, size, int(os.environ.get("LOCAL_RANK", "0")))


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def launch(processes: int, argv: list[str]) -> None:
    """Run `python -m tsloc.pipeline <argv>` (a stage) as `processes` local ranks with torchrun's launcher (what
    `torchrun --standalone --nproc-per-node N` does), this tree's code first on the path. When a
    rank fails, torchrun stops the others (no rank waits forever in a collective) and this raises
    one message naming the rank; the rank's own message was printed above it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    src = str(Path(__file__).resolve().parents[2])  # the folder holding the tsloc package
    os.environ["PYTHONPATH"] = os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # torchrun's default: one thread per rank unless told otherwise; here the cores are shared out.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    # The agent logs each failure at length; the one line below says what happened and who.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "tsloc.pipeline", *argv)
    except ChildFailedError as exc:
        # The rank that failed first, not one that stopped because it lost contact with it (exit 3).
        rank, failure = min(exc.failures.items(), key=lambda kv: (kv[1].exitcode == LOST_RANK, kv[1].timestamp))
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        raise DataError(f"rank {rank} of {processes} failed ({how}; its message, if any, is above); "
                        f"torchrun stopped the other ranks, nothing was written") from None
