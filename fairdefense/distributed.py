"""The few collectives the trainer needs, on ``torch.distributed``; the identity in one process.

fairdefense trains data-parallel with :class:`~torch.nn.parallel.DistributedDataParallel`
in processes launched by ``torchrun`` (or any launcher that initialises a process
group). Everything the trainer and the plugins exchange goes through this module,
so that a single process never pays for, nor depends on, ``torch.distributed``:

- :func:`rank`, :func:`world_size`, :func:`is_main` (rank 0: the only one that writes);
- :func:`all_reduce_sum` (a new tensor, the sum over the processes),
  :func:`all_reduce_min`, :func:`broadcast_object`, :func:`all_gather_object`,
  :func:`barrier`;
- :func:`init_from_env`: joins the group ``torchrun`` describes in the environment
  (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), with the
  NCCL backend on CUDA and gloo on the CPU unless ``backend`` or the environment
  variable ``FAIRDEFENSE_DIST_BACKEND`` says otherwise, and a timeout after which a
  collective waiting for a dead process fails (``FAIRDEFENSE_DIST_TIMEOUT`` seconds,
  default 600).

A collective that fails because another process died or hung raises
:class:`PeerFailureError` (see :func:`peer_failures`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from fairdefense.errors import FairDefenseError

__all__ = [
    "PeerFailureError",
    "active",
    "rank",
    "world_size",
    "is_main",
    "all_reduce_sum",
    "all_reduce_min",
    "broadcast_object",
    "all_gather_object",
    "barrier",
    "init_from_env",
    "local_device",
    "restart_count",
    "peer_failures",
    "DEFAULT_TIMEOUT",
]

#: Seconds a collective waits for the other processes before failing (overridable).
DEFAULT_TIMEOUT = 600.0


#: Words of the backends' errors when a peer is lost (gloo, NCCL, the c10d store).
_PEER_MESSAGES = ("gloo", "NCCL", "ProcessGroup", "Connection reset", "Connection closed", "imed out", "Broken pipe")


class PeerFailureError(FairDefenseError, RuntimeError):
    """Another process of the training group died or stopped answering; this one stops too."""


def active() -> bool:
    """Whether this process belongs to an initialised group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes training together (1 in a single process)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and prints progress."""
    return rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The elementwise sum of ``tensor`` over the processes, as a new tensor (a copy in one process).

    Every process must call it, in the same order, with a tensor of the same shape
    and dtype on its training device.
    """
    out = tensor.detach().clone()
    if active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_min(tensor: Tensor) -> Tensor:
    """The elementwise minimum of ``tensor`` over the processes, as a new tensor."""
    out = tensor.detach().clone()
    if active():
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (picklable objects; ``obj`` itself in one process)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every process gets here (nothing in one process)."""
    if active():
        dist.barrier()


def restart_count() -> int:
    """How many times ``torchrun``'s elastic agent restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init_from_env(backend: str | None = None, timeout: float | None = None) -> bool:
    """Join the process group described by ``torchrun``'s environment variables.

    Does nothing (and returns ``False``) when the group is already initialised or the
    environment describes a single process. ``backend`` defaults to
    ``FAIRDEFENSE_DIST_BACKEND``, else ``"nccl"`` when CUDA is available and
    ``"gloo"`` otherwise; ``timeout`` (seconds) to ``FAIRDEFENSE_DIST_TIMEOUT``, else
    :data:`DEFAULT_TIMEOUT`. On CUDA, the process uses GPU ``LOCAL_RANK``.
    """
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or os.environ.get("FAIRDEFENSE_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    seconds = float(timeout if timeout is not None else os.environ.get("FAIRDEFENSE_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return True


def local_device(device: torch.device) -> torch.device:
    """``device``, with an unnumbered CUDA device made this process's GPU (``LOCAL_RANK``) in a group."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


@contextlib.contextmanager
def peer_failures(where: str) -> Iterator[None]:
    """Turn a failed collective (a dead or stalled process) into :class:`PeerFailureError`.

    ``where`` says what was running (e.g. ``"epoch 3"``); the message names this rank
    and the way to continue. Outside a group, nothing is caught.
    """
    try:
        yield
    except RuntimeError as exc:  # DDP's reducer reports a lost peer as a plain RuntimeError
        if not (active() and (isinstance(exc, dist.DistError) or any(m in str(exc) for m in _PEER_MESSAGES))):
            raise
        raise PeerFailureError(
            f"rank {rank()} of {world_size()}: another process stopped or stopped answering during {where} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). This process "
            f"stops too; continue from the run folder's last.pt (fairdefense train --resume DIR/last.pt, or "
            f"torchrun --max-restarts K restarts and resumes by itself)."
        ) from exc
