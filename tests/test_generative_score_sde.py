"""Score-based SDEs (dedl.generative.score_sde) and their samplers (dedl.generative.samplers)."""

import math

import pytest
import torch

from dedl.generative import (
    VESDE,
    VPSDE,
    ScoreMLP,
    ScoreUNet,
    SubVPSDE,
    bits_per_dim,
    ddim_sampler,
    ddpm_sampler,
    denoising_score_matching_loss,
    dpm_solver_sampler,
    euler_maruyama_sampler,
    gaussian_score,
    heun_sampler,
    ode_log_likelihood,
    pc_sampler,
    probability_flow_sampler,
)
from dedl.solvers import sdeint
from dedl.utils import fitted_order

SDES = [VPSDE(), SubVPSDE(), VESDE()]
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
EPS = 1e-3


class _Forward:
    """The forward SDE in torchsde's convention, for dedl.solvers.sdeint."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, sde):
        self.sde = sde

    def f(self, t, y):
        return self.sde.sde(y, t.expand(y.shape[0]))[0]

    def g(self, t, y):
        return self.sde.sde(y, t.expand(y.shape[0]))[1][:, None].expand_as(y)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_marginal_prob_matches_simulated_forward_sde(sde):
    n, x0 = 8000, torch.full((8000, 1), 1.5, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64)
    start = x0
    if isinstance(sde, VESDE):  # score_sde's convention: x(0) ~ N(x0, sigma_min^2), so std(t) = sigma(t)
        start = x0 + sde.sigma_min * torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(1))
    ys = sdeint(_Forward(sde), start, ts, method="euler", dt=1e-3, seed=0)
    for t, y in zip(ts[1:], ys[1:]):
        mean, std = sde.marginal_prob(x0[:1], t.reshape(1))
        scale = max(float(std), 1e-3)
        assert abs(y.mean().item() - mean.item()) < 5 * scale / math.sqrt(n) + 0.01 * scale, (t, y.mean(), mean)
        assert abs(y.std().item() / std.item() - 1) < 0.04, (t, y.std(), std)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_half_log_snr_inverse_and_prior(sde):
    t = torch.linspace(0.01, 1.0, 30, dtype=torch.float64)
    assert torch.allclose(sde.time_of_half_log_snr(sde.half_log_snr(t)), t, atol=1e-10)
    z = sde.prior_sampling((4000, 3), generator=torch.Generator().manual_seed(0))
    assert abs(z.std().item() / sde.prior_std - 1) < 0.05
    assert sde.prior_logp(z).shape == (4000,)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_loss_shapes_and_exact_score_is_best(sde, weighting):
    x = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * COV.diag().sqrt()
    exact = gaussian_score(sde, torch.zeros(2, dtype=torch.float64), torch.diag(COV.diag()))
    losses = denoising_score_matching_loss(sde, exact, x, weighting, reduction="none",
                                           generator=torch.Generator().manual_seed(2))
    assert losses.shape == (512,)
    zero = denoising_score_matching_loss(sde, lambda y, t: torch.zeros_like(y), x, weighting,
                                         generator=torch.Generator().manual_seed(2))
    assert zero.shape == () and losses.mean() < zero


def test_networks_shapes_and_training_step():
    sde = VPSDE()
    net = ScoreMLP(sde, dim=2, hidden=32, depth=2)
    x, t = torch.randn(8, 2), torch.rand(8)
    assert net(x, t).shape == (8, 2)
    denoising_score_matching_loss(sde, net, x).backward()
    assert all(p.grad is not None for p in net.parameters())
    for size in (8, 28):
        unet = ScoreUNet(sde, channels=1, base=8)
        assert unet(torch.randn(3, 1, size, size), torch.rand(3)).shape == (3, 1, size, size)


def _gaussian_marginal(sde, t):
    one = torch.ones(1, 1, dtype=torch.float64)
    s, std = (float(v) for v in sde.marginal_prob(one, torch.tensor([t], dtype=torch.float64)))
    return torch.distributions.MultivariateNormal(s * MU, s**2 * COV + std**2 * torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_ode_log_likelihood_of_gaussian_data(sde):
    score = gaussian_score(sde, MU, COV)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eps = 1e-5
    result = ode_log_likelihood(sde, score, x, eps=eps, rtol=1e-7, atol=1e-7)
    # the flow is exact; the prior N(0, sigma_T^2 I) only approximates p_T: swap in the true p_T
    exact_flow = result.log_px - sde.prior_logp(result.z) + _gaussian_marginal(sde, sde.T).log_prob(result.z)
    exact = _gaussian_marginal(sde, eps).log_prob(x)
    assert torch.allclose(exact_flow, exact, atol=1e-4), (exact_flow - exact).abs().max()
    assert (result.log_px - exact).abs().max() < 0.2  # the prior's mismatch is small
    hutch = ode_log_likelihood(sde, score, x, eps=eps, trace="hutchinson", generator=torch.Generator().manual_seed(0))
    assert hutch.log_px.shape == (16,) and result.nfe > 0
    bpd = bits_per_dim(result.log_px, dim=2, bins=256, data_range=1.0)
    assert torch.allclose(bpd, -result.log_px / (2 * math.log(2)) + 8)


def _marginal_eps(sde):
    s, std = (float(v) for v in sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64),
                                                   torch.tensor([EPS], dtype=torch.float64)))
    return s * MU, s**2 * COV + std**2 * torch.eye(2, dtype=torch.float64)


def _moment_error(x, mean, cov):
    return ((x.mean(0) - mean).norm() + (torch.cov(x.T) - cov).norm()).item()


SAMPLERS = {
    "euler_maruyama": lambda sde, f, x, n, g: euler_maruyama_sampler(sde, f, x.shape, n, x_T=x, generator=g),
    "pc": lambda sde, f, x, n, g: pc_sampler(sde, f, x.shape, n, x_T=x, generator=g),
    "ddpm": lambda sde, f, x, n, g: ddpm_sampler(sde, f, x.shape, n, x_T=x, generator=g),
    "ddim": lambda sde, f, x, n, g: ddim_sampler(sde, f, x.shape, n, x_T=x),
    "ddim_eta1": lambda sde, f, x, n, g: ddim_sampler(sde, f, x.shape, n, eta=1.0, x_T=x, generator=g),
    "dpm_solver2": lambda sde, f, x, n, g: dpm_solver_sampler(sde, f, x.shape, n, order=2, x_T=x),
    "dpm_solver3": lambda sde, f, x, n, g: dpm_solver_sampler(sde, f, x.shape, n, order=3, x_T=x),
    "heun": lambda sde, f, x, n, g: heun_sampler(sde, f, x.shape, n, x_T=x),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_reproduce_gaussian_moments_as_steps_grow(name):
    sde = VPSDE()
    score, (mean, cov) = gaussian_score(sde, MU, COV), _marginal_eps(VPSDE())
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sampling((6000, 2), generator=g, dtype=torch.float64)
    coarse = _moment_error(SAMPLERS[name](sde, score, x_T, 6, g).x, mean, cov)
    fine = SAMPLERS[name](sde, score, x_T, 200, g)
    assert _moment_error(fine.x, mean, cov) < 0.12  # sampling error of 6000 samples: about 0.06
    assert coarse > 2.5 * _moment_error(fine.x, mean, cov), (coarse, fine)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_stochastic_and_flow_samplers_on_every_sde(sde):
    score, (mean, cov) = gaussian_score(sde, MU, COV), _marginal_eps(sde)
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sampling((6000, 2), generator=g, dtype=torch.float64)
    for out in (euler_maruyama_sampler(sde, score, x_T.shape, 200, x_T=x_T, generator=g),
                pc_sampler(sde, score, x_T.shape, 100, x_T=x_T, generator=g),
                heun_sampler(sde, score, x_T.shape, 50, x_T=x_T),
                probability_flow_sampler(sde, score, x_T.shape, x_T=x_T)):
        assert _moment_error(out.x, mean, cov) < 0.12


@pytest.mark.parametrize(
    "name, make, steps, order",
    [
        ("ddim", lambda s, f, x, n: ddim_sampler(s, f, x.shape, n, x_T=x), [50, 100, 200, 400], 1),
        ("dpm1", lambda s, f, x, n: dpm_solver_sampler(s, f, x.shape, n, order=1, x_T=x), [50, 100, 200], 1),
        ("dpm2", lambda s, f, x, n: dpm_solver_sampler(s, f, x.shape, 2 * n, order=2, x_T=x), [10, 20, 40, 80], 2),
        ("dpm3", lambda s, f, x, n: dpm_solver_sampler(s, f, x.shape, 3 * n, order=3, x_T=x), [10, 20, 40], 3),
        ("heun", lambda s, f, x, n: heun_sampler(s, f, x.shape, n, x_T=x), [10, 20, 40, 80], 2),
    ],
)
def test_deterministic_samplers_converge_to_the_flow_at_their_order(name, make, steps, order):
    sde = VPSDE()
    score = gaussian_score(sde, MU, COV)
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = probability_flow_sampler(sde, score, x_T.shape, rtol=1e-11, atol=1e-11, x_T=x_T).x
    errors = [(make(sde, score, x_T, n).x - ref).abs().max().item() for n in steps]
    assert abs(fitted_order([1 / n for n in steps], errors) - order) < 0.5, errors


@pytest.mark.parametrize("sde", [SubVPSDE(), VESDE()], ids=repr)
def test_heun_is_second_order_on_every_sde(sde):
    score = gaussian_score(sde, MU, COV)
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = probability_flow_sampler(sde, score, x_T.shape, rtol=1e-11, atol=1e-11, x_T=x_T).x
    steps = [10, 20, 40, 80]
    errors = [(heun_sampler(sde, score, x_T.shape, n, x_T=x_T).x - ref).abs().max().item() for n in steps]
    assert abs(fitted_order([1 / n for n in steps], errors) - 2) < 0.3, errors


def test_nfe_and_determinism():
    sde = VPSDE()
    score = gaussian_score(sde, MU, COV)
    x_T = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def counted(x, t):
        calls.append(1)
        return score(x, t)

    for run, nfe in [
        (lambda: euler_maruyama_sampler(sde, counted, (5, 2), 7, x_T=x_T), 7),
        (lambda: pc_sampler(sde, counted, (5, 2), 7, n_corrector=2, x_T=x_T), 21),
        (lambda: ddpm_sampler(sde, counted, (5, 2), 7, x_T=x_T), 7),
        (lambda: ddim_sampler(sde, counted, (5, 2), 7, x_T=x_T), 7),
        (lambda: dpm_solver_sampler(sde, counted, (5, 2), 7, order=3, x_T=x_T), 7),
        (lambda: heun_sampler(sde, counted, (5, 2), 7, x_T=x_T), 14),
        (lambda: probability_flow_sampler(sde, counted, (5, 2), x_T=x_T), None),
    ]:
        calls.clear()
        out = run()
        assert out.nfe == len(calls) and (nfe is None or out.nfe == nfe)
    a = ddim_sampler(sde, score, (5, 2), 10, x_T=x_T).x
    assert torch.equal(a, ddim_sampler(sde, score, (5, 2), 10, x_T=x_T).x)
    draw = euler_maruyama_sampler(sde, score, (5, 2), 3, generator=torch.Generator().manual_seed(4))
    again = euler_maruyama_sampler(sde, score, (5, 2), 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(draw.x, again.x) and draw.path is None
    path = euler_maruyama_sampler(sde, score, (5, 2), 3, x_T=x_T, keep_path=True).path
    assert path.shape == (4, 5, 2)
    saved = probability_flow_sampler(sde, score, (5, 2), x_T=x_T, save_at=[0.5, 0.1]).path
    assert saved.shape == (4, 5, 2)


def test_errors():
    sde, score = VPSDE(), gaussian_score(VPSDE(), MU, COV)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"t must have shape"):
        sde.sde(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(TypeError, match="VPSDE"):
        ddim_sampler(VESDE(), score, (2, 2), 5)
    with pytest.raises(TypeError, match="VPSDE"):
        dpm_solver_sampler(SubVPSDE(), score, (2, 2), 5)
    with pytest.raises(TypeError, match="VPSDE"):
        ddpm_sampler(VESDE(), score, (2, 2), 5)
    with pytest.raises(TypeError, match="sde"):
        euler_maruyama_sampler("vp", score, (2, 2), 5)
    with pytest.raises(TypeError, match="score_fn"):
        heun_sampler(sde, None, (2, 2), 5)
    with pytest.raises(ValueError, match="n_steps"):
        euler_maruyama_sampler(sde, score, (2, 2), 0)
    with pytest.raises(ValueError, match="order"):
        dpm_solver_sampler(sde, score, (2, 2), 6, order=4)
    with pytest.raises(ValueError, match="eps"):
        heun_sampler(sde, score, (2, 2), 5, eps=1.5)
    with pytest.raises(ValueError, match="x_T"):
        euler_maruyama_sampler(sde, score, (2, 2), 5, x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="eta"):
        ddim_sampler(sde, score, (2, 2), 5, eta=2.0)
    with pytest.raises(ValueError, match="save_at"):
        probability_flow_sampler(sde, score, (2, 2), save_at=[0.1, 0.5])
    with pytest.raises(ValueError, match="weighting"):
        denoising_score_matching_loss(sde, score, torch.zeros(4, 2), weighting="uniform")
    with pytest.raises(ValueError, match="differentiable"):
        ode_log_likelihood(sde, lambda x, t: score(x, t).detach(), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="trace"):
        ode_log_likelihood(sde, score, torch.zeros(4, 2), trace="approx")
    with pytest.raises(ValueError, match="base"):
        ScoreUNet(sde, base=12)
    with pytest.raises(ValueError, match="cov"):
        gaussian_score(sde, MU, torch.eye(3))
