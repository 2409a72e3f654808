"""Explicit Runge-Kutta solvers for ``dy/dt = f(t, y)``, all driven by Butcher tableaux.

Every explicit Runge-Kutta method is one :class:`ButcherTableau` (Butcher's array ``c | A | b``,
{cite}`butcher2016numerical`), and every step is the one stage loop (``_rk_stages``), in the diffrax manner
of separate pieces: a fixed grid (``euler``, ``midpoint``, ``heun``, ``rk4``, ``rk4_38``; cut at the output,
``step_t`` and ``jump_t`` times) or the accepted steps of an embedded pair (``bosh3`` {cite}`bogacki1989pair`,
``dopri5`` {cite}`dormand1980family`) under a :class:`PIController` (I or PI control, landing on ``step_t`` /
``jump_t``) with Hairer's automatic first step {cite}`hairer1993solving` (Sec. II.4); then a save-at stage that
reads the outputs off the steps by dense output, or an event search (:func:`odeint_event`,
{cite}`chen2021learning`). Linear multistep methods (``adams_bashforth2/3/4``) live in
:mod:`dedl.solvers.multistep`; :func:`odeint` dispatches to both and, with ``backend="torchdiffeq"``, to
:func:`torchdiffeq.odeint`.

This module depends on torch alone.
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from dedl.solvers.timegrid import check_time_grid

Func = Callable[[Tensor, Tensor], Tensor]

__all__ = [
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
    "odeint",
    "odeint_event",
    "PIController",
    "rms_norm",
    "rk_step",
    "euler_step",
]


# --------------------------------------------------------------------------------------------------
# Butcher tableaux
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class ButcherTableau:
    r"""An explicit Runge-Kutta method written as Butcher's array {cite}`butcher2016numerical`.

    One step of size :math:`h` from :math:`(t_n, y_n)` computes the stages

    .. math:: k_i = f\Big(t_n + c_i h,\; y_n + h \sum_{j<i} a_{ij} k_j\Big),\qquad i = 1..s,

    and advances with :math:`y_{n+1} = y_n + h \sum_i b_i k_i`. An embedded pair also carries the
    weights ``b_error`` (:math:`\hat b`) of a second, lower-order solution; the difference
    :math:`h \sum_i (b_i - \hat b_i) k_i` estimates the local error (Hairer et al. 1993, Sec. II.4).

    Args:
        c: nodes :math:`c_i`, length ``s``.
        a: the strictly lower triangular matrix :math:`A`, row ``i`` holding :math:`a_{i0..i-1}`
            (length ``i``); full rows of length ``s`` with zeros on and above the diagonal are accepted.
        b: weights :math:`b_i` of the propagated solution, length ``s``.
        order: the order of the propagated solution.
        name: a short name (the ``method`` string of :func:`odeint`).
        b_error: weights :math:`\hat b_i` of the embedded solution (makes the tableau adaptive).
        error_order: order of the embedded solution (defaults to ``order - 1``).
        dense: optional dense-output (continuous extension) polynomials: row ``i`` holds the
            coefficients of :math:`b_i(\theta) = \sum_m d_{im} \theta^{m+1}`, so that
            :math:`y(t_n + \theta h) \approx y_n + h \sum_i b_i(\theta) k_i`.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    name: str
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    # the nonzero entries (j, a_ij) of each row of A and (j, b_j) of b, which the stage loop uses
    a_nonzero: tuple[tuple[tuple[int, float], ...], ...] = field(init=False, repr=False, compare=False)
    b_nonzero: tuple[tuple[int, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if s < 1:
            raise ValueError("a Butcher tableau needs at least one stage")
        if len(self.a) != s:
            raise ValueError(f"tableau {self.name!r}: A has {len(self.a)} rows, expected {s}")
        rows = []
        for i, row in enumerate(self.a):
            row = tuple(float(x) for x in row)
            if len(row) == s:
                if any(x != 0.0 for x in row[i:]):
                    raise ValueError(f"tableau {self.name!r}: A must be strictly lower triangular (explicit)")
                row = row[:i]
            if len(row) != i:
                raise ValueError(f"tableau {self.name!r}: row {i} of A has length {len(row)}, expected {i} or {s}")
            rows.append(row)
        object.__setattr__(self, "a", tuple(rows))
        object.__setattr__(self, "c", tuple(float(x) for x in self.c))
        if len(self.b) != s:
            raise ValueError(f"tableau {self.name!r}: b has length {len(self.b)}, expected {s}")
        object.__setattr__(self, "b", tuple(float(x) for x in self.b))
        if not any(self.b):
            raise ValueError(f"tableau {self.name!r}: every weight of b is zero")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise ValueError(f"tableau {self.name!r}: b_error has length {len(self.b_error)}, expected {s}")
            object.__setattr__(self, "b_error", tuple(float(x) for x in self.b_error))
            if self.error_order is None:
                object.__setattr__(self, "error_order", self.order - 1)
        if self.dense is not None and len(self.dense) != s:
            raise ValueError(f"tableau {self.name!r}: dense has {len(self.dense)} rows, expected {s}")
        nonzero = tuple(tuple((j, aij) for j, aij in enumerate(row) if aij != 0.0) for row in self.a)
        object.__setattr__(self, "a_nonzero", nonzero)
        object.__setattr__(self, "b_nonzero", tuple((j, bj) for j, bj in enumerate(self.b) if bj != 0.0))

    @property
    def stages(self) -> int:
        """The number of stages ``s``."""
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau carries an embedded error estimate (``b_error``)."""
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        """First Same As Last: the last stage is evaluated at ``y_{n+1}``, so it is the next step's ``k_1``."""
        return self.stages > 1 and self.c[-1] == 1.0 and self.a[-1] == self.b[:-1] and self.b[-1] == 0.0

    def __repr__(self) -> str:
        """A one-line summary; the coefficients are the fields ``c``, ``a``, ``b`` and ``b_error``."""
        kind = "adaptive" if self.adaptive else "fixed step"
        return f"ButcherTableau({self.name!r}: {self.stages} stages, order {self.order}, {kind})"

    def stability_polynomial(self) -> list[float]:
        r"""Coefficients :math:`\gamma_0..\gamma_s` of the stability function :math:`R(z)=\sum_j \gamma_j z^j`.

        Applied to the test equation :math:`y' = \lambda y` with :math:`z = h\lambda`, one step multiplies
        :math:`y` by :math:`R(z) = 1 + z\, b^\top (I - zA)^{-1} \mathbf 1` {cite}`hairer1996solving` (Sec. IV.2).
        For an explicit method :math:`A` is nilpotent, so :math:`R` is the polynomial with
        :math:`\gamma_0 = 1` and :math:`\gamma_j = b^\top A^{j-1}\mathbf 1`.
        """
        s = self.stages
        v = [1.0] * s  # A^{j-1} 1, starting with j = 1
        coeffs = [1.0]
        for _ in range(s):
            coeffs.append(sum(bi * vi for bi, vi in zip(self.b, v)))
            v = [sum(self.a[i][j] * v[j] for j in range(i)) for i in range(s)]
        while len(coeffs) > 1 and coeffs[-1] == 0.0:
            coeffs.pop()
        return coeffs

    def stability_function(self, z: Tensor) -> Tensor:
        """Evaluate :math:`R(z)` (see :meth:`stability_polynomial`) at a (complex) tensor ``z`` by Horner's rule."""
        result = torch.zeros_like(z)
        for gamma in reversed(self.stability_polynomial()):
            result = result * z + gamma
        return result


#: Forward Euler, order 1: one stage, :math:`y_{n+1} = y_n + h f(t_n, y_n)`.
EULER = ButcherTableau(name="euler", c=(0.0,), a=((),), b=(1.0,), order=1)
#: The explicit midpoint rule, order 2 {cite}`hairer1993solving` (Sec. II.1).
MIDPOINT = ButcherTableau(name="midpoint", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
#: Heun's method (the explicit trapezoidal rule), order 2 {cite}`hairer1993solving` (Sec. II.1).
HEUN = ButcherTableau(name="heun", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
#: The classical Runge-Kutta method, order 4 {cite}`butcher2016numerical`.
RK4 = ButcherTableau(
    name="rk4",
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)
# Kutta's 3/8 rule: the fourth-order method behind torchdiffeq's "rk4".
#: Kutta's 3/8 rule, order 4 (torchdiffeq's ``rk4``) {cite}`hairer1993solving` (Sec. II.1).
RK4_38 = ButcherTableau(
    name="rk4_38",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)
# Bogacki-Shampine 3(2), FSAL; dense output by cubic Hermite interpolation.
#: The Bogacki-Shampine 3(2) pair, FSAL, for adaptive steps {cite}`bogacki1989pair`.
BOSH3 = ButcherTableau(
    name="bosh3",
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_error=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    order=3,
    error_order=2,
)
# Dormand-Prince 5(4), FSAL, with its fourth-order continuous extension (Hairer et al. 1993, Sec. II.6).
#: The Dormand-Prince 5(4) pair, FSAL, with a continuous extension of order 4 {cite}`dormand1980family`.
DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_error=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5,
    error_order=4,
    dense=(
        (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
        (0.0, 0.0, 0.0, 0.0),
        (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
        (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
        (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
        (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
        (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
    ),
)

#: Every built-in tableau by its name (the ``method`` strings of the Runge-Kutta methods).
TABLEAUX: dict[str, ButcherTableau] = {tab.name: tab for tab in (EULER, MIDPOINT, HEUN, RK4, RK4_38, BOSH3, DOPRI5)}
#: The libraries :func:`odeint` can hand a solve to.
BACKENDS = ("dedl", "torchdiffeq")

# dedl method name -> torchdiffeq method name, where the two libraries implement the same method.
# torchdiffeq's "rk4" is Kutta's 3/8 rule, so it pairs with dedl's "rk4_38"; dedl's "rk4" (the classical
# method) is handed to it as well so that the two can be compared at the same cost.
_TORCHDIFFEQ_NAMES = {
    "euler": "euler",
    "midpoint": "midpoint",
    "heun": "heun2",
    "rk4": "rk4",
    "rk4_38": "rk4",
    "bosh3": "bosh3",
    "dopri5": "dopri5",
}

_MULTISTEP_OPTIONS = ("step_size", "jump_t", "step_t", "max_num_steps", "stats")
_FIXED_OPTIONS = _MULTISTEP_OPTIONS + ("perturb",)
_ADAPTIVE_OPTIONS = (
    "first_step", "max_step", "jump_t", "step_t", "norm", "max_num_steps", "safety", "ifactor", "dfactor", "beta",
    "stats",
)
#: The default bound on the number of steps of one solve (option ``max_num_steps``).
DEFAULT_MAX_NUM_STEPS = 1_000_000


# --------------------------------------------------------------------------------------------------
# The method registry
# --------------------------------------------------------------------------------------------------

SolveFn = Callable[[Func, Tensor, list[float], Any, Any, dict], Tensor]


@dataclass(frozen=True)
class Method:
    """An entry of the method registry :data:`METHODS`: what ``odeint(..., method=name)`` runs.

    ``solve(func, y0, t_list, rtol, atol, options)`` returns the states at ``t_list`` (at least two times),
    after :func:`odeint` has checked the input and ``options`` against ``options`` (the names this method
    takes). ``tableau`` is set for Runge-Kutta methods (Butcher 2016 {cite}`butcher2016numerical`).
    """

    name: str
    options: tuple[str, ...]
    solve: SolveFn
    tableau: ButcherTableau | None = None


#: The method registry: ``method`` name -> :class:`Method`. This module registers every tableau of
#: :data:`TABLEAUX`; :mod:`dedl.solvers.multistep` registers ``adams_bashforth2/3/4``.
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> None:
    """Add ``method`` to :data:`METHODS` under its name (a name can be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method


def _rk_method(tab: ButcherTableau) -> Method:
    """The registry entry of a Runge-Kutta tableau: adaptive when it has an embedded pair."""
    return Method(tab.name, _ADAPTIVE_OPTIONS if tab.adaptive else _FIXED_OPTIONS, partial(_solve_rk, tab=tab), tab)


# --------------------------------------------------------------------------------------------------
# Single steps (for readers and for the discrete architectures of Part II)
# --------------------------------------------------------------------------------------------------


def euler_step(func: Func, t: Tensor | float, y: Tensor, h: float) -> Tensor:
    r"""One forward Euler step :math:`y + h f(t, y)` (Hairer et al. 1993, Sec. I.7; a ResNet block, Part II)."""
    return torch.add(y, func(torch.as_tensor(t, dtype=y.dtype, device=y.device), y), alpha=h)


def rk_step(func: Func, t: Tensor | float, y: Tensor, h: float, tableau: ButcherTableau) -> Tensor:
    r"""One explicit Runge-Kutta step of size ``h`` with ``tableau`` (see :class:`ButcherTableau`)."""
    t = float(t)
    times = _stage_times(tableau.c, [(t, t + h, h, False, False)], y.dtype, y.device)
    return _rk_combine(y, _rk_stages(func, y, h, tableau.a_nonzero, times, [])[0], h, tableau.b_nonzero)


# --------------------------------------------------------------------------------------------------
# The Runge-Kutta stage loop (shared by every Runge-Kutta path of dedl.solvers)
# --------------------------------------------------------------------------------------------------

# One step for the stage-time builder: (t_n, t_{n+1}, h, jump at t_n, jump at t_{n+1}).
Step = tuple[float, float, float, bool, bool]


def _stage_times(c: Sequence[float], steps: Sequence[Step], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """The stage times ``t_n + c_i h`` of one or more steps as 0-d tensors (made in one tensor, then split).

    A stage with ``c_i = 1`` is evaluated at ``t_{n+1}`` exactly. Where the field jumps at an end of the
    step (``jump_t``) the stages there are moved one unit in the last place into the step (``nextafter``,
    as torchdiffeq's ``perturb``): ``c_i = 0`` stages see the right limit at ``t_n``, ``c_i = 1`` stages
    the left limit at ``t_{n+1}`` (for a backward step, the mirror images), so that a step never reads
    the field on the far side of a jump (Hairer et al. 1993, Sec. II.6, 'discontinuities')."""
    values = [t1 if ci == 1.0 else t0 + ci * h for t0, t1, h, _, _ in steps for ci in c]
    times = torch.tensor(values, dtype=dtype, device=device)
    nudged, toward = [], []
    for n, (t0, t1, _, jump0, jump1) in enumerate(steps):
        for i, ci in enumerate(c):
            if (jump0 and ci == 0.0) or (jump1 and ci == 1.0):
                nudged.append(n * len(c) + i)
                toward.append(t1 if ci == 0.0 else t0)
    if nudged:
        index = torch.tensor(nudged, device=device)
        times[index] = torch.nextafter(times[index], torch.tensor(toward, dtype=dtype, device=device))
    return list(times.unbind())


def _rk_stages(
    func: Func, y: Tensor, h: float, a_nonzero: Sequence[Sequence[tuple[int, float]]], times: Sequence[Tensor],
    ks: list[Tensor],
) -> tuple[list[Tensor], Tensor]:
    r"""Append the stages :math:`k_i = f(t_n + c_i h, y_n + h \sum_{j<i} a_{ij} k_j)` to ``ks``, from stage
    ``len(ks)`` (a known first stage, e.g. FSAL, is passed in ``ks``) to the last. Returns ``ks`` and the last
    stage's argument (``y_{n+1}`` itself for a FSAL tableau)."""
    u = y
    for i in range(len(ks), len(a_nonzero)):
        terms = a_nonzero[i]
        u = y
        if terms:
            j, aij = terms[0]
            u = torch.add(y, ks[j], alpha=h * aij)
            for j, aij in terms[1:]:
                u.add_(ks[j], alpha=h * aij)
        ks.append(func(times[i], u))
    return ks, u


def _rk_combine(y: Tensor, ks: Sequence[Tensor], h: float, weights: Sequence[tuple[int, float]]) -> Tensor:
    r""":math:`y + h \sum_j w_j k_j` over the nonzero weights ``(j, w_j)`` (the step, or its error estimate)."""
    (j, w), *rest = weights
    out = torch.add(y, ks[j], alpha=h * w)
    for j, w in rest:
        out.add_(ks[j], alpha=h * w)
    return out


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_y0_t(func: Any, y0: Any, t: Any) -> tuple[Tensor, Tensor]:
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not torch.is_floating_point(y0):
        raise TypeError(f"y0 must be a floating-point tensor (float32 or float64), got dtype {y0.dtype}")
    return y0, check_time_grid(t).to(device=y0.device)


def _check_tol(name: str, tol: Any) -> None:
    if isinstance(tol, Tensor):
        if not bool(torch.isfinite(tol).all()) or bool((tol < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0")
    elif not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")


def _resolve_method(method: str | ButcherTableau) -> Method:
    if isinstance(method, ButcherTableau):
        return _rk_method(method)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHODS)} (or a ButcherTableau)")
    return METHODS[method]


def _check_options(options: dict | None, valid: Sequence[str], method_name: str) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {method_name!r}; valid options are "
            + ", ".join(valid)
        )
    max_num_steps = options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    if not isinstance(max_num_steps, int) or isinstance(max_num_steps, bool) or max_num_steps < 1:
        raise ValueError(f"max_num_steps must be an integer >= 1, got {max_num_steps!r}")
    options["max_num_steps"] = max_num_steps
    for key in ("step_size", "first_step", "max_step"):
        if options.get(key) is not None:
            value = options[key]
            value = float(value.item() if isinstance(value, Tensor) else value)
            if not math.isfinite(value) and not (key == "max_step" and value == math.inf):
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
            if value <= 0:
                raise ValueError(f"{key} must be > 0, got {value!r}")
            options[key] = value
    for key in ("jump_t", "step_t"):
        if options.get(key) is not None:
            options[key] = _check_time_points(key, options[key])
    if not isinstance(options.get("perturb", False), bool):
        raise TypeError(f"options['perturb'] must be True or False, got {options['perturb']!r}")
    if options.get("norm") is not None and not callable(options["norm"]):
        raise TypeError(f"options['norm'] must be a callable norm(tensor) -> scalar, got {options['norm']!r}")
    return options


def _check_time_points(name: str, points: Any) -> tuple[float, ...]:
    """``jump_t`` / ``step_t``: a 1-D sequence or tensor of finite times, returned as floats."""
    try:
        points = torch.as_tensor(points.detach() if isinstance(points, Tensor) else points, dtype=torch.float64)
    except Exception as err:  # noqa: BLE001 - re-raised with a clear message
        raise TypeError(f"options[{name!r}] must be a 1-D sequence or tensor of times") from err
    if points.ndim != 1:
        raise ValueError(f"options[{name!r}] must be 1-D, got shape {tuple(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"options[{name!r}] must be finite, got NaN or Inf")
    return tuple(points.tolist())


def _stops(t_list: list[float], options: dict) -> tuple[list[float], frozenset[float]]:
    """Where steps must end: the ``step_t`` and ``jump_t`` strictly inside ``(t[0], t[-1])``, in the order of
    integration; and the ``jump_t`` in the closed span (a jump at an end still makes the stages there one-sided).
    Times outside the span are ignored, as torchdiffeq does."""
    t0, t1 = t_list[0], t_list[-1]
    lo, hi = min(t0, t1), max(t0, t1)
    jumps = frozenset(x for x in options.get("jump_t") or () if lo <= x <= hi)
    stops = {x for x in (*(options.get("step_t") or ()), *jumps) if lo < x < hi}
    return sorted(stops, reverse=t1 < t0), jumps


def _check_output(k: Any, y: Tensor) -> None:
    """Called once, on the first evaluation of ``func``: its output must look like ``y``."""
    if not isinstance(k, Tensor):
        raise TypeError(f"func(t, y) must return a torch.Tensor, got {type(k).__name__}")
    if k.shape != y.shape:
        raise ValueError(
            f"func(t, y) returned shape {tuple(k.shape)} but y has shape {tuple(y.shape)}; they must match"
        )
    if k.dtype != y.dtype:
        raise TypeError(f"func(t, y) returned dtype {k.dtype} but y0 has dtype {y.dtype}; they must match")
    if k.device != y.device:
        raise ValueError(f"func(t, y) returned a tensor on {k.device} but y0 is on {y.device}")


def _check_finite(solution: Tensor, t: Tensor) -> None:
    """One reduction over the whole solution. A non-finite state never becomes finite again
    (``y_{n+1} = y_n + h sum b_i k_i`` carries it along), so a check at the output times suffices."""
    if not bool(torch.isfinite(solution).all()):
        bad = (~torch.isfinite(solution.detach().reshape(len(t), -1))).any(dim=1).nonzero()
        i = int(bad[0])
        where = f"at t[0] = {float(t[0]):.6g}" if i == 0 else f"between t = {float(t[i - 1]):.6g} and {float(t[i]):.6g}"
        raise FloatingPointError(f"the solution became NaN or Inf {where}")


# --------------------------------------------------------------------------------------------------
# Fixed-step Runge-Kutta loop
# --------------------------------------------------------------------------------------------------


# A segment of the fixed grid: (start, end, number of equal steps, end is an output time, jump at start, at end).
Segment = tuple[float, float, int, bool, bool, bool]


def _fixed_grid(t_list: list[float], options: dict) -> list[Segment]:
    """The fixed-step grid: the output times and the ``step_t`` / ``jump_t`` between them cut the span into
    segments; each is one step, or with ``step_size`` it is cut into ``ceil(|b - a| / step_size)`` equal steps,
    so that steps land exactly on every output and jump time (no interpolation) and none is longer than
    ``step_size``. Raises ``RuntimeError`` before the solve when the grid has more than ``max_num_steps`` steps.
    """
    stops, jumps = _stops(t_list, options)
    outputs = set(t_list)
    points = sorted(outputs.union(stops), reverse=t_list[-1] < t_list[0])
    step_size = options.get("step_size")
    grid = []
    for a, b in zip(points[:-1], points[1:]):
        n = 1 if step_size is None else max(1, math.ceil(abs(b - a) / step_size * (1 - 1e-10)))
        grid.append((a, b, n, b in outputs, a in jumps, b in jumps))
    total = sum(segment[2] for segment in grid)
    if total > options["max_num_steps"]:
        raise RuntimeError(
            f"max_num_steps exceeded: the fixed grid needs {total} steps but max_num_steps = {options['max_num_steps']}"
        )
    return grid


def _fixed_steps(grid: list[Segment]) -> Iterator[tuple[float, float, float, bool, bool, bool]]:
    """Yield ``(t_n, t_{n+1}, h_n, lands_on_an_output_time, jump at t_n, jump at t_{n+1})`` for every step, lazily
    (memory independent of the number of steps, which the adjoint relies on)."""
    for a, b, n, output, jump_a, jump_b in grid:
        d = (b - a) / n
        for j in range(n):
            last = j == n - 1
            yield a + j * d, b if last else a + (j + 1) * d, d, output and last, jump_a and j == 0, jump_b and last


_CHUNK = 16  # steps whose stage times are made at once (one tensor, split into 0-d views)


def _rk_fixed(func: Func, y0: Tensor, grid: list[Segment], tab: ButcherTableau, perturb: bool = False) -> Tensor:
    """Integrate with an explicit RK tableau on the fixed ``grid``; the states at the output times.

    The step of :func:`rk_step` (:func:`_rk_stages`), with the stage times of a chunk of steps made in one
    tensor, so that the loop costs little beyond the ``stages`` evaluations of ``func`` per step. The outputs
    are stacked once at the end. ``perturb`` reads one-sided limits at both ends of every step, as if each
    step boundary were a jump (torchdiffeq's ``perturb``)."""
    steps = _fixed_steps(grid)
    out = [y0]
    y = y0
    first = True
    while chunk := list(itertools.islice(steps, _CHUNK)):
        chunk_steps = [(t0, t1, h, j0 or perturb, j1 or perturb) for t0, t1, h, _, j0, j1 in chunk]
        times = _stage_times(tab.c, chunk_steps, y0.dtype, y0.device)
        for n, (_, _, h, lands, _, _) in enumerate(chunk):
            stage_times = times[n * tab.stages : (n + 1) * tab.stages]
            ks: list[Tensor] = []
            if first:  # check func's output once
                ks.append(func(stage_times[0], y))
                _check_output(ks[0], y0)
                first = False
            y = _rk_combine(y, _rk_stages(func, y, h, tab.a_nonzero, stage_times, ks)[0], h, tab.b_nonzero)
            if lands:
                out.append(y)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------
# Adaptive Runge-Kutta loop
# --------------------------------------------------------------------------------------------------


def rms_norm(x: Tensor) -> float:
    r"""The root mean square :math:`\sqrt{\frac1n \sum_i x_i^2}`, the default norm of the error estimate
    (Hairer et al. 1993 {cite}`hairer1993solving`, eq. II.4.11), as a Python float (divided in float64)."""
    return float(torch.linalg.vector_norm(x)) / math.sqrt(max(x.numel(), 1))


def _error_ratio(err: Tensor, y: Tensor, y1: Tensor, rtol: Any, atol: Any, norm: Callable[[Tensor], Any]) -> float:
    r"""``norm(err / (atol + rtol max(|y|, |y1|)))`` (Hairer et al. 1993, eq. II.4.11)."""
    with torch.no_grad():
        scale = torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol)
        return float(norm(err / scale))


def _initial_step(
    func: Func, t0: float, y0: Tensor, f0: Tensor, order: int, rtol: Any, atol: Any, direction: float,
    norm: Callable[[Tensor], Any],
) -> float:
    """Hairer's automatic choice of the first step (Hairer et al. 1993, Sec. II.4, 'Starting step size').

    ``order`` is that of the error estimate (4 for dopri5), as in Hairer's code and scipy, so that
    ``h1 = (0.01 / max(d1, d2)) ** (1 / (order + 1))``. Costs one extra evaluation of ``func``."""
    with torch.no_grad():
        scale = (y0.abs() * rtol + atol)
        d0 = float(norm(y0 / scale))
        d1 = float(norm(f0 / scale))
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        y1 = torch.add(y0, f0, alpha=direction * h0)
        f1 = func(torch.tensor(t0 + direction * h0, dtype=y0.dtype, device=y0.device), y1)
        d2 = float(norm((f1 - f0) / scale)) / h0
    if not (math.isfinite(d1) and math.isfinite(d2)):
        raise FloatingPointError(f"func returned NaN or Inf near t = {t0:.6g} while choosing the first step")
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


@dataclass
class PIController:
    r"""Step-size control for an embedded Runge-Kutta pair: Gustafsson's PI controller (beta > 0) or the classical
    I controller (beta = 0), with the stops that steps must land on (Hairer et al. 1993 {cite}`hairer1993solving`,
    Sec. II.4 and eq. IV.2.43c; Hairer et al. 1996 {cite}`hairer1996solving`, Sec. IV.2).

    After a step of size :math:`h` whose error ratio (the norm of the scaled error) is :math:`r_n`,

    .. math:: h_{\text{new}} = h \cdot \min\big(\text{ifactor}, \max(\text{dfactor},\;
              \text{safety}\; r_n^{-\alpha}\, r_{n-1}^{\beta})\big),\qquad \alpha = \tfrac1{q+1} - 0.75\,\beta,

    with :math:`q` the order of the error estimate and :math:`r_{n-1}` the ratio of the previous accepted step
    (dopri5.f's choice of :math:`\alpha`). A step is accepted when :math:`r_n \le 1`; after a rejection the step
    does not grow. ``stops`` (``step_t`` and ``jump_t``, as diffrax's ``step_ts`` / ``jump_ts``) and ``t_end``
    are landed on exactly: a step that would pass one, or end within 1% short of it, is cut or stretched onto it
    (Hairer's dopri5.f does so for the end point).
    """

    order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    beta: float = 0.0
    max_step: float = math.inf
    stops: Sequence[float] = ()
    t_end: float = math.inf

    def __post_init__(self) -> None:
        if not (0 < self.safety <= 1 and self.ifactor >= 1 and 0 < self.dfactor <= 1 and 0 <= self.beta < 0.2):
            raise ValueError(
                "need 0 < safety <= 1, ifactor >= 1, 0 < dfactor <= 1 and 0 <= beta < 0.2, got "
                f"safety={self.safety}, ifactor={self.ifactor}, dfactor={self.dfactor}, beta={self.beta}"
            )
        if not self.max_step > 0:
            raise ValueError(f"max_step must be > 0, got {self.max_step}")
        self.alpha = 1.0 / (self.order + 1) - 0.75 * self.beta
        self.ratio_old = 1e-4
        self.rejected_last = False
        self.next_stop = 0

    def landing(self, t: float, h: float, direction: float) -> tuple[float, float, bool]:
        """Clip a proposed step ``h > 0`` from ``t``: ``(h, t_new, lands)``, ``lands`` when ``t_new`` is the next
        stop or ``t_end`` exactly."""
        target = self.stops[self.next_stop] if self.next_stop < len(self.stops) else self.t_end
        if 1.01 * h >= abs(target - t):
            return abs(target - t), target, True
        return h, t + direction * h, False

    def accept(self, h: float, ratio: float, landed: bool) -> tuple[bool, float]:
        """Judge a step of size ``h`` with error ratio ``ratio``: ``(accepted, next step size)``."""
        if ratio <= 1.0:
            factor = self.ifactor if ratio == 0.0 else self.safety * ratio ** (-self.alpha) * self.ratio_old**self.beta
            factor = min(self.ifactor, max(self.dfactor, factor))
            if self.rejected_last:
                factor = min(factor, 1.0)
            self.ratio_old = max(ratio, 1e-4)
            self.rejected_last = False
            if landed and self.next_stop < len(self.stops):
                self.next_stop += 1
            return True, min(h * factor, self.max_step)
        self.rejected_last = True
        return False, min(h * max(self.dfactor, self.safety * ratio ** (-self.alpha)), self.max_step)


class _Accepted(NamedTuple):
    """One accepted step from ``t`` to ``t_new``: what the dense output needs (``f_new``: ``f`` at ``t_new``, from
    the left where the field jumps there)."""

    t: float
    t_new: float
    y: Tensor
    y1: Tensor
    ks: list[Tensor]
    f_new: Tensor


def _rk_adaptive_steps(
    func: Func, y0: Tensor, t0: float, t_end: float, tab: ButcherTableau, rtol: Any, atol: Any, options: dict
) -> Iterator[_Accepted]:
    """The accepted steps of an embedded Runge-Kutta pair from ``t0`` to ``t_end`` (``+-inf`` for an event
    search), under a :class:`PIController`; fills ``options["stats"]`` when the generator finishes or closes."""
    dtype, device = y0.dtype, y0.device
    direction = 1.0 if t_end > t0 else -1.0
    max_num_steps = options["max_num_steps"]
    norm = options.get("norm") or rms_norm
    stats = options.get("stats")
    stops, jumps = _stops([t0, t_end], options)
    q = min(tab.order, tab.error_order or tab.order - 1)
    control = PIController(
        order=q, safety=float(options.get("safety", 0.9)), ifactor=float(options.get("ifactor", 10.0)),
        dfactor=float(options.get("dfactor", 0.2)), beta=float(options.get("beta", 0.0)),
        max_step=float(options.get("max_step") or math.inf), stops=stops, t_end=t_end,
    )
    eps = torch.finfo(dtype).eps
    ew = tuple((j, bj - ej) for j, (bj, ej) in enumerate(zip(tab.b, tab.b_error)) if bj - ej != 0.0)

    def one_sided(x: float, toward: float) -> Tensor:
        """The time ``x``, one unit in the last place toward ``toward`` where the field jumps at ``x``."""
        return _stage_times((0.0,), [(x, toward, 0.0, x in jumps, False)], dtype, device)[0]

    nfe = 1
    k1 = func(one_sided(t0, t_end), y0)
    _check_output(k1, y0)
    if options.get("first_step") is not None:
        h = options["first_step"]
    else:
        h = _initial_step(func, t0, y0, k1, q, rtol, atol, direction, norm)
        nfe += 1
    h = min(h, control.max_step, abs(t_end - t0))
    t, y = t0, y0
    n_steps = n_accepted = 0
    step_t: list[float] = []
    step_h: list[float] = []
    try:
        while t != t_end:
            if n_steps >= max_num_steps:
                raise RuntimeError(
                    f"max_num_steps = {max_num_steps} exceeded at t = {t:.6g} (integrating to {t_end:.6g}); the "
                    "problem may be stiff: loosen rtol/atol, raise options['max_num_steps'] or use another method"
                )
            n_steps += 1
            h, t_new, lands = control.landing(t, h, direction)
            hs = direction * h
            jump = lands and t_new in jumps  # the stages at t_new see the field's left limit there
            times = _stage_times(tab.c, [(t, t_new, hs, False, jump)], dtype, device)
            ks, u = _rk_stages(func, y, hs, tab.a_nonzero, times, [k1])
            nfe += tab.stages - 1
            y1 = u if tab.fsal else _rk_combine(y, ks, hs, tab.b_nonzero)
            with torch.no_grad():
                j, ej = ew[0]
                err = ks[j] * (hs * ej)
                for j, ej in ew[1:]:
                    err.add_(ks[j], alpha=hs * ej)
            ratio = _error_ratio(err, y, y1, rtol, atol, norm)
            if not math.isfinite(ratio):
                raise FloatingPointError(
                    f"the solution became NaN or Inf in the step from t = {t:.6g} to {t_new:.6g} "
                    f"(error estimate {ratio})"
                )
            accepted, h = control.accept(h, ratio, lands)
            if accepted:
                n_accepted += 1
                if stats is not None:
                    step_t.append(t)
                    step_h.append(hs)
                # f(t_new, y1) from the left: FSAL reuses the last stage, otherwise one evaluation (Hermite output
                # needs it); after a jump the next step restarts from the right limit (one more evaluation)
                if tab.fsal:
                    f_new = ks[-1]
                else:
                    f_new = func(one_sided(t_new, t), y1)
                    nfe += 1
                k1 = f_new
                if jump and t_new != t_end:
                    k1 = func(one_sided(t_new, t_end), y1)
                    nfe += 1
                yield _Accepted(t, t_new, y, y1, ks, f_new)
                t, y = t_new, y1
            if h <= 16 * eps * max(abs(t), 1e-300) and t != t_end:
                raise RuntimeError(
                    f"step size underflow: h = {h:.3g} at t = {t:.17g}; the solution may blow up in finite time "
                    "near this t, or the problem may be too stiff for an explicit method"
                )
    finally:
        if stats is not None:
            stats.update(nfe=nfe, n_steps=n_steps, n_accepted=n_accepted, n_rejected=n_steps - n_accepted,
                         t=step_t, h=step_h)


def _save_at(steps: Iterator[_Accepted], y0: Tensor, t_list: list[float], dense: Any) -> Tensor:
    """The save-at stage: the states at ``t_list`` from the accepted steps, exact where a step ends on an output
    time, otherwise by :func:`_interpolate` (the dense output)."""
    direction = 1.0 if t_list[-1] > t_list[0] else -1.0
    out = [y0]
    j = 1
    for step in steps:
        while j < len(t_list) and (t_list[j] - step.t_new) * direction <= 0:
            if t_list[j] == step.t_new:
                out.append(step.y1)
            else:
                theta = (t_list[j] - step.t) / (step.t_new - step.t)
                out.append(_interpolate(step.y, step.y1, step.ks, step.f_new, step.t_new - step.t, theta, dense))
            j += 1
    return torch.stack(out)


def _interpolate(
    y0: Tensor, y1: Tensor, ks: list[Tensor], f1: Tensor, h: float, theta: float, dense: Any
) -> Tensor:
    """State at ``t + theta h`` inside an accepted step: the tableau's continuous extension when it has one
    (dopri5: order 4), else cubic Hermite interpolation of ``y0, f0, y1, f1`` (order 3)."""
    if dense is not None:
        out = y0
        for k, row in zip(ks, dense):
            w = 0.0
            for coef in reversed(row):
                w = (w + coef) * theta
            if w != 0.0:
                out = torch.add(out, k, alpha=h * w)
        return out
    h00 = (1 + 2 * theta) * (1 - theta) ** 2
    h10 = theta * (1 - theta) ** 2
    h01 = theta**2 * (3 - 2 * theta)
    h11 = theta**2 * (theta - 1)
    return (y0 * h00).add(ks[0], alpha=h * h10).add(y1, alpha=h01).add(f1, alpha=h * h11)


# --------------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------------


def odeint(
    func: Func,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor | Sequence[float],
    method: str | ButcherTableau = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
    backend: str = "dedl",
) -> Tensor | tuple[Tensor, ...]:
    r"""Solve the initial value problem :math:`y' = f(t, y)`, :math:`y(t_0) = y_0`, at the times ``t``.

    Explicit Runge-Kutta methods are given by Butcher tableaux {cite}`butcher2016numerical`; the adaptive
    ones follow {cite}`hairer1993solving` (Sec. II.4: error estimate, first step; Sec. IV.2: PI control),
    and the call mirrors :func:`torchdiffeq.odeint` {cite}`chen2018neural`.

    Args:
        func: the vector field ``func(t, y)``, ``t`` a 0-d tensor and ``y`` a tensor shaped like ``y0``;
            it must return a tensor of the same shape, dtype and device.
        y0: the initial state, a floating-point tensor of any shape (a batch is just more dimensions).
            The solution has its dtype and device. A tuple of tensors (one dtype and device) is a tuple
            state, as in torchdiffeq: ``func`` then takes and returns tuples of the same shapes, the solution is
            a tuple of tensors shaped ``(len(t), *y0[k].shape)``, and a ``norm`` option sees the flat vector.
        t: 1-D, strictly increasing or strictly decreasing times (decreasing integrates backward);
            ``t[0]`` is the initial time. When ``t`` requires grad, gradients flow into it: those of the exact flow,
            :math:`\partial y(t_i)/\partial t_i = f(t_i, y_i)` and the shift of the whole trajectory by
            :math:`t_0` (``N + 1`` extra evaluations; first derivatives only), as
            :func:`dedl.solvers.odeint_adjoint` gives.
        method: ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``, ``"rk4_38"`` (fixed step);
            ``"adams_bashforth2"``, ``"adams_bashforth3"``, ``"adams_bashforth4"`` (fixed step, linear
            multistep, started with RK4); ``"bosh3"``, ``"dopri5"`` (adaptive); or a
            :class:`ButcherTableau` (adaptive when it has ``b_error``). The names are the keys of the
            method registry :data:`METHODS` (:func:`register_method` adds one).
        rtol, atol: relative and absolute tolerance of the adaptive methods (floats, or tensors that
            broadcast against ``y0``). A step is accepted when the RMS norm of
            ``error / (atol + rtol * max(|y_n|, |y_{n+1}|))`` is at most 1. Ignored by fixed-step methods.
        options: a dict; an option the method does not take raises ``ValueError`` (under both backends).
            Fixed-step methods:

            * ``step_size``: the largest step. Each interval between consecutive output times is cut
              into ``ceil(|t_{i+1} - t_i| / step_size)`` equal steps, so the steps land exactly on every
              output time (no interpolation). Without it, the steps are the intervals of ``t``.
              **Not torchdiffeq's meaning**: with ``backend="torchdiffeq"`` the grid is
              ``t[0], t[0] + step_size, ...`` regardless of the output times, which are then interpolated
              (linearly by default); the two agree when ``step_size`` divides every output interval.
            * ``perturb`` (Runge-Kutta methods, default ``False``): read one-sided limits at both ends of every
              step (as torchdiffeq's ``perturb``), as if every step boundary were in ``jump_t``.
            * ``max_num_steps`` (default 1,000,000): checked before the solve starts.

            Both kinds (as torchdiffeq's adaptive solvers; diffrax calls them ``step_ts`` / ``jump_ts``):

            * ``jump_t``: times where ``func`` jumps in ``t`` (e.g. the knots of a piecewise-linear control,
              :func:`dedl.cde.cdeint`). Steps end exactly on them and never read ``func`` across one: the stages
              of a step that ends on a jump see the left limit there, the next step starts from the right limit
              (``t`` moved by one unit in the last place with ``nextafter``; an adaptive FSAL method spends one
              extra evaluation per jump on the restart). A fixed-step method's steps are cut at the jumps, and a
              multistep method starts again with RK4 after each.
            * ``step_t``: times that steps must end on, with no restart (where ``func`` is continuous but not
              smooth). torchdiffeq's adaptive steps read every step end from the left; dedl does so only at
              ``jump_t``, the one place where it changes the answer.

            Times outside the span of ``t`` are ignored; the values are read as float64.

            Adaptive methods:

            * ``first_step``: the first step size (default: Hairer's algorithm, one extra evaluation).
            * ``max_step``: an upper bound on the step size (default: none).
            * ``norm``: a callable ``norm(x) -> scalar`` applied to the scaled error
              ``error / (atol + rtol * max(|y_n|, |y_{n+1}|))`` (default :func:`rms_norm`), as torchdiffeq's.
            * ``max_num_steps`` (default 1,000,000): bound on attempted (accepted + rejected) steps;
              exceeding it raises ``RuntimeError``.
            * ``safety`` (0.9), ``ifactor`` (10, largest growth), ``dfactor`` (0.2, largest shrink),
              ``beta`` (default 0, the classical I controller, as in torchdiffeq; about 0.04 turns it into
              Gustafsson's PI controller, which damps oscillating step sizes at the price of a few more steps).
            * Output at times between steps comes from the continuous extension of dopri5 (order 4)
              or from cubic Hermite interpolation (order 3, used for bosh3); steps do not stop at the
              output times, only at ``t[-1]`` (a step that would end within 1% short of it is stretched
              to land on it, as in Hairer's code).

            Both: ``stats``: a dict that the solver fills with ``nfe``; adaptive methods add
            ``n_steps``, ``n_accepted``, ``n_rejected`` and the accepted steps' start times ``t`` and
            sizes ``h`` (dedl only).
        backend: ``"dedl"`` or ``"torchdiffeq"``. The latter hands the same call to
            :func:`torchdiffeq.odeint`, mapping names where both implement the same method
            (``heun`` -> ``heun2``; torchdiffeq's ``rk4`` is the 3/8 rule, dedl's ``rk4_38``); other
            torchdiffeq method names are passed through.

    Returns:
        The solution at every time of ``t``, shape ``(len(t), *y0.shape)``; ``[0]`` equals ``y0``.

    Raises:
        TypeError: ``func`` not callable, ``y0`` not a floating-point tensor, or ``func`` returns a
            different dtype.
        ValueError: ``t`` not 1-D, empty, non-finite or not strictly monotone; ``func`` returns a
            different shape; unknown method, backend or option; ``step_size <= 0``; bad tolerances.
        FloatingPointError: the state or the error estimate becomes NaN or Inf.
        RuntimeError: the adaptive step size underflows (e.g. the solution blows up in finite time),
            or ``max_num_steps`` is exceeded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are {', '.join(map(repr, BACKENDS))}")
    if backend == "torchdiffeq":
        return _torchdiffeq_call("odeint", func, y0, t, method, rtol, atol, options)
    func, y0, shapes = _flat_state(func, y0)
    t_in = t
    y0, t = _check_y0_t(func, y0, t)
    method = _resolve_method(method)
    _check_tol("rtol", rtol)
    _check_tol("atol", atol)
    if isinstance(t_in, Tensor) and t_in.requires_grad and torch.is_grad_enabled():
        solve = lambda z0: _solve(func, z0, t, method, rtol, atol, options)  # noqa: E731
        solution = _with_time_gradient(func, y0, t, t_in.to(y0.device), solve)
    else:
        solution = _solve(func, y0, t, method, rtol, atol, options)
    return solution if shapes is None else _unflatten(solution, shapes)


class _TupleFunc:
    """``func`` on a tuple state, seen by the solvers as a function of one flat vector (torchdiffeq's convention)."""

    def __init__(self, func: Callable[[Tensor, tuple[Tensor, ...]], Sequence[Tensor]], shapes: list[torch.Size]):
        self.func = func
        self.shapes = shapes

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.func(t, _unflatten(y, self.shapes))
        if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
            raise TypeError(f"for a tuple state of {len(self.shapes)} tensors func must return a tuple of as many")
        for k, (o, shape) in enumerate(zip(out, self.shapes)):
            if not isinstance(o, Tensor) or o.shape != shape:
                got = tuple(o.shape) if isinstance(o, Tensor) else type(o).__name__
                raise ValueError(f"func returned {got} for part {k} of the state, which has shape {tuple(shape)}")
        return torch.cat([o.reshape(-1) for o in out])


def _unflatten(y: Tensor, shapes: list[torch.Size]) -> tuple[Tensor, ...]:
    """Split the last dimension of ``y`` into tensors of ``shapes`` (with ``y``'s leading dimensions)."""
    parts, offset = [], 0
    for shape in shapes:
        n = shape.numel()
        parts.append(y[..., offset : offset + n].reshape(*y.shape[:-1], *shape))
        offset += n
    return tuple(parts)


def _flat_state(func: Any, y0: Any) -> tuple[Any, Any, list[torch.Size] | None]:
    """A tuple state ``(y0_1, ..., y0_k)`` as one flat vector and ``func`` as a function of it; other states pass."""
    if not isinstance(y0, tuple):
        return func, y0, None
    if not y0 or not all(isinstance(part, Tensor) for part in y0):
        raise TypeError("a tuple y0 must hold one or more tensors")
    if len({(part.dtype, part.device) for part in y0}) != 1:
        raise TypeError("the tensors of a tuple y0 must share one dtype and device")
    shapes = [part.shape for part in y0]
    return _TupleFunc(func, shapes), torch.cat([part.reshape(-1) for part in y0]), shapes


def _with_time_gradient(
    func: Func, y0: Tensor, t: Tensor, t_grad: Tensor, solve: Callable[[Tensor], Tensor]
) -> Tensor:
    r"""``solve(y0)`` with the gradient with respect to the times attached (Chen et al. 2018 {cite}`chen2018neural`,
    App. B.2): :math:`\partial y(t_i)/\partial t_i = f(t_i, y(t_i))` for :math:`i \ge 1`, and moving :math:`t_0`
    shifts the whole trajectory, :math:`\partial y(t_i)/\partial t_0 = -\Phi_{t_0}^{t_i}\, f(t_0, y_0)` (the
    flow's Jacobian applied to :math:`f_0`), which is what feeding :math:`y_0 - \delta t_0\, f_0` to the solver gives.
    Written as zero-valued terms ``(t - t.detach()) f``, so the values are unchanged and backpropagation through
    the solve supplies :math:`\Phi`; ``N + 1`` more evaluations of ``func``. Second derivatives with respect to
    ``t`` are not supported (the ``f`` values are constants of the graph)."""
    shift = (t_grad - t_grad.detach()).to(y0.dtype).view(-1, *([1] * y0.dim()))  # zero, carrying d/dt
    with torch.no_grad():
        f0 = func(t[0].to(y0.dtype), y0)
    ys = solve(y0 - shift[0] * f0)
    with torch.no_grad():
        fs = torch.stack([f0] + [func(ti.to(y0.dtype), yi) for ti, yi in zip(t[1:], ys[1:])])
    return ys + shift * fs


def _solve(
    func: Func,
    y0: Tensor,
    t: Tensor,
    method: Method,
    rtol: Any,
    atol: Any,
    options: dict | None,
) -> Tensor:
    """The dedl solve after the input checks (also used by the adjoint's backward pass)."""
    t_list = [float(x) for x in t.tolist()]
    opts = _check_options(options, method.options, method.name)
    if len(t_list) == 1:
        return y0.unsqueeze(0).clone()
    solution = method.solve(func, y0, t_list, rtol, atol, opts)
    _check_finite(solution, t)
    return solution


def _solve_rk(
    func: Func, y0: Tensor, t_list: list[float], rtol: Any, atol: Any, options: dict, *, tab: ButcherTableau
) -> Tensor:
    """A Runge-Kutta solve: the save-at stage over the adaptive steps, or the fixed grid."""
    if tab.adaptive:
        if isinstance(rtol, (int, float)) and isinstance(atol, (int, float)) and rtol == 0 and atol == 0:
            raise ValueError("rtol and atol cannot both be 0 for an adaptive method")
        steps = _rk_adaptive_steps(func, y0, t_list[0], t_list[-1], tab, rtol, atol, options)
        return _save_at(steps, y0, t_list, tab.dense)
    grid = _fixed_grid(t_list, options)
    solution = _rk_fixed(func, y0, grid, tab, options.get("perturb", False))
    if options.get("stats") is not None:
        n_steps = sum(segment[2] for segment in grid)
        options["stats"].update(nfe=tab.stages * n_steps, n_steps=n_steps)
    return solution


def _torchdiffeq_call(
    name: str, func: Func, y0: Tensor, t: Any, method: Any, rtol: Any, atol: Any, options: dict | None, **extra: Any
) -> Tensor:
    """Hand an ``odeint`` / ``odeint_adjoint`` call to torchdiffeq (imported lazily)."""
    try:
        import torchdiffeq
    except ImportError as err:  # pragma: no cover - torchdiffeq is a dependency of the book
        raise ImportError("backend='torchdiffeq' needs the torchdiffeq package: pip install torchdiffeq") from err
    if isinstance(method, ButcherTableau):
        raise ValueError("backend='torchdiffeq' takes a method name, not a ButcherTableau")
    if isinstance(method, str) and method in METHODS and METHODS[method].tableau is None:
        raise ValueError(
            f"torchdiffeq has no fixed-order {method!r} started by RK4 (its 'explicit_adams' ramps the order "
            "up from 1); use backend='dedl' for it"
        )
    if not isinstance(method, str):
        raise ValueError(f"unknown method {method!r}")
    import importlib

    solvers = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
    td_method = _TORCHDIFFEQ_NAMES.get(method, method)
    if td_method not in solvers:
        valid = sorted(set(_TORCHDIFFEQ_NAMES) | set(solvers))
        raise ValueError(f"unknown method {method!r} for backend 'torchdiffeq'; valid methods are {', '.join(valid)}")
    options = dict(options or {})
    if "stats" in options:
        raise ValueError("the 'stats' option is dedl's; torchdiffeq does not take it")
    # torchdiffeq only warns about options its solver does not take; dedl raises, under both backends
    parameters = inspect.signature(solvers[td_method].__init__).parameters.values()
    valid = {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} | {"norm"}
    valid -= {"self", "func", "y0", "rtol", "atol", "dtype", "device"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for torchdiffeq's {td_method!r}; valid options are "
            + ", ".join(sorted(valid))
        )
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=y0.dtype if isinstance(y0, Tensor) else None)
    fn = getattr(torchdiffeq, name)
    return fn(func, y0, t, rtol=rtol, atol=atol, method=td_method, options=options or None, **extra)


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


def odeint_event(
    func: Func,
    y0: Tensor,
    t0: Tensor | float,
    *,
    event_fn: Callable[[Tensor, Tensor], Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Tensor] = odeint,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    r"""Solve :math:`y' = f(t, y)` from ``t0`` until the event function :math:`g(t, y(t))` changes sign, with
    gradients through the event time (Chen, Amos and Nickel 2021 {cite}`chen2021learning`; torchdiffeq's call).

    The event time :math:`t^*` is found without a graph: accepted steps of an adaptive method are taken until
    :math:`g` changes sign over one, then :math:`g` is bisected on the step's dense output. Gradients come from
    the implicit function theorem applied to :math:`g(t^*, y(t^*)) = 0` (Chen et al. 2021, eq. 6):

    .. math:: \frac{dt^*}{d\theta} = -\Big(\frac{\partial g}{\partial t} + \frac{\partial g}{\partial y}
              f(t^*, y^*)\Big)^{-1} \frac{d g(t^*, y(t^*; \theta))}{d\theta}\Big|_{t^* \text{fixed}},

    and the state there moves with it, :math:`dy(t^*)/d\theta = \partial y/\partial\theta + f(t^*, y^*)\,
    dt^*/d\theta`. ``y(t^*)`` itself comes from ``odeint_interface`` (:func:`odeint` or
    :func:`dedl.solvers.odeint_adjoint`).

    Args:
        func, y0: as for :func:`odeint`.
        t0: the initial time (a number or a 0-d tensor, which may require grad).
        event_fn: ``g(t, y)`` returning a scalar tensor; the event is its first sign change after ``t0``
            (if ``g(t0, y0) = 0`` exactly, the first one after the first step).
        reverse_time: integrate toward ``-inf`` instead of ``+inf``.
        odeint_interface: the solver of the differentiable solve from ``t0`` to ``t^*``.
        kwargs: ``method`` (an adaptive method; default ``"dopri5"``), ``rtol``, ``atol``, ``options`` (and
            for :func:`dedl.solvers.odeint_adjoint` its own arguments); the same settings drive the event search.

    Returns:
        ``(event_t, solution)``: the event time, a 0-d tensor, and the states at ``[t0, event_t]``, shape
        ``(2, *y0.shape)``.

    Raises:
        ValueError: ``method`` is not adaptive, or an unknown option.
        RuntimeError: no event occurs within ``options["max_num_steps"]`` steps.
    """
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
    t0_tensor = torch.as_tensor(t0)
    if t0_tensor.ndim != 0 or not bool(torch.isfinite(t0_tensor)):
        raise ValueError(f"t0 must be one finite time, got {t0!r}")
    y0, _ = _check_y0_t(func, y0, t0_tensor.detach().reshape(1))
    method = _resolve_method(kwargs.get("method", "dopri5"))
    tab = method.tableau
    if tab is None or not tab.adaptive:
        raise ValueError(
            f"odeint_event needs an adaptive method (bosh3, dopri5 or a tableau with b_error), got {method.name!r}"
        )
    rtol, atol = kwargs.get("rtol", 1e-7), kwargs.get("atol", 1e-9)
    _check_tol("rtol", rtol)
    _check_tol("atol", atol)
    options = _check_options(kwargs.get("options"), method.options, method.name)
    options.pop("stats", None)
    start = float(t0_tensor.detach())
    with torch.no_grad():
        t_event = _find_event(func, y0.detach(), start, -math.inf if reverse_time else math.inf, tab, rtol, atol,
                              options, event_fn)
    t_event = torch.tensor(t_event, dtype=y0.dtype, device=y0.device)
    times = torch.stack([t0_tensor.to(dtype=y0.dtype, device=y0.device), t_event])
    ys = odeint_interface(func, y0, times, **kwargs)
    y_event = ys[-1]
    with torch.enable_grad():  # g_dot = dg/dt + dg/dy . f at the event, a constant of the graph
        t_var = t_event.clone().requires_grad_(True)
        y_var = y_event.detach().requires_grad_(True)
        g = event_fn(t_var, y_var)
        g_t, g_y = torch.autograd.grad(g, (t_var, y_var), allow_unused=True)
    with torch.no_grad():
        f_event = func(t_event, y_event)
        g_dot = (0.0 if g_t is None else g_t) + (0.0 if g_y is None else (g_y * f_event).sum())
    if not torch.is_grad_enabled():
        return t_event, ys
    if float(g_dot) == 0.0:
        raise FloatingPointError("the event function is tangent to the trajectory at the event (dg/dt = 0): "
                                 "the event time has no derivative")
    g_value = event_fn(t_event, y_event)  # ~0, carrying the graph of y(t*) and of event_fn's parameters
    event_t = t_event - (g_value - g_value.detach()) / g_dot  # the implicit function theorem, value unchanged
    shift = event_t - event_t.detach()
    return event_t, torch.stack([ys[0], y_event + shift * f_event])


def _find_event(
    func: Func, y0: Tensor, t0: float, t_end: float, tab: ButcherTableau, rtol: Any, atol: Any, options: dict,
    event_fn: Callable[[Tensor, Tensor], Tensor],
) -> float:
    """The first sign change of ``event_fn`` along the accepted steps, bisected on the dense output."""
    dtype, device = y0.dtype, y0.device

    def g(t: float, y: Tensor) -> float:
        return float(event_fn(torch.tensor(t, dtype=dtype, device=device), y))

    sign0 = math.copysign(1.0, g(t0, y0)) if g(t0, y0) != 0 else 0.0
    steps = _rk_adaptive_steps(func, y0, t0, t_end, tab, rtol, atol, options)
    try:
        for step in steps:
            g_new = g(step.t_new, step.y1)
            if sign0 == 0.0:
                sign0 = math.copysign(1.0, g_new) if g_new != 0 else 0.0
                continue
            if g_new * sign0 > 0:
                continue
            lo, hi = 0.0, 1.0  # theta: g has sign0 at lo and not at hi
            h = step.t_new - step.t
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if mid in (lo, hi) or abs(h) * (hi - lo) <= 2 * abs(step.t + h * mid) * torch.finfo(dtype).eps:
                    break
                y_mid = _interpolate(step.y, step.y1, step.ks, step.f_new, h, mid, tab.dense)
                if g(step.t + h * mid, y_mid) * sign0 > 0:
                    lo = mid
                else:
                    hi = mid
            return step.t + h * hi
    finally:
        steps.close()
    raise RuntimeError("no event: the solve ended without a sign change of event_fn")  # pragma: no cover


for _tab in TABLEAUX.values():
    register_method(_rk_method(_tab))
