"""One validator for grids of times, shared by the ODE, SDE and CDE solves and the models built on them.

:func:`check_time_grid` turns what a caller passes as times (a tensor, a list, a tuple) into a detached 1-D
floating-point tensor, or raises an exception that names the problem: not 1-D, too few points, not finite,
not strictly monotone (or not increasing where only forward integration is defined).

Depends on torch alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_time_grid"]


def check_time_grid(t: Any, name: str = "t", *, min_points: int = 1, increasing: bool = False) -> Tensor:
    r"""A validated grid of times :math:`t_0, \dots, t_N` (Hairer et al. 1993 {cite}`hairer1993solving`, Sec. II.4:
    a solution is asked for at strictly monotone output times).

    Args:
        t: a 1-D tensor or sequence of real numbers.
        name: the argument's name in error messages (``"t"``, ``"ts"``, ``"times"``).
        min_points: the fewest times accepted (1 for a solve, which then returns ``y0``; 2 for a path).
        increasing: require strictly increasing times (SDE solves, interpolation knots); otherwise strictly
            increasing or strictly decreasing (an ODE solved backward).

    Returns:
        The times, detached, on their device; floating-point tensors keep their dtype, integers become
        float64.

    Raises:
        TypeError: not a tensor or a sequence of real numbers (complex times included).
        ValueError: not 1-D, fewer than ``min_points`` times, NaN or Inf, or not strictly monotone.
    """
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t)
        except Exception as err:  # noqa: BLE001 - re-raised with a clear message
            raise TypeError(f"{name} must be a 1-D tensor or sequence of times, got {type(t).__name__}") from err
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real times, got dtype {t.dtype}")
    t = t.detach()
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of times, got shape {tuple(t.shape)}")
    if t.numel() < min_points:
        raise ValueError(f"{name} must hold at least {min_points} time point(s), got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or Inf")
    if t.numel() > 1:
        dt = t[1:].double() - t[:-1].double()
        if not bool((dt > 0).all()):
            if increasing:
                k = int((dt <= 0).nonzero()[0])
                raise ValueError(
                    f"{name} must be strictly increasing, but {name}[{k}] = {float(t[k])} >= "
                    f"{name}[{k + 1}] = {float(t[k + 1])}"
                )
            if not bool((dt < 0).all()):
                raise ValueError(f"{name} must be strictly monotone (strictly increasing or strictly decreasing)")
    return t
