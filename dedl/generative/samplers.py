r"""Samplers of score-based models: numerical solvers of the reverse SDE and of the probability-flow ODE.

Every sampler takes the forward SDE (:mod:`dedl.generative.score_sde`), the score as a plain callable
``score_fn(x, t)`` (``t`` of shape ``(batch,)``) and the ``shape`` of the batch to draw, and integrates from
``x_T`` (drawn from the prior with ``generator`` when ``None``) at :math:`T` down to ``eps``. Each returns
:class:`Samples`: the samples ``x`` and ``nfe``, the number of score evaluations the call paid.

* stochastic: :func:`euler_maruyama_sampler` (the reverse SDE, eq. 6 of {cite}`song2021score`),
  :func:`pc_sampler` (reverse-diffusion predictor + Langevin corrector, Algorithms 2–3), :func:`ddpm_sampler`
  (ancestral sampling {cite}`ho2020denoising`, Algorithm 2);
* deterministic, solving the probability-flow ODE (eq. 13): :func:`probability_flow_sampler` (an adaptive
  Runge–Kutta method of :func:`dedl.solvers.odeint`), :func:`ddim_sampler` (``eta=0``; first order
  {cite}`song2021denoising`), :func:`dpm_solver_sampler` (exponential integrators of orders 1–3
  {cite}`lu2022dpm`), :func:`heun_sampler` (Heun's method in the noise level, {cite}`karras2022elucidating`
  Algorithm 1; second order).

DDPM, DDIM and DPM-Solver are written for the :class:`~dedl.generative.score_sde.VPSDE` (they read the score as
the noise :math:`\epsilon = -\sigma(t)\,\nabla\log p_t`) and raise ``TypeError`` for the other SDEs.
The fixed-step samplers do not add noise on their last step (score_sde's ``denoise``; Ho et al.'s
:math:`z = 0` at the last step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from dedl.generative.score_sde import SDE, SubVPSDE, VPSDE
from dedl.solvers import odeint

__all__ = [
    "Samples",
    "euler_maruyama_sampler",
    "pc_sampler",
    "probability_flow_sampler",
    "ddpm_sampler",
    "ddim_sampler",
    "dpm_solver_sampler",
    "heun_sampler",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class Samples(NamedTuple):
    """What a sampler returns: the samples ``x`` (of the requested shape) and ``nfe``, the number of score
    evaluations (each one call of ``score_fn`` on the whole batch). ``path`` holds the states at the
    sampler's time points (first dimension: time, from ``T`` to ``eps``) when asked for with
    ``keep_path=True``, else ``None``."""

    x: Tensor
    nfe: int
    path: Tensor | None = None


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}")
    return value


def _start(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    x_T: Tensor | None,
    eps: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Check the common arguments; return ``x_T`` (drawn from the prior when ``None``)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a VPSDE, VESDE or SubVPSDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable score_fn(x, t), got {type(score_fn).__name__}")
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1 or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape
    ):
        raise ValueError(f"shape must be a tuple of positive ints (batch, *dims), got {shape!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    if x_T is None:
        return sde.prior_sampling(shape, generator=generator)
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a Tensor or None, got {type(x_T).__name__}")
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T must have shape {tuple(shape)}, got {tuple(x_T.shape)}")
    return x_T


def _require_vp(sde: SDE, sampler: str) -> VPSDE:
    if not isinstance(sde, VPSDE) or isinstance(sde, SubVPSDE):
        raise TypeError(f"{sampler} is written for the VPSDE (DDPM's process), got {type(sde).__name__}")
    return sde


def _vec(t: float | Tensor, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _expand(c: Tensor, x: Tensor) -> Tensor:
    return c.reshape(-1, *([1] * (x.dim() - 1)))


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _grid(sde: SDE, n_steps: int, eps: float) -> list[float]:
    return torch.linspace(sde.T, eps, n_steps + 1, dtype=torch.float64).tolist()


def _finish(x: Tensor, nfe: int, path: list[Tensor] | None) -> Samples:
    return Samples(x, nfe, torch.stack(path) if path is not None else None)


def euler_maruyama_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    n_steps: int,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    keep_path: bool = False,
) -> Samples:
    r"""Euler–Maruyama on the reverse SDE ({cite}`song2021score`, eq. 6; score_sde's
    ``EulerMaruyamaPredictor``): :math:`x \leftarrow x - [f - g^2 s_\theta]\,h + g\sqrt{h}\,z` on ``n_steps``
    equal steps :math:`h = (T - \varepsilon)/N`. Weak order 1. NFE = ``n_steps``."""
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    _check_int("n_steps", n_steps)
    rsde, times = sde.reverse(score_fn), _grid(sde, n_steps, eps)
    path = [x] if keep_path else None
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        h = t - s
        drift, diffusion = rsde.sde(x, _vec(t, x))
        x = x - drift * h
        if i < n_steps - 1:
            x = x + _expand(diffusion, x) * math.sqrt(h) * _noise(x, generator)
        if path is not None:
            path.append(x)
    return _finish(x, n_steps, path)


def pc_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    n_steps: int,
    snr: float = 0.16,
    n_corrector: int = 1,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Samples:
    r"""Predictor–corrector sampling ({cite}`song2021score`, Algorithms 2–3; score_sde's ``pc_sampler``).

    At each of ``n_steps`` times, ``n_corrector`` Langevin steps
    :math:`x \leftarrow x + \epsilon\,s_\theta + \sqrt{2\epsilon}\,z` with
    :math:`\epsilon = 2\alpha(r\,\|z\|/\|s_\theta\|)^2` (``snr`` :math:`r`; norms averaged over the batch;
    :math:`\alpha = 1 - \beta_i` of DDPM's chain for the VP SDE, 1 otherwise), then one reverse-diffusion predictor step
    (:meth:`~dedl.generative.score_sde.ReverseSDE.discretize`: the ancestral step of the SDE's own chain).
    NFE = ``n_steps * (1 + n_corrector)``.
    """
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    _check_int("n_steps", n_steps)
    _check_int("n_corrector", n_corrector, minimum=0)
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0:
        raise ValueError(f"snr must be a positive number, got {snr!r}")
    rsde, times = sde.reverse(score_fn), _grid(sde, n_steps, eps)
    batch = x.shape[0]
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        h, vec_t = t - s, _vec(t, x)
        alpha = 1.0
        if isinstance(sde, VPSDE) and not isinstance(sde, SubVPSDE):
            alpha = 1 - sde.discretize(x, vec_t, h)[1].square()  # 1 - β_i of DDPM's chain
        for _ in range(n_corrector):
            grad, z = score_fn(x, vec_t), _noise(x, generator)
            grad_norm = grad.reshape(batch, -1).norm(dim=-1).mean()
            noise_norm = z.reshape(batch, -1).norm(dim=-1).mean()
            step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
            step = _expand(step, x) if isinstance(step, Tensor) and step.dim() else step
            x = x + step * grad + (2 * step) ** 0.5 * z
        rev_f, rev_g = rsde.discretize(x, vec_t, h)
        x = x - rev_f
        if i < n_steps - 1:
            x = x + _expand(rev_g, x) * _noise(x, generator)
    return Samples(x, n_steps * (1 + n_corrector))


def probability_flow_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    save_at: Sequence[float] | None = None,
) -> Samples:
    r"""Solve the probability-flow ODE :math:`\dot x = f - \tfrac12 g^2 s_\theta` ({cite}`song2021score`,
    eq. 13) from :math:`T` to ``eps`` with :func:`dedl.solvers.odeint` (``method``, ``rtol``, ``atol``: an
    adaptive method, ``"dopri5"`` or ``"bosh3"``). ``save_at``: extra times in :math:`(\varepsilon, T)`,
    decreasing, at which ``path`` keeps the state (with ``T`` and ``eps`` at its ends). NFE: every evaluation
    of the vector field, rejected steps included."""
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    flow = sde.reverse(score_fn, probability_flow=True)
    nfe = 0

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return flow.sde(y, t.expand(y.shape[0]))[0]

    inner = [] if save_at is None else [float(s) for s in save_at]
    if any(not eps < s < sde.T for s in inner) or any(a <= b for a, b in zip(inner, inner[1:])):
        raise ValueError(f"save_at must be decreasing times inside (eps, T) = ({eps}, {sde.T}), got {save_at!r}")
    times = torch.tensor([sde.T, *inner, eps], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        ys = odeint(rhs, x, times, method=method, rtol=rtol, atol=atol)
    return Samples(ys[-1], nfe, ys if save_at is not None else None)


def _alpha_sigma(sde: VPSDE, t: float, x: Tensor) -> tuple[float, float]:
    """:math:`\\sqrt{\\bar\\alpha_t} = s(t)` and :math:`\\sqrt{1 - \\bar\\alpha_t} = \\sigma(t)` of the VP SDE."""
    m = sde.log_mean_coeff(torch.tensor(t, dtype=torch.float64))
    return float(m.exp()), float((-torch.expm1(2 * m)).sqrt())


def ddpm_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    n_steps: int,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Samples:
    r"""Ancestral sampling of DDPM ({cite}`ho2020denoising`, Algorithm 2) on ``n_steps`` equal steps of the
    VP SDE: for the transition :math:`t \to s`, :math:`\beta = 1 - \bar\alpha_t/\bar\alpha_s`,

    .. math:: x_s = \frac{1}{\sqrt{1 - \beta}}\Big(x_t - \frac{\beta}{\sqrt{1 - \bar\alpha_t}}\,\epsilon_\theta\Big)
       + \sqrt{\beta}\,z, \qquad \epsilon_\theta = -\sqrt{1 - \bar\alpha_t}\,s_\theta(x_t, t)

    (:math:`\sigma_t^2 = \beta_t`; no noise on the last step). NFE = ``n_steps``."""
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    vp = _require_vp(sde, "ddpm_sampler")
    _check_int("n_steps", n_steps)
    times = _grid(vp, n_steps, eps)
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        a_t, sig_t = _alpha_sigma(vp, t, x)
        a_s, _ = _alpha_sigma(vp, s, x)
        beta = 1 - (a_t / a_s) ** 2
        noise_pred = -sig_t * score_fn(x, _vec(t, x))
        x = (x - beta / sig_t * noise_pred) / math.sqrt(1 - beta)
        if i < n_steps - 1:
            x = x + math.sqrt(beta) * _noise(x, generator)
    return Samples(x, n_steps)


def ddim_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    n_steps: int,
    eta: float = 0.0,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Samples:
    r"""DDIM ({cite}`song2021denoising`, eq. 12) on ``n_steps`` equal steps of the VP SDE: with
    :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}`,

    .. math:: x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma^2}\,\epsilon_\theta + \sigma z,
       \qquad \sigma = \eta\sqrt{\tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}}\sqrt{1 - \tfrac{\bar\alpha_t}{\bar\alpha_s}}.

    ``eta=0`` is deterministic, a first-order solver of the probability-flow ODE (it is DPM-Solver-1,
    {cite}`lu2022dpm` Sec. 4.1); ``eta=1`` is DDPM with the posterior variance. NFE = ``n_steps``."""
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    vp = _require_vp(sde, "ddim_sampler")
    _check_int("n_steps", n_steps)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    times = _grid(vp, n_steps, eps)
    for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
        a_t, sig_t = _alpha_sigma(vp, t, x)
        a_s, sig_s = _alpha_sigma(vp, s, x)
        noise_pred = -sig_t * score_fn(x, _vec(t, x))
        x0 = (x - sig_t * noise_pred) / a_t
        sigma = eta * (sig_s / sig_t) * math.sqrt(max(0.0, 1 - (a_t / a_s) ** 2)) if i < n_steps - 1 else 0.0
        x = a_s * x0 + math.sqrt(max(0.0, sig_s**2 - sigma**2)) * noise_pred
        if sigma > 0:
            x = x + sigma * _noise(x, generator)
    return Samples(x, n_steps)


def dpm_solver_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    nfe: int,
    order: int = 2,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Samples:
    r"""DPM-Solver ({cite}`lu2022dpm`, eqs. 3.7–3.8, Algorithms 1–2 with :math:`r_1 = 1/2`, resp.
    :math:`r_1 = 1/3, r_2 = 2/3`): exponential integrators of the probability-flow ODE of the VP SDE written in
    the half log-SNR :math:`\lambda_t = \log(\alpha_t/\sigma_t)`, where the linear part is solved exactly and
    only the noise prediction :math:`\epsilon_\theta = -\sigma_t s_\theta` is approximated. With
    :math:`h = \lambda_t - \lambda_s`, DPM-Solver-1 is
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s} x_s - \sigma_t (e^h - 1)\,\epsilon_\theta(x_s, s)` (DDIM), and the
    order-``k`` step spends ``k`` evaluations.

    ``nfe`` is the budget: ``nfe // order`` steps of ``order`` and, if ``nfe % order`` is not 0, one more step
    of that order (so the call pays exactly ``nfe``), on steps uniform in :math:`\lambda` (the paper's
    logSNR spacing). Global order ``order`` (1, 2 or 3)."""
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    vp = _require_vp(sde, "dpm_solver_sampler")
    _check_int("nfe", nfe)
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    orders = [order] * (nfe // order) + ([nfe % order] if nfe % order else [])
    lam_T, lam_eps = (float(vp.half_log_snr(torch.tensor(t, dtype=torch.float64))) for t in (vp.T, eps))
    lams = torch.linspace(lam_T, lam_eps, len(orders) + 1, dtype=torch.float64)
    times = vp.time_of_half_log_snr(lams).tolist()
    times[0], times[-1] = vp.T, eps

    def noise(y: Tensor, t: float) -> Tensor:
        return -_alpha_sigma(vp, t, y)[1] * score_fn(y, _vec(t, y))

    def toward(y: Tensor, e0: Tensor, s: float, lam_s: float, lam_u: float) -> tuple[Tensor, float, float]:
        """The first-order step from s to the time u of λ_u; returns (state, σ_u, e^{λ_u - λ_s} - 1)."""
        u = float(vp.time_of_half_log_snr(torch.tensor(lam_u, dtype=torch.float64)))
        a_s, _ = _alpha_sigma(vp, s, y)
        a_u, sig_u = _alpha_sigma(vp, u, y)
        phi = math.expm1(lam_u - lam_s)
        return a_u / a_s * y - sig_u * phi * e0, sig_u, phi

    for k, s, t, lam_s, lam_t in zip(orders, times[:-1], times[1:], lams[:-1].tolist(), lams[1:].tolist()):
        h = lam_t - lam_s
        e0 = noise(x, s)
        a_s, _ = _alpha_sigma(vp, s, x)
        a_t, sig_t = _alpha_sigma(vp, t, x)
        base = a_t / a_s * x - sig_t * math.expm1(h) * e0
        if k == 1:
            x = base
        elif k == 2:
            r1 = 0.5
            u, _, _ = toward(x, e0, s, lam_s, lam_s + r1 * h)
            s1 = float(vp.time_of_half_log_snr(torch.tensor(lam_s + r1 * h, dtype=torch.float64)))
            x = base - sig_t / (2 * r1) * math.expm1(h) * (noise(u, s1) - e0)
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = (
                float(vp.time_of_half_log_snr(torch.tensor(lam_s + r * h, dtype=torch.float64))) for r in (r1, r2)
            )
            u1, _, _ = toward(x, e0, s, lam_s, lam_s + r1 * h)
            d1 = noise(u1, s1) - e0
            u2, sig_s2, phi2 = toward(x, e0, s, lam_s, lam_s + r2 * h)
            u2 = u2 - sig_s2 * r2 / r1 * (phi2 / (r2 * h) - 1) * d1
            d2 = noise(u2, s2) - e0
            x = base - sig_t / r2 * (math.expm1(h) / h - 1) * d2
    return Samples(x, nfe)


def _karras_sigmas(sigma_max: float, sigma_min: float, n_steps: int, rho: float = 7.0) -> list[float]:
    """Karras et al.'s noise levels (eq. 5): ``n_steps + 1`` levels from ``sigma_max`` to ``sigma_min``."""
    i = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return ((a + i * (b - a)) ** rho).tolist()


def heun_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    n_steps: int,
    rho: float = 7.0,
    x_T: Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Samples:
    r"""Heun's second-order method on the probability-flow ODE in the noise level
    ({cite}`karras2022elucidating`, Algorithm 1 and eq. 4).

    Any of the SDEs has marginals :math:`x = s(t)(\hat x + \tilde\sigma z)` with
    :math:`\tilde\sigma = \sigma(t)/s(t) = e^{-\lambda_t}`; in the scaled variable :math:`\hat x = x/s` the
    probability-flow ODE is :math:`\mathrm d\hat x/\mathrm d\tilde\sigma = -\tilde\sigma\,\nabla_{\hat x}\log
    p(\hat x; \tilde\sigma) = (\hat x - D(\hat x; \tilde\sigma))/\tilde\sigma`, with the denoiser
    :math:`D = \hat x + \tilde\sigma^2 s\,s_\theta(s\hat x, t)`. Heun's method steps it on the levels
    :math:`\tilde\sigma_i = (\tilde\sigma_{\max}^{1/\rho} + \tfrac iN(\tilde\sigma_{\min}^{1/\rho} -
    \tilde\sigma_{\max}^{1/\rho}))^\rho` (eq. 5, ``rho`` = 7) from :math:`t = T` to ``eps``; the last step
    keeps its correction since :math:`\tilde\sigma(\varepsilon) > 0`. NFE = ``2 * n_steps``."""
    x = _start(sde, score_fn, shape, x_T, eps, generator)
    _check_int("n_steps", n_steps)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho must be a positive number, got {rho!r}")

    def level_time(sig: float) -> float:
        return float(sde.time_of_half_log_snr(torch.tensor(-math.log(sig), dtype=torch.float64)))

    def level(t: float) -> float:
        return math.exp(-float(sde.half_log_snr(torch.tensor(t, dtype=torch.float64))))

    def scale(t: float) -> float:
        ones = torch.ones(1, 1, dtype=torch.float64)
        return float(sde.marginal_prob(ones, torch.tensor([t], dtype=torch.float64))[0])

    def slope(y: Tensor, sig: float, t: float) -> Tensor:
        s = scale(t)
        return -sig * s * score_fn(s * y, _vec(t, y))  # (ŷ - D)/σ̃ = -σ̃ s s_θ(s ŷ, t)

    sigmas = _karras_sigmas(level(sde.T), level(eps), n_steps, rho)
    times = [sde.T] + [level_time(sig) for sig in sigmas[1:-1]] + [eps]
    y = x / scale(sde.T)
    for sig, sig_next, t, t_next in zip(sigmas[:-1], sigmas[1:], times[:-1], times[1:]):
        d = slope(y, sig, t)
        y_euler = y + (sig_next - sig) * d
        y = y + (sig_next - sig) * 0.5 * (d + slope(y_euler, sig_next, t_next))
    return Samples(y * scale(eps), 2 * n_steps)
