"""Continuous paths through irregular, partially observed time series: the controls of a neural CDE.

A neural controlled differential equation {cite}`kidger2020neural` needs its data as a path ``X: [t_0, t_n] -> R^C``
that can be differentiated in time, not as a list of observations. This module turns observations
``x_0, ..., x_n`` at increasing times ``t_0 < ... < t_n`` into such a path:

* :func:`fill_missing` -- replaces missing entries (``NaN``) channel by channel, by linear interpolation between the
  neighbouring observations of that channel or by carrying the last observation forward;
* :class:`LinearInterpolation` -- the piecewise-linear path through the points (continuous, with a kink at every knot);
* :class:`NaturalCubicSpline` -- the natural cubic spline (twice continuously differentiable, zero curvature at the
  two ends), the interpolation Kidger et al. (Sec. 3.2) use for neural CDEs.

Shapes: the times ``t`` have shape ``(T,)`` and are shared by a batch; the values ``x`` have shape ``(..., T, C)``
(any batch dimensions, then time, then channels). A batch of series observed at *different* irregular times is
written on the union of their times with ``NaN`` where a series has no observation, as Rubanova et al.
{cite}`rubanova2019latent` and Kidger et al. do. Paths are evaluated with ``path.evaluate(s)`` and
``path.derivative(s)``; a scalar ``s`` gives shape ``(..., C)``, a 1-D ``s`` of length ``S`` gives ``(..., S, C)``.
Outside ``[t_0, t_n]`` the first or last piece is continued (extrapolation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dedl.solvers.timegrid import check_time_grid

__all__ = ["fill_missing", "LinearInterpolation", "NaturalCubicSpline"]

#: How :func:`fill_missing` fills a gap: linear interpolation, or the last value carried forward.
FILL_METHODS = ("linear", "forward")


def _check_times(t: Tensor | list | tuple, like: Tensor | None = None) -> Tensor:
    t = check_time_grid(t, "times", min_points=2, increasing=True)
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.get_default_dtype())
    return t


def _check_values(t: Tensor, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"values must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"values must be floating point (missing entries are NaN), got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"values must have shape (..., time, channels), got {tuple(x.shape)}")
    if x.shape[-2] != t.shape[0]:
        raise ValueError(f"values have {x.shape[-2]} time points (dimension -2) but there are {t.shape[0]} times")
    if torch.isinf(x).any():
        raise ValueError("values must not contain inf (use NaN for a missing observation)")
    return x


def fill_missing(t: Tensor, x: Tensor, method: str = "linear") -> Tensor:
    """Replace the ``NaN`` entries of ``x`` (shape ``(..., T, C)``) from the observations of the same channel.

    ``method="linear"`` joins the neighbouring observations of the same channel by a straight line in time (the
    per-channel interpolation over observed points used by Kidger et al. {cite}`kidger2020neural`);
    ``method="forward"`` carries the last observation forward (a zero-order hold). Before a channel's first
    observation its first observed value is used, after its last the last observed value; a channel with no
    observation at all becomes zero. Observed entries are returned unchanged.
    """
    t = _check_times(t, like=x if isinstance(x, Tensor) else None)
    x = _check_values(t, x)
    if method not in FILL_METHODS:
        raise ValueError(f"method must be one of {FILL_METHODS}, got {method!r}")
    observed = ~torch.isnan(x)
    if observed.all():
        return x
    n = t.shape[0]
    index = torch.arange(n, device=x.device).view(n, 1).expand_as(x)
    # index of the latest observation at or before each time, and of the earliest at or after it (per channel)
    prev = torch.where(observed, index, torch.full_like(index, -1)).cummax(dim=-2).values
    nxt = torch.where(observed, index, torch.full_like(index, n)).flip(-2).cummin(dim=-2).values.flip(-2)
    has_prev, has_next = prev >= 0, nxt < n
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x0 = torch.where(observed, x, zero)
    value_prev = x0.gather(-2, prev.clamp(min=0))
    value_next = x0.gather(-2, nxt.clamp(max=n - 1))
    if method == "linear":
        t_prev, t_next = t[prev.clamp(min=0)], t[nxt.clamp(max=n - 1)]
        span = torch.where(has_prev & has_next & (nxt > prev), t_next - t_prev, torch.ones_like(t_prev))
        weight = ((t.view(n, 1) - t_prev) / span).clamp(0, 1)
        between = value_prev + weight * (value_next - value_prev)
    else:
        between = value_prev
    filled = torch.where(has_prev & has_next, between, torch.where(has_prev, value_prev, value_next))
    filled = torch.where(has_prev | has_next, filled, zero)
    return torch.where(observed, x, filled)


class _PiecewisePolynomial:
    """A path given on each interval ``[t_k, t_{k+1}]`` by ``a + b s + c s^2 + d s^3`` with ``s = t - t_k``."""

    continuous_derivative: bool  # whether dX/dt is continuous at the knots (else a solver must treat them as jumps)

    def __init__(self, t: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor):
        self.t, self.a, self.b, self.c, self.d = t, a, b, c, d

    @property
    def interval(self) -> tuple[float, float]:
        """``(t_0, t_n)``, the span of the knots."""
        return float(self.t[0]), float(self.t[-1])

    @property
    def grid_points(self) -> Tensor:
        """The knots ``t_0, ..., t_n``: where the derivative of a linear interpolation jumps."""
        return self.t

    def _locate(self, s: Tensor | float) -> tuple[Tensor, Tensor]:
        s = torch.as_tensor(s, dtype=self.t.dtype, device=self.t.device)
        if s.dim() > 1:
            raise ValueError(f"evaluation times must be a scalar or 1-D, got shape {tuple(s.shape)}")
        # interval k holds t_k <= s < t_{k+1}; at an interior knot the interval to its right is used
        k = torch.searchsorted(self.t[1:-1].contiguous(), s.detach(), right=True)
        frac = s - self.t[k]
        return k, (frac.unsqueeze(-1) if s.dim() == 1 else frac)

    def _piece(self, coeff: Tensor, k: Tensor) -> Tensor:
        return coeff[..., k, :]

    def evaluate(self, s: Tensor | float) -> Tensor:
        """``X(s)``: shape ``(..., C)`` for a scalar ``s``, ``(..., S, C)`` for ``S`` times."""
        k, u = self._locate(s)
        a, b, c, d = (self._piece(coeff, k) for coeff in (self.a, self.b, self.c, self.d))
        return a + u * (b + u * (c + u * d))

    def derivative(self, s: Tensor | float) -> Tensor:
        """``dX/dt(s)``, shaped like :meth:`evaluate`: the right derivative at a knot; the left one at the largest
        float below the knot (``torch.nextafter(t_k, -inf)``), which is how a solver reads a one-sided limit."""
        k, u = self._locate(s)
        return self._piece(self.b, k) + u * (2 * self._piece(self.c, k) + 3 * u * self._piece(self.d, k))

    def second_derivative(self, s: Tensor | float) -> Tensor:
        """``d^2X/dt^2(s)``, shaped like :meth:`evaluate`."""
        k, u = self._locate(s)
        return 2 * self._piece(self.c, k) + 6 * u * self._piece(self.d, k)


class LinearInterpolation(_PiecewisePolynomial):
    """The piecewise-linear path through ``(t_k, x_k)``: ``X(t) = x_k + (t - t_k) (x_{k+1} - x_k) / (t_{k+1} - t_k)``.

    Kidger et al. {cite}`kidger2020neural` (Sec. 3.2) note that any interpolation works as a control; the linear
    one is the simplest and, unlike a spline, causal (``X`` on ``[t_0, t_k]`` depends only on ``x_0, ..., x_k``),
    but ``dX/dt`` jumps at every knot, which makes an adaptive solver reject steps there (Kidger 2021
    {cite}`kidger2021on`, Sec. 3.1). Missing values (``NaN``) are first replaced by :func:`fill_missing`
    with ``fill``. ``t``: shape ``(T,)``, strictly increasing; ``x``: shape ``(..., T, C)``.
    """

    continuous_derivative = False

    def __init__(self, t: Tensor, x: Tensor, fill: str = "linear"):
        t = _check_times(t, like=x if isinstance(x, Tensor) else None)
        x = fill_missing(t, _check_values(t, x), fill)
        h = (t[1:] - t[:-1]).unsqueeze(-1)
        slope = (x[..., 1:, :] - x[..., :-1, :]) / h
        zeros = torch.zeros_like(slope)
        super().__init__(t, x[..., :-1, :], slope, zeros, zeros)


class NaturalCubicSpline(_PiecewisePolynomial):
    """The natural cubic spline through ``(t_k, x_k)``, channel by channel {cite}`kidger2020neural` (Sec. 3.2).

    On ``[t_k, t_{k+1}]`` with ``h_k = t_{k+1} - t_k`` and ``s = t - t_k`` the spline is the cubic

        ``X(t) = x_k + b_k s + M_k s^2 / 2 + (M_{k+1} - M_k) s^3 / (6 h_k)``,
        ``b_k = (x_{k+1} - x_k) / h_k - h_k (2 M_k + M_{k+1}) / 6``,

    where the second derivatives ``M_k = X''(t_k)`` solve the tridiagonal system that makes ``X'`` continuous at the
    interior knots,

        ``h_{k-1} M_{k-1} + 2 (h_{k-1} + h_k) M_k + h_k M_{k+1} = 6 (D_k - D_{k-1})``,   ``k = 1, ..., n-1``,

    with the chord slopes ``D_k = (x_{k+1} - x_k) / h_k`` and the natural end conditions ``M_0 = M_n = 0``. The
    result passes through every point and is twice continuously differentiable, so an adaptive solver integrates
    ``dz/dt = f(z) dX/dt`` without trouble at the knots. It is not causal: ``X`` near ``t_k`` depends a little on
    later points.

    Missing values (``NaN``) are first replaced channel by channel by :func:`fill_missing` with ``fill`` (the
    spline then passes through the filled values); ``t``: shape ``(T,)``; ``x``: shape ``(..., T, C)``. The
    system is the same for every series of a batch and is solved once (densely: ``O(T^3)``, fine for a few
    hundred time points).
    """

    continuous_derivative = True

    def __init__(self, t: Tensor, x: Tensor, fill: str = "linear"):
        t = _check_times(t, like=x if isinstance(x, Tensor) else None)
        x = fill_missing(t, _check_values(t, x), fill)
        h = t[1:] - t[:-1]  # (n,)
        slope = (x[..., 1:, :] - x[..., :-1, :]) / h.unsqueeze(-1)  # (..., n, C)
        n = h.shape[0]
        second = x.new_zeros(x.shape)  # M_0 ... M_n, natural ends stay zero
        if n > 1:
            system = torch.diag(2 * (h[:-1] + h[1:]))
            system = system + torch.diag(h[1:-1], 1) + torch.diag(h[1:-1], -1)
            rhs = 6 * (slope[..., 1:, :] - slope[..., :-1, :])  # (..., n-1, C)
            interior = torch.linalg.solve(system, rhs)
            second = torch.cat([second[..., :1, :], interior, second[..., :1, :]], dim=-2)
        hk = h.unsqueeze(-1)
        b = slope - hk * (2 * second[..., :-1, :] + second[..., 1:, :]) / 6
        c = second[..., :-1, :] / 2
        d = (second[..., 1:, :] - second[..., :-1, :]) / (6 * hk)
        super().__init__(t, x[..., :-1, :], b, c, d)
