r"""Score-based generative models as stochastic differential equations {cite}`song2021score`.

A forward SDE :math:`\mathrm dx = f(x, t)\,\mathrm dt + g(t)\,\mathrm dw` on :math:`t \in [0, T]` turns data
into noise; its reverse in time (eq. 6 of {cite}`song2021score`)

.. math:: \mathrm dx = [f(x, t) - g(t)^2 \nabla_x \log p_t(x)]\,\mathrm dt + g(t)\,\mathrm d\bar w

turns noise back into data once the score :math:`\nabla_x \log p_t` is learned, and the probability-flow ODE
(eq. 13)

.. math:: \mathrm dx = [f(x, t) - \tfrac12 g(t)^2 \nabla_x \log p_t(x)]\,\mathrm dt

has the same marginals :math:`p_t` and gives exact likelihoods. The three SDEs of the paper follow
score_sde's ``sde_lib`` (the paper's code): :class:`VESDE` (eq. 30), :class:`VPSDE` (eq. 32) and
:class:`SubVPSDE` (eq. 34), each with ``T``, ``sde(x, t)``, ``marginal_prob(x, t)``, ``prior_sampling``,
``prior_logp``, ``discretize`` and ``reverse``. Times ``t`` are tensors of shape ``(batch,)``; states have
shape ``(batch, *dims)``.

All three marginals are Gaussian given :math:`x_0`: :math:`x_t = s(t)\,x_0 + \sigma(t)\,z`. The half
log signal-to-noise ratio :math:`\lambda_t = \log(s(t)/\sigma(t))` of {cite}`lu2022dpm` and its inverse
(``half_log_snr``, ``time_of_half_log_snr``) are what the samplers of :mod:`dedl.generative.samplers` step in.

Training is denoising score matching (:func:`denoising_score_matching_loss`, eq. 7) with
:math:`\lambda(t) = \sigma(t)^2` or :math:`\lambda(t) = g(t)^2` (the likelihood weighting of Song, Durkan,
Murray and Ermon, NeurIPS 2021); :class:`ScoreMLP` (2-D data) and :class:`ScoreUNet` (8x8 and 28x28 images) are small
time-conditioned score networks; :func:`ode_log_likelihood` and :func:`bits_per_dim` give exact likelihoods
through the probability-flow ODE (Sec. 4.3, Appendix D.2), with the trace estimators of
:mod:`dedl.regularizers` and the solvers of :mod:`dedl.solvers`; :func:`gaussian_score` is the exact score of
Gaussian data under any of the SDEs (the reference of the sampler tests and of the samplers chapter).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dedl.regularizers import exact_trace, hutchinson_trace, sample_probe
from dedl.solvers import odeint

__all__ = [
    "SDE",
    "VPSDE",
    "VESDE",
    "SubVPSDE",
    "ReverseSDE",
    "WEIGHTINGS",
    "denoising_score_matching_loss",
    "gaussian_score",
    "ScoreMLP",
    "ScoreUNet",
    "LogLikelihood",
    "ode_log_likelihood",
    "bits_per_dim",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
WEIGHTINGS = ("sigma2", "likelihood")


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_x_t(x: Tensor, t: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(t, Tensor):
        raise TypeError(f"x and t must be Tensors, got {type(x).__name__} and {type(t).__name__}")
    if x.dim() < 1 or t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape (batch,) = ({x.shape[0] if x.dim() else '?'},), got {tuple(t.shape)}")


def _expand(c: Tensor, x: Tensor) -> Tensor:
    """A per-sample coefficient of shape ``(batch,)`` broadcast against ``x`` of shape ``(batch, *dims)``."""
    return c.reshape(-1, *([1] * (x.dim() - 1)))


class SDE:
    r"""A forward SDE :math:`\mathrm dx = f(x, t)\,\mathrm dt + g(t)\,\mathrm dw` on :math:`[0, T]` with
    Gaussian marginals :math:`x_t = s(t)\,x_0 + \sigma(t)\,z` (score_sde's ``sde_lib.SDE``
    {cite}`song2021score`). Subclasses define ``sde``, ``marginal_prob``, ``prior_sampling``, ``prior_logp``,
    ``half_log_snr`` and ``time_of_half_log_snr``."""

    T: float = 1.0

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift :math:`f(x, t)` (shaped like ``x``) and diffusion :math:`g(t)` (shape ``(batch,)``)."""
        raise NotImplementedError

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`s(t)\,x_0` (shaped like ``x``) and std :math:`\sigma(t)` (shape ``(batch,)``) of
        :math:`p_{0t}(x_t \mid x_0)`."""
        raise NotImplementedError

    def prior_sampling(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """A sample of the prior :math:`p_T` of shape ``shape``."""
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device) * self.prior_std

    @property
    def prior_std(self) -> float:
        """The standard deviation of the prior :math:`p_T = N(0, \\sigma_T^2 I)`."""
        return 1.0

    def prior_logp(self, z: Tensor) -> Tensor:
        r""":math:`\log p_T(z)` of each sample, shape ``(batch,)``."""
        n = z[0].numel()
        sq = z.reshape(z.shape[0], -1).square().sum(dim=1)
        return -0.5 * n * math.log(2 * math.pi * self.prior_std**2) - sq / (2 * self.prior_std**2)

    def half_log_snr(self, t: Tensor) -> Tensor:
        r""":math:`\lambda_t = \log(s(t)/\sigma(t))` ({cite}`lu2022dpm`, Sec. 3.1), decreasing in ``t``."""
        raise NotImplementedError

    def time_of_half_log_snr(self, lam: Tensor) -> Tensor:
        r"""The inverse :math:`t_\lambda(\lambda)` of :meth:`half_log_snr`."""
        raise NotImplementedError

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        r"""One step of the forward process from ``t - dt`` to ``t``: :math:`x_{i+1} = x_i + f_i + G_i z_i`,
        returning :math:`(f_i, G_i)`. Euler–Maruyama here (score_sde's default: :math:`f\,\Delta t`,
        :math:`g\sqrt{\Delta t}`); DDPM's and SMLD's chains for :class:`VPSDE` and :class:`VESDE`."""
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (eq. 6 of {cite}`song2021score`) or, with ``probability_flow=True``, the
        probability-flow ODE (eq. 13) for the score ``score_fn(x, t)``."""
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable score_fn(x, t), got {type(score_fn).__name__}")
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    r"""The reverse of ``forward`` for the score ``score_fn`` (score_sde's ``SDE.reverse``
    {cite}`song2021score`, eqs. 6 and 13): drift :math:`f - c\,g^2 \nabla \log p_t` with :math:`c = 1`
    (SDE) or :math:`c = 1/2` and no diffusion (``probability_flow``). Time runs from ``T`` down to 0."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, bool(probability_flow)
        self.T = forward.T

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion of the reverse process at ``(x, t)`` (diffusion 0 for the probability flow)."""
        drift, diffusion = self.forward.sde(x, t)
        c = 0.5 if self.probability_flow else 1.0
        drift = drift - c * _expand(diffusion.square(), x) * self.score_fn(x, t)
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        r"""One reverse step from ``t`` to ``t - dt``: :math:`x \leftarrow x - f_i + G_i^2 s_\theta + G_i z`
        (score_sde's ``ReverseDiffusionPredictor``), returning :math:`(f_i - c\,G_i^2 s_\theta, G_i)`."""
        f, G = self.forward.discretize(x, t, dt)
        c = 0.5 if self.probability_flow else 1.0
        rev_f = f - c * _expand(G.square(), x) * self.score_fn(x, t)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


class VPSDE(SDE):
    r"""The variance-preserving SDE :math:`\mathrm dx = -\tfrac12\beta(t)\,x\,\mathrm dt +
    \sqrt{\beta(t)}\,\mathrm dw`, :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`: the
    continuous limit of DDPM {cite}`ho2020denoising,song2021score` (eqs. 11, 32). Marginal
    :math:`s(t) = e^{m(t)}`, :math:`\sigma(t)^2 = 1 - e^{2m(t)}`, :math:`m(t) = -\tfrac14 t^2 (\beta_{\max} -
    \beta_{\min}) - \tfrac12 t \beta_{\min}` (eq. 33); prior :math:`N(0, I)`."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = _check_positive("beta_min", beta_min)
        self.beta_max = _check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be at least beta_min, got {beta_min} and {beta_max}")

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: Tensor) -> Tensor:
        r""":math:`\beta(t)`, linear from :math:`\beta_{\min}` to :math:`\beta_{\max}`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        r""":math:`m(t) = \log s(t) = -\tfrac14 t^2 (\beta_{\max} - \beta_{\min}) - \tfrac12 t \beta_{\min}`."""
        return -0.25 * t.square() * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_x_t(x, t)
        beta = self.beta(t)
        return -0.5 * _expand(beta, x) * x, beta.sqrt()

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_x_t(x, t)
        m = self.log_mean_coeff(t)
        return _expand(m.exp(), x) * x, (-torch.expm1(2 * m)).sqrt()

    def half_log_snr(self, t: Tensor) -> Tensor:
        m = self.log_mean_coeff(t)
        return m - 0.5 * torch.log(-torch.expm1(2 * m))

    def time_of_half_log_snr(self, lam: Tensor) -> Tensor:
        # {cite}`lu2022dpm`, Appendix D.1: t = 2 log(e^{-2λ} + 1) / (sqrt(β0² + 2Δβ log(e^{-2λ} + 1)) + β0)
        log_term = torch.nn.functional.softplus(-2 * lam)
        d = self.beta_max - self.beta_min
        return 2 * log_term / ((self.beta_min**2 + 2 * d * log_term).sqrt() + self.beta_min)

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        r"""DDPM's chain {cite}`ho2020denoising`: :math:`x_{i+1} = \sqrt{1 - \beta_i}\,x_i + \sqrt{\beta_i}\,z`
        with :math:`1 - \beta_i = \bar\alpha(t)/\bar\alpha(t - \Delta t) = e^{2(m(t) - m(t - \Delta t))}`
        (:math:`\approx 1 - \beta(t)\,\Delta t`, score_sde's discrete betas), returned as
        :math:`(f_i, G_i) = ((\sqrt{1-\beta_i} - 1)x_i, \sqrt{\beta_i})`."""
        _check_x_t(x, t)
        beta = -torch.expm1(2 * (self.log_mean_coeff(t) - self.log_mean_coeff((t - dt).clamp(min=0))))
        return (_expand((1 - beta).sqrt(), x) - 1) * x, beta.sqrt()


class SubVPSDE(VPSDE):
    r"""The sub-VP SDE :math:`\mathrm dx = -\tfrac12\beta(t)\,x\,\mathrm dt + \sqrt{\beta(t)(1 - e^{-2\int_0^t
    \beta})}\,\mathrm dw` ({cite}`song2021score`, eq. 34): the VP drift with a smaller diffusion, so that its
    marginal variance :math:`\sigma(t)^2 = (1 - e^{2m(t)})^2` lies below the VP one; prior :math:`N(0, I)`."""

    def __repr__(self) -> str:
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_x_t(x, t)
        beta = self.beta(t)
        discount = -torch.expm1(4 * self.log_mean_coeff(t))  # 1 - exp(-2 ∫_0^t β)
        return -0.5 * _expand(beta, x) * x, (beta * discount).sqrt()

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_x_t(x, t)
        m = self.log_mean_coeff(t)
        return _expand(m.exp(), x) * x, -torch.expm1(2 * m)

    def half_log_snr(self, t: Tensor) -> Tensor:
        m = self.log_mean_coeff(t)
        return m - torch.log(-torch.expm1(2 * m))

    def time_of_half_log_snr(self, lam: Tensor) -> Tensor:
        # s / (1 - s^2) = e^λ  =>  s = (sqrt(1 + 4 e^{2λ}) - 1) / (2 e^λ), then solve m(t) = log s for t.
        e = lam.exp()
        s = 2 * e / ((1 + 4 * e.square()).sqrt() + 1)
        d = self.beta_max - self.beta_min
        log_term = -2 * s.log()  # -2 m(t) = ½ t² d + t β_min
        return 2 * log_term / ((self.beta_min**2 + 2 * d * log_term).sqrt() + self.beta_min)

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """Euler–Maruyama, as in score_sde (the sub-VP SDE has no classical chain)."""
        return SDE.discretize(self, x, t, dt)


class VESDE(SDE):
    r"""The variance-exploding SDE :math:`\mathrm dx = \sqrt{\mathrm d[\sigma^2(t)]/\mathrm dt}\,\mathrm dw`,
    :math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t`: the continuous limit of SMLD/NCSN
    ({cite}`song2021score`, eqs. 9, 30). Marginal :math:`s(t) = 1`, std :math:`\sigma(t)` (score_sde's
    convention, which leaves out the :math:`\sigma_{\min}^2` at :math:`t = 0`); prior
    :math:`N(0, \sigma_{\max}^2 I)`."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min = _check_positive("sigma_min", sigma_min)
        self.sigma_max = _check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_min} and {sigma_max}")

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        r""":math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t`."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_x_t(x, t)
        return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_x_t(x, t)
        return x, self.sigma(t)

    def half_log_snr(self, t: Tensor) -> Tensor:
        return -self.sigma(t).log()

    def time_of_half_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        r"""SMLD's chain {cite}`song2021score` (eq. 8): :math:`x_{i+1} = x_i + \sqrt{\sigma_{i+1}^2 -
        \sigma_i^2}\,z`, returned as :math:`(0, \sqrt{\sigma(t)^2 - \sigma(t - \Delta t)^2})`."""
        _check_x_t(x, t)
        sigma, previous = self.sigma(t), self.sigma((t - dt).clamp(min=0))
        return torch.zeros_like(x), (sigma.square() - previous.square()).sqrt()


def _check_sde(sde: object) -> SDE:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a VPSDE, VESDE or SubVPSDE, got {type(sde).__name__}")
    return sde


def denoising_score_matching_loss(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Denoising score matching for SDEs ({cite}`song2021score`, eq. 7; score_sde's ``get_sde_loss_fn``).

    Draws :math:`t \sim U(\varepsilon, T)`, :math:`z \sim N(0, I)`, :math:`x_t = s(t)\,x + \sigma(t)\,z` and
    returns :math:`\lambda(t)\,\|s_\theta(x_t, t) + z/\sigma(t)\|^2` summed over the data dimensions, with
    :math:`\lambda(t) = \sigma(t)^2` (``"sigma2"``, the weighting of SMLD and DDPM, which makes the target
    :math:`\|\sigma s_\theta + z\|^2` of unit scale at every :math:`t`) or :math:`\lambda(t) = g(t)^2`
    (``"likelihood"``, which makes the loss an upper bound on the negative log-likelihood: Theorem 1 of Song,
    Durkan, Murray and Ermon, *Maximum likelihood training of score-based diffusion models*, NeurIPS 2021).

    Args:
        sde: the forward SDE.
        score_fn: ``score_fn(x, t) -> `` score shaped like ``x``, ``t`` of shape ``(batch,)``.
        x: a batch of data, shape ``(batch, *dims)``.
        weighting: ``"sigma2"`` or ``"likelihood"``.
        eps: the smallest time drawn (the score at :math:`t = 0` is not learned).
        reduction: ``"mean"`` (a scalar) or ``"none"`` (one loss per sample, shape ``(batch,)``).
        generator: for :math:`t` and :math:`z`.
    """
    _check_sde(sde)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable score_fn(x, t), got {type(score_fn).__name__}")
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a Tensor of shape (batch, *dims), got {getattr(x, 'shape', type(x))}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device) * (sde.T - eps) + eps
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    mean, std = sde.marginal_prob(x, t)
    score = score_fn(mean + _expand(std, x) * z, t)
    if weighting == "sigma2":
        losses = (score * _expand(std, x) + z).square()
    else:
        g2 = sde.sde(torch.zeros_like(x), t)[1].square()
        losses = (score + z / _expand(std, x)).square() * _expand(g2, x)
    losses = losses.reshape(x.shape[0], -1).sum(dim=1)
    return losses.mean() if reduction == "mean" else losses


def gaussian_score(sde: SDE, mean: Tensor, cov: Tensor) -> ScoreFn:
    r"""The exact score of :math:`p_t` for Gaussian data :math:`N(\mu, \Sigma)` under ``sde``:
    :math:`p_t = N(s(t)\mu,\ s(t)^2\Sigma + \sigma(t)^2 I)`, so :math:`\nabla \log p_t(x) =
    -(s^2\Sigma + \sigma^2 I)^{-1}(x - s\mu)` (the marginals of eqs. 29–34 of {cite}`song2021score`).

    Args:
        sde: the forward SDE.
        mean: :math:`\mu`, shape ``(d,)``.
        cov: :math:`\Sigma`, shape ``(d, d)``, symmetric positive semi-definite.

    Returns:
        ``score_fn(x, t)`` for ``x`` of shape ``(batch, d)`` and ``t`` of shape ``(batch,)``.
    """
    _check_sde(sde)
    if not isinstance(mean, Tensor) or not isinstance(cov, Tensor):
        raise TypeError("mean and cov must be Tensors")
    d = mean.shape[0]
    if mean.dim() != 1 or cov.shape != (d, d):
        raise ValueError(f"mean must have shape (d,) and cov (d, d), got {tuple(mean.shape)}, {tuple(cov.shape)}")
    if not torch.allclose(cov, cov.T):
        raise ValueError("cov must be symmetric")

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        _check_x_t(x, t)
        s = sde.marginal_prob(torch.ones_like(t)[:, None], t)[0][:, 0]
        std = sde.marginal_prob(x, t)[1]
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        cov_t = s[:, None, None] ** 2 * cov.to(x) + std[:, None, None] ** 2 * eye
        residual = x - s[:, None] * mean.to(x)
        return -torch.linalg.solve(cov_t, residual.unsqueeze(-1)).squeeze(-1)

    return score_fn


def _noise_embedding(sde: SDE, t: Tensor, dim: int) -> Tensor:
    r"""Sinusoidal features of the noise level rather than of the time: :math:`\sin(\omega_k\lambda_t)`,
    :math:`\cos(\omega_k\lambda_t)` of the half log-SNR :math:`\lambda_t = \log(s(t)/\sigma(t))`, frequencies
    :math:`\omega_k` geometric from 1/16 to 4. Conditioning on the noise level, as EDM does with
    :math:`\tfrac14\ln\sigma` ({cite}`karras2022elucidating`, Table 1), keeps the network smooth in the variable
    that the solvers of :mod:`dedl.generative.samplers` step in (DDPM's embedding of :math:`1000\,t`
    {cite}`ho2020denoising` oscillates hundreds of times over :math:`[0, 1]`, which costs high-order samplers
    their order)."""
    half = dim // 2
    freqs = torch.logspace(math.log10(1 / 16), math.log10(4.0), half, dtype=t.dtype, device=t.device)
    args = sde.half_log_snr(t)[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class _NoisePrediction(nn.Module):
    r"""A network :math:`\epsilon_\theta(x, t)` read as the score :math:`-\epsilon_\theta(x, t)/\sigma(t)`
    (score_sde's ``get_score_fn`` for VP models; the DDPM parametrisation {cite}`ho2020denoising`, eq. 11)."""

    def __init__(self, sde: SDE) -> None:
        super().__init__()
        self.sde = _check_sde(sde)

    def noise(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The score at ``(x, t)``, shaped like ``x``; ``t`` of shape ``(batch,)``."""
        _check_x_t(x, t)
        std = self.sde.marginal_prob(x, t)[1]
        return -self.noise(x, t) / _expand(std, x)


class ScoreMLP(_NoisePrediction):
    r"""A time-conditioned score network for vectors: an MLP with SiLU of :math:`[x, \mathrm{emb}(t)]`
    of the noise level (sinusoidal features of the half log-SNR :math:`\lambda_t`) predicting the noise, read
    as the score :math:`-\epsilon_\theta/\sigma(t)` {cite}`ho2020denoising,song2021score`.

    Args:
        sde: the SDE whose :math:`\sigma(t)` scales the output.
        dim: data dimension.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        embed_dim: size of the sinusoidal time embedding (even).
    """

    def __init__(self, sde: SDE, dim: int = 2, hidden: int = 128, depth: int = 3, embed_dim: int = 32) -> None:
        super().__init__(sde)
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth), ("embed_dim", embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {embed_dim}")
        self.embed_dim = embed_dim
        layers: list[nn.Module] = [nn.Linear(dim + embed_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def noise(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, _noise_embedding(self.sde, t, self.embed_dim)], dim=1))


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class ScoreUNet(_NoisePrediction):
    r"""A small U-Net score network for images (8x8 digits, 28x28 MNIST): two resolutions below the input
    (stride-2 convolutions down, nearest upsampling and skip concatenation up), residual blocks with
    GroupNorm and SiLU, the time embedding added in every block (the DDPM architecture
    {cite}`ho2020denoising`, Appendix B, cut down), predicting the noise read as the score
    :math:`-\epsilon_\theta/\sigma(t)`.

    Args:
        sde: the SDE whose :math:`\sigma(t)` scales the output.
        channels: image channels.
        base: channels at full resolution (a multiple of 8; 2x base below).
    """

    def __init__(self, sde: SDE, channels: int = 1, base: int = 32) -> None:
        super().__init__(sde)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if isinstance(base, bool) or not isinstance(base, int) or base < 8 or base % 8:
            raise ValueError(f"base must be a positive multiple of 8, got {base!r}")
        self.base, emb = base, 4 * base
        self.embed = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.block1 = _ResBlock(base, base, emb)
        self.down1 = nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.block2 = _ResBlock(2 * base, 2 * base, emb)
        self.down2 = nn.Conv2d(2 * base, 2 * base, 3, stride=2, padding=1)
        self.mid = _ResBlock(2 * base, 2 * base, emb)
        self.up2 = _ResBlock(4 * base, 2 * base, emb)
        self.up1 = _ResBlock(3 * base, base, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, base), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1))

    def noise(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"x must have shape (batch, channels, height, width), got {tuple(x.shape)}")
        emb = self.embed(_noise_embedding(self.sde, t, self.base))
        h1 = self.block1(self.inp(x), emb)
        h2 = self.block2(self.down1(h1), emb)
        h = self.mid(self.down2(h2), emb)
        h = nn.functional.interpolate(h, size=h2.shape[-2:], mode="nearest")
        h = self.up2(torch.cat([h, h2], dim=1), emb)
        h = nn.functional.interpolate(h, size=h1.shape[-2:], mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        return self.out(h)


class LogLikelihood(NamedTuple):
    """The result of :func:`ode_log_likelihood`: ``log_px`` (nats per sample, shape ``(batch,)``), the latent
    ``z`` at ``T`` and the number of score evaluations ``nfe``."""

    log_px: Tensor
    z: Tensor
    nfe: int


def ode_log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    eps: float = 1e-5,
    trace: str = "exact",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> LogLikelihood:
    r"""Exact log-likelihood :math:`\log p_\varepsilon(x)` through the probability-flow ODE
    ({cite}`song2021score`, Sec. 4.3 and eq. 39; the instantaneous change of variables of
    {cite}`chen2018neural`, Theorem 1):

    .. math:: \log p_\varepsilon(x) = \log p_T(x_T) + \int_\varepsilon^T \nabla\cdot \tilde f(x_t, t)\,\mathrm dt,

    with :math:`\tilde f` the probability-flow drift, solved forward from :math:`x_\varepsilon = x` with
    :func:`dedl.solvers.odeint`. The divergence is exact (:func:`dedl.regularizers.exact_trace`, one
    vector–Jacobian product per dimension) or Hutchinson's estimate with one Rademacher probe fixed over the
    solve (``"hutchinson"``, :func:`dedl.regularizers.hutchinson_trace`, as FFJORD {cite}`grathwohl2019ffjord`
    and score_sde do for images), unbiased in :math:`\log p`.

    Args:
        sde, score_fn: the forward SDE and the score ``score_fn(x, t)``, differentiable in ``x`` (a module,
            not a wrapper under ``torch.no_grad``; ``ValueError`` otherwise).
        x: data, shape ``(batch, *dims)``.
        eps: the start time (the score is not learned at 0).
        trace: ``"exact"`` or ``"hutchinson"``.
        method, rtol, atol: passed to :func:`dedl.solvers.odeint`.
        generator: for the Hutchinson probe.
    """
    _check_sde(sde)
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a Tensor of shape (batch, *dims), got {getattr(x, 'shape', type(x))}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable score_fn(x, t), got {type(score_fn).__name__}")
    probe = sample_probe(x, "rademacher", generator) if trace == "hutchinson" else None
    batch, n = x.shape[0], x[0].numel()
    nfe = 0

    def rhs(t: Tensor, state: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            y = state[:, :n].reshape(x.shape).detach().requires_grad_(True)
            vec_t = t.expand(batch)
            score = score_fn(y, vec_t)
            if not score.requires_grad:
                raise ValueError(
                    "score_fn(x, t) must be differentiable in x (no torch.no_grad inside): the divergence "
                    "of the probability flow differentiates the score"
                )
            f, g = sde.sde(y, vec_t)
            drift = f - 0.5 * _expand(g.square(), y) * score
            div = exact_trace(drift, y) if probe is None else hutchinson_trace(drift, y, probe)
        return torch.cat([drift.detach().reshape(batch, n), div.detach()[:, None]], dim=1)

    state0 = torch.cat([x.detach().reshape(batch, n), x.new_zeros(batch, 1)], dim=1)
    times = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        end = odeint(rhs, state0, times, method=method, rtol=rtol, atol=atol)[-1]
    z = end[:, :n].reshape(x.shape)
    return LogLikelihood(sde.prior_logp(z) + end[:, n], z, nfe)


def bits_per_dim(log_px: Tensor, dim: int, bins: int = 256, data_range: float = 1.0) -> Tensor:
    r"""Bits per dimension of images from :math:`\log p(x)` in nats of the rescaled data.

    Pixels of ``bins`` levels mapped (dequantized) onto an interval of length ``data_range`` have the
    discrete likelihood :math:`\log p(x) + D \log(\text{data\_range}/\text{bins})`, so
    :math:`\text{bpd} = -\log p(x)/(D \ln 2) + \log_2(\text{bins}/\text{data\_range})` (score_sde's offset: 8 for
    :math:`[0, 1]`, 7 for :math:`[-1, 1]`; {cite}`song2021score`, Sec. 4.3).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int of at least 2, got {bins!r}")
    _check_positive("data_range", data_range)
    return -log_px / (dim * math.log(2)) + math.log2(bins / data_range)
