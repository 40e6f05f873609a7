"""Data parallelism from the launcher: under `torchrun --nproc_per_node N` or `accelerate launch`, each process (rank)
takes every N-th sample, runs on its own device, and rank 0 gathers the results.

The launcher sets RANK, WORLD_SIZE and LOCAL_RANK; without them there is one rank and nothing here does anything.
One device per rank: cuda:LOCAL_RANK when CUDA is available, else the CPU with the gloo backend.

Use from a command:

    world = distributed.init(device)          # once, before loading the model; returns a `World`
    mine = world.shard(samples)               # this rank's samples (every world_size-th, from rank)
    ...                                       # work on `mine`, write per-rank output (`lostattn.harness.runner`)
    world.barrier()                           # then rank 0 merges the ranks' files
    distributed.close()
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment; (0, 1, 0) outside a launcher."""
    def read(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun / accelerate "
                             f"launch); unset it to run as one process") from None
    world = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local = read("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent; launch with torchrun or accelerate")
    return rank, world, local


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Items rank, rank + world_size, rank + 2·world_size, ...: disjoint over the ranks, together all items, and
    balanced over a benchmark's families (which loaders list in blocks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(items[rank::world_size])


@dataclass
class World:
    """This process's place among the ranks. `device` is where its model goes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence) -> list:
        return shard(items, self.rank, self.size)

    def barrier(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


_WORLD: World | None = None


def resolve_device(device: str, world_size: int = 1, local_rank: int = 0) -> str:
    """The device string a rank loads its model to: `device` as given for one rank; under a launcher, cuda or auto
    become cuda:LOCAL_RANK (one GPU per rank). "auto" without a GPU is the CPU; "cuda" without one is an error."""
    has_cuda = torch.cuda.is_available()
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "auto", "mps"):
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto")
    if kind == "cuda" and not has_cuda:
        raise ValueError(f"--device {device}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                         f"use --device cpu, or --device auto to take a GPU when there is one")
    if kind == "auto" and not has_cuda:
        return "cpu"
    if world_size > 1 and kind in ("cuda", "auto"):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} are visible; "
                             f"launch at most that many processes per node")
        return f"cuda:{local_rank}"
    return device


def init(device: str = "cpu") -> World:
    """Join the launcher's process group (when there is one) and pick this rank's device; idempotent."""
    global _WORLD
    rank, size, local = launch_env()
    if _WORLD is not None and (_WORLD.rank, _WORLD.size) == (rank, size):
        return _WORLD
    dev = resolve_device(device, size, local)
    if size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            torch.cuda.set_device(int(dev.split(":")[1]))
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=size)
    _WORLD = World(rank, size, local, dev)
    return _WORLD


def current() -> World:
    """The world `init` joined, else a single rank on the CPU (library use without a launcher)."""
    if _WORLD is not None:
        return _WORLD
    rank, size, local = launch_env()
    if size > 1 and torch.distributed.is_initialized():
        return World(rank, size, local, "cpu")
    return World()


def close() -> None:
    global _WORLD
    if _WORLD is not None:
        _WORLD.close()
    _WORLD = None


def default_threads(world_size: int) -> int:
    """CPU threads per process: one per rank under a launcher (the ranks share the cores), else min(2, cores)."""
    return 1 if world_size > 1 else min(2, os.cpu_count() or 1)
