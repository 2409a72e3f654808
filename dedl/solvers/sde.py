"""Stochastic differential equations: Brownian paths and fixed-step solvers.

An SDE in the torchsde convention is an object ``sde`` with

* ``sde.f(t, y)`` the drift, shape ``(batch, d)``;
* ``sde.g(t, y)`` the diffusion, shape ``(batch, d)`` for ``noise_type="diagonal"``, ``(batch, d, 1)`` for
  ``"scalar"`` and ``(batch, d, m)`` for ``"general"`` and ``"additive"`` (``"additive"`` is general noise whose
  ``g`` does not depend on ``y``);
* ``sde.noise_type`` and ``sde.sde_type`` (``"ito"`` or ``"stratonovich"``),

and it stands for :math:`dY_t = f(t, Y_t)\\,dt + g(t, Y_t)\\,dW_t`, read in the Itô or the Stratonovich sense,
where :math:`W` is an ``m``-dimensional Brownian motion (``m = d`` for diagonal noise, ``m = 1`` for scalar noise).

:func:`sdeint` mirrors ``torchsde.sdeint`` {cite}`li2020scalable` (torchsde's arguments and shapes, with the
differences listed first in its docstring; ``backend="torchsde"`` hands the call over), with six fixed-step methods
({cite}`kloeden1992numerical` unless stated):

* ``euler`` (Euler-Maruyama): Itô; every noise type; strong order 1/2 (1 for additive noise), weak order 1.
* ``milstein``: Itô or Stratonovich; diagonal, scalar, additive noise; strong order 1, weak order 1.
* ``srk`` (Rößler's stochastic Runge-Kutta {cite}`rossler2010runge`): Itô with diagonal, scalar or additive noise,
  and Stratonovich with additive noise (where the two coincide); strong order 1.5. Needs :math:`I_{(1,0)}`, the
  time integral of the path: a :class:`BrownianPath` or ``torchsde.BrownianInterval`` with
  ``levy_area_approximation="space-time"`` (``sdeint`` draws it itself when ``bm`` is None).
* ``heun`` (stochastic Heun): Stratonovich; every noise type; strong order 1 (1/2 for general noise), weak order 1.
* ``midpoint``: Stratonovich; as ``heun``.
* ``reversible_heun`` {cite}`kidger2021efficient`: Stratonovich; every noise type; strong order 1/2 (1 for additive
  noise); one drift and diffusion evaluation a step, algebraically reversible.

:class:`BrownianPath` is one fixed sample path of Brownian motion that answers queries at any step size with the
same underlying path, so that strong errors can be measured on one path at several step sizes.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, insort
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from dedl.solvers.timegrid import check_time_grid

__all__ = [
    "BrownianPath",
    "sdeint",
    "step_grid",
    "euler_maruyama_step",
    "milstein_step",
    "heun_step",
    "midpoint_step",
    "srk_step",
    "reversible_heun_step",
    "SRI_TABLEAU",
    "SRA_TABLEAU",
    "METHODS",
    "NAMES",
    "NOISE_TYPES",
    "SDE_TYPES",
    "STRONG_ORDER",
]

#: The noise types of torchsde: the shape of the diffusion and how it meets the Brownian increment.
NOISE_TYPES = ("diagonal", "scalar", "additive", "general")
#: The two readings of the stochastic integral.
SDE_TYPES = ("ito", "stratonovich")
#: The libraries :func:`sdeint` can hand a solve to.
BACKENDS = ("dedl", "torchsde")

_COMMUTATIVE = ("diagonal", "scalar", "additive")
# torchsde's Levy-area settings of a Brownian motion that provide U (the space-time area and more).
_SPACE_TIME = ("space-time", "davie", "foster")

#: The noise types each method accepts, for each SDE type it solves.
METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "euler": {"ito": NOISE_TYPES},
    "milstein": {"ito": _COMMUTATIVE, "stratonovich": _COMMUTATIVE},
    "srk": {"ito": _COMMUTATIVE, "stratonovich": ("additive",)},
    "heun": {"stratonovich": NOISE_TYPES},
    "midpoint": {"stratonovich": NOISE_TYPES},
    "reversible_heun": {"stratonovich": NOISE_TYPES},
}

#: Strong order of each method for commutative noise (diagonal, scalar, additive). Additive noise lifts Euler to 1;
#: general noise drops Heun, midpoint and reversible Heun to 1/2. Reversible Heun: 1 is measured on diagonal and
#: scalar noise (tests/test_sde.py); Kidger et al. (2021) prove 1/2 in general and 1 for additive noise.
STRONG_ORDER = {"euler": 0.5, "milstein": 1.0, "srk": 1.5, "heun": 1.0, "midpoint": 1.0, "reversible_heun": 1.0}

# Largest number of Gaussian numbers drawn by one randn call when sdeint makes its own increments: the
# increments for all steps are drawn at once unless that would exceed this, then in as few chunks as fit.
_MAX_RANDN_ELEMENTS = 1 << 24


def _as_float(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same; a device without an index (``"cuda"``) matches any index of its type."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _time_tolerance(dtype: torch.dtype, scale: float) -> float:
    """How far two times may differ and still be 'the same time' when they were stored in ``dtype``."""
    return 8.0 * torch.finfo(dtype).eps * max(1.0, scale)


# --------------------------------------------------------------------------------------------------------------
# Brownian motion
# --------------------------------------------------------------------------------------------------------------


class BrownianPath:
    """One sample path of an ``m``-dimensional Brownian motion on ``[t0, t1]``, queried as increments.

    The path is drawn once, from ``seed``, on a uniform grid of ``n_cells`` cells of width
    ``h = (t1 - t0) / n_cells`` (one ``randn`` call: ``W(t0) = 0`` and independent :math:`N(0, h)` increments):
    ``n_cells = 2**levels`` (a dyadic grid), or the smallest number of cells no wider than ``dt``.
    At grid points the path is exact. Between grid points it is filled in by the Brownian
    bridge: given the nearest known values :math:`W(a)`, :math:`W(b)` around :math:`s`,

    .. math:: W(s) \\sim N\\Big(W(a) + \\tfrac{s-a}{b-a}\\,(W(b) - W(a)),\\ \\tfrac{(s-a)(b-s)}{b-a}\\Big),

    drawn from a second generator derived from ``seed`` and cached, so that later queries see the same value
    and increments stay additive (:math:`W(c) - W(a) = (W(b) - W(a)) + (W(c) - W(b))`). Off-grid values are
    reproducible for the same sequence of queries; queries at steps that are whole multiples of ``h`` (on a
    dyadic grid: every ``(t1 - t0) / 2**k``, ``k <= levels``) touch the grid only, in any order. This is the
    strong-convergence set-up of {cite}`higham2001algorithmic` (one fine path; coarser steps add up its
    increments), with the Brownian bridge of {cite}`kloeden1992numerical` for the times in between.

    ``bm(ta, tb)`` returns :math:`W(t_b) - W(t_a)` of shape ``size`` (torchsde's convention; ``bm(ta)`` returns
    :math:`W(t_a) - W(t_0)`). The object also has torchsde's ``shape``, ``dtype``, ``device`` and
    ``levy_area_approximation`` attributes, so it can be passed as ``bm`` to ``torchsde.sdeint`` as well.

    With ``levy_area_approximation="space-time"`` the path also carries its time integral
    :math:`V(s) = \\int_{t_0}^s W(r)\\,dr`, and ``bm(ta, tb, return_U=True)`` returns
    :math:`(\\Delta W, U)` with :math:`U = I_{(1,0)} = \\int_{t_a}^{t_b} (W(s) - W(t_a))\\,ds
    = V(t_b) - V(t_a) - (t_b - t_a) W(t_a)`, the integral that order-1.5 schemes need (torchsde's ``U``; the
    space-time Lévy area is :math:`U/(t_b - t_a) - \\Delta W/2`). Each grid cell draws :math:`U` jointly with
    :math:`\\Delta W` (variance :math:`h^3/3`, covariance :math:`h^2/2` {cite}`kloeden1992numerical`, Sec. 10.4),
    and off the grid :math:`(W, V)`, a Gaussian Markov process, is filled in by its bridge between the nearest known
    points, so :math:`U` stays consistent under refinement: :math:`U_{a,c} = U_{a,b} + U_{b,c} + (c - b)\\,W_{a,b}`.
    The grid values of :math:`W` are those of ``"none"`` with the same seed; :math:`V` is held in float64.

    Args:
        t0, t1: the time interval, ``t0 < t1``.
        size: shape of one increment, ``(batch, m)`` for :func:`sdeint`.
        dt: grid width wanted: ``n_cells = ceil((t1 - t0) / dt)`` (up to rounding), so that steps that are
            whole multiples of ``dt`` fall on the grid.
        levels: ``n_cells = 2**levels`` if ``dt`` is not given (default 10, i.e. 1024 cells).
        seed: integer seed; ``None`` draws one from torch's global generator (so ``torch.manual_seed`` or
            ``dedl.utils.seed_everything`` makes it reproducible).
        dtype, device: of the increments (default: torch's default dtype, the CPU).
        levy_area_approximation: ``"none"`` (increments only) or ``"space-time"`` (also :math:`U`, for ``srk``).

    Memory is ``(n_cells + 1) * prod(size)`` numbers, twice that with ``"space-time"``.
    """

    def __init__(
        self,
        t0: float,
        t1: float,
        size: Sequence[int],
        dt: float | None = None,
        levels: int | None = None,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        levy_area_approximation: str = "none",
    ):
        if levy_area_approximation not in ("none", "space-time"):
            raise ValueError(
                f"BrownianPath levy_area_approximation must be 'none' or 'space-time', got {levy_area_approximation!r}"
            )
        t0, t1 = _as_float(t0), _as_float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1)) or not t0 < t1:
            raise ValueError(f"BrownianPath needs finite t0 < t1, got t0={t0}, t1={t1}")
        if isinstance(size, int):
            size = (size,)
        size = tuple(int(s) for s in size)
        if any(s <= 0 for s in size):
            raise ValueError(f"BrownianPath size must have positive entries, got {size}")
        if dt is not None and levels is not None:
            raise ValueError("give BrownianPath either dt or levels, not both")
        if dt is not None:
            dt = _as_float(dt)
            if not dt > 0 or not math.isfinite(dt):
                raise ValueError(f"BrownianPath dt must be positive, got {dt}")
            x = (t1 - t0) / dt
            n_cells = max(1, math.ceil(x - 1e-6 * max(1.0, x)))
        else:
            levels = 10 if levels is None else int(levels)
            if not 0 <= levels <= 30:
                raise ValueError(f"BrownianPath levels must be in [0, 30], got {levels}")
            n_cells = 1 << levels
        if (n_cells + 1) * math.prod(size) > 1 << 31:
            raise ValueError(
                f"BrownianPath with {n_cells} cells of size {size} would hold more than 2**31 numbers; "
                "use a coarser dt / fewer levels or a smaller batch"
            )
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        device = torch.device(device) if device is not None else torch.device("cpu")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())

        self._t0, self._t1, self._size, self._dtype, self._device = t0, t1, size, dtype, device
        self.n_cells, self.seed = n_cells, int(seed)
        self._h = (t1 - t0) / n_cells
        gen = torch.Generator(device=device).manual_seed(self.seed)
        dw = torch.randn((n_cells, *size), generator=gen, dtype=dtype, device=device) * math.sqrt(self._h)
        self._w = torch.cat([torch.zeros((1, *size), dtype=dtype, device=device), dw.cumsum(0)])
        self.levy_area_approximation = levy_area_approximation
        self._v: Tensor | None = None
        if levy_area_approximation == "space-time":
            # U of each cell given its dW: mean h dW / 2, variance h^3/3 - (h^2/2)^2 / h = h^3/12.
            gen_u = torch.Generator(device=device).manual_seed((self.seed * 6364136223846793005 + 2) % 2**63)
            z = torch.randn((n_cells, *size), generator=gen_u, dtype=torch.float64, device=device)
            u = dw.double() * (0.5 * self._h) + z * math.sqrt(self._h**3 / 12)
            v_cells = self._w[:-1].double() * self._h + u  # int of W over each cell
            self._v = torch.cat([torch.zeros((1, *size), dtype=torch.float64, device=device), v_cells.cumsum(0)])
        # Bridge samples: their own stream, so the grid does not depend on which off-grid points were asked.
        self._bridge_gen = torch.Generator(device=device).manual_seed((self.seed * 6364136223846793005 + 1) % 2**63)
        # cell index -> sorted [(time, W(time), V(time) or None)]
        self._cache: dict[int, list[tuple[float, Tensor, Tensor | None]]] = {}

    # torchsde's BaseBrownian interface ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def size(self) -> tuple[int, ...]:
        return self._size

    @property
    def t0(self) -> float:
        return self._t0

    @property
    def t1(self) -> float:
        return self._t1

    @property
    def grid_times(self) -> Tensor:
        """The grid on which the path was drawn, shape ``(n_cells + 1,)`` (float64)."""
        return torch.linspace(self._t0, self._t1, len(self._w), dtype=torch.float64)

    @property
    def grid_values(self) -> Tensor:
        """:math:`W` at :attr:`grid_times`, shape ``(n_cells + 1, *size)``."""
        return self._w

    def __repr__(self) -> str:
        return (
            f"BrownianPath(t0={self._t0}, t1={self._t1}, size={self._size}, n_cells={self.n_cells}, "
            f"seed={self.seed}, dtype={self._dtype}, device={self._device}, "
            f"levy_area_approximation={self.levy_area_approximation!r})"
        )

    def __call__(
        self, ta: Any, tb: Any = None, return_U: bool = False, return_A: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """:math:`W(t_b) - W(t_a)` (or :math:`W(t_a) - W(t_0)` when ``tb`` is None), and :math:`U` if
        ``return_U``."""
        if return_A:
            raise ValueError("BrownianPath has no Levy area A (torchsde's 'davie' / 'foster'); only return_U")
        if return_U and self._v is None:
            raise ValueError("return_U needs a BrownianPath built with levy_area_approximation='space-time'")
        if tb is None:
            ta, tb = self._t0, ta
        tol_dtype = ta.dtype if isinstance(ta, Tensor) and ta.is_floating_point() else torch.float64
        if isinstance(tb, Tensor) and tb.is_floating_point() and torch.finfo(tb.dtype).eps > torch.finfo(tol_dtype).eps:
            tol_dtype = tb.dtype
        a, b = _as_float(ta), _as_float(tb)
        if a > b:
            raise ValueError(f"BrownianPath query needs ta <= tb, got ta={a}, tb={b}")
        sb, wb, vb = self._value(b, tol_dtype)  # b before a: the order in which off-grid points are drawn
        sa, wa, va = self._value(a, tol_dtype)
        if not return_U:
            return wb - wa
        return wb - wa, (vb - va - (sb - sa) * wa.double()).to(self._dtype)

    # internals ------------------------------------------------------------------------------------------------
    def _locate(self, s: float, tol_dtype: torch.dtype) -> tuple[int, bool, float]:
        """Grid cell of time ``s`` and whether ``s`` is (up to rounding in ``tol_dtype``) a grid point."""
        tol = _time_tolerance(tol_dtype, max(abs(self._t0), abs(self._t1)))
        if s < self._t0 - tol or s > self._t1 + tol:
            raise ValueError(f"BrownianPath queried at t={s}, outside [t0, t1] = [{self._t0}, {self._t1}]")
        s = min(max(s, self._t0), self._t1)
        x = (s - self._t0) / self._h
        k = round(x)
        if abs(x - k) * self._h <= tol:
            return k, True, s
        return math.floor(x), False, s

    def _value(self, s: float, tol_dtype: torch.dtype = torch.float64) -> tuple[float, Tensor, Tensor | None]:
        """``(s, W(s), V(s))`` (``V`` None without the space-time area), ``s`` snapped to the grid when on it."""
        k, on_grid, s = self._locate(s, tol_dtype)
        if on_grid:
            return self._grid_point(k)
        cell = self._cache.setdefault(k, [])
        times = [c[0] for c in cell]
        i = bisect_left(times, s)
        if i < len(cell) and cell[i][0] == s:
            return cell[i]
        ta, wa, va = cell[i - 1] if i > 0 else self._grid_point(k)
        tb, wb, vb = cell[i] if i < len(cell) else self._grid_point(k + 1)
        if self._v is None:
            lam = (s - ta) / (tb - ta)
            std = math.sqrt((s - ta) * (tb - s) / (tb - ta))
            z = torch.randn(self._size, generator=self._bridge_gen, dtype=self._dtype, device=self._device)
            point = (s, wa + lam * (wb - wa) + std * z, None)
        else:
            point = (s, *self._bridge_w_v(s - ta, tb - ta, wa, va, wb, vb))
        insort(cell, point, key=lambda c: c[0])
        return point

    def _grid_point(self, k: int) -> tuple[float, Tensor, Tensor | None]:
        return self._t0 + k * self._h, self._w[k], None if self._v is None else self._v[k]

    def _bridge_w_v(
        self, tau: float, h: float, wa: Tensor, va: Tensor, wb: Tensor, vb: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Draw :math:`(W, V)` at :math:`a + \\tau` given them at :math:`a` and :math:`b = a + h`.

        The Gaussian conditional law of :math:`x = (W_{a,a+\\tau}, U_{a,a+\\tau})` given
        :math:`y = (W_{a,b}, U_{a,b})`: mean :math:`\\Sigma_{xy}\\Sigma_{yy}^{-1} y`, covariance
        :math:`\\Sigma_{xx} - \\Sigma_{xy}\\Sigma_{yy}^{-1}\\Sigma_{yx}`, from
        :math:`\\mathrm{Cov}(W_s, W_r) = \\min(s, r)`
        and :math:`\\mathrm{Cov}(U_s, W_r) = \\int_0^s \\min(q, r)\\,dq` (times from :math:`a`).
        """
        sxy = [[tau, tau * h - tau**2 / 2], [tau**2 / 2, tau**2 * h / 2 - tau**3 / 6]]
        syy_inv = [[4 / h, -6 / h**2], [-6 / h**2, 12 / h**3]]
        gain = [[sum(sxy[i][k] * syy_inv[k][j] for k in range(2)) for j in range(2)] for i in range(2)]
        sxx = [[tau, tau**2 / 2], [tau**2 / 2, tau**3 / 3]]
        cov = [[sxx[i][j] - sum(gain[i][k] * sxy[j][k] for k in range(2)) for j in range(2)] for i in range(2)]
        l11 = math.sqrt(max(cov[0][0], 0.0))
        l21 = cov[1][0] / l11 if l11 > 0 else 0.0
        l22 = math.sqrt(max(cov[1][1] - l21**2, 0.0))
        w_ab, wa64 = (wb - wa).double(), wa.double()
        u_ab = vb - va - h * wa64
        z = torch.randn((2, *self._size), generator=self._bridge_gen, dtype=torch.float64, device=self._device)
        w = gain[0][0] * w_ab + gain[0][1] * u_ab + l11 * z[0]
        u = gain[1][0] * w_ab + gain[1][1] * u_ab + l21 * z[0] + l22 * z[1]
        return (wa64 + w).to(self._dtype), va + tau * wa64 + u

    def _increments(self, times: Sequence[float], tol_dtype: torch.dtype) -> list[Tensor]:
        """All increments ``W(times[i+1]) - W(times[i])`` at once, shape ``(len(times) - 1, *size)``, and the
        :math:`U` of each step as a second tensor when the path has the space-time area."""
        located = [self._locate(s, tol_dtype) for s in times]
        if all(on for _, on, _ in located):
            idx = torch.tensor([k for k, _, _ in located], device=self._device)
            s = torch.tensor([self._grid_point(k)[0] for k, _, _ in located], dtype=torch.float64, device=self._device)
            w = self._w.index_select(0, idx)
            v = None if self._v is None else self._v.index_select(0, idx)
        else:
            points = [self._value(s, tol_dtype) for s in times]
            s = torch.tensor([p[0] for p in points], dtype=torch.float64, device=self._device)
            w = torch.stack([p[1] for p in points])
            v = None if self._v is None else torch.stack([p[2] for p in points])
        if v is None:
            return [w[1:] - w[:-1]]
        ds = (s[1:] - s[:-1]).reshape(-1, *[1] * len(self._size))
        return [w[1:] - w[:-1], (v[1:] - v[:-1] - ds * w[:-1].double()).to(self._dtype)]


# --------------------------------------------------------------------------------------------------------------
# The terms of an SDE: drift, diffusion and their fast paths
# --------------------------------------------------------------------------------------------------------------


def _prod(noise_type: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``g · dW`` for each noise type: elementwise (diagonal), broadcast (scalar), matrix-vector (general)."""
    if noise_type == "diagonal":
        return torch.mul
    if noise_type == "scalar":
        return lambda g, dw: g.squeeze(-1) * dw
    return lambda g, dw: torch.bmm(g, dw.unsqueeze(-1)).squeeze(-1)


#: torchsde's ``names=`` keys and the method name each one replaces.
NAMES = {
    "drift": "f",
    "diffusion": "g",
    "prior_drift": "h",
    "drift_and_diffusion": "f_and_g",
    "drift_and_diffusion_prod": "f_and_g_prod",
}


class _Terms:
    """The drift and diffusion of an SDE, resolved once from whichever of torchsde's methods it defines.

    ``f``, ``g`` and ``h`` (the prior drift of :func:`sdeint`'s ``logqp``) and the fast paths ``f_and_g(t, y)``,
    ``g_prod(t, y, v)`` = :math:`g\\,v` and ``f_and_g_prod(t, y, v)``: a solver calls the one it needs and gets the
    SDE's own method when it has one, else one built from the others (``f_and_g_prod`` from ``f`` and ``g_prod``,
    or from ``f_and_g``, or from ``f`` and ``g``). What cannot be built is None.
    """

    def __init__(
        self,
        noise_type: str,
        f: Callable[..., Tensor] | None = None,
        g: Callable[..., Tensor] | None = None,
        h: Callable[..., Tensor] | None = None,
        f_and_g: Callable[..., tuple[Tensor, Tensor]] | None = None,
        g_prod: Callable[..., Tensor] | None = None,
        f_and_g_prod: Callable[..., tuple[Tensor, Tensor]] | None = None,
    ):
        self.noise_type, self.prod, self.h = noise_type, _prod(noise_type), h
        if f_and_g is not None:
            f = f if f is not None else lambda t, y: f_and_g(t, y)[0]
            g = g if g is not None else lambda t, y: f_and_g(t, y)[1]
        elif f is not None and g is not None:
            f_and_g = lambda t, y: (f(t, y), g(t, y))  # noqa: E731
        if f_and_g_prod is None:
            if f is not None and g_prod is not None:
                f_and_g_prod = lambda t, y, v: (f(t, y), g_prod(t, y, v))  # noqa: E731
            elif f_and_g is not None:
                f_and_g_prod = lambda t, y, v: self._times(*f_and_g(t, y), v)  # noqa: E731
        if g_prod is None and g is not None:
            g_prod = lambda t, y, v: self.prod(g(t, y), v)  # noqa: E731
        self.f, self.g, self.f_and_g, self.g_prod, self.f_and_g_prod = f, g, f_and_g, g_prod, f_and_g_prod

    def _times(self, f: Tensor, g: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return f, self.prod(g, v)

    @classmethod
    def of(cls, sde: Any, noise_type: str, names: dict[str, str] | None = None) -> _Terms:
        """The terms of ``sde`` under torchsde's ``names``. A combined fast path (``f_and_g``, ``f_and_g_prod``,
        ``g_prod``) is skipped when ``names`` renames a part of it but not the path itself: it would compute the
        other drift (e.g. ``names={"drift": "h"}`` to sample the prior of a latent SDE that defines ``f_and_g``)."""
        names = dict(names or {})
        unknown = set(names) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown names keys {sorted(unknown)}; torchsde's keys are {tuple(NAMES)}")
        for key, value in names.items():
            if not isinstance(value, str):
                raise TypeError(f"names[{key!r}] must be the name of a method of sde, got {type(value).__name__}")
            if not callable(getattr(sde, value, None)):
                raise ValueError(f"names[{key!r}] = {value!r}, but {type(sde).__name__} has no method {value!r}")
        renamed = {NAMES[k] for k in names}
        parts = {"f_and_g": {"f", "g"}, "g_prod": {"g"}, "f_and_g_prod": {"f", "g"}}
        methods = {}
        for key, attr in [*NAMES.items(), ("diffusion_prod", "g_prod")]:
            if attr in parts and attr not in renamed and parts[attr] & renamed:
                continue
            method = getattr(sde, names.get(key, attr), None)
            methods[attr] = method if callable(method) else None
        return cls(noise_type, **methods)


def _as_terms(sde: Any, noise_type: str) -> _Terms:
    return sde if isinstance(sde, _Terms) else _Terms.of(sde, noise_type)


def _logqp_terms(terms: _Terms, noise_type: str, eps: float = 1e-7) -> _Terms:
    """The SDE augmented with the log-ratio :math:`L` of posterior and prior path measures {cite}`li2020scalable`.

    The state is :math:`(Y, L)` with :math:`dL = \\tfrac12\\,|u(t, Y)|^2\\,dt` and no noise, where
    :math:`u = g^{-1}(f - h)` solves :math:`g\\,u = f - h` (:math:`h` the prior drift): :math:`(f - h)/g`
    componentwise for diagonal noise (:math:`|g| \\ge` ``eps``), the pseudo-inverse otherwise. By Girsanov's
    theorem :math:`E[L_T]` is :math:`KL(\\mathbb{Q} \\| \\mathbb{P})` over :math:`[t_0, T]`, the KL term of the
    latent SDE's evidence lower bound (Li et al. 2020). Solving the augmented SDE with the chosen method integrates
    :math:`L` as torchsde does.
    """
    f, g, h = terms.f, terms.g, terms.h

    def kl_rate(fy: Tensor, gy: Tensor, hy: Tensor) -> Tensor:
        if noise_type == "diagonal":
            u = (fy - hy) / torch.where(gy.abs() > eps, gy, torch.full_like(gy, eps).copysign(gy))
        else:
            u = (torch.linalg.pinv(gy) @ (fy - hy).unsqueeze(-1)).squeeze(-1)
        return 0.5 * u.pow(2).sum(-1, keepdim=True)

    def zero_row(gy: Tensor) -> Tensor:
        return gy.new_zeros((gy.shape[0], 1, *gy.shape[2:]))

    def aug_f_and_g(t: Tensor, ya: Tensor) -> tuple[Tensor, Tensor]:
        y = ya[:, :-1]
        fy, gy = terms.f_and_g(t, y)
        return torch.cat([fy, kl_rate(fy, gy, h(t, y))], 1), torch.cat([gy, zero_row(gy)], 1)

    def aug_g(t: Tensor, ya: Tensor) -> Tensor:
        gy = g(t, ya[:, :-1])
        return torch.cat([gy, zero_row(gy)], 1)

    def aug_f(t: Tensor, ya: Tensor) -> Tensor:
        y = ya[:, :-1]
        fy = f(t, y)
        return torch.cat([fy, kl_rate(fy, g(t, y), h(t, y))], 1)

    return _Terms(noise_type, f=aug_f, g=aug_g, f_and_g=aug_f_and_g)


# --------------------------------------------------------------------------------------------------------------
# One step of each method
# --------------------------------------------------------------------------------------------------------------


def euler_maruyama_step(sde: Any, t0: Tensor, y: Tensor, h: float, dw: Tensor, noise_type: str) -> Tensor:
    """One Euler-Maruyama step, :math:`Y_{n+1} = Y_n + f(t_n, Y_n)\\,h + g(t_n, Y_n)\\,\\Delta W_n`.

    Converges to the Itô solution with strong order 1/2 and weak order 1 {cite}`kloeden1992numerical`
    (Sec. 10.2; {cite}`higham2001algorithmic`, the EM method). ``dw`` has shape ``(batch, m)``. ``sde`` needs
    ``f`` and ``g``, or torchsde's ``f_and_g`` / ``g_prod`` / ``f_and_g_prod`` (used when defined).
    """
    f, gdw = _as_terms(sde, noise_type).f_and_g_prod(t0, y, dw)
    return torch.add(y, f, alpha=h).add_(gdw)


def _g_dg(sde: Any, t0: Tensor, y: Tensor, noise_type: str, create_graph: bool) -> tuple[Tensor, Tensor]:
    """``g(t, y)`` and the Milstein factor :math:`L^1 g = (\\partial g / \\partial y)\\, g` by autograd.

    Diagonal noise: :math:`g_i\\,\\partial g_i / \\partial y_i` (one vector-Jacobian product, exact because
    :math:`g_i` depends on :math:`y_i` only). Scalar noise: the Jacobian-vector product :math:`J_g\\, g` via the
    double-vjp trick (two backward passes). A diffusion that does not depend on ``y`` (constant, or a function
    of ``t`` alone) has :math:`L^1 g = 0`.
    """
    with torch.enable_grad():
        yy = y if y.requires_grad else y.detach().requires_grad_(True)
        g = sde.g(t0, yy)
        if not g.requires_grad:  # no graph back to y: g does not depend on the state
            dg = None
        elif noise_type == "diagonal":
            (dg,) = torch.autograd.grad(g, yy, g, create_graph=create_graph, allow_unused=True)
        else:  # scalar
            gs = g.squeeze(-1)
            u = torch.zeros_like(gs, requires_grad=True)
            (jtu,) = torch.autograd.grad(gs, yy, u, create_graph=True, allow_unused=True)
            if jtu is None:
                dg = None
            else:
                (dg,) = torch.autograd.grad(jtu, u, gs, create_graph=create_graph, allow_unused=True)
    if dg is None:  # g does not depend on y
        dg = torch.zeros_like(y)
    if not create_graph:
        g, dg = g.detach(), dg.detach()
    return g, dg


def milstein_step(
    sde: Any,
    t0: Tensor,
    y: Tensor,
    h: float,
    dw: Tensor,
    noise_type: str,
    sde_type: str = "ito",
    grad_free: bool = False,
) -> Tensor:
    """One Milstein step for diagonal, scalar or additive noise {cite}`milstein1974approximate`.

    .. math:: Y_{n+1} = Y_n + f\\,h + g\\,\\Delta W_n + \\tfrac12\\,(\\partial_y g\\, g)\\,(\\Delta W_n^2 - h)

    (Itô; for Stratonovich SDEs the last factor is :math:`\\Delta W_n^2`), with everything evaluated at
    :math:`(t_n, Y_n)` and products taken componentwise for diagonal noise {cite}`kloeden1992numerical` (Sec. 10.3).
    Strong order 1 for these (commutative) noise types.

    ``grad_free=False`` computes :math:`\\partial_y g\\, g` with autograd (differentiable, so it trains);
    ``grad_free=True`` uses the derivative-free variant of {cite}`kloeden1992numerical` (Sec. 11.1): with
    :math:`\\bar Y = Y_n + f\\,h + g\\sqrt h` (Itô) or :math:`Y_n + g\\sqrt h` (Stratonovich), it replaces
    :math:`\\partial_y g\\, g` by :math:`(g(t_n, \\bar Y) - g(t_n, Y_n))/\\sqrt h`, one extra ``g`` call and no
    derivatives. Additive noise has :math:`\\partial_y g = 0`, so Milstein is Euler-Maruyama there.
    """
    sde = _as_terms(sde, noise_type)
    if noise_type in ("additive", "general"):
        if noise_type == "general":
            raise ValueError("milstein needs diagonal, scalar or additive noise (general noise needs Levy areas)")
        return euler_maruyama_step(sde, t0, y, h, dw, noise_type)
    f = sde.f(t0, y)
    # Y + f h + g dW + (1/2) L (dW^2 - h)  =  Y + (f - L/2) h + (g + (L/2) dW) dW   (Itô; Stratonovich: no -h),
    # with L = (dg/dy) g: written this way the update takes four tensor operations.
    if grad_free:
        g = sde.g(t0, y)
        gv = g if noise_type == "diagonal" else g.squeeze(-1)
        sqrt_h = math.sqrt(h)
        y_bar = torch.add(y, gv, alpha=sqrt_h)
        if sde_type == "ito":
            y_bar = y_bar.add_(f, alpha=h)
        g_bar = sde.g(t0, y_bar)
        g_bar = g_bar if noise_type == "diagonal" else g_bar.squeeze(-1)
        gdg = (g_bar - gv).mul_(1.0 / sqrt_h)
    else:
        g, gdg = _g_dg(sde, t0, y, noise_type, create_graph=torch.is_grad_enabled())
        gv = g if noise_type == "diagonal" else g.squeeze(-1)
    noise = torch.addcmul(gv, gdg, dw, value=0.5)
    drift = torch.add(f, gdg, alpha=-0.5) if sde_type == "ito" else f
    return torch.add(y, drift, alpha=h).addcmul_(noise, dw)


def heun_step(sde: Any, t0: Tensor, t1: Tensor, y: Tensor, h: float, dw: Tensor, noise_type: str) -> Tensor:
    """One stochastic Heun step (trapezoidal predictor-corrector) for Stratonovich SDEs.

    .. math:: \\bar Y = Y_n + f(t_n, Y_n)\\,h + g(t_n, Y_n)\\,\\Delta W_n, \\quad
        Y_{n+1} = Y_n + \\tfrac12\\big(f(t_n, Y_n) + f(t_{n+1}, \\bar Y)\\big)h
        + \\tfrac12\\big(g(t_n, Y_n) + g(t_{n+1}, \\bar Y)\\big)\\Delta W_n

    Strong order 1 for commutative noise (diagonal, scalar, additive), 1/2 in general
    {cite}`burrage2004numerical`; the method of torchsde's ``heun`` {cite}`li2020scalable`.
    """
    f_and_g_prod = _as_terms(sde, noise_type).f_and_g_prod
    f0, gdw0 = f_and_g_prod(t0, y, dw)
    f1, gdw1 = f_and_g_prod(t1, torch.add(y, f0, alpha=h).add_(gdw0), dw)
    return torch.add(y, f0 + f1, alpha=0.5 * h).add_(gdw0 + gdw1, alpha=0.5)


def midpoint_step(sde: Any, t0: Tensor, t1: Tensor, y: Tensor, h: float, dw: Tensor, noise_type: str) -> Tensor:
    """One stochastic midpoint step for Stratonovich SDEs (torchsde's default Stratonovich method).

    .. math:: \\bar Y = Y_n + \\tfrac12\\big(f(t_n, Y_n)\\,h + g(t_n, Y_n)\\,\\Delta W_n\\big), \\quad
        Y_{n+1} = Y_n + f(t_{n+\\frac12}, \\bar Y)\\,h + g(t_{n+\\frac12}, \\bar Y)\\,\\Delta W_n

    Same orders as :func:`heun_step` {cite}`burrage2004numerical`.
    """
    f_and_g_prod = _as_terms(sde, noise_type).f_and_g_prod
    f0, gdw0 = f_and_g_prod(t0, y, dw)
    f1, gdw1 = f_and_g_prod((t0 + t1) * 0.5, torch.add(y, f0, alpha=0.5 * h).add_(gdw0, alpha=0.5), dw)
    return torch.add(y, f1, alpha=h).add_(gdw1)


#: Rößler's SRI scheme of strong order 1.5 for diagonal and scalar Itô noise {cite}`rossler2010runge` (torchsde's
#: ``srid2``): drift and diffusion stage times ``c0``, ``c1``, stage matrices ``a0``, ``a1`` (drift) and ``b0``,
#: ``b1`` (diffusion), drift weights ``alpha`` and the diffusion weights ``beta`` of
#: :math:`(I_{(1)}, I_{(1,1)}/\sqrt h, I_{(1,0)}/h, I_{(1,1,1)}/h)`.
SRI_TABLEAU: dict[str, Any] = {
    "c0": (0.0, 1.0, 1 / 2, 0.0),
    "c1": (0.0, 1 / 4, 1.0, 1 / 4),
    "a0": ((), (1.0,), (1 / 4, 1 / 4), (0.0, 0.0, 0.0)),
    "a1": ((), (1 / 4,), (1.0, 0.0), (0.0, 0.0, 1 / 4)),
    "b0": ((), (0.0,), (1.0, 1 / 2), (0.0, 0.0, 0.0)),
    "b1": ((), (-1 / 2,), (1.0, 0.0), (2.0, -1.0, 1 / 2)),
    "alpha": (1 / 6, 1 / 6, 2 / 3, 0.0),
    "beta": (
        (-1.0, 1.0, 2.0, -2.0),
        (4 / 3, -4 / 3, -4 / 3, 5 / 3),
        (2 / 3, 1 / 3, -2 / 3, -2 / 3),
        (0.0, 0.0, 0.0, 1.0),
    ),
}

#: Rößler's SRA1 scheme of strong order 1.5 for additive noise {cite}`rossler2010runge`: two stages; ``beta`` are
#: the weights of :math:`(I_{(1)}, I_{(1,0)}/h)` in each stage's diffusion term.
SRA_TABLEAU: dict[str, Any] = {
    "c0": (0.0, 3 / 4),
    "c1": (1.0, 0.0),
    "a0": ((), (3 / 4,)),
    "b0": ((), (3 / 2,)),
    "alpha": (1 / 3, 2 / 3),
    "beta": ((1.0, -1.0), (0.0, 1.0)),
}


def srk_step(sde: Any, t0: Tensor, y: Tensor, h: float, dw: Tensor, du: Tensor, noise_type: str) -> Tensor:
    """One step of Rößler's stochastic Runge-Kutta method of strong order 1.5 {cite}`rossler2010runge` (``srk``).

    Diagonal or scalar noise (Itô), the SRI scheme of :data:`SRI_TABLEAU`: with
    :math:`H^{(0)}_i = Y_n + \\sum_j A^{(0)}_{ij} f(t_n + c^{(0)}_j h, H^{(0)}_j)\\,h
    + \\sum_j B^{(0)}_{ij}\\, g(t_n + c^{(1)}_j h, H^{(1)}_j)\\, I_{(1,0)}/h` and
    :math:`H^{(1)}_i = Y_n + \\sum_j A^{(1)}_{ij} f(\\cdot, H^{(0)}_j)\\,h
    + \\sum_j B^{(1)}_{ij}\\, g(\\cdot, H^{(1)}_j)\\sqrt h`,

    .. math:: Y_{n+1} = Y_n + \\sum_i \\alpha_i f(t_n + c^{(0)}_i h, H^{(0)}_i)\\,h
        + \\sum_i g(t_n + c^{(1)}_i h, H^{(1)}_i) \\Big(\\beta^{(1)}_i I_{(1)}
        + \\beta^{(2)}_i \\frac{I_{(1,1)}}{\\sqrt h} + \\beta^{(3)}_i \\frac{I_{(1,0)}}{h}
        + \\beta^{(4)}_i \\frac{I_{(1,1,1)}}{h}\\Big),

    componentwise, with :math:`I_{(1)} = \\Delta W`, :math:`I_{(1,1)} = (\\Delta W^2 - h)/2`,
    :math:`I_{(1,1,1)} = (\\Delta W^3 - 3h\\Delta W)/6` and
    :math:`I_{(1,0)} = \\int_{t_n}^{t_{n+1}} (W_s - W_{t_n})\\,ds` (``du``). Additive noise (Itô or Stratonovich:
    they coincide), the SRA1 scheme of :data:`SRA_TABLEAU`, whose diffusion stages are
    :math:`g(t_n + c^{(1)}_i h)\\,(\\beta^{(1)}_i \\Delta W + \\beta^{(2)}_i I_{(1,0)}/h)` and whose drift stages see
    :math:`g\\, I_{(1,0)}/h`. Strong order 1.5 for these noise types.
    """
    sde = _as_terms(sde, noise_type)
    sqrt_h, i10 = math.sqrt(h), du / h
    if noise_type == "additive":
        tab = SRA_TABLEAU
        y1 = y
        stages: list[Tensor] = []
        for i, (c0, c1) in enumerate(zip(tab["c0"], tab["c1"])):
            if i == 0:
                hi = y
            else:
                hi = y + sum(a * h * f for a, f in zip(tab["a0"][i], stages) if a)
                hi = hi + sum(sde.g_prod(t0 + tab["c1"][j] * h, y, b * i10) for j, b in enumerate(tab["b0"][i]) if b)
            stages.append(sde.f(t0 + c0 * h, hi))
            b1, b2 = tab["beta"][i]
            y1 = y1 + tab["alpha"][i] * h * stages[-1] + sde.g_prod(t0 + c1 * h, y, b1 * dw + b2 * i10)
        return y1
    tab = SRI_TABLEAU
    noise = (dw, (dw**2 - h) / (2 * sqrt_h), i10, (dw**3 - 3 * h * dw) / (6 * h))
    n = len(tab["alpha"])
    fs: list[Tensor | None] = []
    gs: list[Tensor] = []
    y1 = y
    for i in range(n):
        h0 = y + sum(a * h * f for a, f in zip(tab["a0"][i], fs) if a)
        h0 = h0 + sum(b * g * i10 for b, g in zip(tab["b0"][i], gs) if b)
        h1 = y + sum(a * h * f for a, f in zip(tab["a1"][i], fs) if a)
        h1 = h1 + sum(b * sqrt_h * g for b, g in zip(tab["b1"][i], gs) if b)
        drift_used = tab["alpha"][i] or any(tab[a][k][i] for a in ("a0", "a1") for k in range(i + 1, n))
        fs.append(sde.f(t0 + tab["c0"][i] * h, h0) if drift_used else None)
        g = sde.g(t0 + tab["c1"][i] * h, h1)
        gs.append(g if noise_type == "diagonal" else g.squeeze(-1))
        if tab["alpha"][i]:
            y1 = y1 + tab["alpha"][i] * h * fs[-1]
        y1 = y1 + gs[-1] * sum(beta * x for beta, x in zip(tab["beta"][i], noise) if beta)
    return y1


def reversible_heun_step(
    sde: Any,
    t1: Tensor,
    y: Tensor,
    h: float,
    dw: Tensor,
    state: tuple[Tensor, Tensor, Tensor],
    noise_type: str,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One step of the reversible Heun method for Stratonovich SDEs {cite}`kidger2021efficient`.

    It carries a second state :math:`Z_n` and the drift and diffusion there, ``state`` = :math:`(f(t_n, Z_n),
    g(t_n, Z_n), Z_n)` (:math:`Z_0 = Y_0`):

    .. math:: Z_{n+1} = 2Y_n - Z_n + f(t_n, Z_n)\\,h + g(t_n, Z_n)\\,\\Delta W_n, \\quad
        Y_{n+1} = Y_n + \\tfrac12\\big(f(t_n, Z_n) + f(t_{n+1}, Z_{n+1})\\big)h
        + \\tfrac12\\big(g(t_n, Z_n) + g(t_{n+1}, Z_{n+1})\\big)\\Delta W_n.

    One evaluation of ``f`` and ``g`` a step, and the step is algebraically reversible: :math:`(Y_n, Z_n)`
    is recovered exactly from :math:`(Y_{n+1}, Z_{n+1})`, which gives exact adjoint gradients. Strong order 1/2 in
    general and 1 for additive noise (Kidger et al. 2021). Returns :math:`Y_{n+1}` and the new state.
    """
    sde = _as_terms(sde, noise_type)
    f0, g0, z0 = state
    z1 = (2 * y - z0).add_(f0, alpha=h).add_(sde.prod(g0, dw))
    f1, g1 = sde.f_and_g(t1, z1)
    y1 = torch.add(y, f0 + f1, alpha=0.5 * h).add_(sde.prod(g0 + g1, dw), alpha=0.5)
    return y1, (f1, g1, z1)


# --------------------------------------------------------------------------------------------------------------
# The time grid and the driver
# --------------------------------------------------------------------------------------------------------------


def step_grid(t: Sequence[float], dt: float, rtol: float = 1e-6) -> tuple[list[float], list[int]]:
    """The solver's time grid for observation times ``t`` and step ``dt``.

    Each observation interval :math:`[t_k, t_{k+1}]` gets
    :math:`n_k = \\max(1, \\lceil \\Delta_k/dt - \\epsilon \\rceil)` steps, :math:`\\epsilon` = ``rtol`` times
    :math:`\\max(1, \\Delta_k/dt)`: steps of ``dt`` from :math:`t_k`, the last one clipped so that it ends exactly
    at :math:`t_{k+1}`. The tolerance keeps rounding (``t`` stored in float32, ``dt = 0.1``) from adding a tiny
    extra step, the trap of torchsde issue #109. Returns the grid and the index of each observation time in it.
    """
    grid = [float(t[0])]
    obs = [0]
    for a, b in zip(t[:-1], t[1:]):
        a, b = float(a), float(b)
        x = (b - a) / dt
        n = max(1, math.ceil(x - rtol * max(1.0, x)))
        grid.extend(a + i * dt for i in range(1, n))
        grid.append(b)
        obs.append(len(grid) - 1)
    return grid, obs


def _check_sde_types(sde: Any) -> tuple[str, str]:
    noise_type = getattr(sde, "noise_type", None)
    sde_type = getattr(sde, "sde_type", None)
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"sde.noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde.sde_type must be one of {SDE_TYPES}, got {sde_type!r}")
    return noise_type, sde_type


def _check_terms(terms: _Terms, sde: Any, method: str | None, logqp: bool) -> None:
    """The methods ``sde`` must define: a drift and a diffusion, and what the chosen method and ``logqp`` use."""
    name = type(sde).__name__
    if terms.g_prod is None and terms.f_and_g_prod is None:
        raise TypeError(
            f"sde has no diffusion: define a method g(t, y) (or f_and_g, g_prod, f_and_g_prod); {name} has none"
        )
    if terms.f_and_g_prod is None:
        raise TypeError(f"sde has no drift: define a method f(t, y) (or f_and_g, f_and_g_prod); {name} has none")
    if (method in ("milstein", "srk", "reversible_heun") or logqp) and (terms.f is None or terms.g is None):
        needs = "logqp=True" if logqp else f"method {method!r}"
        raise TypeError(
            f"{needs} needs the drift f and the diffusion g themselves (f and g, or f_and_g); {name} has not"
        )
    if logqp and terms.h is None:
        raise TypeError(f"logqp=True needs the prior drift h(t, y) (or names={{'prior_drift': ...}}); {name} has none")


def _check_times(ts: Any, y0: Tensor) -> tuple[list[float], torch.dtype]:
    """The output times as floats (the shared :func:`check_time_grid`, increasing) and their dtype."""
    if not isinstance(ts, Tensor):  # Python numbers are doubles: keep them exact
        try:
            ts = torch.tensor([float(s) for s in ts], dtype=torch.float64)
        except TypeError as err:
            raise TypeError(f"ts must be a 1-D tensor or a sequence of numbers, got {type(ts).__name__}") from err
        t_dtype = y0.dtype
    else:
        t_dtype = ts.dtype if ts.is_floating_point() else y0.dtype
    try:
        grid = check_time_grid(ts, "ts", increasing=True)
    except ValueError as err:
        if _strictly_decreasing(ts):
            raise ValueError(
                "ts must be strictly increasing; sdeint integrates forward in time only (for a reverse-time SDE "
                "such as a score-SDE sampler, write it in the reversed time s = T - t)"
            ) from err
        raise
    return [float(s) for s in grid.double().cpu().tolist()], t_dtype


def _strictly_decreasing(ts: Any) -> bool:
    try:
        grid = check_time_grid(ts, "ts")
    except (TypeError, ValueError):
        return False
    return grid.numel() > 1 and bool(grid[1] < grid[0])


def _noise_size(terms: _Terms, noise_type: str, t0: Tensor, y0: Tensor, bm: Any) -> int:
    """Evaluate the terms once at (t0, y0), check their shapes against ``noise_type`` and return ``m``."""
    b, d = y0.shape
    with torch.no_grad():
        g0 = terms.g(t0, y0) if terms.g is not None else None
        if isinstance(g0, Tensor):
            shape = tuple(g0.shape)
            if noise_type == "diagonal" and shape != (b, d):
                raise ValueError(f"diagonal noise: g(t, y) must have shape (batch, d) = {(b, d)}, got {shape}")
            if noise_type == "scalar" and shape != (b, d, 1):
                raise ValueError(f"scalar noise: g(t, y) must have shape (batch, d, 1) = {(b, d, 1)}, got {shape}")
            if noise_type in ("additive", "general") and (len(shape) != 3 or shape[:2] != (b, d)):
                raise ValueError(
                    f"{noise_type} noise: g(t, y) must have shape (batch, d, m) = {(b, d)} + (m,), got {shape}"
                )
            m = shape[-1] if noise_type != "diagonal" else d
        elif g0 is not None:
            raise ValueError(f"diffusion g(t, y) must return a tensor, got {type(g0).__name__}")
        elif noise_type in ("diagonal", "scalar"):
            m = d if noise_type == "diagonal" else 1
        elif getattr(bm, "shape", None) is not None and len(bm.shape) == 2:
            m = int(bm.shape[1])
        else:
            raise ValueError(
                f"{noise_type} noise with g_prod but no g: the number of Brownian motions m is unknown; pass bm"
            )
        f0, gv = terms.f_and_g_prod(t0, y0, y0.new_zeros(b, m))
    if not isinstance(f0, Tensor) or f0.shape != y0.shape:
        shape = tuple(f0.shape) if isinstance(f0, Tensor) else type(f0).__name__
        raise ValueError(f"drift f(t, y) must have the shape of y0 {tuple(y0.shape)}, got {shape}")
    if not isinstance(gv, Tensor) or gv.shape != y0.shape:
        shape = tuple(gv.shape) if isinstance(gv, Tensor) else type(gv).__name__
        raise ValueError(
            f"the diffusion-noise product g(t, y) v must have the shape of y0 {tuple(y0.shape)}, got {shape}"
        )
    return m


def _increment_stream(
    grid: list[float], shape: tuple[int, int], y0: Tensor, seed: int | None, space_time: bool = False
) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
    """Increments for every step of ``grid``, drawn with one ``randn`` call (or a few, for very long runs).

    With ``space_time`` each step gets :math:`(\\Delta W, I_{(1,0)})`: :math:`\\Delta W = \\sqrt h\\, z_1` and
    :math:`I_{(1,0)} = h(\\Delta W/2 + \\sqrt{h/12}\\, z_2)` (variance :math:`h^3/3`, covariance :math:`h^2/2` with
    :math:`\\Delta W` {cite}`kloeden1992numerical`, Sec. 10.4).
    """
    n = len(grid) - 1
    gen = torch.Generator(device=y0.device).manual_seed(seed) if seed is not None else None
    h = torch.tensor([b - a for a, b in zip(grid[:-1], grid[1:])], dtype=torch.float64)
    sqrt_h = h.sqrt().to(dtype=y0.dtype, device=y0.device)
    h = h.to(dtype=y0.dtype, device=y0.device)
    k = 2 if space_time else 1
    chunk = max(1, _MAX_RANDN_ELEMENTS // max(1, k * math.prod(shape)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if not space_time:
            z = torch.randn((stop - start, *shape), generator=gen, dtype=y0.dtype, device=y0.device)
            yield from z.mul_(sqrt_h[start:stop, None, None]).unbind(0)
            continue
        z = torch.randn((stop - start, 2, *shape), generator=gen, dtype=y0.dtype, device=y0.device)
        dw = z[:, 0].mul_(sqrt_h[start:stop, None, None])
        du = (z[:, 1] * (sqrt_h[start:stop, None, None] / math.sqrt(12))).add_(dw, alpha=0.5)
        du.mul_(h[start:stop, None, None])
        yield from zip(dw.unbind(0), du.unbind(0))


def _check_y0(y0: Any) -> None:
    """``y0`` must be a 2-D floating-point tensor ``(batch, d)``."""
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.dim() != 2:
        raise ValueError(f"y0 must be 2-D, shape (batch, d), got shape {tuple(y0.shape)}; flatten other states")
    if not y0.is_floating_point():
        raise TypeError(f"y0 must be a floating-point tensor, got {y0.dtype}")


def _torchsde_brownian(
    terms: _Terms,
    noise_type: str,
    times: list[float],
    t_dtype: torch.dtype,
    y0: Tensor,
    seed: int,
    method: str | None,
    logqp: bool,
) -> Any:
    """The ``torchsde.BrownianInterval`` with ``entropy=seed`` that ``backend="torchsde"`` uses when ``seed`` is
    given without ``bm`` (with the space-time Lévy area where the method, or torchsde's default, needs it)."""
    t0 = torch.tensor(times[0], dtype=t_dtype, device=y0.device)
    m = _noise_size(terms, noise_type, t0, y0, None) + int(logqp and noise_type == "diagonal")
    levy = {None: "space-time", "srk": "space-time", "log_ode": "foster"}.get(method, "none")
    return _torchsde().BrownianInterval(
        t0=times[0], t1=times[-1], size=(y0.shape[0], m), dtype=y0.dtype, device=y0.device,
        entropy=seed, levy_area_approximation=levy,
    )


def _default_method(sde_type: str, noise_type: str) -> str:
    """torchsde's default: ``srk`` for Itô SDEs (``euler`` for general noise), ``midpoint`` for Stratonovich SDEs."""
    if sde_type == "stratonovich":
        return "midpoint"
    return "euler" if noise_type == "general" else "srk"


def sdeint(
    sde: Any,
    y0: Tensor,
    ts: Tensor | Sequence[float],
    bm: Callable[..., Tensor] | None = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple[Tensor, ...] | None = None,
    backend: str = "dedl",
    *,
    seed: int | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Solve :math:`dY = f(t, Y)\\,dt + g(t, Y)\\,dW`, :math:`Y(t_0) = y_0`, with fixed steps, like ``torchsde.sdeint``.

    torchsde's arguments in torchsde's order, with torchsde's shapes and return values. Where dedl differs:

    * ``adaptive=True`` raises ``NotImplementedError`` (dedl steps with fixed ``dt`` only; ``rtol``, ``atol``,
      ``dt_min`` are accepted for adaptive stepping and unused, as in torchsde without ``adaptive``).
    * Every time in ``ts`` is hit exactly (the last step before it is shortened); torchsde steps past it and
      interpolates linearly.
    * ``srk`` also solves Stratonovich SDEs with additive noise, where the Itô and Stratonovich forms coincide
      (torchsde's ``srk`` takes Itô SDEs only).
    * ``milstein`` with scalar noise and ``d > 1`` uses :math:`(\\partial g/\\partial y)\\,g`; torchsde 0.2.6 uses
      its transpose, which is wrong for a non-symmetric Jacobian, so the two answers differ there.
    * A fast path (``f_and_g``, ``g_prod``, ``f_and_g_prod``) is skipped when ``names`` renames one of its parts
      but not the path itself; unknown ``names`` keys, unknown options and unknown keyword arguments raise
      (torchsde ignores or warns).
    * ``logqp=True`` with diagonal noise takes ``bm`` of the SDE's own shape ``(batch, d)`` as well as torchsde's
      ``(batch, d + 1)``.
    * dedl's own extra, ``seed``, is keyword-only.

    Args:
        sde: object with ``f(t, y)``, ``g(t, y)``, ``noise_type`` in ``("diagonal", "scalar", "additive",
            "general")`` and ``sde_type`` in ``("ito", "stratonovich")`` (torchsde's convention; see the module
            docstring for the shapes). Instead of ``f`` and ``g`` it may define torchsde's fast paths
            ``f_and_g(t, y)``, ``g_prod(t, y, v)`` (:math:`g\\,v`) or ``f_and_g_prod(t, y, v)``, which are used when
            defined; ``logqp`` needs the prior drift ``h(t, y)`` as well.
        y0: initial state, shape ``(batch, d)``; only 2-D states are supported (flatten others).
        ts: observation times, strictly increasing (forward in time only); ``ts[0]`` is the time of ``y0``.
        bm: Brownian motion, any callable ``bm(ta, tb)`` returning the increment :math:`W(t_b) - W(t_a)` of shape
            ``(batch, m)``: a :class:`BrownianPath`, ``torchsde.BrownianInterval``, ... ``srk`` calls
            ``bm(ta, tb, return_U=True)`` for :math:`(\\Delta W, I_{(1,0)})` and needs
            ``levy_area_approximation="space-time"`` (or torchsde's ``"davie"``, ``"foster"``). ``None`` (default)
            draws the increments for the whole step grid up front with one ``randn`` call, from
            ``torch.Generator`` seeded by ``seed``, or from torch's global generator if ``seed`` is None.
        method: ``"euler"`` (Itô), ``"milstein"`` (Itô or Stratonovich; diagonal, scalar, additive noise),
            ``"srk"`` (Itô with diagonal, scalar or additive noise; Stratonovich with additive noise),
            ``"heun"``, ``"midpoint"`` or ``"reversible_heun"`` (Stratonovich); see the module docstring for their
            orders. ``None`` picks torchsde's default: ``"srk"`` for Itô SDEs (``"euler"`` for general noise) and
            ``"midpoint"`` for Stratonovich SDEs. Euler-Maruyama is Itô-only as in torchsde: on a Stratonovich
            SDE it would converge to the wrong (Itô) solution, so it raises.
        dt: step size. Each interval between observation times takes :math:`\\lceil \\Delta/dt\\rceil` steps
            (up to a small rounding tolerance, :func:`step_grid`), the last one clipped.
        adaptive, rtol, atol, dt_min: torchsde's adaptive stepping; ``adaptive=True`` raises under
            ``backend="dedl"``.
        options: ``{"grad_free": True}`` selects the derivative-free Milstein (default: autograd).
        names: torchsde's renaming of the SDE's methods, keys ``"drift"``, ``"diffusion"``, ``"prior_drift"``,
            ``"drift_and_diffusion"``, ``"drift_and_diffusion_prod"`` (e.g. ``names={"drift": "h"}`` solves with
            the method ``h`` as the drift).
        logqp: also return the log-ratio of the posterior and prior path measures over each interval of ``ts``,
            :math:`\\int \\tfrac12 |u|^2\\,dt` with :math:`g\\,u = f - h` (see ``_logqp_terms``), shape
            ``(len(ts) - 1, batch)``.
        extra: also return the solver's state after the last step: :math:`(f, g, Z)` for ``reversible_heun``,
            ``()`` for the other methods.
        extra_solver_state: the state to start ``reversible_heun`` from (default :math:`(f(t_0, y_0), g(t_0, y_0),
            y_0)`), e.g. the ``extra`` of a previous solve; the other methods keep none (None or ``()``).
        backend: ``"dedl"``, or ``"torchsde"`` to hand the very same call to ``torchsde.sdeint`` (no method
            resolved by dedl; when ``seed`` is given and ``bm`` is None, a ``BrownianInterval`` with
            ``entropy=seed``), so a reader can swap solvers and compare.
        seed: seed for the increments when ``bm`` is None (an error if ``bm`` is given).

    Returns:
        The solution at ``ts``, shape ``(len(ts), batch, d)``; with ``logqp`` also the log-ratio, with ``extra``
        also the solver state, in that order (torchsde's convention).

    Raises:
        ValueError: bad ``ts``, ``dt``, ``y0``, method, backend, names, method/SDE mismatch, wrong ``f``/``g``/``bm``
            shapes, dtype or device.
        TypeError: ``sde`` without a drift or diffusion, ``y0`` not a floating-point tensor, ``bm`` not callable.
        NotImplementedError: ``adaptive=True`` with ``backend="dedl"``.
        FloatingPointError: the state became NaN or Inf; the message names the observation interval.

    References: Euler-Maruyama and Milstein {cite}`kloeden1992numerical,higham2001algorithmic,milstein1974approximate`;
    srk {cite}`rossler2010runge`; reversible Heun {cite}`kidger2021efficient`; the interface and the log-ratio of
    torchsde {cite}`li2020scalable,kidger2021on`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    noise_type, sde_type = _check_sde_types(sde)
    terms = _Terms.of(sde, noise_type, names)
    if backend == "dedl" and method is None:
        method = _default_method(sde_type, noise_type)
    _check_terms(terms, sde, method, logqp)
    _check_y0(y0)
    times_list, t_dtype = _check_times(ts, y0)
    dt = _as_float(dt)
    if not dt > 0 or not math.isfinite(dt):
        raise ValueError(f"dt must be a positive finite step size, got {dt}")
    if seed is not None and bm is not None:
        raise ValueError("seed sets the increments that sdeint draws itself; it cannot be combined with bm")
    options = dict(options or {})
    unknown = set(options) - {"grad_free"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; sdeint knows only 'grad_free' (milstein)")

    if backend == "torchsde":
        if bm is None and seed is not None:
            bm = _torchsde_brownian(terms, noise_type, times_list, t_dtype, y0, seed, method, logqp)
        return _torchsde().sdeint(
            sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options or None, names, logqp, extra,
            extra_solver_state,
        )

    if adaptive:
        raise NotImplementedError(
            "adaptive=True: dedl's sdeint steps with a fixed dt only; drop adaptive (and set dt), or use "
            "backend='torchsde' for torchsde's adaptive stepping"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {tuple(METHODS)}")
    if sde_type not in METHODS[method]:
        hint = (
            " Euler-Maruyama converges to the Itô solution; use method='heun' or 'midpoint' (or 'milstein') for a "
            "Stratonovich SDE, or convert it to Itô form by adding the drift correction 1/2 (dg/dy) g."
            if method == "euler"
            else " Use method='euler', 'milstein' or 'srk' for an Itô SDE, or convert it to Stratonovich form."
        )
        raise ValueError(f"method {method!r} does not solve {sde_type} SDEs.{hint}")
    if noise_type not in METHODS[method][sde_type]:
        raise ValueError(
            f"method {method!r} does not support {noise_type} noise for {sde_type} SDEs (supports "
            f"{METHODS[method][sde_type]}); for general noise use 'euler' (Itô) or 'heun' / 'midpoint' (Stratonovich)"
        )
    if options.get("grad_free") and method != "milstein":
        raise ValueError("option 'grad_free' applies to method='milstein' only")
    if extra_solver_state and method != "reversible_heun":
        raise ValueError(f"extra_solver_state: method {method!r} keeps no solver state (pass None or ())")

    if not torch.isfinite(y0).all():
        raise FloatingPointError(f"y0 holds NaN or Inf at t={times_list[0]}")
    grid, obs = step_grid(times_list, dt)
    times = torch.tensor(grid, dtype=torch.float64).to(dtype=t_dtype, device=y0.device).unbind(0)
    batch, d = y0.shape
    m = _noise_size(terms, noise_type, times[0], y0, bm)
    shape = (batch, m)
    hs = [b - a for a, b in zip(grid[:-1], grid[1:])]

    # logqp: solve the SDE augmented with the log-ratio L (one more state, no noise); for diagonal noise the
    # augmented SDE has d + 1 Brownian motions, the last one multiplying g = 0 (torchsde's bm is (batch, d + 1)).
    pad = False
    if logqp:
        terms = _logqp_terms(terms, noise_type)
        y0 = torch.cat([y0, y0.new_zeros(batch, 1)], 1)
        if noise_type == "diagonal":
            pad = getattr(bm, "shape", None) is None or tuple(bm.shape) != (batch, d + 1)
            shape = shape if pad else (batch, d + 1)

    if bm is not None:
        if not callable(bm):
            raise TypeError(f"bm must be callable as bm(ta, tb), got {type(bm).__name__}")
        bm_shape = getattr(bm, "shape", None)
        if bm_shape is not None and tuple(bm_shape) != shape:
            raise ValueError(
                f"bm has shape {tuple(bm_shape)}, but this SDE needs increments of shape (batch, m) = {shape}"
            )
        bm_dtype = getattr(bm, "dtype", None)
        if isinstance(bm_dtype, torch.dtype) and bm_dtype != y0.dtype:
            raise ValueError(
                f"bm has dtype {bm_dtype} but y0 has dtype {y0.dtype}; build the Brownian motion with dtype={y0.dtype}"
            )
        bm_device = getattr(bm, "device", None)
        if bm_device is not None and not _same_device(torch.device(bm_device), y0.device):
            raise ValueError(
                f"bm is on device {bm_device} but y0 is on {y0.device}; build the Brownian motion with "
                f"device={y0.device}"
            )
    # srk needs (dW, I_(1,0)) for each step: bm(ta, tb, return_U=True), as torchsde's srk asks for it.
    space_time = method == "srk"
    if space_time and bm is not None and getattr(bm, "levy_area_approximation", None) not in _SPACE_TIME:
        raise ValueError(
            "method 'srk' needs the time integral of the Brownian path (I_(1,0), torchsde's U): build bm with "
            "levy_area_approximation='space-time' (BrownianPath or torchsde.BrownianInterval), or pass bm=None"
        )
    increments: Iterator[Any]
    if len(hs) == 0:
        increments = iter(())
    elif bm is None:
        increments = _increment_stream(grid, shape, y0, seed, space_time)
    elif isinstance(bm, BrownianPath):
        parts = [p.unbind(0) for p in bm._increments(grid, t_dtype)]
        increments = zip(*parts) if space_time else iter(parts[0])
    else:
        query = (lambda ta, tb: bm(ta, tb, return_U=True)) if space_time else bm
        increments = (query(times[i], times[i + 1]) for i in range(len(hs)))

    if len(hs):
        first = next(increments)
        dw0 = first[0] if space_time and isinstance(first, tuple) else first
        if not isinstance(dw0, Tensor) or tuple(dw0.shape) != shape:
            got = tuple(dw0.shape) if isinstance(dw0, Tensor) else type(dw0).__name__
            raise ValueError(f"bm(ta, tb) returned an increment of shape {got}; expected (batch, m) = {shape}")
        increments = itertools.chain([first], increments)
    if pad:
        zero = y0.new_zeros(batch, 1)
        increments = (
            tuple(torch.cat([x, zero], 1) for x in inc) if space_time else torch.cat([inc, zero], 1)
            for inc in increments
        )

    state: tuple[Tensor, ...] = ()
    if method == "reversible_heun":
        if extra_solver_state:
            if len(extra_solver_state) != 3:
                raise ValueError(
                    "extra_solver_state for 'reversible_heun' is (f, g, z), as sdeint(..., extra=True) returns it"
                )
            state = tuple(extra_solver_state)
        else:
            state = (*terms.f_and_g(times[0], y0), y0)

    advance: Callable[[int, Tensor, Any], Tensor]
    if method == "euler":

        def advance(i: int, y: Tensor, dw: Tensor) -> Tensor:
            return euler_maruyama_step(terms, times[i], y, hs[i], dw, noise_type)
    elif method == "milstein":
        grad_free = bool(options.get("grad_free", False))

        def advance(i: int, y: Tensor, dw: Tensor) -> Tensor:
            return milstein_step(terms, times[i], y, hs[i], dw, noise_type, sde_type, grad_free)
    elif method == "srk":

        def advance(i: int, y: Tensor, dw_du: tuple[Tensor, Tensor]) -> Tensor:
            return srk_step(terms, times[i], y, hs[i], dw_du[0], dw_du[1], noise_type)
    elif method == "heun":

        def advance(i: int, y: Tensor, dw: Tensor) -> Tensor:
            return heun_step(terms, times[i], times[i + 1], y, hs[i], dw, noise_type)
    elif method == "midpoint":

        def advance(i: int, y: Tensor, dw: Tensor) -> Tensor:
            return midpoint_step(terms, times[i], times[i + 1], y, hs[i], dw, noise_type)
    else:

        def advance(i: int, y: Tensor, dw: Tensor) -> Tensor:
            nonlocal state
            y, state = reversible_heun_step(terms, times[i + 1], y, hs[i], dw, state, noise_type)
            return y

    ys = [y0]
    y = y0
    k = 1
    next_obs = obs[1] if len(obs) > 1 else -1
    for i, dw in enumerate(increments):
        y = advance(i, y, dw)
        if i + 1 == next_obs:
            if not torch.isfinite(y).all():
                raise FloatingPointError(
                    f"sdeint: the state became NaN or Inf between t={times_list[k - 1]} and t={times_list[k]} "
                    f"(method={method!r}, dt={dt}); try a smaller dt or check f and g"
                )
            ys.append(y)
            k += 1
            next_obs = obs[k] if k < len(obs) else -1
    out = torch.stack(ys)
    results: tuple[Tensor, ...] = (out,)
    if logqp:
        results = (out[..., :d], out[1:, :, d] - out[:-1, :, d])
    if extra:
        results = (*results, state)
    return results[0] if len(results) == 1 else results


def _torchsde() -> Any:
    """torchsde, imported when the torchsde backend is asked for (dedl.solvers imports torch alone)."""
    try:
        import torchsde
    except ImportError as err:  # pragma: no cover - torchsde is a dependency of dedl
        raise ImportError("backend='torchsde' needs the torchsde package (pip install torchsde)") from err
    return torchsde
