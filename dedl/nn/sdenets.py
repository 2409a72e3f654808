"""Stochastic regularizers of residual networks read as stochastic differential equations.

Dropout {cite}`srivastava2014dropout`, stochastic depth {cite}`huang2016deep`, shake-shake {cite}`gastaldi2017shake`
and Gaussian noise injection perturb the residual branch of a ResNet with noise of mean zero. Written with the step
``h = T / depth`` of :class:`dedl.nn.resnets.EulerResNet`, every such block is

    ``x_{n+1} = x_n + h f_n(x_n) + h ξ_n ⊙ a_n(x_n)``,   ``E ξ_n = 0``,

and the Euler–Maruyama step of the Itô SDE ``dX = f(t, X) dt + g(t, X) dW`` on ``[0, T]`` is
``x + h f(x) + g(x) √h Z``. The two agree in mean and covariance when ``Var(h ξ_n) = h σ²``, i.e.
``Var ξ_n = σ² / h``, with ``g = σ a`` {cite}`lu2018beyond,sun2018stochastic` (Lu et al., Sec. 3; Sun, Tao and Du,
Sec. 3). The noise is drawn at the start of the step, so the limit is read in the Itô sense. Each body of this module
is parametrised by that SDE's noise level ``sigma`` (σ) and derives its discrete noise from σ and ``h``:

* :class:`DropoutResNet`: ``x + h (m ⊙ f(x)) / q``, ``m ~ Bernoulli(q)`` per element, ``q = h / (h + σ²)``;
  SDE ``dX = f dt + σ f(X) ⊙ dW`` (diagonal noise).
* :class:`StochasticDepthResNet`: ``x + h (η / q) f(x)``, ``η ~ Bernoulli(q)`` per sample, ``q = h / (h + σ²)``;
  SDE ``dX = f dt + σ f(X) dW`` with one Brownian motion per sample (scalar noise).
* :class:`ShakeShakeResNet`: ``x + h (α f₁(x) + (1 − α) f₂(x))``, ``α = ½ + s U(−1, 1)`` per sample,
  ``s = √(3σ²/h)``; SDE ``dX = ½(f₁ + f₂) dt + σ (f₁ − f₂) dW`` (scalar noise).
* :class:`GaussianNoiseResNet`: ``x + h f(x) + σ √h ε``, ``ε ~ N(0, I)``; SDE ``dX = f dt + σ dW`` (additive
  noise).

(Dropout: ``m / q = 1 + ξ`` with ``Var ξ = (1 − q)/q``, so ``σ² = h (1 − q)/q``; shake-shake: ``α − ½ = ξ`` with
``Var α = s²/3``, so ``σ² = h Var α``; Gastaldi's ``α ~ U(0, 1)`` is ``s = ½``, ``σ² = h/12``.)

**Two uses, one parameter.** (i) A practitioner's network (``T = depth``, so ``h = 1``; drop rate 0.1;
``α ~ U(0, 1)``) is built by converting the familiar rate into σ with :func:`sigma_from_drop_rate`,
:func:`sigma_from_shake_spread` or :func:`sigma_from_noise_std`, e.g.
``DropoutResNet(16, 8, T=8.0, sigma=sigma_from_drop_rate(0.1, h=1.0))``; such a network is the Euler–Maruyama
discretisation, with step ``h``, of an SDE whose σ² is of the size of ``h`` times the rate. (ii) The depth limit at
fixed ``T`` and a fixed SDE keeps ``sigma`` and lets ``depth`` grow: the keep probability ``q = h / (h + σ²)`` and
the shake spread ``s = √(3σ²/h)`` then follow ``h`` (``s > ½`` lets ``α`` leave ``[0, 1]``; that is the price of a
non-vanishing diffusion). The properties ``keep``, ``drop_rate``, ``spread`` and ``noise_std`` give the discrete
rates a body uses.

**What converges.** For every body the mean and covariance of each step are those of the Euler–Maruyama step, so the
first two moments of the output converge to the SDE's at weak order 1 (:func:`linear_moments` computes both exactly
for a linear field). Gaussian and shake-shake noise have bounded (or Gaussian) increments of size ``√h`` and the
whole distribution converges (weak order 1). Bernoulli noise does not: at fixed σ and ``h → 0``, ``q → 0`` and a
block that is kept jumps by ``(h + σ²) f(x) ≈ σ² f(x)`` at rate ``1/σ²`` per unit time, so the depth limit of
dropout and stochastic depth is a jump process with the SDE's mean and covariance, and the SDE is its diffusion
approximation, accurate when ``σ² f`` is small (e.g. stochastic depth keeps no block at all with probability
``(1 − q)^depth → e^{−T/σ²}``).

**The SDE.** ``sde()`` returns a :class:`ResidualSDE`, an object in torchsde's convention (``f(t, y)``,
``g(t, y)``, ``noise_type``, ``sde_type = "ito"``; see :mod:`dedl.solvers.sde`) on flattened states, so that
``sdeint(body.sde(), x0, ts, method="euler", dt=...)`` solves the limit. Its drift at time ``t`` is the residual
function of block ``⌊t / h⌋`` (the network's own, piecewise constant in ``t``); with tied weights (``residual``
returning the same module every time, as in :mod:`dedl.nn.resnets`) the SDE is autonomous and the same for every
depth. For images (``kind="conv"``) pass ``image_size``; ``ResidualSDE.flatten`` / ``unflatten`` convert states.

Every body takes ``(width, depth, T=1.0, kind, hidden, kernel_size, norm, residual)`` like the bodies of
:mod:`dedl.nn.resnets` (same :class:`~dedl.nn.resnets.ResidualFunction`, same checks), plus the keyword-only
``sigma`` (``sigma=0`` is :class:`~dedl.nn.resnets.EulerResNet`); it exposes ``h``, ``nfe`` (``depth``,
``2 depth`` for shake-shake) and ``trajectory(x)`` (noisy in training mode) and fits
:class:`dedl.nn.classifier.ImageClassifier`. Parameter count ``depth · P_f`` (``2 depth · P_f`` for shake-shake).
Training mode draws the noise from torch's global generator (seed with :func:`dedl.utils.seed_everything`);
evaluation mode is deterministic, the mean network ``x + h f(x)`` (``x + h ½(f₁ + f₂)`` for shake-shake).

**Networks whose forward pass is an SDE solve (Part V).** :class:`NeuralSDE` is Liu et al.'s block
``dh = f_θ(t, h) dt + g(t, h) dW`` with additive, multiplicative or dropout-style diffusion {cite}`liu2019neural`,
and :func:`neural_sde_net` its image classifier; :class:`SDENet` is Kong et al.'s SDE-Net {cite}`kong2020sde`, a
drift net for the prediction and a diffusion net for the epistemic uncertainty, built by :func:`sdenet` and trained
with :func:`sdenet_loss`. Both solve with :func:`dedl.solvers.sdeint`. The baselines of the uncertainty
comparison: :func:`mc_predict` samples the predictive distribution of any of these models (and of a network with
dropout left on at test, MC dropout {cite}`gal2016dropout`), :class:`DeepEnsemble` averages the softmax of
independently trained members {cite}`lakshminarayanan2017simple`. The metrics live in :mod:`dedl.uncertainty`.
:class:`LatentSDE` is Li et al.'s latent SDE {cite}`li2020scalable`, a generative model of time series with prior
and posterior SDEs that share their diffusion, trained on an evidence lower bound whose path KL comes from
Girsanov's theorem, by backpropagation or with :func:`dedl.solvers.sdeint_adjoint`.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from dedl.nn.checks import check_image_or_vector, check_kind, positive_float, positive_int, probability
from dedl.nn.classifier import ImageClassifier
from dedl.nn.odenets import ConvVectorField, MLPVectorField, _group_norm, _time_grid
from dedl.nn.resnets import Factory, _build, _SchemeBody
from dedl.solvers import sdeint, sdeint_adjoint, step_grid

__all__ = [
    "DropoutResNet",
    "StochasticDepthResNet",
    "ShakeShakeResNet",
    "GaussianNoiseResNet",
    "ResidualSDE",
    "linear_moments",
    "sigma_from_drop_rate",
    "sigma_from_shake_spread",
    "sigma_from_noise_std",
    "NeuralSDE",
    "NEURAL_SDE_NOISES",
    "neural_sde_net",
    "SDENet",
    "sdenet",
    "sdenet_loss",
    "mc_predict",
    "DeepEnsemble",
    "LatentSDE",
    "LATENT_SDE_METHODS",
    "ELBOTerms",
]


# --------------------------------------------------------------------------------------------------
# from the practitioner's rates to the SDE's sigma
# --------------------------------------------------------------------------------------------------


def sigma_from_drop_rate(drop: float, h: float) -> float:
    """The σ of the SDE that dropout or stochastic depth with drop rate ``drop`` discretises at step ``h``.

    With keep probability ``q = 1 − drop`` the noise ``m / q − 1`` has variance ``(1 − q)/q``, so a step adds
    ``h² (1 − q)/q`` times ``f²`` to the variance, which is ``h σ² f²`` for ``σ² = h · drop / (1 − drop)``
    {cite}`lu2018beyond,sun2018stochastic`. The inverse is ``q = h / (h + σ²)`` (the bodies' ``keep``).
    E.g. ``sigma_from_drop_rate(0.1, h=1.0) = 1/3``.
    """
    drop = probability("drop", drop, allow_zero=True, allow_one=False)
    h = positive_float("h", h)
    return math.sqrt(h * drop / (1.0 - drop))


def sigma_from_shake_spread(spread: float, h: float) -> float:
    """The σ of the SDE that shake-shake with ``α ~ ½ + spread · U(−1, 1)`` discretises at step ``h``.

    ``Var α = spread² / 3``, so ``σ² = h Var α = h spread² / 3``; Gastaldi's ``α ~ U(0, 1)``
    {cite}`gastaldi2017shake` is ``spread = ½``, ``σ = √(h / 12)``. The inverse is ``spread = √(3σ²/h)``
    (:attr:`ShakeShakeResNet.spread`).
    """
    spread = positive_float("spread", spread, allow_zero=True)
    h = positive_float("h", h)
    return spread * math.sqrt(h / 3.0)


def sigma_from_noise_std(std: float, h: float) -> float:
    """The σ of ``dX = f dt + σ dW`` that Gaussian noise of standard deviation ``std`` added after each block
    discretises at step ``h``: the Euler–Maruyama increment is ``σ √h ε``, so ``σ = std / √h``."""
    std = positive_float("std", std, allow_zero=True)
    h = positive_float("h", h)
    return std / math.sqrt(h)


# --------------------------------------------------------------------------------------------------
# the SDE a body discretises
# --------------------------------------------------------------------------------------------------


class ResidualSDE:
    """The Itô SDE ``dX = f(t, X) dt + g(t, X) dW`` on ``[0, T]`` that a noisy body discretises (module docstring).

    An object in torchsde's convention for :func:`dedl.solvers.sdeint` (``f(t, y)``, ``g(t, y)``, ``f_and_g(t, y)``,
    ``noise_type``, ``sde_type = "ito"``) on flattened states ``y`` of shape ``(batch, d)``, ``d = width`` for
    vectors and ``width · H · W`` for images. The drift and diffusion at time ``t`` use the residual function(s) of
    block ``n = ⌊t / h⌋`` (clipped to ``[0, depth − 1]``): the network's own weights, not a copy, so the SDE
    follows training. ``g`` has shape ``(batch, d)`` for diagonal noise (dropout; Gaussian noise, whose constant
    ``g = σ`` is written in the diagonal form instead of a ``(batch, d, d)`` identity) and ``(batch, d, 1)`` for
    scalar noise (stochastic depth, shake-shake). The residual functions are called in the mode they are in: call
    ``body.eval()`` first when they hold batch norms, so that ``f`` is a fixed function.
    """

    sde_type = "ito"

    def __init__(self, body: _NoisyResNet, shape: tuple[int, ...]):
        self.body = body
        self.shape = tuple(shape)
        self.noise_type = body.noise_type

    @property
    def sigma(self) -> float:
        """The noise level σ of the body."""
        return self.body.sigma

    @property
    def T(self) -> float:
        """The end time of the SDE, the body's ``T``."""
        return self.body.T

    def block(self, t: Tensor | float) -> int:
        """The block ``n = ⌊t / h⌋`` whose weights act at time ``t`` (a small tolerance absorbs round-off)."""
        n = math.floor(float(t) / self.body.h + 1e-6)
        return min(max(n, 0), self.body.depth - 1)

    def flatten(self, x: Tensor) -> Tensor:
        """A batch of states ``(batch, *shape)`` as the ``(batch, d)`` matrix that ``sdeint`` takes."""
        check_image_or_vector(x, self.body.kind, self.body.width)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected states of shape (batch, *{self.shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def unflatten(self, y: Tensor) -> Tensor:
        """The inverse of :meth:`flatten`, for any leading dimensions (e.g. ``sdeint``'s ``(len(ts), batch, d)``)."""
        return y.reshape(*y.shape[:-1], *self.shape)

    def f_and_g(self, t: Tensor | float, y: Tensor) -> tuple[Tensor, Tensor]:
        x = self.unflatten(y)
        drift, amplitude = self.body._drift_and_amplitude(self.block(t), x)
        drift, g = drift.reshape(y.shape), (self.sigma * amplitude).reshape(y.shape)
        return drift, (g.unsqueeze(-1) if self.noise_type == "scalar" else g)

    def f(self, t: Tensor | float, y: Tensor) -> Tensor:
        """The drift: ``f_n(x)`` (``½(f₁ + f₂)`` for shake-shake), shape ``(batch, d)``."""
        x = self.unflatten(y)
        return self.body._drift(self.block(t), x).reshape(y.shape)

    def g(self, t: Tensor | float, y: Tensor) -> Tensor:
        """The diffusion: ``σ`` times the noise amplitude (``f_n``, ``f₁ − f₂`` or 1), shaped for ``noise_type``."""
        return self.f_and_g(t, y)[1]

    def __repr__(self) -> str:
        return (
            f"ResidualSDE({type(self.body).__name__}, noise_type={self.noise_type!r}, sigma={self.sigma:g}, "
            f"T={self.T:g}, shape={self.shape})"
        )


# --------------------------------------------------------------------------------------------------
# the bodies
# --------------------------------------------------------------------------------------------------


class _NoisyResNet(_SchemeBody):
    """Forward Euler with noise on the residual branch: the frame of the four bodies (module docstring).

    A subclass sets ``noise_type`` (of its SDE), ``branches`` (residual functions per block) and implements
    ``_drift`` (``f_n(x)``), ``_amplitude`` (the noise amplitude ``a_n(x)``, ``g = σ a``) and ``_noisy_step``.
    """

    noise_type = "diagonal"
    branches = 1

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
        *,
        sigma: float,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual)
        self.sigma = positive_float("sigma", sigma, allow_zero=True)
        self.fields = nn.ModuleList(
            nn.ModuleList(_build(self._make, width) for _ in range(self.branches)) for _ in range(depth)
        )

    @property
    def nfe(self) -> int:
        return self.depth * self.branches

    def _drift(self, n: int, x: Tensor) -> Tensor:
        return self.fields[n][0](x)

    def _drift_and_amplitude(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _noisy_step(self, n: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _states(self, x: Tensor) -> Iterator[Tensor]:
        yield x
        noisy = self.training and self.sigma > 0
        for n in range(self.depth):
            x = self._noisy_step(n, x) if noisy else x + self.h * self._drift(n, x)
            yield x

    def sde(self, image_size: tuple[int, int] | None = None) -> ResidualSDE:
        """The Itô SDE this body discretises, as a :class:`ResidualSDE` for :func:`dedl.solvers.sdeint`.

        ``image_size = (H, W)`` is required for ``kind="conv"`` (states are flattened to ``(batch, width H W)``)
        and refused for ``kind="linear"``.
        """
        if self.kind == "linear":
            if image_size is not None:
                raise ValueError("image_size is for kind='conv'; a linear body's states are (batch, width)")
            return ResidualSDE(self, (self.width,))
        if image_size is None:
            raise ValueError("kind='conv' needs image_size=(H, W) to flatten its states for sdeint")
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
            raise TypeError(f"image_size must be a pair (H, W) of ints, got {image_size!r}")
        H, W = (positive_int("image_size[0]", image_size[0]), positive_int("image_size[1]", image_size[1]))
        return ResidualSDE(self, (self.width, H, W))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma:g}"


def _per_sample(x: Tensor) -> tuple[int, ...]:
    """The shape ``(batch, 1, ..., 1)`` of one draw per sample, broadcast over a state ``x``."""
    return (x.shape[0],) + (1,) * (x.dim() - 1)


class _BernoulliResNet(_NoisyResNet):
    """Dropout and stochastic depth: ``x + h (mask / q) f(x)``, ``q = h / (h + σ²)``."""

    @property
    def keep(self) -> float:
        """The keep probability ``q = h / (h + σ²)`` (1 without noise)."""
        return self.h / (self.h + self.sigma**2)

    @property
    def drop_rate(self) -> float:
        """The drop rate ``1 − q = σ² / (h + σ²)`` (0 without noise)."""
        return self.sigma**2 / (self.h + self.sigma**2)

    def _mask_shape(self, fx: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def _drift_and_amplitude(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        fx = self._drift(n, x)
        return fx, fx

    def _noisy_step(self, n: int, x: Tensor) -> Tensor:
        fx, q = self._drift(n, x), self.keep
        mask = torch.rand(self._mask_shape(fx), dtype=fx.dtype, device=fx.device) < q
        return x + (self.h / q) * (mask * fx)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.keep:.4g}"


class DropoutResNet(_BernoulliResNet):
    """Dropout on the residual branch {cite}`srivastava2014dropout`, read as an SDE {cite}`sun2018stochastic`.

    Training: ``x_{n+1} = x_n + h (m_n ⊙ f_n(x_n)) / q``, ``m_n ~ Bernoulli(q)`` independently for every element
    (sample, channel, pixel), keep probability ``q = h / (h + σ²)`` (``keep``; drop rate ``1 − q``,
    ``drop_rate``); evaluation: ``x_n + h f_n(x_n)`` (the mean, :class:`~dedl.nn.resnets.EulerResNet`).
    With ``m / q = 1 + ξ``, ``Var ξ = (1 − q)/q = σ²/h``, a step adds ``h ξ ⊙ f`` of variance ``h σ² f²``: the
    Euler–Maruyama step of the Itô SDE with diagonal noise

        ``dX = f(t, X) dt + σ f(t, X) ⊙ dW``

    (Sun, Tao and Du, Sec. 3; Lu et al. {cite}`lu2018beyond`, Sec. 3, for the same reading of stochastic depth).
    A practitioner's drop rate ``p`` at step ``h`` is ``sigma=sigma_from_drop_rate(p, h)``. The first two moments
    of the output converge to the SDE's as ``depth → ∞`` at fixed σ; the distribution converges to a jump process
    with those moments (module docstring), of which the SDE is the diffusion approximation.
    """

    noise_type = "diagonal"

    def _mask_shape(self, fx: Tensor) -> tuple[int, ...]:
        return tuple(fx.shape)


class StochasticDepthResNet(_BernoulliResNet):
    """Stochastic depth {cite}`huang2016deep` per sample (drop-path), read as an SDE {cite}`lu2018beyond`.

    Training: ``x_{n+1} = x_n + h (η_n / q) f_n(x_n)``, ``η_n ~ Bernoulli(q)`` once per sample and block (the whole
    residual branch of that sample is kept or dropped; Huang et al. draw once per mini-batch, which couples the
    samples), ``q = h / (h + σ²)`` (``keep``), the same survival probability for every block; evaluation:
    ``x_n + h f_n(x_n)``. With ``η / q = 1 + ξ``, ``Var ξ = σ²/h``, this is the Euler–Maruyama step of the Itô SDE
    with one Brownian motion per sample (scalar noise, ``g`` of shape ``(batch, d, 1)``)

        ``dX = f(t, X) dt + σ f(t, X) dW``,

    Lu et al.'s Sec. 3 reading (their ``p_n``, linearly decaying, would make σ depend on ``t``). The convergence
    caveat of :class:`DropoutResNet` applies.
    """

    noise_type = "scalar"

    def _mask_shape(self, fx: Tensor) -> tuple[int, ...]:
        return _per_sample(fx)


class ShakeShakeResNet(_NoisyResNet):
    """Shake-shake regularization {cite}`gastaldi2017shake`, read as an SDE {cite}`sun2018stochastic`.

    Each block has two residual functions (``fields[n][0]``, ``fields[n][1]``). Training:
    ``x_{n+1} = x_n + h (α_n f₁(x_n) + (1 − α_n) f₂(x_n))`` with ``α_n = ½ + s U(−1, 1)`` drawn per sample and block,
    ``s = √(3σ²/h)`` (:attr:`spread`; Gastaldi's ``α ~ U(0, 1)`` is ``s = ½``, :func:`sigma_from_shake_spread`);
    evaluation: ``α = ½``, ``x_n + h ½(f₁ + f₂)(x_n)``. Writing ``α − ½ = ξ``, ``Var ξ = s²/3 = σ²/h``, the step is
    ``x + h ½(f₁ + f₂) + h ξ (f₁ − f₂)``: the Euler–Maruyama step of the Itô SDE with scalar noise

        ``dX = ½(f₁ + f₂)(t, X) dt + σ (f₁ − f₂)(t, X) dW``.

    ``shake_backward=True`` (the default) is Gastaldi's "Shake-Shake": the backward pass uses an independent
    ``β_n`` (same law) in place of ``α_n``; ``False`` keeps ``α_n`` ("Shake-Keep"). To tie the weights of all steps,
    let ``residual`` alternate between two modules, e.g. ``residual=lambda w, c=itertools.cycle((f1, f2)): next(c)``
    (the body calls it for branch 1, then branch 2, block after block).
    """

    noise_type = "scalar"
    branches = 2

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
        *,
        sigma: float,
        shake_backward: bool = True,
    ):
        super().__init__(width, depth, T, kind, hidden, kernel_size, norm, residual, sigma=sigma)
        if not isinstance(shake_backward, bool):
            raise TypeError(f"shake_backward must be a bool, got {type(shake_backward).__name__}")
        self.shake_backward = shake_backward

    @property
    def spread(self) -> float:
        """``s = √(3σ²/h)``: ``α`` is uniform on ``[½ − s, ½ + s]``."""
        return math.sqrt(3.0 * self.sigma**2 / self.h)

    def _drift(self, n: int, x: Tensor) -> Tensor:
        f1, f2 = self.fields[n]
        return 0.5 * (f1(x) + f2(x))

    def _drift_and_amplitude(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        f1, f2 = self.fields[n]
        a, b = f1(x), f2(x)
        return 0.5 * (a + b), a - b

    def _uniform(self, x: Tensor) -> Tensor:
        return 0.5 + self.spread * (2.0 * torch.rand(_per_sample(x), dtype=x.dtype, device=x.device) - 1.0)

    def _noisy_step(self, n: int, x: Tensor) -> Tensor:
        f1, f2 = self.fields[n]
        a, b = f1(x), f2(x)
        alpha = self._uniform(x)
        if not self.shake_backward:
            return x + self.h * (b + alpha * (a - b))
        beta = self._uniform(x)
        # forward value α a + (1 − α) b, gradient of β a + (1 − β) b
        mixed = b + beta * (a - b) + ((alpha - beta) * (a - b)).detach()
        return x + self.h * mixed

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, spread={self.spread:.4g}, shake_backward={self.shake_backward}"


class GaussianNoiseResNet(_NoisyResNet):
    """Gaussian noise injection after each residual block, read as an SDE with additive noise {cite}`liu2019neural`.

    Training: ``x_{n+1} = x_n + h f_n(x_n) + σ √h ε_n``, ``ε_n ~ N(0, I)`` for every element; evaluation:
    ``x_n + h f_n(x_n)``. This is exactly the Euler–Maruyama step of the Itô SDE with additive noise

        ``dX = f(t, X) dt + σ dW``,

    the Neural SDE of Liu et al. (their additive-noise case). Noise of standard deviation ``std`` per block is
    ``sigma=sigma_from_noise_std(std, h)`` (:attr:`noise_std` is ``σ √h``). ``sde()`` writes the constant
    diffusion in the diagonal form (``g = σ``, shape ``(batch, d)``).
    """

    noise_type = "diagonal"

    @property
    def noise_std(self) -> float:
        """The standard deviation ``σ √h`` of the noise added by one block."""
        return self.sigma * math.sqrt(self.h)

    def _drift_and_amplitude(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        fx = self._drift(n, x)
        return fx, torch.ones_like(fx)

    def _noisy_step(self, n: int, x: Tensor) -> Tensor:
        return x + self.h * self._drift(n, x) + self.noise_std * torch.randn_like(x)


# --------------------------------------------------------------------------------------------------
# exact moments for a linear field
# --------------------------------------------------------------------------------------------------


def _linear_maps(body: _NoisyResNet) -> list[list[Tensor]]:
    """The matrices ``A`` of each block's residual functions, which must be bias-free ``nn.Linear(width, width)``."""
    maps = []
    for n, block in enumerate(body.fields):
        row = []
        for f in block:
            if not isinstance(f, nn.Linear) or f.bias is not None:
                raise TypeError(
                    f"linear_moments needs residual functions nn.Linear(width, width, bias=False); block {n} has "
                    f"{type(f).__name__}{' with a bias' if isinstance(f, nn.Linear) else ''}"
                )
            row.append(f.weight.detach().to(torch.float64))
        maps.append(row)
    return maps


def _noise_operator(body: _NoisyResNet, C: Tensor):
    """``N(M) = E[a a^T]`` for ``E[x x^T] = M`` with noise amplitude ``a = C x`` (elementwise noise keeps the
    diagonal only), or the identity for additive noise: the Itô correction ``g g^T`` of the moment equation."""
    if isinstance(body, GaussianNoiseResNet):
        eye = torch.eye(body.width, dtype=torch.float64)
        return lambda M: eye
    if isinstance(body, DropoutResNet):
        return lambda M: torch.diag(torch.diagonal(C @ M @ C.T))
    return lambda M: C @ M @ C.T


def linear_moments(body: _NoisyResNet, x0: Tensor, sde: bool = False) -> tuple[Tensor, Tensor]:
    """The exact mean and covariance of a noisy body's output (training mode) for a linear field, or of its SDE.

    For bias-free linear residual functions ``f_n(x) = A_n x`` (``kind="linear"``; for shake-shake
    ``B_n = ½(A₁ + A₂)``, ``C_n = A₁ − A₂``, else ``B_n = C_n = A_n``) started at the fixed input ``x0`` of shape
    ``(width,)``, the mean ``m`` and second moment ``M = E[x x^T]`` obey closed recursions (everything in float64):

    * the network (``sde=False``): ``m ← (I + h B) m``, ``M ← (I + h B) M (I + h B)^T + h σ² N(M)``;
    * the SDE at time ``T`` (``sde=True``): ``m' = B m``, ``M' = B M + M B^T + σ² N(M)`` on each block's interval,
      solved exactly with the matrix exponential,

    with ``N(M) = C M C^T`` (scalar noise), its diagonal (dropout's diagonal noise) or ``I`` (Gaussian noise). The
    network's recursion is a first-order (Euler) step of the SDE's, so the two differ by ``O(h)``: the weak error
    of the mean and covariance, without Monte Carlo noise {cite}`kloeden1992numerical` (Sec. 14.1).

    Returns:
        ``(mean, covariance)``, shapes ``(width,)`` and ``(width, width)``, float64.

    Raises:
        TypeError: ``body`` is not a noisy body of this module, a residual function is not a bias-free
            ``nn.Linear``, or ``x0`` is not a floating-point tensor.
        ValueError: ``x0`` is not of shape ``(width,)``.
    """
    if not isinstance(body, _NoisyResNet):
        raise TypeError(f"body must be a noisy body of dedl.nn.sdenets, got {type(body).__name__}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got {type(x0).__name__}")
    if tuple(x0.shape) != (body.width,):
        raise ValueError(f"x0 must have shape (width,) = ({body.width},), got {tuple(x0.shape)}")
    if not isinstance(sde, bool):
        raise TypeError(f"sde must be a bool, got {type(sde).__name__}")
    d, h, s2 = body.width, body.h, body.sigma**2
    m = x0.detach().to(torch.float64)
    M = torch.outer(m, m)
    eye = torch.eye(d, dtype=torch.float64)
    for maps in _linear_maps(body):
        B = maps[0] if len(maps) == 1 else 0.5 * (maps[0] + maps[1])
        C = maps[0] if len(maps) == 1 else maps[0] - maps[1]
        N = _noise_operator(body, C)
        if not sde:
            step = eye + h * B
            m, M = step @ m, step @ M @ step.T + h * s2 * N(M)
            continue
        m = torch.linalg.matrix_exp(h * B) @ m
        # vec(M)' = K vec(M) + c, with the affine part c (Gaussian noise) carried by an extra constant coordinate
        K = torch.zeros(d * d + 1, d * d + 1, dtype=torch.float64)
        for k in range(d * d):
            E = torch.zeros(d * d, dtype=torch.float64)
            E[k] = 1.0
            E = E.view(d, d)
            noise = N(E) if not isinstance(body, GaussianNoiseResNet) else torch.zeros_like(E)
            K[: d * d, k] = (B @ E + E @ B.T + s2 * noise).flatten()
        if isinstance(body, GaussianNoiseResNet):
            K[: d * d, -1] = s2 * eye.flatten()
        z = torch.cat([M.flatten(), torch.ones(1, dtype=torch.float64)])
        M = (torch.linalg.matrix_exp(h * K) @ z)[: d * d].view(d, d)
    return m, M - torch.outer(m, m)


# ==================================================================================================
# Part V: networks whose forward pass is an SDE solve
# ==================================================================================================

#: The diffusions of :class:`NeuralSDE`, Liu et al.'s three {cite}`liu2019neural` (Sec. 3.1).
NEURAL_SDE_NOISES = ("additive", "multiplicative", "dropout")
#: The Itô methods of :func:`dedl.solvers.sdeint` that :class:`NeuralSDE` solves with (one drift evaluation a step).
_NEURAL_SDE_METHODS = ("euler", "milstein")


def _check_floating_state(h0: Tensor, name: str = "the initial state") -> Tensor:
    if not isinstance(h0, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(h0).__name__}")
    if not h0.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {h0.dtype}")
    if h0.dim() < 2 or h0.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (batch, ...), got shape {tuple(h0.shape)}")
    return h0


class _NeuralSDETerms:
    """The SDE of a :class:`NeuralSDE` on flattened states ``(batch, d)``, in torchsde's convention (diagonal
    noise, Itô). With ``noisy=False`` the diffusion is zero: the drift ODE, solved on the same grid."""

    sde_type = "ito"
    noise_type = "diagonal"

    def __init__(self, block: NeuralSDE, shape: tuple[int, ...], noisy: bool):
        self.block, self.shape, self.noisy = block, shape, noisy

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.block.func(t, y.reshape(-1, *self.shape)).reshape(y.shape)

    def _g(self, t: Tensor, y: Tensor, fy: Tensor | None) -> Tensor:
        sigma, noise = self.block.sigma, self.block.noise
        if not self.noisy or sigma == 0:
            return torch.zeros_like(y)
        if noise == "additive":
            return torch.full_like(y, sigma)
        if noise == "multiplicative":
            return sigma * y
        return sigma * (self.f(t, y) if fy is None else fy)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self._g(t, y, None)

    def f_and_g(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        fy = self.f(t, y)
        return fy, self._g(t, y, fy)


class NeuralSDE(nn.Module):
    """Liu et al.'s Neural SDE block {cite}`liu2019neural`: the ODE block with a diffusion, ``h(t0) = h0`` and

        ``dh = f_θ(t, h) dt + g(t, h) dW``  on ``[t0, t1]`` (Itô),

    with one of the paper's three diffusions (Sec. 3.1), ``noise`` in :data:`NEURAL_SDE_NOISES`:

    * ``"additive"``: ``g = σ`` (Gaussian noise added to the state, the paper's ``G = σ I``);
    * ``"multiplicative"``: ``g = σ h`` (elementwise; noise proportional to the state);
    * ``"dropout"``: ``g = σ f_θ(t, h)`` (elementwise): the diffusion limit of dropout on the residual branch,
      ``h + f(h) ⊙ m / p`` with ``m ~ Bernoulli(p)``, for which ``σ = √((1 − p)/p)`` (the paper's Sec. 3.1;
      :class:`DropoutResNet` is the discrete network).

    ``func`` is the drift ``f_θ(t, h)`` (an ``nn.Module``, e.g. :class:`~dedl.nn.odenets.MLPVectorField` or
    :class:`~dedl.nn.odenets.ConvVectorField`), ``t = (t0, t1)`` or a longer grid. The SDE is solved by
    :func:`dedl.solvers.sdeint` with the Itô ``method`` (``"euler"``, Euler–Maruyama, or ``"milstein"``, not for
    dropout noise, whose diffusion is not elementwise in ``h``) and fixed step ``dt``; gradients flow by
    backpropagation through the solver (``adjoint=False``: memory grows with the number of steps) or by solving
    the adjoint SDE backward on the same Brownian path with :func:`dedl.solvers.sdeint_adjoint`
    (``adjoint=True``, {cite}`li2020scalable`: memory flat in the number of steps, gradients equal to
    backpropagation's as ``dt → 0``; additive and multiplicative noise only, since the adjoint's Stratonovich
    form needs a diffusion elementwise in ``h``). States of any shape ``(batch, ...)`` are flattened for the
    solver.

    * Training mode: one sampled path per call (noise from torch's global generator; seed with
      :func:`dedl.utils.seed_everything`), as the paper trains.
    * Evaluation mode, ``n_samples = 0`` (default): the drift ODE ``dh = f_θ dt``, deterministic, solved on the
      same grid (Euler–Maruyama with ``g = 0`` is forward Euler); ``n_samples = k ≥ 1``: the mean of ``h(t1)``
      over ``k`` sampled paths (the paper's test-time ensemble, Sec. 4; the ``k`` paths are one batched solve).
      To average *predictions* (softmax) over paths instead, use :func:`mc_predict`.

    ``forward(h0)`` returns ``h(t1)``; :meth:`trajectory` returns ``h`` at every time of the grid, shape
    ``(len(t), *h0.shape)``. :attr:`nfe` is the number of drift evaluations of the latest forward pass, one per
    solver step (:func:`dedl.solvers.step_grid`; sdeint's one shape check at ``t0`` is not counted). ``sigma = 0``
    is the Neural ODE with the fixed-step solver, in every mode.
    """

    def __init__(
        self,
        func: nn.Module,
        t: Sequence[float] | Tensor = (0.0, 1.0),
        noise: str = "additive",
        sigma: float = 0.1,
        method: str = "euler",
        dt: float = 0.1,
        n_samples: int = 0,
        adjoint: bool = False,
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be an nn.Module (its parameters are trained), got {type(func).__name__}")
        if not isinstance(adjoint, bool):
            raise TypeError(f"adjoint must be a bool, got {type(adjoint).__name__}")
        if adjoint and noise == "dropout":
            raise ValueError("adjoint=True needs a diffusion elementwise in h; dropout noise trains by backpropagation")
        if noise not in NEURAL_SDE_NOISES:
            raise ValueError(f"noise must be one of {NEURAL_SDE_NOISES}, got {noise!r}")
        if method not in _NEURAL_SDE_METHODS:
            raise ValueError(f"method must be one of {_NEURAL_SDE_METHODS} (Itô), got {method!r}")
        if method == "milstein" and noise == "dropout":
            raise ValueError("method='milstein' needs a diffusion elementwise in h; use 'euler' for dropout noise")
        self.func = func
        self.register_buffer("t", _time_grid(t), persistent=False)
        self.noise = noise
        self.sigma = positive_float("sigma", sigma, allow_zero=True)
        self.method = method
        self.dt = positive_float("dt", dt)
        self.n_samples = positive_int("n_samples", n_samples, allow_zero=True)
        self.adjoint = adjoint
        self._nfe = 0

    @property
    def nfe(self) -> int:
        """Drift evaluations of the latest forward pass (one per solver step)."""
        return self._nfe

    def _solve(self, h0: Tensor, t: Tensor) -> Tensor:
        _check_floating_state(h0)
        shape = tuple(h0.shape[1:])
        samples = 1 if self.training else self.n_samples
        noisy = samples > 0
        y0 = h0.reshape(h0.shape[0], -1)
        if samples > 1:
            y0 = y0.repeat(samples, 1)
        ts = t.to(device=h0.device, dtype=h0.dtype)
        sde = _NeuralSDETerms(self, shape, noisy)
        if self.adjoint and torch.is_grad_enabled():
            params = tuple(p for p in self.func.parameters() if p.requires_grad)
            ys = sdeint_adjoint(sde, y0, ts, method=self.method, dt=self.dt, adjoint_params=params)
        else:
            ys = sdeint(sde, y0, ts, method=self.method, dt=self.dt)
        self._nfe = len(step_grid(t.tolist(), self.dt)[0]) - 1
        ys = ys.reshape(len(t), max(samples, 1), h0.shape[0], *shape).mean(1)
        return ys

    def forward(self, h0: Tensor) -> Tensor:
        return self._solve(h0, self.t)[-1]

    def trajectory(self, h0: Tensor, t: Sequence[float] | Tensor | None = None) -> Tensor:
        """The state at every time of ``t`` (default: the block's grid), shape ``(len(t), *h0.shape)``: a sampled
        path in training mode, the drift ODE's solution or the mean of ``n_samples`` paths in evaluation mode."""
        return self._solve(h0, self.t if t is None else _time_grid(t))

    def extra_repr(self) -> str:
        t = self.t.tolist()
        span = f"t=({t[0]:g}, {t[-1]:g})" if len(t) == 2 else f"t=<{len(t)} times in [{t[0]:g}, {t[-1]:g}]>"
        return (f"{span}, noise={self.noise!r}, sigma={self.sigma:g}, method={self.method!r}, dt={self.dt:g}, "
                f"n_samples={self.n_samples}, adjoint={self.adjoint}")


def neural_sde_net(
    in_channels: int,
    width: int,
    num_classes: int,
    noise: str = "additive",
    sigma: float = 0.1,
    t: Sequence[float] | Tensor = (0.0, 1.0),
    method: str = "euler",
    dt: float = 0.1,
    n_samples: int = 0,
    time_dependent: bool = True,
    norm: str | None = "group",
) -> ImageClassifier:
    """Liu et al.'s Neural SDE image classifier {cite}`liu2019neural` in the book's shared frame.

    :func:`~dedl.nn.odenets.odenet` with the ODE block replaced by a :class:`NeuralSDE` whose drift is
    Chen et al.'s :class:`~dedl.nn.odenets.ConvVectorField` (``time_dependent`` and ``norm`` go to it): a
    convolutional stem, one SDE block, global average pooling and a linear head. ``model.body`` is the
    :class:`NeuralSDE` (``model.body.sigma`` and ``model.body.n_samples`` may be changed at test time).
    ``sigma=0`` is an ODE-Net solved with the same fixed-step solver, the like-for-like baseline.
    """
    positive_int("width", width)
    body = NeuralSDE(
        ConvVectorField(width, time_dependent=time_dependent, norm=norm),
        t=t,
        noise=noise,
        sigma=sigma,
        method=method,
        dt=dt,
        n_samples=n_samples,
    )
    return ImageClassifier(body, in_channels=in_channels, width=width, num_classes=num_classes)


# --------------------------------------------------------------------------------------------------
# SDE-Net
# --------------------------------------------------------------------------------------------------


class _SDENetTerms:
    """The SDE of an :class:`SDENet` on flattened states: drift ``f(t, x)``, diffusion ``s`` per sample, constant
    along the path (diagonal noise, every coordinate its own Brownian motion)."""

    sde_type = "ito"
    noise_type = "diagonal"

    def __init__(self, drift: nn.Module, shape: tuple[int, ...], scale: Tensor):
        self.drift, self.shape, self.scale = drift, shape, scale

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.drift(t, y.reshape(-1, *self.shape)).reshape(y.shape)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.scale.expand_as(y)


class SDENet(nn.Module):
    """Kong, Sun and Zhang's SDE-Net {cite}`kong2020sde`: a drift net for the prediction, a diffusion net for the
    epistemic uncertainty.

    An input ``x`` is embedded, ``x_0 = embedding(x)``, then moved by the Itô SDE (the paper's eq. 5)

        ``dx_t = f(t, x_t) dt + g(x_0) dW_t``,  ``t ∈ [0, T]``,

    and read out, ``head(x_T)``. The drift net ``f`` (``drift``, a vector field ``f(t, h)``) fits the predictive
    function; the diffusion net ``g`` (``diffusion``, mapping ``x_0`` to one number per sample in ``(0, 1)``,
    e.g. ending in a sigmoid) is scaled by ``sigma_max``: ``g(x_0) = sigma_max · diffusion(x_0)``, one noise level
    per sample, constant along the path, as in the paper's code. Training makes ``g`` small on the training
    data (the drift dominates: accurate predictions) and large out of distribution (the Brownian motion
    dominates: spread-out predictions); see :func:`sdenet_loss`. The SDE is solved with
    :func:`dedl.solvers.sdeint`, Euler–Maruyama with ``steps`` steps of ``T / steps`` (the paper: ``T = 6``,
    6 steps for MNIST).

    ``forward(x)`` returns the logits of one sampled path, in training and in evaluation mode (SDE-Net's
    prediction is an average over paths: use :func:`mc_predict`, the paper's 10 paths at test). The prediction's
    gradient does not reach the diffusion net (its output is detached on the path): as in the paper's
    Algorithm 1, ``diffusion`` is trained by the out-of-distribution objective alone, ``embedding``, ``drift``
    and ``head`` by the prediction loss alone. :meth:`diffusion_level` is ``diffusion(x_0)``, the learned
    uncertainty in ``(0, 1)`` (an out-of-distribution score). :attr:`nfe` is ``steps``.

    Kong et al.'s MNIST code trains with ``sigma_max = 20`` ("for training stability") and tests with 500; set
    :attr:`sigma_max` between the two phases to do the same.
    """

    def __init__(
        self,
        embedding: nn.Module,
        drift: nn.Module,
        diffusion: nn.Module,
        head: nn.Module,
        T: float = 6.0,
        steps: int = 6,
        sigma_max: float = 20.0,
    ):
        super().__init__()
        for name, module in (("embedding", embedding), ("drift", drift), ("diffusion", diffusion), ("head", head)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        self.embedding, self.drift, self.diffusion, self.head = embedding, drift, diffusion, head
        self.T = positive_float("T", T)
        self.steps = positive_int("steps", steps)
        self.sigma_max = positive_float("sigma_max", sigma_max, allow_zero=True)

    @property
    def nfe(self) -> int:
        """Drift evaluations of a forward pass: ``steps``."""
        return self.steps

    @property
    def dt(self) -> float:
        """The Euler–Maruyama step ``T / steps``."""
        return self.T / self.steps

    def _level(self, x0: Tensor) -> Tensor:
        level = self.diffusion(x0)
        if level.shape not in ((x0.shape[0],), (x0.shape[0], 1)):
            raise ValueError(f"diffusion must return one value per sample, shape (batch, 1), got {tuple(level.shape)}")
        return level.reshape(-1, 1)

    def diffusion_level(self, x: Tensor) -> Tensor:
        """``diffusion(embedding(x))``, shape ``(batch,)``: each input's learned uncertainty (``g / sigma_max``)."""
        _check_floating_state(x, "x")
        return self._level(self.embedding(x)).reshape(-1)

    def trajectory(self, x: Tensor) -> Tensor:
        """One sampled path of the hidden state at the ``steps + 1`` grid times, shape ``(steps + 1, *x_0.shape)``."""
        _check_floating_state(x, "x")
        x0 = self.embedding(x)
        shape = tuple(x0.shape[1:])
        scale = self.sigma_max * self._level(x0).detach()
        y0 = x0.reshape(x0.shape[0], -1)
        sde = _SDENetTerms(self.drift, shape, scale)
        # every grid time is an observation time, so that the whole path comes back
        ts = torch.linspace(0.0, self.T, self.steps + 1, dtype=x0.dtype, device=x0.device)
        ys = sdeint(sde, y0, ts, method="euler", dt=self.dt)
        return ys.reshape(len(ts), *x0.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trajectory(x)[-1])

    def extra_repr(self) -> str:
        return f"T={self.T:g}, steps={self.steps}, sigma_max={self.sigma_max:g}"


class _Flatten(nn.Module):
    """Global average pooling of feature maps ``(B, C, H, W)`` to ``(B, C)``; identity on vectors."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x


def sdenet(
    in_channels: int,
    num_classes: int,
    width: int = 64,
    kind: str = "conv",
    hidden: int | None = None,
    downsample: int = 0,
    T: float = 6.0,
    steps: int = 6,
    sigma_max: float = 20.0,
) -> SDENet:
    """Kong et al.'s SDE-Net classifier {cite}`kong2020sde` for images (``kind="conv"``) or vectors (``"linear"``).

    ``kind="conv"``, inputs ``(B, in_channels, H, W)`` (the paper's MNIST net, Sec. 5 and its code):

    * embedding: a 3x3 convolution to ``width`` channels, then ``downsample`` times (group norm, ReLU, a 4x4
      convolution of stride 2), the paper's downsampling layers (two for MNIST; 0 keeps 8x8 digits whole);
    * drift: Chen et al.'s :class:`~dedl.nn.odenets.ConvVectorField` (group norms, two 3x3 convolutions that see
      the time), the paper's drift net;
    * diffusion: group norm, ReLU, two 3x3 convolutions (each after group norm and ReLU), global average
      pooling, a linear layer to one number and a sigmoid;
    * head: group norm, ReLU, global average pooling, a linear layer to ``num_classes`` logits.

    ``kind="linear"``, inputs ``(B, in_channels)`` (e.g. a 2-D toy task): embedding ``Linear(in_channels,
    width)``; drift :class:`~dedl.nn.odenets.MLPVectorField` (``hidden`` units, tanh, time-dependent); diffusion
    ``Linear, ReLU, Linear(hidden, 1), sigmoid``; head ``ReLU, Linear(width, num_classes)``. ``hidden`` defaults
    to ``width``. ``T``, ``steps`` and ``sigma_max`` go to :class:`SDENet`.
    """
    positive_int("in_channels", in_channels)
    positive_int("num_classes", num_classes)
    positive_int("width", width)
    check_kind(kind)
    hidden = width if hidden is None else positive_int("hidden", hidden)
    positive_int("downsample", downsample, allow_zero=True)
    if kind == "linear":
        if downsample:
            raise ValueError("downsample is for kind='conv'")
        embedding: nn.Module = nn.Linear(in_channels, width)
        drift: nn.Module = MLPVectorField(width, hidden=hidden, time_dependent=True)
        diffusion: nn.Module = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())
        head: nn.Module = nn.Sequential(nn.ReLU(), nn.Linear(width, num_classes))
        return SDENet(embedding, drift, diffusion, head, T=T, steps=steps, sigma_max=sigma_max)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
    for _ in range(downsample):
        layers += [_group_norm(width), nn.ReLU(), nn.Conv2d(width, width, 4, stride=2, padding=1)]
    embedding = nn.Sequential(*layers)
    drift = ConvVectorField(width, hidden=hidden)
    diffusion = nn.Sequential(
        _group_norm(width), nn.ReLU(), nn.Conv2d(width, hidden, 3, padding=1),
        _group_norm(hidden), nn.ReLU(), nn.Conv2d(hidden, width, 3, padding=1),
        _group_norm(width), nn.ReLU(), _Flatten(), nn.Linear(width, 1), nn.Sigmoid(),
    )
    head = nn.Sequential(_group_norm(width), nn.ReLU(), _Flatten(), nn.Linear(width, num_classes))
    return SDENet(embedding, drift, diffusion, head, T=T, steps=steps, sigma_max=sigma_max)


def sdenet_loss(model: SDENet, batch: tuple[Tensor, Tensor], ood_std: float = 2.0) -> Tensor:
    """SDE-Net's two-objective training loss {cite}`kong2020sde` (eq. 8 and Algorithm 1), for :func:`dedl.train.fit`.

    For a batch ``(x, y)`` of training inputs and labels, the sum of

    * the prediction loss ``cross_entropy(model(x), y)`` on one sampled path (trains the embedding, drift and
      head; the diffusion enters the path detached);
    * ``BCE(g(x), 0)``: the diffusion small in distribution, and
    * ``BCE(g(x̃), 1)`` on generated out-of-distribution inputs ``x̃ = x + ood_std · ε``, ``ε ~ N(0, I)``: the
      diffusion large out of distribution (the paper's code perturbs MNIST with ``ood_std = 2``),

    where ``g = model.diffusion`` sees the embedding detached, so that the two binary cross-entropies train the
    diffusion net alone, as the paper's separate optimiser for ``θ_g`` does. The paper's minimax ``min_θg E_in g
    − max_θg E_out g`` is written, as in its code, as a binary classification of in- against out-of-distribution
    inputs by the sigmoid output of ``g``. The noise is drawn from torch's global generator (seed with
    :func:`dedl.utils.seed_everything`; :func:`dedl.train.fit` does). Use ``functools.partial(sdenet_loss,
    ood_std=...)`` to change the perturbation.
    """
    if not isinstance(model, SDENet):
        raise TypeError(f"model must be an SDENet, got {type(model).__name__}")
    ood_std = positive_float("ood_std", ood_std)
    x, y = batch
    prediction = nn.functional.cross_entropy(model(x), y)
    x_out = x + ood_std * torch.randn_like(x)
    g_in = model._level(model.embedding(x).detach())
    g_out = model._level(model.embedding(x_out).detach())
    bce = nn.functional.binary_cross_entropy
    return prediction + bce(g_in, torch.zeros_like(g_in)) + bce(g_out, torch.ones_like(g_out))


# --------------------------------------------------------------------------------------------------
# Baselines: Monte Carlo predictions (MC dropout, sampled paths) and deep ensembles
# --------------------------------------------------------------------------------------------------


def _stochastic_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose own training flag switches their noise on: dropout layers, the noisy bodies of this
    module and :class:`NeuralSDE` blocks (their children, e.g. batch norms, keep their mode)."""
    kinds = (nn.modules.dropout._DropoutNd, _NoisyResNet, NeuralSDE)
    return [m for m in model.modules() if isinstance(m, kinds)]


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, n_samples: int = 10, batch_size: int | None = None) -> Tensor:
    """The predictive distribution of a stochastic classifier by Monte Carlo: ``n_samples`` softmax outputs.

    The model is put in evaluation mode, and then the noise of its stochastic modules is switched back on:
    every dropout layer (MC dropout {cite}`gal2016dropout`: dropout left on at test, each pass a sample of the
    approximate posterior), every noisy body of this module (:class:`DropoutResNet`, ...) and every
    :class:`NeuralSDE` (one sampled path per pass) sets its own training flag, while batch norms and the rest
    stay in evaluation mode. An :class:`SDENet` samples a path in every mode {cite}`kong2020sde`. A
    deterministic model gives ``n_samples`` equal rows. The flags are restored afterwards.

    Returns ``softmax(model(x))`` for each pass, shape ``(n_samples, batch, num_classes)``; the mean over the
    first dimension is the predictive distribution (the input of :mod:`dedl.uncertainty`'s metrics). Draws from
    torch's global generator (seed first). ``batch_size`` scores ``x`` in chunks.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_floating_state(x, "x")
    positive_int("n_samples", n_samples)
    if batch_size is not None:
        positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    stochastic = _stochastic_modules(model)
    for module in stochastic:
        module.training = True
    try:
        device = next(model.parameters()).device
        size = batch_size or len(x)
        chunks = []
        for i in range(0, len(x), size):
            xi = x[i : i + size].to(device)
            chunks.append(torch.stack([model(xi).softmax(-1) for _ in range(n_samples)]))
        return torch.cat(chunks, dim=1)
    finally:
        model.train(was_training)


class DeepEnsemble(nn.Module):
    """A deep ensemble {cite}`lakshminarayanan2017simple`: the average of the softmax of independently trained
    classifiers (each from its own random initialisation and data order; train them one by one, e.g. with
    :func:`dedl.train.fit` and ``seed=k``).

    ``forward(x)`` returns ``log((1/M) Σ_m softmax(member_m(x)))``, the log of the averaged predictive
    distribution: its softmax is the ensemble's prediction, so :func:`dedl.train.accuracy`,
    :func:`dedl.train.fgsm` (whose cross-entropy is then the ensemble's negative log-likelihood) and
    :func:`mc_predict` take the ensemble like any classifier. (Lakshminarayanan et al. also train each member
    with adversarial examples, optional in their paper and left out here.)
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a deep ensemble needs at least one member")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise TypeError(f"members[{i}] must be an nn.Module, got {type(m).__name__}")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([m(x).log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


# ==================================================================================================
# Latent SDE (Li et al. 2020): posterior and prior SDEs sharing the diffusion, trained on the ELBO
# ==================================================================================================


class _DiagonalDiffusion(nn.Module):
    """``g_i(z) = sigmoid(MLP_i(z_i))``: one small network per latent dimension, each seeing its own coordinate
    only, so that the noise is diagonal in torchsde's sense (:math:`\\partial g_i/\\partial z_j = 0`, ``i ≠ j``).
    The ``dim`` networks ``1 -> hidden -> 1`` (softplus, then sigmoid) are evaluated at once."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(dim, hidden))
        self.w2 = nn.Parameter(torch.randn(dim, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(dim))

    def forward(self, z: Tensor) -> Tensor:
        hidden = nn.functional.softplus(z.unsqueeze(-1) * self.w1 + self.b1)
        return torch.sigmoid((hidden * self.w2).sum(-1) + self.b2)


def _drift_net(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, n_out)
    )


#: The methods of :func:`dedl.solvers.sdeint` a :class:`LatentSDE` solves with; the first two read the SDE in the
#: Itô sense, the last three in the Stratonovich sense (the KL term is the same in both).
LATENT_SDE_METHODS = ("euler", "milstein", "midpoint", "heun", "reversible_heun")


class _LatentSDETerms:
    """The posterior SDE ``f(t, z) = f_net(z, context(t))``, the prior drift ``h(t, z) = h_net(z)`` and the shared
    diagonal diffusion of a :class:`LatentSDE`, in torchsde's convention. ``context`` ``(T, B, C)`` holds the
    encoder's summary at each observation time; on ``[t_k, t_{k+1})`` the posterior drift sees ``context[k + 1]``,
    the summary of the observations from ``t_{k+1}`` on (the encoder runs backward in time)."""

    noise_type = "diagonal"

    def __init__(self, model: LatentSDE, times: Tensor | None = None, context: Tensor | None = None):
        self.model, self.times, self.context = model, times, context
        self.sde_type = "ito" if model.method in ("euler", "milstein") else "stratonovich"

    def f(self, t: Tensor, z: Tensor) -> Tensor:
        if self.context is None:
            raise RuntimeError("the posterior drift needs a context: call LatentSDE.encode first")
        k = min(int(torch.searchsorted(self.times, t.reshape(1).to(self.times.dtype), right=True)), len(self.times) - 1)
        return self.model.posterior_drift(torch.cat([z, self.context[k]], -1))

    def h(self, t: Tensor, z: Tensor) -> Tensor:
        return self.model.prior_drift(z)

    def g(self, t: Tensor, z: Tensor) -> Tensor:
        return self.model.diffusion(z)


class ELBOTerms(NamedTuple):
    """The three terms of a :class:`LatentSDE`'s evidence lower bound, each of shape ``(batch,)``:
    ``ELBO = log_likelihood - kl_initial - kl_path``."""

    log_likelihood: Tensor
    kl_initial: Tensor
    kl_path: Tensor


class LatentSDE(nn.Module):
    """The latent SDE of Li et al. {cite}`li2020scalable` (Sec. 5 and 7.2; torchsde's ``latent_sde_lorenz.py``).

    A prior and an approximate posterior over paths :math:`z(t)` in a ``latent_dim``-dimensional space, with the
    same diffusion (so that the posterior is absolutely continuous with respect to the prior):

    * prior: :math:`z_0 \\sim p(z_0) = N(m, s^2)` (learned), :math:`dz = h_\\theta(z)\\,dt + g_\\theta(z)\\,dW`;
    * posterior: :math:`z_0 \\sim q(z_0 | x) = N(\\mu, \\sigma^2)`,
      :math:`dz = f_\\phi(z, c(t))\\,dt + g_\\theta(z)\\,dW`, where the context :math:`c(t)` is the state of a GRU
      run backward in time over the observations (the summary of what is still to come);
    * observations: :math:`x_{t_i} \\sim N(\\mathrm{dec}(z_{t_i}), \\) ``obs_std``:math:`^2)`, ``dec`` a linear map,
      or the identity when ``latent_dim`` is None (the SDE then lives in data space, as in torchsde's Lorenz
      example, and its drift and diffusion can be compared with the data's own).

    The diffusion is diagonal, :math:`g_i(z) = \\mathrm{sigmoid}(\\mathrm{MLP}_i(z_i)) \\in (0, 1)`. The evidence
    lower bound (Li et al., Sec. 5) is

    .. math:: \\log p(x) \\ge E_q\\Big[\\sum_i \\log p(x_{t_i} | z_{t_i})\\Big] - KL(q(z_0) \\| p(z_0))
        - E_q\\Big[\\int_{t_0}^{t_N} \\tfrac12 |u(t, z_t)|^2\\,dt\\Big], \\qquad g\\,u = f_\\phi - h_\\theta,

    the last term the KL divergence between the posterior and prior path measures by Girsanov's theorem,
    integrated along each sampled path by :func:`~dedl.solvers.sdeint` (``logqp=True``). The SDE is solved with
    ``method`` and step ``dt`` (read in the Itô sense for ``euler`` and ``milstein``, in the Stratonovich sense
    otherwise); with ``adjoint=True`` gradients come from :func:`~dedl.solvers.sdeint_adjoint` (memory flat in the
    number of steps; exact for ``method="reversible_heun"``), else by backpropagation through the solver.

    Series are ``values`` of shape ``(batch, T, data_dim)`` observed at ``times`` ``(T,)`` (as
    :class:`~dedl.nn.odenets.LatentODE`). :meth:`elbo` (and :meth:`elbo_terms`) train, :meth:`sample_posterior`
    and :meth:`sample_prior` draw decoded paths; ``forward`` is one posterior sample. Paths are drawn from
    ``bm`` when given (e.g. a :class:`~dedl.solvers.BrownianPath` of shape ``(n_samples * batch, latent_dim)``),
    else from torch's global generator.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int | None = None,
        context_dim: int = 16,
        hidden: int = 32,
        obs_std: float = 0.1,
        method: str = "euler",
        dt: float = 0.05,
        adjoint: bool = False,
    ):
        super().__init__()
        self.data_dim = positive_int("data_dim", data_dim)
        self.latent_dim = data_dim if latent_dim is None else positive_int("latent_dim", latent_dim)
        self.context_dim = positive_int("context_dim", context_dim)
        hidden = positive_int("hidden", hidden)
        self.obs_std = positive_float("obs_std", obs_std)
        if method not in LATENT_SDE_METHODS:
            raise ValueError(f"method must be one of {LATENT_SDE_METHODS}, got {method!r}")
        self.method, self.dt, self.adjoint = method, positive_float("dt", dt), bool(adjoint)
        latent = self.latent_dim
        self.gru = nn.GRU(data_dim + 1, hidden, batch_first=True)  # values and the gap to the next time
        self.context = nn.Linear(hidden, context_dim)
        self.initial = nn.Linear(context_dim, 2 * latent)  # q(z0 | x): mean and raw standard deviation
        self.posterior_drift = _drift_net(latent + context_dim, hidden, latent)
        self.prior_drift = _drift_net(latent, hidden, latent)
        self.diffusion = _DiagonalDiffusion(latent, hidden)
        self.prior_mean = nn.Parameter(torch.zeros(latent))
        self.prior_log_std = nn.Parameter(torch.zeros(latent))
        self.decoder: nn.Module = nn.Identity() if latent_dim is None else nn.Linear(latent, data_dim)

    def _check(self, times: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        values = _check_floating_state(values, "values")
        if values.dim() != 3 or values.shape[-1] != self.data_dim:
            raise ValueError(f"values must have shape (batch, T, {self.data_dim}), got {tuple(values.shape)}")
        times = _time_grid(times).to(device=values.device, dtype=values.dtype)
        if len(times) != values.shape[1]:
            raise ValueError(f"{len(times)} times for {values.shape[1]} observations per series")
        return times, values

    def encode(self, times: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The context at each time ``(T, batch, context_dim)`` (a GRU over the series read backward) and the
        mean and standard deviation of :math:`q(z_0 | x)`, each ``(batch, latent_dim)``."""
        times, values = self._check(times, values)
        gaps = torch.cat([times[1:] - times[:-1], times.new_zeros(1)]).view(1, -1, 1).expand(len(values), -1, 1)
        hidden, _ = self.gru(torch.cat([values, gaps], -1).flip(1))
        context = self.context(hidden.flip(1)).transpose(0, 1)
        mean, raw = self.initial(context[0]).chunk(2, -1)
        return context, mean, nn.functional.softplus(raw) + 1e-4

    def _solve(
        self, terms: _LatentSDETerms, z0: Tensor, times: Tensor, bm: object, logqp: bool, names: dict | None
    ) -> Tensor | tuple[Tensor, Tensor]:
        if self.adjoint and torch.is_grad_enabled():
            params = (*self.posterior_drift.parameters(), *self.prior_drift.parameters(),
                      *self.diffusion.parameters())
            context = (terms.context,) if terms.context is not None else ()
            return sdeint_adjoint(terms, z0, times, bm, self.method, dt=self.dt, adjoint_params=(*context, *params),
                                  logqp=logqp, names=names)
        return sdeint(terms, z0, times, bm, self.method, dt=self.dt, logqp=logqp, names=names)

    def elbo_terms(self, times: Tensor, values: Tensor, n_samples: int = 1, bm: object = None) -> ELBOTerms:
        """The log-likelihood, the KL of the initial state and the path KL (Girsanov), each ``(batch,)`` and
        averaged over ``n_samples`` posterior paths (one batched solve; ``bm`` of shape
        ``(n_samples * batch, latent_dim)``)."""
        positive_int("n_samples", n_samples)
        times, values = self._check(times, values)
        context, mean, std = self.encode(times, values)
        batch = len(values)
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        z0 = (mean + std * eps).reshape(n_samples * batch, -1)
        terms = _LatentSDETerms(self, times, context.repeat(1, n_samples, 1))
        zs, log_ratio = self._solve(terms, z0, times, bm, logqp=True, names=None)
        prediction = self.decoder(zs).reshape(len(times), n_samples, batch, self.data_dim)
        log_prob = torch.distributions.Normal(prediction, self.obs_std).log_prob(values.transpose(0, 1).unsqueeze(1))
        prior = torch.distributions.Normal(self.prior_mean, self.prior_log_std.exp())
        kl_initial = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), prior).sum(-1)
        return ELBOTerms(
            log_likelihood=log_prob.sum((0, 3)).mean(0),
            kl_initial=kl_initial,
            kl_path=log_ratio.sum(0).reshape(n_samples, batch).mean(0),
        )

    def elbo(
        self, times: Tensor, values: Tensor, n_samples: int = 1, kl_weight: float = 1.0, bm: object = None
    ) -> Tensor:
        """The ELBO of each series ``(batch,)``: ``log_likelihood - kl_weight * (kl_initial + kl_path)``
        (:meth:`elbo_terms`); ``kl_weight < 1`` is the KL annealing of torchsde's example."""
        terms = self.elbo_terms(times, values, n_samples, bm)
        return terms.log_likelihood - kl_weight * (terms.kl_initial + terms.kl_path)

    def sample_posterior(self, times: Tensor, values: Tensor, n_samples: int = 1, bm: object = None) -> Tensor:
        """Decoded posterior paths given the series, shape ``(n_samples, batch, T, data_dim)``."""
        positive_int("n_samples", n_samples)
        times, values = self._check(times, values)
        context, mean, std = self.encode(times, values)
        z0 = (mean + std * torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)).flatten(0, 1)
        zs = self._solve(_LatentSDETerms(self, times, context.repeat(1, n_samples, 1)), z0, times, bm, False, None)
        return self.decoder(zs).reshape(len(times), n_samples, len(values), self.data_dim).permute(1, 2, 0, 3)

    def sample_prior(self, times: Tensor, n_samples: int, z0: Tensor | None = None, bm: object = None) -> Tensor:
        """Decoded paths of the prior SDE, shape ``(n_samples, T, data_dim)``, from :math:`z_0 \\sim p(z_0)` or
        from the given latent initial states ``z0`` ``(n_samples, latent_dim)``."""
        positive_int("n_samples", n_samples)
        times = _time_grid(times).to(device=self.prior_mean.device, dtype=self.prior_mean.dtype)
        if z0 is None:
            eps = torch.randn(n_samples, self.latent_dim, dtype=times.dtype, device=times.device)
            z0 = self.prior_mean + self.prior_log_std.exp() * eps
        elif tuple(z0.shape) != (n_samples, self.latent_dim):
            raise ValueError(f"z0 must have shape (n_samples, latent_dim) = {(n_samples, self.latent_dim)}")
        zs = self._solve(_LatentSDETerms(self), z0, times, bm, False, {"drift": "h"})
        return self.decoder(zs).transpose(0, 1)

    def forward(self, times: Tensor, values: Tensor) -> Tensor:
        """One decoded posterior path per series, shape ``(batch, T, data_dim)``."""
        return self.sample_posterior(times, values)[0]
