"""Small helpers every chapter uses: device, seeding, the scale switch and an NFE counter."""

from __future__ import annotations

import os
import random
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

T = TypeVar("T")

SCALES = ("ci", "full")


def get_device() -> torch.device:
    """The fastest device present: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run repeats exactly on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_scale() -> str:
    """The experiment scale, read from the environment variable ``DEDL_SCALE``.

    ``ci`` (the default) is small enough for a 2-core CPU in a couple of minutes per notebook;
    ``full`` reproduces the published setting and expects a GPU.
    """
    scale = os.environ.get("DEDL_SCALE", "ci").strip().lower()
    if scale not in SCALES:
        raise ValueError(f"DEDL_SCALE must be one of {SCALES}, got {scale!r}")
    return scale


def scaled(ci: T, full: T) -> T:
    """Pick a setting by scale: ``epochs = scaled(ci=5, full=200)``. The one place scale is chosen."""
    return full if get_scale() == "full" else ci


class NFECounter(nn.Module):
    """Wrap a vector field ``f(t, y)`` and count its evaluations (the number of function evaluations, NFE).

    Works for any callable; an ``nn.Module`` keeps its parameters visible through ``.func``.
    """

    def __init__(self, func: Callable[..., Tensor]):
        super().__init__()
        self.func = func
        self.nfe = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.func(t, y)

    def reset(self) -> None:
        self.nfe = 0


def parameter_count(module: nn.Module) -> int:
    """The number of trainable parameters of ``module`` (the counts that the docstrings of ``dedl.nn`` quote)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
