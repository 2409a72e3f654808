r"""Gradients through an ODE solve by the adjoint method, with memory independent of the number of steps.

For :math:`y' = f(t, y, \theta)` and a loss :math:`L` of the solution at the times :math:`t_0..t_N`,
the adjoint :math:`a(t) = \partial L / \partial y(t)` solves, backward in time
{cite}`pontryagin1962mathematical,chen2018neural`,

.. math::

    \dot a = -a^\top \frac{\partial f}{\partial y}, \qquad
    \dot a_\theta = -a^\top \frac{\partial f}{\partial \theta}, \qquad a_\theta(t_N) = 0,

jumping by :math:`\partial L / \partial y(t_i)` at each observation time. The state :math:`y` is
re-integrated backward alongside, so nothing from the forward solve is stored but the outputs:
``dL/dy0 = a(t_0)`` and ``dL/dθ = a_θ(t_0)``. The vector-Jacobian products come from one call of
:func:`torch.autograd.grad` per evaluation.

Depends on torch alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dedl.solvers.ode import BACKENDS, ButcherTableau, Func, _check_options, _check_tol, _check_y0_t, _resolve_method
from dedl.solvers.ode import _flat_state, _solve, _torchdiffeq_call, _unflatten, rms_norm

__all__ = ["odeint_adjoint"]


class _AugmentedDynamics:
    r"""The right-hand side of the backward system ``[y, a, a_θ]`` flattened into one vector."""

    def __init__(self, func: Func, params: tuple[Tensor, ...], shape: torch.Size):
        self.func = func
        self.params = params
        self.shape = shape
        self.n = shape.numel()
        self.param_numels = [p.numel() for p in params]

    def __call__(self, t: Tensor, state: Tensor) -> Tensor:
        n = self.n
        y = state[:n].view(self.shape)
        a = state[n : 2 * n].view(self.shape)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            fy = self.func(t, y)
            if fy.requires_grad:
                grads = torch.autograd.grad(fy, (y, *self.params), -a, allow_unused=True)
            else:  # f depends on neither y nor the parameters
                grads = (None,) * (1 + len(self.params))
        parts = [fy.detach().reshape(-1), grads[0].reshape(-1) if grads[0] is not None else torch.zeros_like(a).reshape(-1)]
        for g, p in zip(grads[1:], self.params):
            parts.append(torch.zeros(p.numel(), dtype=state.dtype, device=state.device) if g is None else g.reshape(-1).to(state.dtype))
        return torch.cat(parts)


class _OdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, config: dict, y0: Tensor, t: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        with torch.no_grad():
            ys = _solve(config["func"], y0, t, config["method"], config["rtol"], config["atol"], config["options"])
        ctx.config = config
        ctx.save_for_backward(t, ys, *params)
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # autograd runs a backward pass with grad enabled only under create_graph=True
            raise RuntimeError(
                "odeint_adjoint does not support double backward (create_graph=True): the adjoint ODE is solved "
                "without recording a graph, so second derivatives would silently be zero. Use odeint "
                "(backpropagation through the solver) for Hessian-vector products and other higher derivatives"
            )
        config = ctx.config
        func = config["func"]
        t, ys, *params = ctx.saved_tensors
        params = tuple(params)
        shape = ys.shape[1:]
        n = shape.numel()
        adjoint_options = dict(config["adjoint_options"])
        if adjoint_options.get("norm") == "seminorm":  # the error of [y, a] only, not of a_theta
            adjoint_options["norm"] = lambda err: rms_norm(err[: 2 * n])
        aug = _AugmentedDynamics(func, params, shape)
        a = grad_ys[-1].reshape(-1).clone()
        a_theta = torch.zeros(sum(aug.param_numels), dtype=ys.dtype, device=ys.device)
        need_t = ctx.needs_input_grad[2]
        t_grad = torch.zeros_like(t) if need_t else None
        for i in range(len(t) - 1, 0, -1):
            if need_t:  # dL/dt_i = <dL/dy(t_i), f(t_i, y(t_i))>
                with torch.no_grad():
                    t_grad[i] = (grad_ys[i].reshape(-1) * func(t[i].to(ys.dtype), ys[i]).reshape(-1)).sum()
            # restart y from the stored forward value at every observation time
            state = torch.cat([ys[i].reshape(-1), a, a_theta])
            span = torch.stack([t[i], t[i - 1]])
            with torch.no_grad():
                state = _solve(aug, state, span, config["adjoint_method"], config["adjoint_rtol"],
                               config["adjoint_atol"], adjoint_options)[-1]
            a = state[n : 2 * n] + grad_ys[i - 1].reshape(-1)
            a_theta = state[2 * n :]
        if need_t:  # dL/dt_0 = -<a(t_0^+), f(t_0, y_0)>: moving t_0 shifts the whole trajectory
            with torch.no_grad():
                a_plus = a - grad_ys[0].reshape(-1)
                t_grad[0] = -(a_plus * func(t[0].to(ys.dtype), ys[0]).reshape(-1)).sum()
        param_grads = []
        offset = 0
        for p, numel in zip(params, aug.param_numels):
            param_grads.append(a_theta[offset : offset + numel].view_as(p).to(p.dtype))
            offset += numel
        return (None, a.view(shape), t_grad, *param_grads)


def adjoint_parameters(
    caller: str, owner: Any, adjoint_params: Sequence[Tensor] | None, inputs: str
) -> tuple[Tensor, ...]:
    """The parameters an adjoint solve differentiates: ``adjoint_params`` if given, else those of ``owner`` (the
    vector field or the SDE), which must then be an ``nn.Module``, as in torchdiffeq and torchsde; only tensors
    that require grad are kept. Shared by :func:`odeint_adjoint` and :func:`~dedl.solvers.sdeint_adjoint`."""
    if adjoint_params is None:
        if not isinstance(owner, nn.Module):
            raise TypeError(
                f"{caller} needs {'func' if caller == 'odeint_adjoint' else 'sde'} to be an nn.Module (to find its "
                f"parameters) or adjoint_params= given explicitly (adjoint_params=() for gradients with respect to "
                f"{inputs} only)"
            )
        adjoint_params = tuple(owner.parameters())
    return tuple(p for p in adjoint_params if isinstance(p, Tensor) and p.requires_grad)


def odeint_adjoint(
    func: Func,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor | Sequence[float],
    method: str | ButcherTableau = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    adjoint_params: Sequence[Tensor] | None = None,
    adjoint_method: str | ButcherTableau | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_options: dict | None = None,
    backend: str = "dedl",
) -> Tensor | tuple[Tensor, ...]:
    r""":func:`~dedl.solvers.odeint` whose backward pass solves the adjoint ODE {cite}`chen2018neural`.

    The forward solve runs without recording a graph; the backward pass integrates the augmented state
    :math:`[y, a, a_\theta]` from ``t[-1]`` back to ``t[0]`` (Pontryagin's adjoint equations
    {cite}`pontryagin1962mathematical`, see the module docstring), adding ``dL/dy(t_i)`` to :math:`a` at
    each output time and restarting :math:`y` there from the stored forward value. Memory therefore
    grows with ``len(t)`` but not with the number of solver steps. The gradients are those of the exact
    flow up to the backward solve's tolerance, not of the discrete forward computation
    {cite}`gholami2019anode`.

    Args:
        func: the vector field ``func(t, y)``; an ``nn.Module`` unless ``adjoint_params`` is given.
        y0, t, method, rtol, atol, options: as for :func:`~dedl.solvers.odeint` (a tuple ``y0`` included).
        adjoint_params: the tensors to differentiate with respect to (default: ``func.parameters()``);
            only those with ``requires_grad`` receive gradients.
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options: settings of the backward solve
            (default: those of the forward solve). ``adjoint_options={"norm": "seminorm"}`` measures the
            backward step's error on :math:`[y, a]` only, not on the parameter adjoint :math:`a_\theta`, which
            is an integral that feeds back into nothing: Kidger, Chen and Lyons {cite}`kidger2021hey` (Sec. 3)
            show that this takes fewer backward steps at the same gradient accuracy. A callable ``norm`` gets the
            scaled error of the flat augmented state ``[y, a, a_theta]``.
        backend: ``"dedl"`` or ``"torchdiffeq"`` (:func:`torchdiffeq.odeint_adjoint`).

    Gradients flow to ``y0``, to the parameters and to ``t`` (all times;
    :math:`\mathrm{d}L/\mathrm{d}t_i = \langle \partial L/\partial y(t_i), f(t_i, y_i)\rangle` for
    :math:`i \ge 1` and :math:`\mathrm{d}L/\mathrm{d}t_0 = -\langle a(t_0^+), f(t_0, y_0)\rangle`).
    Double backward (``create_graph=True``) raises ``RuntimeError``: the backward solve records no graph;
    :func:`~dedl.solvers.odeint` supports it.

    Returns:
        The solution at every time of ``t``, shape ``(len(t), *y0.shape)``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are {', '.join(map(repr, BACKENDS))}")
    params = adjoint_parameters("odeint_adjoint", func, adjoint_params, "y0 and t")
    if backend == "torchdiffeq":
        extra = dict(adjoint_params=params)
        for key, value in (("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol),
                           ("adjoint_options", adjoint_options)):
            if value is not None:
                extra[key] = value
        if adjoint_method is not None:
            from dedl.solvers.ode import _TORCHDIFFEQ_NAMES

            extra["adjoint_method"] = _TORCHDIFFEQ_NAMES.get(adjoint_method, adjoint_method)
        return _torchdiffeq_call("odeint_adjoint", func, y0, t, method, rtol, atol, options, **extra)
    func, y0, shapes = _flat_state(func, y0)
    t_in = t
    y0, t = _check_y0_t(func, y0, t)
    if isinstance(t_in, Tensor) and t_in.requires_grad:
        t = t_in.to(y0.device)  # keep the graph to t: the adjoint supplies dL/dt
    method = _resolve_method(method)
    adjoint_method = method if adjoint_method is None else _resolve_method(adjoint_method)
    _check_tol("rtol", rtol)
    _check_tol("atol", atol)
    config = dict(
        func=func,
        method=method,
        rtol=rtol,
        atol=atol,
        options=options,
        adjoint_method=adjoint_method,
        adjoint_rtol=rtol if adjoint_rtol is None else adjoint_rtol,
        adjoint_atol=atol if adjoint_atol is None else adjoint_atol,
        adjoint_options=(
            {k: v for k, v in (options or {}).items() if k != "stats"} if adjoint_options is None else adjoint_options
        ),
    )
    _check_tol("adjoint_rtol", config["adjoint_rtol"])
    _check_tol("adjoint_atol", config["adjoint_atol"])
    checked = {k: v for k, v in config["adjoint_options"].items() if not (k == "norm" and v == "seminorm")}
    _check_options(checked, adjoint_method.options, adjoint_method.name)  # now, not at the first backward pass
    solution = _OdeintAdjoint.apply(config, y0, t, *params)
    return solution if shapes is None else _unflatten(solution, shapes)
