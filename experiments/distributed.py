"""The process group of a full training launched by ``torchrun`` (DistributedDataParallel), or its absence.

``torchrun --nproc_per_node N -m gpnas.experiments.cli train ... --out DIR`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :meth:`Distributed.from_env` reads them (``WORLD_SIZE`` unset or 1: one
process, no group). Rank 0 alone writes files, MLflow and progress; the others train and wait at the barriers.
NCCL on CUDA, gloo on CPU (which is how the tests run two processes on one machine).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from gpnas.errors import ConfigError

__all__ = ["Distributed"]

#: How long a rank waits at a barrier: rank 0 scores the whole val split alone while the others wait there.
BARRIER_TIMEOUT = timedelta(hours=2)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"${name}={raw!r} is not a number; torchrun sets it (unset it to train in one "
                          "process)") from None


@dataclass(frozen=True)
class Distributed:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> Distributed:
        world = _env_int("WORLD_SIZE", 1)
        rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"$RANK={rank} / $WORLD_SIZE={world}: the rank must be in [0, world size); launch "
                              "through torchrun, or unset both to train in one process")
        return cls(rank=rank, world=world, local_rank=local_rank,
                   local_world=_env_int("LOCAL_WORLD_SIZE", world))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, MLflow and progress."""
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``) when distributed; anything else stays."""
        if self.enabled and device == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(device)

    @contextmanager
    def session(self, device: torch.device) -> Iterator[Distributed]:
        """The process group for the duration of a training (NCCL on CUDA, gloo on CPU); nothing when alone."""
        if not self.enabled:
            yield self
            return
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
        try:
            yield self
        finally:
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, total: float, count: int, device: torch.device) -> float:
        """The mean of a per-rank (sum, count) over all ranks (the epoch's loss over every batch)."""
        if not self.enabled:
            return total / max(1, count)
        import torch.distributed as dist

        both = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(both)
        return float(both[0] / both[1].clamp(min=1))

    def wrap(self, model: nn.Module, device: torch.device, *, unused_parameters: bool) -> nn.Module:
        """``model`` inside DistributedDataParallel (the gradients averaged over the ranks), or itself alone.
        ``unused_parameters``: some parameters get no gradient from the loss (the seg head's mask prototypes)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused_parameters)

    def shard(self) -> tuple[int, int] | None:
        """(rank, world) for the train loader's :class:`~gpnas.trainers.data.RankShard`; None when alone."""
        return (self.rank, self.world) if self.enabled else None
