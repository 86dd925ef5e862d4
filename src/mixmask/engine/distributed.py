"""torchrun + DDP: NCCL on CUDA, gloo on CPU; rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mixmask.config import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and pick this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field `train.device`: got 'cuda' but no CUDA device is visible; use auto or cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, chosen)


def all_sum(value: float | int, info: Dist) -> float:
    if info.world == 1:
        return value
    tensor = torch.tensor([float(value)], device=info.device)
    dist.all_reduce(tensor)
    return tensor.item()


def barrier(info: Dist) -> None:
    if info.world > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_text(text: str, info: Dist) -> str:
    """Rank 0's string on every rank (e.g. the run folder it created)."""
    if info.world == 1:
        return text
    data = [text]
    dist.broadcast_object_list(data, src=0)
    return data[0]
