r"""Continuous normalizing flows: a density by the instantaneous change of variables.

A continuous normalizing flow moves data :math:`z(t_0) = x` along :math:`\dot z = f(t, z)` to
:math:`z(t_1)`, where the density is a standard normal. The log-density changes along the path by minus the
divergence of the field, :math:`\frac{\mathrm d}{\mathrm dt}\log p(z(t)) = -\operatorname{tr}\big(\partial f /
\partial z(t)\big)` ({cite}`chen2018neural`, Theorem 1), so that

.. math:: \log p_{t_0}(x) = \log \mathcal N\big(z(t_1); 0, I\big)
          + \int_{t_0}^{t_1} \operatorname{tr}\Big(\frac{\partial f}{\partial z}\big(t, z(t)\big)\Big)\,\mathrm dt .

:class:`CNF` solves the state and the integral together; the trace is exact (one vector–Jacobian product per
dimension, :func:`dedl.regularizers.exact_trace`) or Hutchinson's unbiased estimate with one probe per sample
held fixed over the solve (FFJORD, {cite}`grathwohl2019ffjord` eq. 7; :func:`dedl.regularizers.hutchinson_trace`).
Sampling solves the same ODE backward from base draws. The trace integral is handed to
:func:`dedl.regularizers.regularized_odeint` as one more rate, so that Part IV's penalties (RNODE's kinetic
energy and Jacobian norm, {cite}`finlay2020train`) ride along in the same augmented solve.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from dedl.nn.checks import positive_float, positive_int
from dedl.regularizers import (
    NOISES,
    REGULARIZERS,
    exact_trace,
    hutchinson_trace,
    regularized_odeint,
    sample_probe,
)
from dedl.solvers import odeint, odeint_adjoint
from dedl.utils import NFECounter

#: The divergence estimators of :class:`CNF`: exact, or Hutchinson's (FFJORD).
TRACES = ("exact", "hutchinson")

__all__ = ["TRACES", "CNF", "standard_normal_log_prob"]


def standard_normal_log_prob(z: Tensor) -> Tensor:
    r""":math:`\log \mathcal N(z; 0, I)` of each sample of a batch ``(batch, dim)``, shape ``(batch,)``."""
    if not isinstance(z, Tensor) or z.dim() != 2:
        raise ValueError(f"z must be a tensor of shape (batch, dim), got {getattr(z, 'shape', type(z))}")
    return -0.5 * z.square().sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


class CNF(nn.Module):
    r"""A continuous normalizing flow on :math:`\mathbb R^d`: data at ``t0``, the standard normal at ``t1``
    ({cite}`chen2018neural`, Sec. 4; FFJORD {cite}`grathwohl2019ffjord` with ``trace="hutchinson"``).

    Args:
        func: the vector field ``f(t, z)`` on states ``(batch, dim)`` (an ``nn.Module``, so that it trains);
            samples must not interact (no batch normalisation). Wrapped in :class:`~dedl.utils.NFECounter`.
        t0, t1: the data and base times, ``t0 < t1``.
        trace: ``"exact"`` or ``"hutchinson"`` (:data:`TRACES`).
        method, rtol, atol, options: the solver of :func:`dedl.solvers.odeint` (FFJORD's setting:
            ``dopri5`` at ``rtol = atol = 1e-5``).
        adjoint: gradients by the adjoint method (:func:`dedl.solvers.odeint_adjoint`).
        regularizers: Part IV's penalties for :func:`dedl.regularizers.regularized_odeint` (e.g.
            ``("kinetic", "jacobian")``, RNODE {cite}`finlay2020train`), computed in training mode only;
            after :meth:`log_prob` :attr:`penalties` maps each name to its integral, shape ``(batch,)``.
        noise: the Hutchinson probe's distribution (:data:`~dedl.regularizers.NOISES`), for the trace and the
            ``"jacobian"`` penalty.
        dim: the dimension of the data, for :meth:`sample`; default ``func.dim``.

    After each call, :attr:`nfe` holds the field evaluations of its forward solve (the trace's and the
    penalties' vector–Jacobian products are not counted: they reuse the evaluation).
    """

    def __init__(
        self,
        func: nn.Module,
        t0: float = 0.0,
        t1: float = 1.0,
        trace: str = "exact",
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        adjoint: bool = False,
        regularizers: str | Sequence[str | Callable] | None = None,
        noise: str = "gaussian",
        options: dict | None = None,
        dim: int | None = None,
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be an nn.Module (its parameters are trained), got {type(func).__name__}")
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"need finite times t0 < t1, got t0={t0}, t1={t1}")
        if regularizers is not None:
            names = (regularizers,) if isinstance(regularizers, str) or callable(regularizers) else tuple(regularizers)
            for name in names:
                if not (callable(name) or name in REGULARIZERS):
                    raise ValueError(f"unknown regularizer {name!r}: use one of {REGULARIZERS} or a callable")
            regularizers = names
        dim = getattr(func, "dim", None) if dim is None else dim
        self.dim = None if dim is None else positive_int("dim", dim)
        self.func = NFECounter(func)
        self.t0, self.t1 = t0, t1
        self.trace = trace
        self.method = method
        self.rtol = positive_float("rtol", rtol)
        self.atol = positive_float("atol", atol)
        self.options = options
        self.adjoint = adjoint
        self.regularizers = regularizers
        self.noise = noise
        self.nfe = 0
        self.penalties: dict[str, Tensor] = {}

    def _kwargs(self) -> dict:
        return dict(method=self.method, rtol=self.rtol, atol=self.atol, options=self.options)

    def _times(self, x: Tensor, backward: bool = False) -> Tensor:
        t = [self.t1, self.t0] if backward else [self.t0, self.t1]
        return torch.tensor(t, dtype=x.dtype, device=x.device)

    def _check(self, x: Tensor, name: str) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        if x.dim() != 2 or x.shape[0] == 0 or (self.dim is not None and x.shape[1] != self.dim):
            want = "dim" if self.dim is None else self.dim
            raise ValueError(f"{name} must have shape (batch, {want}), got {tuple(x.shape)}")
        return x

    def _flow(self, y0: Tensor, backward: bool) -> Tensor:
        """Solve the plain ODE from ``y0`` between ``t0`` and ``t1`` (backward: from ``t1`` to ``t0``)."""
        self.func.reset()
        t = self._times(y0, backward)
        if self.adjoint:
            ys = odeint_adjoint(self.func, y0, t, adjoint_params=tuple(self.func.parameters()), **self._kwargs())
        else:
            ys = odeint(self.func, y0, t, **self._kwargs())
        self.nfe = self.func.nfe
        return ys[-1]

    def forward(self, x: Tensor) -> Tensor:
        """The flow map: data ``x`` at ``t0`` carried to ``z(t1)``, shape ``(batch, dim)``."""
        return self._flow(self._check(x, "x"), backward=False)

    def inverse(self, z: Tensor) -> Tensor:
        """The inverse flow map: ``z`` at ``t1`` carried back to ``t0``, shape ``(batch, dim)``."""
        return self._flow(self._check(z, "z"), backward=True)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples: standard normal draws at ``t1`` (from ``generator``) carried back to ``t0``."""
        positive_int("n", n)
        if self.dim is None:
            raise ValueError("sample needs the dimension: pass dim= to CNF (func has no attribute dim)")
        p = next(self.parameters(), None)
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        device = p.device if p is not None else None
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        return self.inverse(z)

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r""":math:`\log p_{t_0}(x)` of each sample, shape ``(batch,)``: ``x`` solved forward with the
        integral of the divergence ({cite}`chen2018neural`, Theorem 1); ``generator`` draws the Hutchinson
        probes. In training mode with ``regularizers`` the penalties are integrated too (:attr:`penalties`)."""
        x = self._check(x, "x")
        probe = sample_probe(x, self.noise, generator) if self.trace == "hutchinson" else None

        def divergence(t: Tensor, z: Tensor, dz: Tensor) -> Tensor:
            return exact_trace(dz, z) if probe is None else hutchinson_trace(dz, z, probe)

        extra = tuple(self.regularizers) if self.training and self.regularizers is not None else ()
        self.func.reset()
        zs, integrals = regularized_odeint(
            self.func, x, self._times(x), (divergence, *extra), noise=self.noise, generator=generator,
            adjoint=self.adjoint, **self._kwargs(),
        )
        self.nfe = self.func.nfe
        z = zs[-1]
        if not torch.isfinite(z).all():
            raise FloatingPointError("the CNF's solution became non-finite; lower the tolerances or the step size")
        self.penalties = {name: value for name, value in integrals.items() if name != "divergence"}
        return standard_normal_log_prob(z) + integrals["divergence"]

    def extra_repr(self) -> str:
        extra = f", regularizers={self.regularizers!r}" if self.regularizers is not None else ""
        return (f"t0={self.t0:g}, t1={self.t1:g}, trace={self.trace!r}, method={self.method!r}, "
                f"rtol={self.rtol:g}, atol={self.atol:g}, adjoint={self.adjoint}{extra}")
