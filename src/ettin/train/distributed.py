"""Scale-out on PyTorch distributed: process group, DDP / FSDP2 wrapping, and the rank's share of a batch.

Every process draws the same global batch from the same stream and keeps a contiguous slice of each
micro-batch; losses are normalised by the number of label tokens in the whole global batch, so one
process and N processes follow the same trajectory (up to float summation order).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ettin.errors import EttinError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over all processes (in float64, so the sum does not depend on the split)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def pick_device(requested: str | None = None) -> torch.device:
    if not requested:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise EttinError(f"unknown device '{requested}'", field="device", fix="use cpu, cuda or cuda:N")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[dev.type]:
        raise EttinError(f"this machine has no {dev.type} device", field="device", fix="use --device cpu")
    return dev


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment; a single process needs none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=pick_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, end) of n items for one rank; the first n % world ranks take one more."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def choose_strategy(requested: str, num_params: int, fsdp_min_params: int, world_size: int) -> str:
    """'none' for one process; else DDP, or FSDP2 when asked or when the model is large."""
    if world_size <= 1:
        return "none"
    if requested == "auto":
        return "fsdp" if num_params >= fsdp_min_params else "ddp"
    return requested


def wrap_model(model: nn.Module, strategy: str, ctx: DistContext) -> nn.Module:
    if strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


def set_gradient_sync(model: nn.Module, strategy: str, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    import contextlib

    if strategy == "ddp":
        return contextlib.nullcontext() if enabled else model.no_sync()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def full_model_state(model: nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    """Unsharded weights keyed like EttinModel's own state dict, on CPU (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=strategy != "none")
    return get_model_state_dict(model, options=opts)


def full_optimizer_state(model: nn.Module, optimizer, strategy: str) -> dict:
    """Optimizer state keyed by parameter name, so any number of processes can read it back."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=strategy != "none")
    return get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state(
    model: nn.Module, optimizer, model_state: dict, optimizer_state: dict | None, strategy: str
) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False, strict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=opts)


def launch(nproc: int, argv: list[str]) -> int:
    """`ettin train --nproc N ...`: re-run the same command under torchrun with N processes."""
    if nproc < 1:
        raise EttinError(f"--nproc {nproc} must be at least 1", field="nproc")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "ettin",
        *argv,
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
