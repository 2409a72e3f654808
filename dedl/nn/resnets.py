"""Residual networks read as numerical schemes for the ODE ``dx/dt = f(x; θ(t))`` on ``[0, T]``.

A residual block ``x_{n+1} = x_n + f(x_n; θ_n)`` is one forward Euler step
{cite}`he2016deep,e2017proposal,haber2017stable`.
Other schemes give other architectures {cite}`lu2018beyond,liu2025deep`; this module builds five of them from
**one residual function** so that they differ only in how they combine its evaluations.

**The residual function.** :class:`ResidualFunction` ``f(x; θ)`` maps a state to a tensor of the same shape:

* ``kind="conv"`` (images ``(batch, width, H, W)``): ``BN → ReLU → conv_{k×k}(width→m) → BN → ReLU →
  conv_{k×k}(m→width)``, the pre-activation two-layer block of the LM-ResNet code {cite}`lu2018beyond`, with
  bias-free convolutions. Parameters ``P_f = 2 m width k² + 2 width + 2 m``. With ``norm=None`` the batch
  norms are dropped and the convolutions get biases: ``P_f = 2 m width k² + m + width``.
* ``kind="linear"`` (vectors ``(batch, width)``, e.g. 2-D toy problems): ``Linear(width→m) → tanh →
  Linear(m→width)``, a smooth field. ``P_f = 2 m width + m + width``.

``m = hidden`` (default ``width``), ``k = kernel_size`` (default 3). :meth:`ResidualFunction.count` gives
``P_f`` without building anything. Every body below accepts ``residual``: a callable ``residual(width) ->
nn.Module`` that replaces the default (return the *same* module every time to tie the weights of all steps,
which makes the ODE autonomous; the parameter formulas then no longer apply). :class:`dedl.nn.stable.RevNet`
accepts the same kind of factory.

**The bodies.** Every body takes ``(width, depth, T=1.0)`` first, uses the step ``h = T / depth``, maps its
input to a tensor of the same shape, exposes ``h``, ``nfe`` (evaluations of ``f`` per forward pass) and
``trajectory(x)`` (the input and the state after each step, one tensor of shape ``(depth + 1, *x.shape)``),
and fits :class:`dedl.nn.classifier.ImageClassifier`::

    ImageClassifier(LMResNet(16, depth=4), in_channels=1, width=16, num_classes=10)

One step ``n`` of each body, its parameter count and its ``nfe`` (``s`` = stages of the Runge–Kutta tableau,
``r`` = PolyNet's order, ``C`` = FractalNet's columns):

* :class:`EulerResNet`: ``x_{n+1} = x_n + h f_n(x_n)``; ``depth · P_f``; ``nfe = depth``.
* :class:`LMResNet`: ``x_{n+1} = (1 − k_n) x_n + k_n x_{n−1} + h f_n(x_n)``; ``depth · P_f + depth − 1``;
  ``nfe = depth``.
* :class:`RKNet`: ``x_{n+1} = x_n + h Σ_i b_i K_i``, ``K_i = f_{n,i}(x_n + h Σ_j a_ij K_j)``;
  ``depth · s · P_f`` (``shared_stages=False``, the default) or ``depth · P_f`` (``True``); ``nfe = depth · s``.
* :class:`PolyNet`: ``x_{n+1} = (I + G_n + G_n² + … + G_n^r) x_n`` with ``G_n = h f_n``;
  ``depth · (P_f + (r − 1) P_norm)`` (each power has its own batch norms, ``P_norm = 2 width + 2 m``, 0 without
  normalisation); ``nfe = depth · r``.
* :class:`FractalNet`: ``C`` columns of Euler steps joined by their mean; ``depth · (2^C − 1) · P_f``;
  ``nfe = depth · (2^C − 1)``.

To compare bodies at a matched parameter count ``P``, pick the depth from these formulas, e.g.
``EulerResNet(width, P // P_f)``, ``RKNet(width, P // (s P_f))``,
``FractalNet(width, P // ((2^C − 1) P_f), columns=C)``.

The argument checks (:mod:`dedl.nn.checks`) raise ``TypeError`` / ``ValueError`` naming the problem: ``width``,
``depth`` positive ints, ``T > 0`` finite, inputs of shape ``(batch, width, H, W)`` (conv) or ``(batch, width)``
(linear).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from dedl.nn.checks import (
    KINDS,
    check_image_or_vector,
    check_kernel_size,
    check_norm,
    check_kind,
    positive_float,
    positive_int,
    probability,
)
from dedl.solvers.ode import TABLEAUX, ButcherTableau

Factory = Callable[[int], nn.Module]

#: The values of ``norm`` that :class:`ResidualFunction` accepts: batch normalisation, or none.
NORMS = ("batch", None)

__all__ = [
    "KINDS",
    "NORMS",
    "ResidualFunction",
    "EulerResNet",
    "LMResNet",
    "RKNet",
    "PolyNet",
    "FractalNet",
    "survival_probabilities",
]


# --------------------------------------------------------------------------------------------------
# the shared residual function
# --------------------------------------------------------------------------------------------------


class ResidualFunction(nn.Module):
    """The residual function ``f(x; θ)`` that every body of this module evaluates (see the module docstring).

    ``kind="conv"``: ``conv₂(ReLU(BN₂(conv₁(ReLU(BN₁(x))))))``, the pre-activation block of {cite}`lu2018beyond`
    (their CIFAR code follows {cite}`he2016deep`); ``kind="linear"``: ``W₂ tanh(W₁ x + b₁) + b₂``.

    Parameter count ``P_f`` (``w = width``, ``m = hidden or width``, ``k = kernel_size``):
    ``2 m w k² + 2 w + 2 m`` (conv, ``norm="batch"``), ``2 m w k² + m + w`` (conv, ``norm=None``),
    ``2 m w + m + w`` (linear). ``norm`` is one of :data:`NORMS` (``"batch"`` or ``None``); ``kind="linear"``
    has no normalisation whatever ``norm`` says.
    """

    def __init__(
        self,
        width: int,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        norm: str | None = "batch",
    ):
        super().__init__()
        self.width = positive_int("width", width)
        self.kind = check_kind(kind)
        self.hidden = positive_int("hidden", hidden if hidden is not None else width)
        self.kernel_size = check_kernel_size(kernel_size, kind)
        self.norm = check_norm(norm, NORMS)
        m, k = self.hidden, kernel_size
        if kind == "conv":
            layers: list[nn.Module] = []
            batch = norm == "batch"
            if batch:
                layers += [nn.BatchNorm2d(width)]
            layers += [nn.ReLU(), nn.Conv2d(width, m, k, padding=k // 2, bias=not batch)]
            if batch:
                layers += [nn.BatchNorm2d(m)]
            layers += [nn.ReLU(), nn.Conv2d(m, width, k, padding=k // 2, bias=not batch)]
        else:
            layers = [nn.Linear(width, m), nn.Tanh(), nn.Linear(m, width)]
        self.net = nn.Sequential(*layers)

    @staticmethod
    def count(
        width: int, kind: str = "conv", hidden: int | None = None, kernel_size: int = 3, norm: str | None = "batch"
    ) -> int:
        """``P_f``, the number of parameters of ``ResidualFunction(width, kind, hidden, kernel_size, norm)``."""
        w, m, k = width, hidden if hidden is not None else width, kernel_size
        if check_kind(kind) == "linear":
            return 2 * m * w + m + w
        return 2 * m * w * k * k + (2 * w + 2 * m if check_norm(norm, NORMS) == "batch" else m + w)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _factory(
    kind: str, hidden: int | None, kernel_size: int, norm: str | None, residual: Factory | None
) -> Factory:
    if residual is not None:
        if not callable(residual):
            raise TypeError(f"residual must be a callable width -> nn.Module, got {type(residual).__name__}")
        return residual
    return lambda width: ResidualFunction(width, kind, hidden, kernel_size, norm)


def _build(make: Factory, width: int) -> nn.Module:
    module = make(width)
    if not isinstance(module, nn.Module):
        raise TypeError(f"residual(width) must return an nn.Module, got {type(module).__name__}")
    return module


# --------------------------------------------------------------------------------------------------
# the common frame of the bodies
# --------------------------------------------------------------------------------------------------


class _SchemeBody(nn.Module):
    """What every body shares: arguments, the step ``h``, the input check, ``forward`` and ``trajectory``."""

    def __init__(
        self,
        width: int,
        depth: int,
        T: float,
        kind: str,
        hidden: int | None,
        kernel_size: int,
        norm: str | None,
        residual: Factory | None,
    ):
        super().__init__()
        self.width = positive_int("width", width)
        self.depth = positive_int("depth", depth)
        self.T = positive_float("T", T)
        self.kind = check_kind(kind)
        if hidden is not None:
            positive_int("hidden", hidden)
        self._make = _factory(kind, hidden, kernel_size, norm, residual)

    @property
    def h(self) -> float:
        """The step size ``T / depth``."""
        return self.T / self.depth

    @property
    def nfe(self) -> int:
        """Evaluations of the residual function in one forward pass."""
        raise NotImplementedError

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        check_image_or_vector(x, self.kind, self.width)
        for state in self._states(x):
            x = state
        return x

    def trajectory(self, x: Tensor) -> Tensor:
        """The states ``x_0, x_1, ..., x_depth`` (input, then the state after each step), stacked: shape
        ``(depth + 1, *x.shape)``, for plots."""
        check_image_or_vector(x, self.kind, self.width)
        return torch.stack(list(self._states(x)))

    def extra_repr(self) -> str:
        return f"width={self.width}, depth={self.depth}, T={self.T:g}, h={self.h:g}, kind={self.kind!r}"


# --------------------------------------------------------------------------------------------------
# ResNet = forward Euler
# --------------------------------------------------------------------------------------------------


class EulerResNet(_SchemeBody):
    """The residual network as forward Euler {cite}`he2016deep,e2017proposal,haber2017stable`.

    ``x_{n+1} = x_n + h f_n(x_n)``,  ``n = 0, ..., depth − 1``,  ``h = T / depth``,

    one step of size ``h`` for ``dx/dt = f(x; θ(t))`` per block, with ``θ(t_n) = θ_n`` (each block its own
    :class:`ResidualFunction`). ``T = depth`` is He et al.'s unit step; with ``T`` fixed and ``depth → ∞`` the
    output converges (order 1) to the time-``T`` flow of the ODE.

    Parameter count: ``depth · P_f``.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        norm: str | None = "batch",
        residual: Factory | None = None,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual)
        self.fields = nn.ModuleList(_build(self._make, width) for _ in range(depth))

    @property
    def nfe(self) -> int:
        return self.depth

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        yield x
        for f in self.fields:
            x = x + self.h * f(x)
            yield x


# --------------------------------------------------------------------------------------------------
# LM-ResNet = a linear two-step method (Lu et al. 2018)
# --------------------------------------------------------------------------------------------------


def survival_probabilities(depth: int, last: float) -> list[float]:
    """The linear-decay rule of stochastic depth {cite}`huang2016deep`: ``p_n = 1 − (n + 1)/depth · (1 − last)``.

    Block ``n = 0, ..., depth − 1`` survives with probability ``p_n``; the last block with ``last``.
    """
    positive_int("depth", depth)
    last = probability("last", last, allow_zero=False, allow_one=True)
    return [1.0 - (n + 1) / depth * (1.0 - last) for n in range(depth)]


class LMResNet(_SchemeBody):
    """LM-ResNet, the linear two-step architecture of {cite}`lu2018beyond` (Sec. 2.2).

    ``x_1 = x_0 + h f_0(x_0)``,  then  ``x_{n+1} = (1 − k_n) x_n + k_n x_{n−1} + h f_n(x_n)``  for ``n ≥ 1``,

    with one learnable scalar ``k_n`` per step (``depth − 1`` of them, :attr:`k`; ``k[n − 1]`` is ``k_n``),
    drawn from ``U[−0.1, 0]`` as in the paper unless ``k_init`` is a number. ``k_n = 0`` gives
    :class:`EulerResNet` exactly. Expanding in ``h`` (Lu et al.'s modified equation) the recursion
    approximates ``(1 + k) ẋ + (1 − k)(h/2) ẍ = f(x)``: it is consistent with ``(1 + k) ẋ = f``, of order 1
    for ``k ≠ 1`` and order 2 at ``k = 1`` (the explicit midpoint, or leapfrog, two-step rule), and it is
    zero-stable for ``−1 < k ≤ 1`` (the roots of ``ζ² − (1 − k)ζ − k`` are ``1`` and ``−k``).
    ``rescaled_start=True`` makes the first step ``x_1 = x_0 + h f_0(x_0) / (1 + k_1)``, the Euler step of
    that equation, so that a fixed ``f`` shows the scheme's order; the paper's start is the default.

    **Stochastic depth** (``survival < 1``, Sec. 3 of the paper, after {cite}`huang2016deep`): in training
    step ``n`` uses ``(η_n / p_n) h f_n(x_n)`` with ``η_n ~ Bernoulli(p_n)`` drawn once per forward pass and
    ``p_n`` from :func:`survival_probabilities` (linear decay to ``survival``); in evaluation ``η_n / p_n`` is
    replaced by its mean 1. Lu et al. read the noisy recursion as a weak approximation of a stochastic
    differential equation: ``η_n / p_n = 1 + ξ_n`` with ``E ξ_n = 0``, ``Var ξ_n = (1 − p_n)/p_n``, so each step
    adds ``h ξ_n f_n(x_n)``, a multiplicative noise of variance ``h² (1 − p_n)/p_n`` per step.

    Parameter count: ``depth · P_f + (depth − 1)`` (``depth · P_f`` with ``learn_k=False``, when ``k`` is a
    fixed buffer, or with ``depth = 1``, when there is no ``k``).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        norm: str | None = "batch",
        residual: Factory | None = None,
        k_init: float | None = None,
        learn_k: bool = True,
        survival: float = 1.0,
        rescaled_start: bool = False,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual)
        self.fields = nn.ModuleList(_build(self._make, width) for _ in range(depth))
        if k_init is None:
            k = torch.empty(depth - 1).uniform_(-0.1, 0.0)
        else:
            if not math.isfinite(float(k_init)):
                raise ValueError(f"k_init must be finite, got {k_init}")
            k = torch.full((depth - 1,), float(k_init))
        if learn_k and depth > 1:
            self.k = nn.Parameter(k)
        else:
            self.register_buffer("k", k)
        self.survival = probability("survival", survival, allow_zero=False, allow_one=True)
        self.register_buffer("p", torch.tensor(survival_probabilities(depth, self.survival)), persistent=False)
        self.rescaled_start = bool(rescaled_start)

    @property
    def nfe(self) -> int:
        return self.depth

    def _increment(self, n: int, x: Tensor) -> Tensor | float:
        """``h f_n(x)``, or its stochastic-depth version ``(η_n / p_n) h f_n(x)`` in training."""
        p = float(self.p[n])
        if self.training and p < 1.0:
            if torch.rand(()) >= p:  # the block is dropped: the identity path alone
                return 0.0
            return (self.h / p) * self.fields[n](x)
        return self.h * self.fields[n](x)

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        yield x
        step = self._increment(0, x)
        if self.rescaled_start and self.depth > 1:
            step = step / (1 + self.k[0])
        previous, x = x, x + step
        yield x
        for n in range(1, self.depth):
            k = self.k[n - 1]
            previous, x = x, (1 - k) * x + k * previous + self._increment(n, x)
            yield x


# --------------------------------------------------------------------------------------------------
# RK-Net = explicit Runge-Kutta steps (Zhu, Chang & Fu)
# --------------------------------------------------------------------------------------------------


def _tableau(scheme: str | ButcherTableau) -> ButcherTableau:
    if isinstance(scheme, ButcherTableau):
        if scheme.adaptive:
            raise ValueError(
                f"RK-Net takes a fixed-step tableau; {scheme.name!r} is an embedded pair for adaptive steps "
                "(its error-estimate stage would never get a gradient)"
            )
        return scheme
    if scheme not in TABLEAUX or TABLEAUX[scheme].adaptive:
        fixed = [name for name, tab in TABLEAUX.items() if not tab.adaptive]
        raise ValueError(f"scheme must be a ButcherTableau or one of {fixed}, got {scheme!r}")
    return TABLEAUX[scheme]


class RKNet(_SchemeBody):
    """RK-Net: each block is one explicit Runge–Kutta step {cite}`zhu2018convolutional`.

    ``K_i = f_{n,i}(x_n + h Σ_{j<i} a_ij K_j)``  (``i = 1, ..., s``),   ``x_{n+1} = x_n + h Σ_i b_i K_i``,

    with the Butcher tableau ``(a, b)`` of ``scheme``: ``"midpoint"`` or ``"heun"`` (order 2), ``"rk4"`` (the
    classical method, order 4), ``"euler"``, ``"rk4_38"``, or any explicit fixed-step
    :class:`~dedl.solvers.ButcherTableau` (an embedded pair such as ``DOPRI5`` is refused, like ``"dopri5"``).

    Zhu et al. give every stage its own convolutional subnetwork (the stages sample a time-dependent
    ``f(t_n + c_i h, ·)``) and let the network learn the stage coefficients; ``shared_stages=False``
    (the default) follows them in giving each stage its own weights, with the tableau's coefficients fixed.
    ``shared_stages=True`` evaluates one ``f_n`` at all stages of step ``n``: the textbook Runge–Kutta step for
    a field that is constant over the step, which keeps the parameter count of :class:`EulerResNet` at ``s``
    times its cost, and with a smooth fixed ``f`` shows the tableau's order.

    Parameter count: ``depth · s · P_f`` (``shared_stages=False``) or ``depth · P_f`` (``True``).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        norm: str | None = "batch",
        residual: Factory | None = None,
        scheme: str | ButcherTableau = "rk4",
        shared_stages: bool = False,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual)
        self.tableau = _tableau(scheme)
        self.shared_stages = bool(shared_stages)
        per_step = 1 if self.shared_stages else self.tableau.stages
        self.fields = nn.ModuleList(
            nn.ModuleList(_build(self._make, width) for _ in range(per_step)) for _ in range(depth)
        )

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def nfe(self) -> int:
        return self.depth * self.stages

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        tab, h = self.tableau, self.h
        yield x
        for fs in self.fields:
            ks: list[Tensor] = []
            for i in range(tab.stages):
                u = x
                for j, a in enumerate(tab.a[i]):
                    if a != 0.0:
                        u = u + (h * a) * ks[j]
                ks.append(fs[0 if self.shared_stages else i](u))
            update = sum((h * b) * k for b, k in zip(tab.b, ks) if b != 0.0)
            x = x + update
            yield x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scheme={self.tableau.name!r}, shared_stages={self.shared_stages}"


# --------------------------------------------------------------------------------------------------
# PolyNet = a truncated backward Euler step (Zhang et al. 2017, read by Lu et al. 2018)
# --------------------------------------------------------------------------------------------------


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _tie_all_but_norms(copy: nn.Module, source: nn.Module) -> nn.Module:
    """Make ``copy`` use the parameters of ``source`` (same architecture) except in normalisation layers."""
    sources, copies = list(source.modules()), list(copy.modules())
    pairs = list(zip(sources, copies))
    if len(sources) != len(copies) or any(type(a) is not type(b) for a, b in pairs):
        raise ValueError("residual(width) must build modules of one architecture to share weights")
    for src, dst in pairs:
        if isinstance(src, _NORMS):
            continue
        for name, param in src._parameters.items():
            if param is not None:
                setattr(dst, name, param)
    return copy


class PolyNet(_SchemeBody):
    """PolyNet's poly-``r`` blocks {cite}`zhang2017polynet`, read as truncated backward Euler {cite}`lu2018beyond`.

    ``x_{n+1} = (I + G_n + G_n² + … + G_n^r) x_n``  with  ``G_n = h f_n``  (``G² x = G(G(x))``, one ``f_n`` shared
    by all the powers); ``order=2`` (the default) is Zhang et al.'s poly-2 block ``x + F(x) + F(F(x))`` with
    ``F = h f_n``. Backward Euler solves ``x_{n+1} = x_n + h f(x_{n+1})``, i.e. ``x_{n+1} = (I − h f)^{-1} x_n``
    for a linear ``f``, and the Neumann series ``(I − G)^{-1} = I + G + G² + …`` truncated after ``G^r`` is
    this block: for a linear ``f(x) = Ax`` it is ``I + hA + … + (hA)^r`` and agrees with backward Euler to
    ``O(h^{r+1})`` per step (both are of order 1). The truncation is explicit, so it does not inherit backward
    Euler's unconditional stability: for ``f(x) = λx`` it multiplies by ``1 + z + … + z^r``, ``z = hλ``.
    The Neumann reading is a linear one: for a nonlinear ``f`` with ``f(0) ≠ 0`` (a bias) every power
    ``G^j x = h f(G^{j−1} x) = h f(0) + O(h²)`` is of size ``h``, and the block is consistent with
    ``ẋ = f(x) + (r − 1) f(0)`` instead. (``order=1`` is :class:`EulerResNet`.)

    The powers feed ``f_n`` inputs of very different sizes (``x``, then ``h f_n(x)``, ...), so one set of
    batch-norm statistics cannot serve them all: each power gets its own normalisation layers (statistics and
    affine parameters) while all other weights (the convolutions) are shared. ``residual`` factories must
    therefore build modules of one architecture (or return one module, which shares everything).

    Parameter count: ``depth · (P_f + (r − 1) P_norm)`` with ``P_norm = 2 width + 2 m`` for the default
    ``kind="conv"``, ``norm="batch"`` residual function, and ``P_norm = 0`` without normalisation (``kind="linear"``
    or ``norm=None``), where it is ``depth · P_f``; ``nfe = depth · r``.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        norm: str | None = "batch",
        residual: Factory | None = None,
        order: int = 2,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual)
        self.order = positive_int("order", order)
        self.fields = nn.ModuleList()
        for _ in range(depth):
            first = _build(self._make, width)
            powers = [first] + [_tie_all_but_norms(_build(self._make, width), first) for _ in range(order - 1)]
            self.fields.append(nn.ModuleList(powers))

    @property
    def nfe(self) -> int:
        return self.depth * self.order

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        yield x
        for powers in self.fields:
            term, out = x, x
            for f in powers:
                term = self.h * f(term)
                out = out + term
            x = out
            yield x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}"


# --------------------------------------------------------------------------------------------------
# FractalNet = columns of different step counts, averaged (Larsson et al. 2017)
# --------------------------------------------------------------------------------------------------


class FractalNet(_SchemeBody):
    """FractalNet {cite}`larsson2017fractalnet` with Euler-step layers: ``depth`` fractal blocks of ``columns`` columns.

    Larsson et al. expand ``f_1(x) = conv(x)``, ``f_{C+1}(x) = join(f_C(f_C(x)), conv(x))``, and implement the
    joins column-wise: column ``c = 0, ..., C − 1`` of a block is a chain of ``2^c`` layers, and wherever
    columns end at the same depth one join averages all of them (elementwise mean). Here every layer is an
    Euler step, so that the block is a scheme over its interval ``τ = h = T / depth``: a layer of column
    ``c`` is ``x + (τ / 2^c) f(x)``, each column integrates the same interval with ``2^c`` steps, and every
    join averages states that have reached the same time. Lu et al. list FractalNet among the Runge–Kutta-like
    architectures {cite}`lu2018beyond`; with mean joins the block is consistent of order 1 (for ``C = 2`` and
    ``f(x) = λx`` it multiplies by ``1 + z + z²/8``, ``z = τλ``, against ``e^z = 1 + z + z²/2 + …``).

    ``drop_path`` is Larsson et al.'s local drop-path: in training each input of a join is dropped with this
    probability (one draw per forward pass), keeping at least one, and the join averages the survivors.

    Parameter count: ``depth · (2^C − 1) · P_f``; ``nfe = depth · (2^C − 1)``; the longest path has
    ``depth · 2^{C − 1}`` layers.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        norm: str | None = "batch",
        residual: Factory | None = None,
        columns: int = 3,
        drop_path: float = 0.0,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual)
        self.columns = positive_int("columns", columns)
        self.drop_path = probability("drop_path", drop_path, allow_zero=True, allow_one=False)
        # blocks[b][c] holds the 2^c layers of column c of block b
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.ModuleList(_build(self._make, width) for _ in range(2**c)) for c in range(columns))
            for _ in range(depth)
        )

    @property
    def nfe(self) -> int:
        return self.depth * (2**self.columns - 1)

    def _join(self, states: list[Tensor]) -> Tensor:
        if len(states) == 1:
            return states[0]
        if self.training and self.drop_path > 0:
            keep = (torch.rand(len(states)) >= self.drop_path).tolist()
            if not any(keep):
                keep[int(torch.randint(len(states), ()))] = True
            states = [s for s, k in zip(states, keep) if k]
        return torch.stack(states).mean(0)

    def _block(self, cols: nn.ModuleList, x: Tensor) -> Tensor:
        length = 2 ** (self.columns - 1)  # layers of the deepest column
        states = [x] * self.columns
        for i in range(length):
            # column c has a layer at position i when (i + 1) is a multiple of 2^(C - 1 - c)
            active = [c for c in range(self.columns) if (i + 1) % 2 ** (self.columns - 1 - c) == 0]
            outs = []
            for c in active:
                layer = cols[c][(i + 1) // 2 ** (self.columns - 1 - c) - 1]
                outs.append(states[c] + (self.h / 2**c) * layer(states[c]))
            joined = self._join(outs)
            for c in active:
                states[c] = joined
        return states[0]

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        yield x
        for cols in self.blocks:
            x = self._block(cols, x)
            yield x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, columns={self.columns}, drop_path={self.drop_path:g}"
