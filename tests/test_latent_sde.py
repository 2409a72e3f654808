"""Tests of dedl.nn.sdenets.LatentSDE and dedl.data.ornstein_uhlenbeck: the Girsanov KL term (zero for equal drifts,
the closed form for a constant drift difference), the ELBO improving under a few optimisation steps, adjoint
gradients equal to backpropagation, shapes and errors; the exact Ornstein-Uhlenbeck sampler's moments."""

from __future__ import annotations

import math

import pytest
import torch

from dedl.data import ornstein_uhlenbeck
from dedl.nn.sdenets import LatentSDE
from dedl.solvers import BrownianPath


def constant_diffusion(model: LatentSDE, value: float) -> None:
    """Make the diffusion the constant ``value`` (its first layer's weights zero)."""
    with torch.no_grad():
        model.diffusion.w1.zero_()
        model.diffusion.w2.zero_()
        model.diffusion.b2.fill_(math.log(value / (1 - value)))  # sigmoid(b2) = value


def copy_prior_into_posterior(model: LatentSDE, shift: float = 0.0) -> None:
    """Posterior drift = prior drift + shift: the context columns of the first layer zero, the rest copied."""
    latent = model.latent_dim
    with torch.no_grad():
        first, prior_first = model.posterior_drift[0], model.prior_drift[0]
        first.weight.zero_()
        first.weight[:, :latent].copy_(prior_first.weight)
        first.bias.copy_(prior_first.bias)
        for k in (2, 4):
            model.posterior_drift[k].load_state_dict(model.prior_drift[k].state_dict())
        model.posterior_drift[4].bias.add_(shift)


def data(n: int = 16, n_times: int = 11):
    times, values = ornstein_uhlenbeck(n, n_times=n_times, t_end=2.0, theta=1.5, mu=0.5, sigma=0.4, x0=(-1.0, 2.0))
    return times, values


@pytest.mark.parametrize("method", ["euler", "reversible_heun"])
def test_path_kl_is_zero_for_equal_drifts(method):
    torch.manual_seed(0)
    model = LatentSDE(1, method=method, dt=0.1)
    copy_prior_into_posterior(model)
    times, values = data()
    terms = model.elbo_terms(times, values)
    assert torch.equal(terms.kl_path, torch.zeros_like(terms.kl_path))


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_path_kl_matches_closed_form_for_constant_drift_difference(method):
    torch.manual_seed(0)
    model = LatentSDE(2, latent_dim=3, method=method, dt=0.1)
    g, c = 0.3, 0.2
    constant_diffusion(model, g)
    copy_prior_into_posterior(model, shift=c)
    times, values = ornstein_uhlenbeck(8, n_times=11, t_end=2.0)
    values = values.repeat(1, 1, 2)
    terms = model.elbo_terms(times, values)
    # Girsanov: u = (f - h) / g = c / g in each of the 3 latent dimensions, KL = (1/2) |u|^2 (t_N - t_0), on every path
    closed_form = 0.5 * 3 * (c / g) ** 2 * 2.0
    torch.testing.assert_close(terms.kl_path, torch.full_like(terms.kl_path, closed_form), rtol=1e-5, atol=1e-5)


def test_elbo_improves_over_a_few_steps():
    torch.manual_seed(0)
    times, values = data(32)
    model = LatentSDE(1, method="euler", dt=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

    def evaluate() -> float:
        torch.manual_seed(1)  # the same posterior noise before and after
        with torch.no_grad():
            return float(model.elbo(times, values, n_samples=4).mean())

    before = evaluate()
    for _ in range(30):
        optimizer.zero_grad()
        (-model.elbo(times, values).mean()).backward()
        optimizer.step()
    after = evaluate()
    assert after > before + 0.2 * abs(before), (before, after)


def test_adjoint_gradients_equal_backprop_for_reversible_heun():
    torch.manual_seed(0)
    times, values = data(6)
    model = LatentSDE(1, latent_dim=2, method="reversible_heun", dt=0.1).double()
    bm = BrownianPath(0.0, 2.0, (6, 2), levels=6, seed=0, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        model.adjoint = adjoint
        torch.manual_seed(2)
        loss = -model.elbo(times.double(), values.double(), bm=bm).sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_shapes_and_sampling():
    torch.manual_seed(0)
    times, values = data(5)
    model = LatentSDE(1, latent_dim=3, dt=0.2)
    assert model(times, values).shape == (5, 11, 1)
    assert model.sample_posterior(times, values, n_samples=4).shape == (4, 5, 11, 1)
    assert model.sample_prior(times, n_samples=7).shape == (7, 11, 1)
    assert model.sample_prior(times, 2, z0=torch.zeros(2, 3)).shape == (2, 11, 1)
    terms = model.elbo_terms(times, values, n_samples=3)
    assert all(t.shape == (5,) for t in terms)
    assert (terms.kl_initial >= 0).all() and (terms.kl_path >= 0).all()


def test_errors():
    times, values = data(3)
    with pytest.raises(ValueError, match="method"):
        LatentSDE(1, method="srk")
    with pytest.raises(ValueError, match="data_dim"):
        LatentSDE(0)
    model = LatentSDE(1)
    with pytest.raises(ValueError, match="shape"):
        model.elbo(times, values.squeeze(-1))
    with pytest.raises(ValueError, match="times"):
        model.elbo(times[:-1], values)
    with pytest.raises(TypeError):
        model.elbo(times, values.long())
    with pytest.raises(ValueError, match="z0"):
        model.sample_prior(times, 2, z0=torch.zeros(3, 1))


def test_ornstein_uhlenbeck_moments_and_seed():
    theta, mu, sigma, x0 = 1.5, 0.5, 0.4, 2.0
    times, values = ornstein_uhlenbeck(20_000, n_times=6, t_end=1.0, theta=theta, mu=mu, sigma=sigma, x0=x0)
    assert times.shape == (6,) and values.shape == (20_000, 6, 1)
    mean = mu + (x0 - mu) * torch.exp(-theta * times)
    var = sigma**2 * (1 - torch.exp(-2 * theta * times)) / (2 * theta)
    torch.testing.assert_close(values[..., 0].mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(values[..., 0].var(0), var, atol=0.003, rtol=0.03)
    # the stationary start keeps the stationary law
    _, stationary = ornstein_uhlenbeck(20_000, n_times=3, theta=theta, mu=mu, sigma=sigma)
    assert abs(float(stationary[:, -1].var()) - sigma**2 / (2 * theta)) < 0.003
    assert torch.equal(ornstein_uhlenbeck(3, seed=4)[1], ornstein_uhlenbeck(3, seed=4)[1])
    assert not torch.equal(ornstein_uhlenbeck(3, seed=4)[1], ornstein_uhlenbeck(3, seed=5)[1])
    low_high = ornstein_uhlenbeck(1000, n_times=2, x0=(-1.0, 2.0))[1][:, 0, 0]
    assert -1.0 <= float(low_high.min()) and float(low_high.max()) <= 2.0
    with pytest.raises(ValueError, match="theta"):
        ornstein_uhlenbeck(3, theta=0.0)
    with pytest.raises(ValueError, match="low <= high"):
        ornstein_uhlenbeck(3, x0=(1.0, 0.0))
