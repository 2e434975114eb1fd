"""Data parallelism for the trainer: one process per device, the prompt gradient all-reduced.

``accelerate launch -m tvprompt train ...`` (or ``torchrun``) starts the processes; each one
loads the source models, takes its slice of every global batch, and sums its share of the
gradient with the others before the (identical) update. A single process uses the no-op
:class:`World` below, so the training loop has no branches for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device | None = None  # the process's device chosen by the launcher, if any

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes in place (no-op for one process)."""
        if self.size > 1:
            import torch.distributed as dist

            # gloo reduces CPU tensors, nccl CUDA tensors: stage through the right device if needed
            comm = torch.device("cpu") if dist.get_backend() == "gloo" else (self.device or tensor.device)
            if tensor.device != comm:
                staged = tensor.detach().to(comm)
                dist.all_reduce(staged)
                tensor.copy_(staged)
            else:
                dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group. Without this, gloo's threads can outlive the interpreter's
        shutdown and abort the process ("terminate called without an active exception")."""
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def shard(self, n: int) -> slice:
        """This process's contiguous slice of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def init_world() -> World:
    """Join the process group when a launcher (``accelerate launch``, ``torchrun``) started several
    processes (``WORLD_SIZE`` > 1); otherwise a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # on CPUs: gloo
    log.info("data-parallel: process %d of %d on %s", state.process_index, state.num_processes, state.device)
    return World(rank=state.process_index, size=state.num_processes, device=state.device)
