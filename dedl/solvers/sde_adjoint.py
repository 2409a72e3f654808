r"""Gradients through an SDE solve by the stochastic adjoint, with memory independent of the number of steps.

For :math:`dY = f(t, Y, \theta)\,dt + g(t, Y, \theta) \circ dW` (Stratonovich) on a fixed Brownian path and a loss
:math:`L` of the solution at :math:`t_0 < \dots < t_N`, the adjoint :math:`a(t) = \partial L / \partial Y_t` and
the parameter adjoint :math:`a_\theta` solve, backward in time and on the same Brownian path
{cite}`li2020scalable` (Sec. 3),

.. math::

    dY = f\,dt + g \circ dW, \qquad
    da = -a^\top \frac{\partial f}{\partial y}\,dt - a^\top \frac{\partial g}{\partial y} \circ dW, \qquad
    da_\theta = -a^\top \frac{\partial f}{\partial \theta}\,dt - a^\top \frac{\partial g}{\partial \theta} \circ dW,

from :math:`a(t_N) = \partial L / \partial Y_{t_N}`, :math:`a_\theta(t_N) = 0`, with :math:`a` jumping by
:math:`\partial L / \partial Y_{t_i}` at each observation time; :math:`Y` is re-integrated backward alongside
(restarted from the stored forward value at each observation time), so nothing from the forward solve is kept
but its outputs. The backward system is again a Stratonovich SDE driven by the same path, so it is solved by a
Stratonovich method (``midpoint`` or ``heun``): each stage needs :math:`f\,h + g\,\Delta W` and one
vector-Jacobian product of it, one call of :func:`torch.autograd.grad`. An Itô SDE is first written in
Stratonovich form, :math:`f - \tfrac12 \sum_j (\partial g_{\cdot j}/\partial y)\, g_{\cdot j}` for the drift
(diagonal and scalar noise; additive noise needs no correction), as torchsde does. These gradients are those of
the exact solution up to the backward solve's error, not of the forward computation: they converge to
backpropagation through the solver as ``dt`` shrinks.

With ``method="reversible_heun"`` and ``adjoint_method="reversible_heun"`` the backward pass is instead the exact
reverse of the discrete forward map {cite}`kidger2021efficient`: reversible Heun's step is
algebraically invertible, so the backward pass reconstructs every forward state :math:`(Y_n, Z_n)` from the
last one and backpropagates through one step at a time. Its gradients equal those of backpropagation through
:func:`~dedl.solvers.sdeint` up to floating point.

Depends on torch alone.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from dedl.solvers.adjoint import adjoint_parameters
from dedl.solvers.sde import (
    BACKENDS,
    BrownianPath,
    _as_float,
    _check_sde_types,
    _check_times,
    _check_y0,
    _default_method,
    _g_dg,
    _logqp_terms,
    _noise_size,
    _Terms,
    _torchsde,
    _torchsde_brownian,
    sdeint,
    step_grid,
)

__all__ = ["sdeint_adjoint", "ADJOINT_METHODS"]

#: The methods that solve the adjoint SDE backward (all Stratonovich). ``reversible_heun`` is the exact reverse of
#: a forward ``reversible_heun`` solve; torchsde calls it ``adjoint_reversible_heun``, which is accepted too.
ADJOINT_METHODS = ("midpoint", "heun", "reversible_heun")
_ALIASES = {"adjoint_reversible_heun": "reversible_heun"}

Fgp = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _vjp(outputs: Sequence[Tensor], inputs: Sequence[Tensor], cotangents: Sequence[Tensor]) -> list[Tensor]:
    """:math:`\\sum_k c_k^\\top \\partial o_k / \\partial x` for each input ``x``; zeros where nothing depends on it."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    grads: Sequence[Tensor | None] = (None,) * len(inputs)
    if pairs:
        grads = torch.autograd.grad([o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _stratonovich_f_and_g_prod(terms: _Terms, noise_type: str, sde_type: str) -> Fgp:
    """``(f, g v)`` of the SDE in Stratonovich form: for an Itô SDE the drift becomes :math:`f - \\tfrac12
    (\\partial g/\\partial y)\\, g` (built with a graph, so that the adjoint can differentiate it)."""
    if sde_type == "stratonovich" or noise_type == "additive":
        return terms.f_and_g_prod

    def f_and_g_prod(t: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        g, gdg = _g_dg(terms, t, y, noise_type, create_graph=True)
        return terms.f(t, y) - 0.5 * gdg, terms.prod(g, v)

    return f_and_g_prod


def _adjoint_increment(
    f_and_g_prod: Fgp, params: tuple[Tensor, ...], t: Tensor, y: Tensor, a: Tensor, h: float, dw: Tensor
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One stage of the backward system: :math:`k_y = f\\,h + g\\,\\Delta W` and
    :math:`(k_a, k_\\theta) = -a^\\top \\partial k_y / \\partial (y, \\theta)` (``h`` < 0, ``dw`` reversed)."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        f, gdw = f_and_g_prod(t, y, dw)
        k = torch.add(gdw, f, alpha=h)
        grads = _vjp([k], (y, *params), [a])
    return k.detach(), grads[0].neg_(), [g.neg_() for g in grads[1:]]


def _backward_step(
    method: str, f_and_g_prod: Fgp, params: tuple[Tensor, ...], t1: Tensor, t0: Tensor, y: Tensor, a: Tensor,
    h: float, dw: Tensor,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One step of the backward system from ``t1`` down to ``t0`` with the forward method's stages (midpoint or
    Heun, :func:`~dedl.solvers.sde.midpoint_step`, :func:`~dedl.solvers.sde.heun_step`, in increment form)."""
    if method == "midpoint":
        k_y, k_a, _ = _adjoint_increment(f_and_g_prod, (), t1, y, a, h, dw)
        k_y, k_a, k_p = _adjoint_increment(
            f_and_g_prod, params, (t0 + t1) * 0.5, y + 0.5 * k_y, a + 0.5 * k_a, h, dw
        )
        return y + k_y, a + k_a, k_p
    k1_y, k1_a, k1_p = _adjoint_increment(f_and_g_prod, params, t1, y, a, h, dw)
    k2_y, k2_a, k2_p = _adjoint_increment(f_and_g_prod, params, t0, y + k1_y, a + k1_a, h, dw)
    return y + 0.5 * (k1_y + k2_y), a + 0.5 * (k1_a + k2_a), [0.5 * (p + q) for p, q in zip(k1_p, k2_p)]


def _prod_adjoint(noise_type: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The cotangent of ``g`` in :math:`g\\,v` given the cotangent ``c`` of the product: :math:`c \\odot v`
    (diagonal), :math:`c\\,v^\\top` (scalar, additive, general)."""
    if noise_type == "diagonal":
        return torch.mul
    return lambda c, v: c.unsqueeze(-1) * v.unsqueeze(-2)


class _StepByStep:
    """A Brownian motion that :func:`~dedl.solvers.sdeint` queries one step at a time (it reads a
    :class:`~dedl.solvers.BrownianPath`'s increments for all steps at once otherwise), so that the forward solve
    holds one increment, not ``steps`` of them; the backward pass makes the same queries."""

    def __init__(self, bm: Callable[..., Any]):
        self.bm = bm
        for name in ("shape", "dtype", "device", "levy_area_approximation"):
            if hasattr(bm, name):
                setattr(self, name, getattr(bm, name))

    def __call__(self, ta: Tensor, tb: Tensor, **kwargs: Any) -> Any:
        return self.bm(ta, tb, **kwargs)


class _SdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, cfg: dict, y0: Tensor, *extra_and_params: Tensor
    ) -> tuple[Tensor, ...]:
        n_extra = cfg["n_extra"]
        extra0, params = extra_and_params[:n_extra], extra_and_params[n_extra:]
        with torch.no_grad():
            out = sdeint(
                cfg["sde"], y0.detach(), cfg["ts"], cfg["bm"], cfg["method"], cfg["dt"], options=cfg["options"],
                names=cfg["names"], logqp=cfg["logqp"], extra=True,
                extra_solver_state=tuple(x.detach() for x in extra0) or None,
            )
        ys, state = out[0], tuple(out[-1])
        if cfg["logqp"]:  # the log-ratio as the extra state component it is inside the solve
            log_ratio = torch.cat([ys.new_zeros(1, ys.shape[1]), out[1].cumsum(0)])
            ys = torch.cat([ys, log_ratio.unsqueeze(-1)], -1)
        ctx.cfg = cfg
        ctx.save_for_backward(ys, *(state if cfg["reversible"] else ()), *params)
        if not cfg["reversible"]:
            ctx.mark_non_differentiable(*state)
        return (ys, *state)

    @staticmethod
    def backward(ctx: Any, grad_ys: Tensor, *grad_state: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # autograd runs a backward pass with grad enabled only under create_graph=True
            raise RuntimeError(
                "sdeint_adjoint does not support double backward (create_graph=True): the adjoint SDE is solved "
                "without recording a graph. Use sdeint (backpropagation through the solver) for higher derivatives"
            )
        cfg = ctx.cfg
        ys, *rest = ctx.saved_tensors
        state = tuple(rest[:3]) if cfg["reversible"] else ()
        params = tuple(rest[3:] if cfg["reversible"] else rest)
        grid, obs, times, increment = cfg["grid"], cfg["obs"], cfg["times"], cfg["increment"]
        if cfg["reversible"]:
            a_y, a_p, grad_extra = _reversible_backward(cfg, ys, state, grad_ys, grad_state, params)
        else:
            f_and_g_prod = cfg["stratonovich"]
            a_y = grad_ys[-1].clone()
            a_p = [torch.zeros_like(p) for p in params]
            for k in range(len(obs) - 1, 0, -1):
                y = ys[k]
                for j in range(obs[k] - 1, obs[k - 1] - 1, -1):
                    h = grid[j + 1] - grid[j]
                    y, a_y, k_p = _backward_step(
                        cfg["adjoint_method"], f_and_g_prod, params, times[j + 1], times[j], y, a_y, -h,
                        -increment(j),
                    )
                    for acc, dp in zip(a_p, k_p):
                        acc.add_(dp)
                a_y = a_y + grad_ys[k - 1]
            grad_extra = (None,) * cfg["n_extra"]
        d = cfg["d"]
        return (None, a_y[:, :d], *grad_extra, *a_p)


def _reversible_backward(
    cfg: dict, ys: Tensor, state: tuple[Tensor, ...], grad_ys: Tensor, grad_state: tuple[Tensor, ...],
    params: tuple[Tensor, ...],
) -> tuple[Tensor, list[Tensor], tuple[Tensor | None, ...]]:
    """Backpropagation through reversible Heun, one step at a time, on states reconstructed backward
    {cite}`kidger2021efficient`.

    The forward step (:func:`~dedl.solvers.sde.reversible_heun_step`) maps :math:`(Y_n, f_n, g_n, Z_n)` to
    :math:`Z_{n+1} = 2Y_n - Z_n + f_n h + g_n \\Delta W`, :math:`(f_{n+1}, g_{n+1}) = (f, g)(t_{n+1}, Z_{n+1})`,
    :math:`Y_{n+1} = Y_n + \\tfrac12(f_n + f_{n+1})h + \\tfrac12(g_n + g_{n+1})\\Delta W`. It inverts exactly:
    :math:`Z_n = 2Y_{n+1} - Z_{n+1} - f_{n+1} h - g_{n+1}\\Delta W`, then :math:`(f_n, g_n)` from :math:`Z_n`,
    then :math:`Y_n`. The cotangents of the four state parts go back through the step's three lines in reverse.
    """
    terms, times, grid, obs, increment = cfg["terms"], cfg["times"], cfg["grid"], cfg["obs"], cfg["increment"]
    prod, prod_adj = terms.prod, _prod_adjoint(cfg["noise_type"])
    a_p = [torch.zeros_like(p) for p in params]

    def f_and_g(t: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return (z, *terms.f_and_g(t, z))

    f_n, g_n, z_n = state
    z1, f1, g1 = f_and_g(times[-1], z_n)
    y1 = ys[-1]
    a_y = grad_ys[-1].clone()
    a_f, a_g, a_z = (torch.zeros_like(x) if c is None else c for c, x in zip(grad_state, (f_n, g_n, z_n)))
    for k in range(len(obs) - 1, 0, -1):
        for j in range(obs[k] - 1, obs[k - 1] - 1, -1):
            h, dw = grid[j + 1] - grid[j], increment(j)
            # through (f1, g1) = F(t_{j+1}, Z_{j+1}) and the Y update's use of them
            a_f1 = a_f.add(a_y, alpha=0.5 * h)
            a_g1 = a_g + prod_adj(a_y, 0.5 * dw)
            with torch.enable_grad():
                v_z, *v_p = _vjp([f1, g1], (z1, *params), [a_f1, a_g1])
            for acc, dp in zip(a_p, v_p):
                acc.add_(dp)
            a_z1 = a_z + v_z
            # through Z_{j+1} = 2 Y_j - Z_j + f_j h + g_j dW and Y_{j+1} = Y_j + (f_j h + g_j dW) / 2 + ...
            a_f = torch.add(a_y, a_z1, alpha=2.0).mul_(0.5 * h)
            a_g = prod_adj(a_y, 0.5 * dw) + prod_adj(a_z1, dw)
            a_y = a_y + 2.0 * a_z1
            a_z = -a_z1
            # reconstruct the state at t_j
            f1d, g1d = f1.detach(), g1.detach()
            z0 = (2.0 * y1 - z1.detach()).add_(f1d, alpha=-h).sub_(prod(g1d, dw))
            z1, f0, g0 = f_and_g(times[j], z0)
            y1 = torch.add(y1, f0.detach() + f1d, alpha=-0.5 * h).sub_(prod(g0.detach() + g1d, dw), alpha=0.5)
            f1, g1 = f0, g0
        y1 = ys[k - 1]
        a_y = a_y + grad_ys[k - 1]
    if cfg["n_extra"]:  # the initial state was given: its cotangents are its gradients
        return a_y, a_p, (a_f, a_g, a_z)
    # the initial state was (f, g)(t_0, y_0), y_0: one more vector-Jacobian product, at the reconstructed Z_0
    with torch.enable_grad():
        v_z, *v_p = _vjp([f1, g1], (z1, *params), [a_f, a_g])
    for acc, dp in zip(a_p, v_p):
        acc.add_(dp)
    return a_y + a_z + v_z, a_p, ()


def sdeint_adjoint(
    sde: Any,
    y0: Tensor,
    ts: Tensor | Sequence[float],
    bm: Callable[..., Tensor] | None = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float = 1e-5,
    adjoint_rtol: float = 1e-5,
    atol: float = 1e-4,
    adjoint_atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[Tensor] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple[Tensor, ...] | None = None,
    backend: str = "dedl",
    *,
    seed: int | None = None,
) -> Tensor | tuple[Tensor, ...]:
    r""":func:`~dedl.solvers.sdeint` whose backward pass solves the adjoint SDE on the same Brownian path
    {cite}`li2020scalable`, like ``torchsde.sdeint_adjoint``.

    torchsde's arguments in torchsde's order, shapes and return values; the forward solve is
    :func:`~dedl.solvers.sdeint` with the same arguments, run without recording a graph. The backward pass solves
    the adjoint SDE (module docstring; {cite}`li2020scalable`, Sec. 3) from ``ts[-1]`` to ``ts[0]`` on the
    same step grid, with the increments of the same Brownian path reversed, adding ``dL/dy(ts[i])`` to the
    adjoint at each output time. No graph is kept across steps: the memory of the backward pass does not grow
    with the number of steps (the outputs at ``ts``, and a Brownian path that ``bm=None`` stores, do).

    * ``adjoint_method="midpoint"`` (default) or ``"heun"``: the continuous adjoint. Its gradients converge to
      those of backpropagation through ``sdeint`` as ``dt`` shrinks (not equal at a fixed ``dt``).
    * ``method="reversible_heun"`` with ``adjoint_method="reversible_heun"`` (torchsde's name
      ``"adjoint_reversible_heun"`` is accepted; the default for this method): the exact reverse of the forward
      computation {cite}`kidger2021efficient`; gradients equal backpropagation through ``sdeint`` up to floating
      point, and flow to ``extra_solver_state`` and from the ``extra`` outputs too.

    Itô SDEs are solved forward as they are (``euler``, ``milstein``, ``srk``) and backward in Stratonovich form
    (diagonal, scalar and additive noise; general Itô noise raises). Where dedl differs from torchsde:
    ``adaptive`` and ``adjoint_adaptive`` raise ``NotImplementedError``; Itô adjoint methods (torchsde's default
    ``milstein`` / ``euler`` for Itô SDEs) raise ``ValueError`` (the backward pass is always Stratonovich);
    ``adjoint_params=None`` for an ``sde`` that is not an ``nn.Module`` raises ``TypeError`` (as
    :func:`~dedl.solvers.odeint_adjoint`); double backward raises ``RuntimeError``; no gradient flows to ``ts``
    (``ts`` that requires grad raises ``ValueError``, as in torchsde).

    Args:
        sde, y0, ts, method, dt, options, names, logqp, extra, extra_solver_state: as for
            :func:`~dedl.solvers.sdeint`.
        bm: a Brownian motion that answers the same query with the same increment: a
            :class:`~dedl.solvers.BrownianPath`, ``torchsde.BrownianInterval`` / ``BrownianTree``. The backward
            pass queries it again, step by step, backward. ``None`` draws a :class:`~dedl.solvers.BrownianPath`
            with cells of width ``dt`` from ``seed`` (stored: ``steps * batch * m`` numbers).
        adjoint_method: ``"midpoint"``, ``"heun"`` or ``"reversible_heun"`` (see above); default
            ``"reversible_heun"`` when ``method="reversible_heun"``, else ``"midpoint"``.
        adaptive, adjoint_adaptive, rtol, adjoint_rtol, atol, adjoint_atol, dt_min: torchsde's adaptive
            stepping; ``True`` raises under ``backend="dedl"``.
        adjoint_options: options of the backward solve; the backward methods take none (``{}`` or None).
        adjoint_params: the tensors to differentiate with respect to (default: ``sde.parameters()``); only
            those with ``requires_grad`` receive gradients.
        backend: ``"dedl"``, or ``"torchsde"`` to hand the call to ``torchsde.sdeint_adjoint`` (with ``seed``
            and no ``bm``, on a ``BrownianInterval`` with ``entropy=seed``, as :func:`~dedl.solvers.sdeint`).
        seed: seed of the Brownian path drawn when ``bm`` is None (an error if ``bm`` is given).

    Returns:
        As :func:`~dedl.solvers.sdeint`: the solution at ``ts`` ``(len(ts), batch, d)``; with ``logqp`` also the
        log-ratio ``(len(ts) - 1, batch)``; with ``extra`` also the solver state.

    Raises:
        ValueError: what :func:`~dedl.solvers.sdeint` rejects; an unknown or Itô ``adjoint_method``;
            ``adjoint_method="reversible_heun"`` without ``method="reversible_heun"``; an Itô SDE with general
            noise; unknown ``adjoint_options``; ``ts`` that requires grad.
        TypeError: ``adjoint_params`` None and ``sde`` not an ``nn.Module``; what ``sdeint`` rejects.
        NotImplementedError: ``adaptive`` or ``adjoint_adaptive`` with ``backend="dedl"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    params = adjoint_parameters("sdeint_adjoint", sde, adjoint_params, "y0")
    if isinstance(ts, Tensor) and ts.requires_grad:
        raise ValueError("sdeint_adjoint gives no gradient with respect to ts; pass ts without requires_grad")
    noise_type, sde_type = _check_sde_types(sde)
    terms = _Terms.of(sde, noise_type, names)
    _check_y0(y0)
    times_list, t_dtype = _check_times(ts, y0)
    if seed is not None and bm is not None:
        raise ValueError("seed sets the Brownian path that sdeint_adjoint draws itself; it cannot be combined with bm")

    if backend == "torchsde":
        if bm is None and seed is not None:
            bm = _torchsde_brownian(terms, noise_type, times_list, t_dtype, y0, seed, method, logqp)
        if adjoint_method == "reversible_heun":
            adjoint_method = "adjoint_reversible_heun"
        return _torchsde().sdeint_adjoint(
            sde, y0, ts, bm, method, adjoint_method, dt, adaptive, adjoint_adaptive, rtol, adjoint_rtol, atol,
            adjoint_atol, dt_min, options, adjoint_options, params, names, logqp, extra, extra_solver_state,
        )

    if adaptive or adjoint_adaptive:
        raise NotImplementedError(
            "adaptive / adjoint_adaptive: dedl's sdeint_adjoint steps with a fixed dt only; drop them (and set dt), "
            "or use backend='torchsde'"
        )
    method = _default_method(sde_type, noise_type) if method is None else method
    adjoint_method = "reversible_heun" if adjoint_method is None and method == "reversible_heun" else adjoint_method
    adjoint_method = _ALIASES.get(adjoint_method, adjoint_method or "midpoint")
    if adjoint_method not in ADJOINT_METHODS:
        raise ValueError(
            f"adjoint_method {adjoint_method!r}: the adjoint SDE is solved in Stratonovich form, by one of "
            f"{ADJOINT_METHODS} (torchsde's Itô adjoint methods euler / milstein are not offered)"
        )
    reversible = adjoint_method == "reversible_heun"
    if reversible and method != "reversible_heun":
        raise ValueError(
            "adjoint_method='reversible_heun' reverses a forward reversible Heun solve: it needs "
            f"method='reversible_heun', got method={method!r}; use adjoint_method='midpoint' or 'heun'"
        )
    if sde_type == "ito" and noise_type == "general":
        raise ValueError(
            "sdeint_adjoint solves the adjoint of an Itô SDE in Stratonovich form, which dedl supports for "
            "diagonal, scalar and additive noise; write the general-noise SDE in Stratonovich form "
            "(drift f - (1/2) sum_j (dg_j/dy) g_j) and use a Stratonovich method"
        )
    if adjoint_options:
        raise ValueError(f"unknown adjoint_options {sorted(adjoint_options)}; the backward methods take none")

    dt = _as_float(dt)
    if not dt > 0 or not math.isfinite(dt):
        raise ValueError(f"dt must be a positive finite step size, got {dt}")
    d = y0.shape[1]
    if bm is None:
        m = _noise_size(terms, noise_type, torch.tensor(times_list[0], dtype=t_dtype), y0, None)
        bm = BrownianPath(
            times_list[0], times_list[-1], (y0.shape[0], m), dt=dt, seed=seed, dtype=y0.dtype, device=y0.device,
            levy_area_approximation="space-time" if method == "srk" else "none",
        )
    aug_terms = _logqp_terms(terms, noise_type) if logqp else terms
    grid, obs = step_grid(times_list, dt)
    times = torch.tensor(grid, dtype=torch.float64).to(dtype=t_dtype, device=y0.device).unbind(0)
    # the log-ratio's extra state meets a padded zero column of the increments for diagonal noise (as in sdeint)
    pad = logqp and noise_type == "diagonal" and getattr(bm, "shape", None) != (y0.shape[0], d + 1)

    def increment(j: int) -> Tensor:
        dw = bm(times[j], times[j + 1])
        return torch.cat([dw, dw.new_zeros(dw.shape[0], 1)], 1) if pad else dw

    extra_in = tuple(extra_solver_state or ())
    if not reversible:  # handed to sdeint as it is, without gradients
        extra_in = tuple(x.detach() for x in extra_in)
    cfg = dict(
        sde=sde, ts=ts, bm=_StepByStep(bm) if callable(bm) else bm, method=method, dt=dt, options=options,
        names=names, logqp=logqp, n_extra=len(extra_in), reversible=reversible, adjoint_method=adjoint_method,
        d=d, terms=aug_terms, noise_type=noise_type, grid=grid, obs=obs, times=times, increment=increment,
        stratonovich=_stratonovich_f_and_g_prod(aug_terms, noise_type, sde_type),
    )
    ys, *state = _SdeintAdjoint.apply(cfg, y0, *extra_in, *params)
    results: tuple[Any, ...] = (ys,)
    if logqp:
        results = (ys[..., :d], ys[1:, :, d] - ys[:-1, :, d])
    if extra:
        results = (*results, tuple(state))
    return results[0] if len(results) == 1 else results
