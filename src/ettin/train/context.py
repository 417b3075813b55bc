"""What setup builds and every later part of a run reads: the members and the run's fixed facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ettin.recipe import Recipe
from ettin.train.distributed import DistContext
from ettin.train.metrics import MetricsLog


@dataclass
class Member:
    """One model of the run and everything that belongs to it alone."""

    arch: str
    objective: str
    dir: Path
    model: nn.Module  # the EttinModel
    wrapped: nn.Module  # what forward/backward go through (DDP / FSDP2 / the model itself)
    optimizer: torch.optim.Optimizer
    metrics: MetricsLog | None = None
    order: Any = None  # ettin.data.order.OrderWriter on rank 0
    order_chain: str = ""  # running hash over every step's batch hash
    grad_norm: float = float("nan")  # of the last step
    skipped: str | None = None  # why the last step's update was skipped (guards), or None
    skips: int = 0  # skipped steps in a row
    last_loss: float = float("nan")
    phase_time: float = 0.0
    phase_tokens: int = 0


@dataclass
class RunContext:
    """What setup decided, fixed for the whole run, read by the step, the checkpointer and the held-out loss."""

    recipe: Recipe
    dist: DistContext
    out: Path
    log: Callable[[str], None]
    tokenizer_dir: Path
    fingerprint: str
    special_ids: dict[str, int]
    vocab_size: int  # ids masking's random replacements may draw: what the tokenizer can produce
    members: list[Member]
    strategy: str = "none"
    # full states a `--resume --force` already read and checked before saving its recipe (arch -> FullState,
    # rank 0 only); `load_resume` takes them instead of reading the files again
    preloaded_states: dict = field(default_factory=dict)
