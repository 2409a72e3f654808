"""Small helpers every chapter uses: device, seeding, the scale switch, an NFE counter, measured orders and
CPU times."""

from __future__ import annotations

import os
import random
import time
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

T = TypeVar("T")

#: The experiment scales that ``DEDL_SCALE`` may name (see :func:`get_scale`).
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


def fitted_order(steps: Sequence[float], errors: Sequence[float]) -> float:
    r"""The measured order of convergence: the least-squares slope of :math:`\log e` against :math:`\log h`.

    A method of order :math:`p` has error :math:`e \approx C h^p` for small :math:`h`
    {cite}`hairer1993solving` (Sec. II.3), so the slope is :math:`p`. Hand in the asymptotic range only:
    errors at the round-off floor, or of the size of the reference solution's own error, flatten the fit.

    Args:
        steps: step sizes :math:`h` (or any quantity proportional to them), positive and finite.
        errors: the errors at those steps, positive and finite, as many as ``steps``.

    Raises:
        ValueError: fewer than two points, different lengths, or a value that is not positive and finite.
    """
    h, e = np.asarray(steps, dtype=float), np.asarray(errors, dtype=float)
    if h.ndim != 1 or h.shape != e.shape or len(h) < 2:
        raise ValueError(f"need two or more steps and as many errors, got shapes {h.shape} and {e.shape}")
    for name, values in (("steps", h), ("errors", e)):
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"{name} must be positive and finite to take logarithms, got {values.tolist()}")
    if np.ptp(np.log(h)) == 0:
        raise ValueError("the steps must not all be equal")
    return float(np.polyfit(np.log(h), np.log(e), 1)[0])


def cpu_seconds(fn: Callable[[], object], repeats: int = 1) -> float:
    """The median CPU time of ``fn()`` in seconds, over ``repeats`` calls, with torch on one thread.

    Unlike wall-clock time, CPU time does not grow when other jobs share the machine, and one thread makes it
    the same work whatever the thread count; a timing claim in a chapter rests on this, with a wide margin.

    Raises:
        ValueError: ``repeats`` is not a positive integer.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times))


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes held by torch's CPU allocator while ``fn`` runs.

    Runs ``fn`` under ``torch.profiler`` with ``profile_memory=True``, which records every allocation
    and free (with its size and time) made through torch's allocator, in the forward and in the
    backward pass; the running sum of those sizes, in time order, is the live memory, and its maximum
    is the peak. It counts tensors only (activations, graph buffers, solver state), exactly and
    independently of the operating system's allocator, but not Python objects."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return peak
