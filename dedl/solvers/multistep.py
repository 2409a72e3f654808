r"""Linear multistep methods: explicit Adams-Bashforth of orders 2, 3 and 4.

An Adams-Bashforth method of order :math:`k` reuses the last :math:`k` slopes instead of new stages:

.. math:: y_{n+1} = y_n + h \sum_{j=0}^{k-1} \beta_j\, f(t_{n-j}, y_{n-j}),

where :math:`\beta_j = \frac1h\int_{t_n}^{t_{n+1}} \ell_j(s)\,ds` integrates the Lagrange polynomial through
the past slopes {cite}`hairer1993solving` (Sec. III.1). One evaluation of ``f`` per step, whatever the order.
The first :math:`k-1` steps have no history; they are taken with the classical RK4. This is the lens through
which Part II reads the linear multistep ResNet (LM-ResNet). Importing this module registers
``adams_bashforth2/3/4`` in :data:`dedl.solvers.ode.METHODS`.

Depends on torch alone.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
from torch import Tensor

from dedl.solvers.ode import RK4, Func, Method, Segment, _check_output, _fixed_grid, _fixed_steps, _rk_combine
from dedl.solvers.ode import _MULTISTEP_OPTIONS, _rk_stages, _stage_times, register_method

__all__ = ["ADAMS_BASHFORTH", "adams_bashforth_coefficients", "adams_bashforth_weights", "adams_bashforth_step"]

#: The weights :math:`\beta_0, \dots, \beta_{k-1}` of the k-step Adams-Bashforth method on a uniform grid,
#: by order k {cite}`hairer1993solving` (Table III.1.1).
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def adams_bashforth_coefficients(order: int) -> tuple[float, ...]:
    r"""The uniform-grid weights :math:`\beta_0, \dots, \beta_{k-1}` of the order-``k`` Adams-Bashforth method
    (Hairer et al. 1993, Sec. III.1), ``beta_0`` multiplying the newest slope :math:`f_n`."""
    if order not in ADAMS_BASHFORTH:
        raise ValueError(f"Adams-Bashforth order must be one of {sorted(ADAMS_BASHFORTH)}, got {order!r}")
    return ADAMS_BASHFORTH[order]


def adams_bashforth_weights(times: Sequence[float], t_next: float) -> list[float]:
    r"""Variable-step Adams-Bashforth weights.

    ``times = [t_n, t_{n-1}, ..., t_{n-k+1}]`` are the nodes of the past slopes; the result
    :math:`\beta_j = \frac1h \int_{t_n}^{t_{n+1}} \ell_j(s)\, ds` (with :math:`h = t_{n+1} - t_n`) makes
    :math:`y_{n+1} = y_n + h\sum_j \beta_j f_{n-j}` exact for polynomial slopes of degree :math:`< k`
    (Hairer et al. 1993, eq. III.5.3). On a uniform grid this reproduces :func:`adams_bashforth_coefficients`.
    """
    h = t_next - times[0]
    if h == 0:
        raise ValueError("t_next must differ from times[0]")
    x = [(tj - times[0]) / h for tj in times]  # nodes in units of h; the step is [0, 1]
    weights = []
    for j, xj in enumerate(x):
        poly = [1.0]  # coefficients of l_j(x), lowest degree first
        for m, xm in enumerate(x):
            if m == j:
                continue
            denom = xj - xm
            if denom == 0:
                raise ValueError("the nodes of an Adams-Bashforth step must be distinct")
            new = [0.0] * (len(poly) + 1)
            for p, cp in enumerate(poly):  # poly * (x - xm) / denom
                new[p + 1] += cp / denom
                new[p] -= cp * xm / denom
            poly = new
        weights.append(sum(cp / (p + 1) for p, cp in enumerate(poly)))
    return weights


def adams_bashforth_step(y: Tensor, slopes: Sequence[Tensor], h: float, coefficients: Sequence[float]) -> Tensor:
    r"""One Adams-Bashforth step :math:`y + h\sum_j \beta_j f_{n-j}` with ``slopes = [f_n, f_{n-1}, ...]``."""
    if len(slopes) != len(coefficients):
        raise ValueError(f"need {len(coefficients)} slopes for these coefficients, got {len(slopes)}")
    out = torch.add(y, slopes[0], alpha=h * coefficients[0])
    for f, beta in zip(slopes[1:], coefficients[1:]):
        out.add_(f, alpha=h * beta)
    return out


def _adams_bashforth_fixed(func: Func, y0: Tensor, grid: list[Segment], order: int) -> Tensor:
    """Adams-Bashforth of ``order`` (started by RK4) on the fixed ``grid``; the states at its output times.

    Evaluations: ``4`` per RK4 start-up step (the first ``order - 1`` steps), then ``1`` per step, so
    ``N + 3 (order - 1)`` for ``N >= order - 1`` steps. Where the steps are not all equal (an output
    interval that ``step_size`` does not divide, or a non-uniform ``t``) the weights are recomputed from
    the actual nodes (:func:`adams_bashforth_weights`), which keeps the order. At a ``jump_t`` the history
    is dropped and the method starts again with RK4: slopes from before a jump in the field would
    interpolate across it."""
    uniform = adams_bashforth_coefficients(order)
    out = [y0]
    y = y0
    slopes: list[Tensor] = []  # f_n, f_{n-1}, ... newest first
    nodes: list[float] = []  # t_n, t_{n-1}, ...
    steps_h: list[float] = []  # h_n, h_{n-1}, ...
    for n, (tn, t_next, h, lands, jump0, jump1) in enumerate(_fixed_steps(grid)):
        if jump0:
            slopes, nodes, steps_h = [], [], []
        times = _stage_times(RK4.c, [(tn, t_next, h, jump0, jump1)], y0.dtype, y0.device)
        f = func(times[0], y)
        if n == 0:
            _check_output(f, y0)
        slopes.insert(0, f)
        nodes.insert(0, tn)
        steps_h.insert(0, h)
        del slopes[order:], nodes[order:], steps_h[order:]
        if len(slopes) < order:  # start-up (or restart after a jump) with RK4, its first stage known
            y = _rk_combine(y, _rk_stages(func, y, h, RK4.a_nonzero, times, [f])[0], h, RK4.b_nonzero)
        else:
            if all(abs(hj - h) <= 1e-12 * abs(h) for hj in steps_h[1:]):
                beta = uniform
            else:
                beta = adams_bashforth_weights(nodes, tn + h)
            y = adams_bashforth_step(y, slopes, h, beta)
        if lands:
            out.append(y)
    return torch.stack(out)


class _Counter:
    """Counts evaluations for the ``stats`` option."""

    def __init__(self, func: Func):
        self.func = func
        self.nfe = 0

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.func(t, y)


def _solve_adams_bashforth(
    func: Func, y0: Tensor, t_list: list[float], rtol: Any, atol: Any, options: dict, *, order: int
) -> Tensor:
    """The registry's solve for ``adams_bashforth{order}`` (tolerances unused: a fixed-step method)."""
    counted = _Counter(func)
    solution = _adams_bashforth_fixed(counted, y0, _fixed_grid(t_list, options), order)
    if options.get("stats") is not None:
        options["stats"].update(nfe=counted.nfe)
    return solution


for _order in (2, 3, 4):
    register_method(
        Method(f"adams_bashforth{_order}", _MULTISTEP_OPTIONS, partial(_solve_adams_bashforth, order=_order))
    )
