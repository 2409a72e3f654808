r"""Regularizers of the dynamics of a continuous-depth model, integrated along its solution.

A neural ODE :math:`\dot z = f(t, z)` is trained for its loss alone, and nothing stops it from learning a
field that an adaptive solver finds expensive. The penalties of this module are integrals along the
solution,

.. math:: R = \int_{t_0}^{t_1} r\big(t, z(t), f(t, z(t))\big)\,\mathrm dt ,

one per sample, which :func:`regularized_odeint` computes by adding one scalar per sample and regularizer to
the state of the ODE {cite}`finlay2020train` (Sec. 4):

* ``"kinetic"``: :math:`r = \|f(t, z)\|^2`, the kinetic energy of the flow (RNODE, eq. 7 of
  {cite}`finlay2020train`): its minimisers move each point along a straight line at constant speed.
* ``"jacobian"``: :math:`r = \|\partial f / \partial z\|_F^2`, estimated with one Hutchinson probe per sample
  (RNODE, eq. 8; :func:`hutchinson_jacobian_frobenius`); ``"jacobian_exact"`` computes it exactly
  (:func:`exact_jacobian_frobenius`, one vector–Jacobian product per state dimension).
* ``"taylor2"``, ``"taylor3"``: :math:`r = \|\mathrm d^k z / \mathrm dt^k\|^2` for :math:`k = 2, 3`, the
  TayNODE penalty of {cite}`kelly2020learning` (eq. 3), with the total derivative of :func:`total_derivative`.
* a callable ``r(t, z, dz) -> (batch,)``: a custom penalty rate.

The trace and Frobenius estimators are written once here and shared with continuous normalizing flows
{cite}`grathwohl2019ffjord`: for a probe :math:`\varepsilon` with :math:`\mathbb E[\varepsilon
\varepsilon^\top] = I`, :math:`\mathbb E[\varepsilon^\top J \varepsilon] = \operatorname{tr} J` and
:math:`\mathbb E\|\varepsilon^\top J\|^2 = \|J\|_F^2` {cite}`hutchinson1989stochastic`. They assume that the
samples of a batch do not interact (``f`` of one sample does not read another: no batch normalisation), so
that the Jacobian of the batch is block diagonal.

:func:`steer_end_time` is STEER {cite}`ghosh2020steer`: the end time of the integration drawn at random at
each training step.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from dedl.solvers import odeint, odeint_adjoint

#: The distributions of a Hutchinson probe: standard normal, or ±1 with probability 1/2 each.
NOISES = ("gaussian", "rademacher")

#: The regularizers :func:`regularized_odeint` knows by name.
REGULARIZERS = ("kinetic", "jacobian", "jacobian_exact", "taylor2", "taylor3")

Rate = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = [
    "NOISES",
    "REGULARIZERS",
    "sample_probe",
    "kinetic_energy",
    "exact_trace",
    "hutchinson_trace",
    "exact_jacobian_frobenius",
    "hutchinson_jacobian_frobenius",
    "total_derivative",
    "steer_end_time",
    "regularized_odeint",
]


def _check_batched(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (batch, *state), got {tuple(x.shape)}")
    return x


def _per_sample(x: Tensor) -> Tensor:
    """Sum over every dimension but the first (the batch)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def sample_probe(like: Tensor, noise: str = "gaussian", generator: torch.Generator | None = None) -> Tensor:
    r"""A probe :math:`\varepsilon` shaped like ``like``, with mean 0 and :math:`\mathbb E[\varepsilon
    \varepsilon^\top] = I` {cite}`hutchinson1989stochastic`: standard normal (``"gaussian"``) or ±1
    (``"rademacher"``, the estimator of least variance for a fixed matrix)."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if noise == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def kinetic_energy(dz: Tensor) -> Tensor:
    r"""The kinetic energy rate :math:`\|f(t, z)\|^2` of each sample, shape ``(batch,)``
    ({cite}`finlay2020train`, eq. 7; the factor 1/2 of mechanics is left out, as there)."""
    return _per_sample(_check_batched("dz", dz).square())


def _vjp(dz: Tensor, z: Tensor, v: Tensor) -> Tensor:
    r""":math:`v^\top \partial f/\partial z`, differentiable when grad mode is on."""
    if not z.requires_grad or dz.grad_fn is None:
        raise ValueError("dz must be computed from z with autograd recording (z.requires_grad=True)")
    (vjp,) = torch.autograd.grad(dz, z, v, create_graph=torch.is_grad_enabled(), allow_unused=True)
    return torch.zeros_like(z) if vjp is None else vjp


def _rows(dz: Tensor, z: Tensor):
    """The vector–Jacobian products ``e_i^T J`` of every state coordinate ``i``, one at a time."""
    flat = dz.reshape(dz.shape[0], -1)
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = 1
        yield i, _vjp(dz, z, e.view_as(dz)).reshape(flat.shape)


def exact_trace(dz: Tensor, z: Tensor) -> Tensor:
    r"""The divergence :math:`\operatorname{tr}(\partial f/\partial z)` of each sample, exactly, shape ``(batch,)``.

    ``dz = f(t, z)`` computed from ``z`` with autograd recording. One vector–Jacobian product per state
    dimension: the instantaneous change of variables of a continuous normalizing flow {cite}`chen2018neural`
    (Theorem 1) for small dimensions.
    """
    _check_batched("dz", dz)
    return sum(row[:, i] for i, row in _rows(dz, z))


def hutchinson_trace(dz: Tensor, z: Tensor, probe: Tensor) -> Tensor:
    r"""Hutchinson's estimate :math:`\varepsilon^\top (\partial f/\partial z)\,\varepsilon` of the divergence of
    each sample, shape ``(batch,)``: unbiased for a probe with :math:`\mathbb E[\varepsilon\varepsilon^\top] =
    I` (:func:`sample_probe`), one vector–Jacobian product whatever the dimension
    {cite}`hutchinson1989stochastic,grathwohl2019ffjord` (FFJORD, eq. 7)."""
    _check_batched("dz", dz)
    return _per_sample(_vjp(dz, z, probe) * probe)


def exact_jacobian_frobenius(dz: Tensor, z: Tensor) -> Tensor:
    r""":math:`\|\partial f/\partial z\|_F^2` of each sample, exactly, shape ``(batch,)`` (the sum of the squared
    rows of the Jacobian; one vector–Jacobian product per state dimension)."""
    _check_batched("dz", dz)
    return sum(_per_sample(row.square()) for _, row in _rows(dz, z))


def hutchinson_jacobian_frobenius(dz: Tensor, z: Tensor, probe: Tensor) -> Tensor:
    r"""Hutchinson's estimate :math:`\|\varepsilon^\top \partial f/\partial z\|^2` of
    :math:`\|\partial f/\partial z\|_F^2` of each sample, shape ``(batch,)``: unbiased, since
    :math:`\mathbb E\,\varepsilon^\top J J^\top \varepsilon = \operatorname{tr}(J J^\top)`
    ({cite}`finlay2020train`, eq. 8)."""
    _check_batched("dz", dz)
    return _per_sample(_vjp(dz, z, probe).square())


def total_derivative(func: Callable[[Tensor, Tensor], Tensor], t: Tensor, z: Tensor, order: int) -> Tensor:
    r"""The total derivative :math:`\mathrm d^k z/\mathrm dt^k` of the solution of :math:`\dot z = f(t, z)`
    through ``(t, z)``, for ``order`` :math:`k` from 1 to 4.

    :math:`\mathrm d z/\mathrm dt = f` and :math:`\mathrm d^{k+1} z/\mathrm dt^{k+1} = \partial_t g_k + (\partial_z
    g_k) f` for :math:`g_k = \mathrm d^k z/\mathrm dt^k`: each order is one forward-mode Jacobian–vector product
    (``torch.func.jvp``) of the previous one along the tangent :math:`(1, f)`, so that the cost is a small
    multiple of one evaluation of ``f`` per order. TayNODE penalises the squared norm of the :math:`k`-th
    derivative {cite}`kelly2020learning` (eq. 3), which Taylor-mode differentiation computes in one pass; the
    nested products here give the same numbers. ``t`` is a 0-d tensor; gradients flow to ``z`` and to the
    parameters of ``func`` by ordinary backpropagation.
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an int from 1 to 4, got {order!r}")
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)

    def next_order(g: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        def derivative(s: Tensor, y: Tensor) -> Tensor:
            tangents = (torch.ones_like(s), func(s, y))
            return torch.func.jvp(g, (s, y), tangents)[1]

        return derivative

    g = func
    for _ in range(order - 1):
        g = next_order(g)
    return g(t, z)


def steer_end_time(
    t1: float, b: float, t0: float = 0.0, generator: torch.Generator | None = None
) -> float:
    r"""STEER's end time, drawn uniformly from :math:`[t_1 - b, t_1 + b]` {cite}`ghosh2020steer` (Sec. 3).

    Draw one at each training step and integrate to it; evaluate at :math:`t_1`. ``b`` must satisfy
    :math:`0 \le b < t_1 - t_0`, so that the end time stays after the start.
    """
    t0, t1, b = (float(x) for x in (t0, t1, b))
    if not all(math.isfinite(x) for x in (t0, t1, b)):
        raise ValueError(f"t0, t1 and b must be finite, got {t0}, {t1}, {b}")
    if t1 <= t0:
        raise ValueError(f"t1 must be after t0, got t0={t0}, t1={t1}")
    if not 0 <= b < t1 - t0:
        raise ValueError(f"b must satisfy 0 <= b < t1 - t0 = {t1 - t0:g}, got {b}")
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return t1 - b + 2 * b * u


def _rate(name: str | Rate, func: Callable, probe: Tensor) -> tuple[str, Rate]:
    """The name and the rate ``r(t, z, dz)`` of one regularizer."""
    if callable(name):
        return getattr(name, "__name__", type(name).__name__), name
    if not isinstance(name, str):
        raise TypeError(f"a regularizer is a name or a callable r(t, z, dz), got {type(name).__name__}")
    rates: dict[str, Rate] = {
        "kinetic": lambda t, z, dz: kinetic_energy(dz),
        "jacobian": lambda t, z, dz: hutchinson_jacobian_frobenius(dz, z, probe),
        "jacobian_exact": lambda t, z, dz: exact_jacobian_frobenius(dz, z),
        "taylor2": lambda t, z, dz: _per_sample(total_derivative(func, t, z, 2).square()),
        "taylor3": lambda t, z, dz: _per_sample(total_derivative(func, t, z, 3).square()),
    }
    if name not in rates:
        raise ValueError(f"unknown regularizer {name!r}: use one of {REGULARIZERS} or a callable r(t, z, dz)")
    return name, rates[name]


def regularized_odeint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor | Sequence[float],
    regularizers: str | Rate | Sequence[str | Rate] = ("kinetic", "jacobian"),
    *,
    noise: str = "gaussian",
    generator: torch.Generator | None = None,
    adjoint: bool = False,
    **odeint_kwargs: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Solve :math:`\dot z = f(t, z)` together with the integrals of the penalties along the solution (RNODE,
    {cite}`finlay2020train`).

    The state is augmented with one scalar :math:`R_r` per sample and regularizer, :math:`\dot R_r =
    r(t, z, f(t, z))`, :math:`R_r(t_0) = 0`, and the whole system is solved by
    :func:`~dedl.solvers.odeint` (or :func:`~dedl.solvers.odeint_adjoint` with ``adjoint=True``), so that an
    adaptive solver controls the error of the penalties too.

    Args:
        func: the vector field ``func(t, z)``; ``z`` has shape ``(batch, *state)`` and the samples must not
            interact.
        y0: the initial state, shape ``(batch, *state)``.
        t: the output times, as for ``odeint``.
        regularizers: names from :data:`REGULARIZERS` (see the module docstring), callables
            ``r(t, z, dz) -> (batch,)``, or one of either.
        noise: the distribution of the Hutchinson probe of ``"jacobian"`` (:data:`NOISES`); one probe per
            sample, drawn once for the whole solve (so that the augmented field stays deterministic).
        generator: the random generator of the probe.
        adjoint: gradients by the adjoint method instead of backpropagation through the solver.
        **odeint_kwargs: ``method``, ``rtol``, ``atol``, ``options``, ... of ``odeint`` (and the ``adjoint_*``
            arguments of ``odeint_adjoint``).

    Returns:
        ``(ys, penalties)``: ``ys`` the solution at ``t``, shape ``(len(t), batch, *state)``, as ``odeint``
        returns it (to the solver's tolerance); ``penalties`` maps each regularizer's name (a callable's
        ``__name__``) to its integral over the interval between ``t[0]`` and ``t[-1]``, shape ``(batch,)``
        (positive for a positive rate, whichever way ``t`` runs).
    """
    _check_batched("y0", y0)
    if not y0.is_floating_point():
        raise TypeError(f"y0 must be a floating-point tensor, got {y0.dtype}")
    if not callable(func):
        raise TypeError(f"func must be a callable f(t, z), got {type(func).__name__}")
    if isinstance(regularizers, str) or callable(regularizers):
        regularizers = (regularizers,)
    regularizers = tuple(regularizers)
    if not regularizers:
        raise ValueError("regularizers is empty: without penalties, call odeint")
    probe = sample_probe(y0, noise, generator)
    named = [_rate(r, func, probe) for r in regularizers]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"regularizer names must be distinct, got {names}")
    batch = y0.shape[0]

    def augmented(s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            z = state[0] if state[0].requires_grad else state[0].detach().requires_grad_(True)
            dz = func(s, z)
            rates = []
            for name, rate in named:
                value = rate(s, z, dz)
                if not isinstance(value, Tensor) or value.shape != (batch,):
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"regularizer {name!r} must return shape ({batch},), got {shape}")
                rates.append(value.to(dz.dtype))
        out = (dz, *rates)
        return out if outer else tuple(x.detach() for x in out)

    zeros = [torch.zeros(batch, dtype=y0.dtype, device=y0.device) for _ in named]
    solve = odeint_adjoint if adjoint else odeint
    if adjoint and "adjoint_params" not in odeint_kwargs:
        params = tuple(func.parameters()) if isinstance(func, torch.nn.Module) else ()
        odeint_kwargs["adjoint_params"] = params
    ys, *integrals = solve(augmented, (y0, *zeros), t, **odeint_kwargs)
    times = torch.as_tensor(t)
    sign = 1.0 if bool(times[-1] >= times[0]) else -1.0
    return ys, {name: sign * R[-1] for name, R in zip(names, integrals)}
