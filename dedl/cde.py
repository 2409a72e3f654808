r"""Solving a controlled differential equation driven by an interpolated path: :func:`cdeint`.

A neural CDE {cite}`kidger2020neural` (Sec. 3) evolves ``z(t) = z(t_0) + int_{t_0}^t f(s, z(s)) dX(s)`` along a
control path ``X`` built from the data by :mod:`dedl.interpolation`. This module sits beside those paths, one
floor above :mod:`dedl.solvers` and below :mod:`dedl.nn`: it needs what the solvers know (a vector field, jump
and step times) and what the paths know (their derivative and their knots), and nothing with parameters, so the
CDE models of :mod:`dedl.nn.odenets` and any chapter can use it.

Depends on torch and :mod:`dedl.solvers` alone.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from dedl.solvers import odeint

__all__ = ["ControlPath", "ControlledField", "cdeint"]


class ControlPath(Protocol):
    """What :func:`cdeint` needs of a control: :class:`~dedl.interpolation.LinearInterpolation` and
    :class:`~dedl.interpolation.NaturalCubicSpline` are two."""

    def derivative(self, s: Tensor | float) -> Tensor:
        """``dX/dt(s)``, shape ``(..., C)``."""

    @property
    def grid_points(self) -> Tensor:
        """The knots, where the path's derivative (or a higher one) may jump."""

    @property
    def continuous_derivative(self) -> bool:
        """Whether ``dX/dt`` is continuous at the knots."""


class ControlledField(nn.Module):
    r"""The CDE as an ODE: ``g(t, z) = f(t, z) dX/dt(t)``, the matrix-valued field times the control's velocity.

    Because ``X`` is differentiable except at its knots, the Riemann-Stieltjes integral ``int f(s, z) dX(s)`` is
    the ordinary integral of ``f(s, z) dX/ds`` (Kidger et al. 2020 {cite}`kidger2020neural`, eq. 4). ``func(t, z)``
    returns a matrix per state, shape ``(*z.shape, C)`` for a control with ``C`` channels.
    """

    def __init__(self, func: Callable[[Tensor, Tensor], Tensor], path: ControlPath):
        super().__init__()
        if not hasattr(path, "derivative"):
            raise TypeError(f"path must be an interpolation with a .derivative(t) method, got {type(path).__name__}")
        self.func = func
        self.path = path

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        fz = self.func(t, z)
        dx = self.path.derivative(t).to(fz.dtype)
        if fz.dim() < 2 or fz.shape[-1] != dx.shape[-1] or fz.shape[:-1] != z.shape:
            raise ValueError(
                f"the CDE field must map a state {tuple(z.shape)} to a matrix of shape {tuple(z.shape)} + "
                f"({dx.shape[-1]},) (state x control channels), got {tuple(fz.shape)}"
            )
        return torch.matmul(fz, dx.unsqueeze(-1)).squeeze(-1)


def cdeint(
    path: ControlPath,
    func: Callable[[Tensor, Tensor], Tensor],
    z0: Tensor,
    t: Tensor,
    method: str = "rk4",
    rtol: float = 1e-3,
    atol: float = 1e-4,
    options: dict[str, Any] | None = None,
) -> Tensor:
    r"""Solve the CDE ``z(t) = z(t_0) + int_{t_0}^{t} f(s, z(s)) dX(s)`` {cite}`kidger2020neural` (eq. 4).

    The CDE is solved as the ODE ``dz/dt = f(t, z(t)) dX/dt(t)`` (:class:`ControlledField`) with
    :func:`dedl.solvers.odeint`, as Kidger et al. do (Sec. 3.2), and the control's knots are handed to the
    solver, as diffrax hands a control's ``jump_ts`` to its step-size controller {cite}`kidger2021on` (Sec. 3.1):

    * where ``dX/dt`` jumps (a :class:`~dedl.interpolation.LinearInterpolation`) as ``options["jump_t"]``: every
      step ends on a knot and reads the left limit of ``dX/dt`` there, the next step starts from the right limit,
      so each step integrates one polynomial piece and every Runge-Kutta method keeps its order;
    * where only a higher derivative jumps (a :class:`~dedl.interpolation.NaturalCubicSpline`) as
      ``options["step_t"]``: steps end on the knots, with no restart (the derivative is continuous there).

    Knots the caller lists in ``options`` are kept. ``func(t, z)`` returns a matrix per state: shape
    ``(*z.shape, C)`` for a control with ``C`` channels. Returns ``z`` at every time of ``t``, shape
    ``(len(t), *z0.shape)``. ``method``, ``rtol``, ``atol`` and ``options`` go to the solver; the default
    ``"rk4"`` without a step size takes one step between consecutive knots or times of ``t``.
    """
    field = ControlledField(func, path)
    options = dict(options or {})
    knots = getattr(path, "grid_points", None)
    if knots is not None:
        key = "step_t" if getattr(path, "continuous_derivative", False) else "jump_t"
        given = options.get(key)
        given = [] if given is None else torch.as_tensor(given, dtype=torch.float64).tolist()
        options[key] = [*given, *knots.tolist()]
    return odeint(field, z0, t, method=method, rtol=rtol, atol=atol, options=options)
