"""ODE and SDE solvers: the ground floor of dedl, depending on torch alone.

``odeint(func, y0, t, method=..., rtol=..., atol=..., options=..., backend="dedl" | "torchdiffeq")``
mirrors :func:`torchdiffeq.odeint`; ``odeint_adjoint`` computes gradients with the adjoint ODE; ``odeint_event``
stops a solve where an event function changes sign, with gradients through the event time.
``sdeint(sde, y0, ts, bm=..., method=..., dt=..., backend="dedl" | "torchsde")`` mirrors :func:`torchsde.sdeint`
(Euler-Maruyama, Milstein, Rößler's srk, stochastic Heun, midpoint, reversible Heun); ``sdeint_adjoint``
computes its gradients with the stochastic adjoint (exactly, for reversible Heun); ``BrownianPath`` is one
reusable Brownian sample path.
"""

from dedl.solvers.adjoint import odeint_adjoint
from dedl.solvers.multistep import (
    ADAMS_BASHFORTH,
    adams_bashforth_coefficients,
    adams_bashforth_step,
    adams_bashforth_weights,
)
from dedl.solvers.ode import (
    BACKENDS,
    BOSH3,
    DOPRI5,
    EULER,
    HEUN,
    METHODS,
    MIDPOINT,
    RK4,
    RK4_38,
    TABLEAUX,
    ButcherTableau,
    Method,
    PIController,
    euler_step,
    odeint,
    odeint_event,
    register_method,
    rk_step,
    rms_norm,
)
from dedl.solvers.sde import (
    BrownianPath,
    euler_maruyama_step,
    heun_step,
    midpoint_step,
    milstein_step,
    reversible_heun_step,
    sdeint,
    srk_step,
    step_grid,
)
from dedl.solvers.sde_adjoint import ADJOINT_METHODS, sdeint_adjoint

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "PIController",
    "ButcherTableau",
    "EULER",
    "MIDPOINT",
    "HEUN",
    "RK4",
    "RK4_38",
    "BOSH3",
    "DOPRI5",
    "TABLEAUX",
    "METHODS",
    "Method",
    "register_method",
    "BACKENDS",
    "euler_step",
    "rk_step",
    "rms_norm",
    "ADAMS_BASHFORTH",
    "adams_bashforth_coefficients",
    "adams_bashforth_weights",
    "adams_bashforth_step",
    "sdeint",
    "sdeint_adjoint",
    "ADJOINT_METHODS",
    "BrownianPath",
    "step_grid",
    "euler_maruyama_step",
    "milstein_step",
    "heun_step",
    "midpoint_step",
    "srk_step",
    "reversible_heun_step",
]
