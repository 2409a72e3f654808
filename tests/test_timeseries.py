"""Tests of the time-series models of dedl.nn.odenets (neural CDE, ODE-RNN, latent ODE, GRU baseline) and of the
trajectory and irregular-series generators of dedl.data."""

from __future__ import annotations

import math

import pytest
import torch

from dedl.data import (
    DataUnavailableError,
    IrregularSeries,
    damped_pendulum,
    irregular_series,
    load_stock_prices,
    lotka_volterra,
    spiral_trajectories,
)
from dedl.cde import cdeint
from dedl.interpolation import LinearInterpolation, NaturalCubicSpline
from dedl.nn.odenets import (
    CDEVectorField,
    GRUBaseline,
    LatentODE,
    NeuralCDE,
    ODERNN,
    gaussian_kl,
)
from dedl.solvers import odeint

B, T, C = 4, 12, 2


@pytest.fixture
def series():
    data = irregular_series(B, n_times=T, t_end=3.0, missing=0.4, seed=3)
    mask = data.mask.clone()
    mask[:, -3:] = False  # a forecast horizon with no observations
    return data.times, data.values, mask


def models():
    torch.manual_seed(0)
    return {
        "gru": GRUBaseline(C, 8),
        "odernn": ODERNN(C, 8, width=8),
        "cde_cubic": NeuralCDE(C, 8, width=8),
        "cde_linear": NeuralCDE(C, 8, width=8, interpolation="linear"),
        "latent": LatentODE(C, 3, 8, width=8),
    }


# --- the neural CDE as an ODE -----------------------------------------------------------------------------


class MatrixField(torch.nn.Module):
    """``f(z) = tanh(W z)`` reshaped to ``(H, C)``: a fixed matrix-valued field."""

    def __init__(self, hidden, channels):
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.linear = torch.nn.Linear(hidden, hidden * channels).double()

    def forward(self, t, z):
        return torch.tanh(self.linear(z)).view(*z.shape, self.channels)


@pytest.mark.parametrize("path_cls", [LinearInterpolation, NaturalCubicSpline])
def test_cde_with_a_linear_control_is_an_ode(path_cls):
    """With ``X(t) = t c`` the CDE ``dz = f(z) dX`` is the ODE ``dz/dt = f(z) c`` (one ``c`` per series)."""
    torch.manual_seed(0)
    t = torch.tensor([0.0, 0.3, 0.45, 1.1, 1.6, 2.0], dtype=torch.float64)
    c = torch.randn(3, 2, dtype=torch.float64)
    path = path_cls(t, t.view(1, -1, 1) * c.view(3, 1, 2))
    f = MatrixField(5, 2)
    z0 = torch.randn(3, 5, dtype=torch.float64)
    kwargs = dict(method="dopri5", rtol=1e-10, atol=1e-10)
    z_cde = cdeint(path, f, z0, t, **kwargs)
    z_ode = odeint(lambda s, z: (f(s, z) @ c.unsqueeze(-1)).squeeze(-1), z0, t, **kwargs)
    assert z_cde.shape == (len(t), 3, 5)
    torch.testing.assert_close(z_cde, z_ode, rtol=1e-8, atol=1e-8)


def test_cdeint_checks_the_field_shape():
    t = torch.linspace(0, 1, 4)
    path = LinearInterpolation(t, torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="matrix"):
        cdeint(path, lambda s, z: torch.zeros(2, 5, 2), torch.zeros(2, 5), t)
    with pytest.raises(TypeError, match="derivative"):
        cdeint(object(), lambda s, z: z, torch.zeros(2, 5), t)


def test_cde_vector_field_shape():
    field = CDEVectorField(6, 3, width=8)
    out = field(torch.tensor(0.0), torch.randn(5, 6))
    assert out.shape == (5, 6, 3) and out.abs().max() <= 1


# --- shapes, NFE and masks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gru", "odernn", "cde_cubic", "cde_linear", "latent"])
def test_output_shapes_and_nfe(series, name):
    times, values, mask = series
    model = models()[name]
    out = model(times, values, mask)
    assert out.shape == (B, T, C) and torch.isfinite(out).all()
    if name == "gru":
        assert model.nfe == 0
    elif name == "odernn":
        assert model.nfe == T - 1  # one Euler step per gap
    elif name.startswith("cde"):
        assert model.nfe == 4 * (T - 1)  # one RK4 step per gap
    else:
        assert model.nfe == (T - 1) + 4 * (T - 1)  # Euler encoder, RK4 decoder


@pytest.mark.parametrize("name", ["gru", "odernn", "cde_cubic", "cde_linear", "latent"])
def test_masked_out_values_do_not_matter(series, name):
    times, values, mask = series
    model = models()[name]
    out = model(times, values, mask)
    scrambled = torch.where(mask, values, torch.full_like(values, 1e3))
    torch.testing.assert_close(model(times, scrambled, mask), out)
    with_nan = torch.where(mask, values, torch.full_like(values, float("nan")))
    torch.testing.assert_close(model(times, with_nan), out)  # mask=None: NaN marks the missing entries


def test_odernn_follows_its_ode_between_observations(series):
    """At a time with no observation the ODE-RNN state is the ODE solution from the previous state."""
    times, values, mask = series
    model = models()["odernn"]
    h = model.hidden_states(times, values, mask)
    for i in range(T - 3, T):  # the unobserved horizon
        expected = odeint(model.func, h[:, i - 1], times[i - 1 : i + 1], method="euler")[-1]
        torch.testing.assert_close(h[:, i], expected)
    assert model.hidden_states(times, values, mask, reverse=True).shape == (B, T, 8)


def test_odernn_observation_changes_the_state(series):
    times, values, mask = series
    model = models()["odernn"]
    i = int(torch.nonzero(mask[0].any(-1))[0])
    changed = values.clone()
    changed[0, i] += 1.0
    h1, h2 = model.hidden_states(times, values, mask), model.hidden_states(times, changed, mask)
    assert not torch.allclose(h1[0, i], h2[0, i])
    torch.testing.assert_close(h1[1:], h2[1:])  # the other series are untouched


def test_gru_baseline_sees_the_time_gaps(series):
    times, values, mask = series
    model = models()["gru"]
    stretched = times * 2
    assert not torch.allclose(model(times, values, mask), model(stretched, values, mask))


# --- the latent ODE -------------------------------------------------------------------------------------------


def test_latent_ode_elbo_is_finite_and_decreases():
    data = irregular_series(16, n_times=15, t_end=3.0, missing=0.3, noise=0.05, seed=0)
    torch.manual_seed(0)
    model = LatentODE(2, 3, 16, width=16, obs_std=0.1)

    def negative_elbo():
        torch.manual_seed(1)  # the same noise eps at every evaluation
        return -model.elbo(data.times, data.values, data.mask, n_samples=4).mean()

    with torch.no_grad():
        before = negative_elbo().item()
    assert math.isfinite(before)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        optimizer.zero_grad()
        loss = negative_elbo()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = negative_elbo().item()
    assert math.isfinite(after) and after < before


def test_latent_ode_samples_and_targets(series):
    times, values, mask = series
    model = models()["latent"]
    mean, std = model.encode(times, values, mask)
    assert mean.shape == std.shape == (B, 3) and (std > 0).all()
    assert model.sample(times, values, mask, n_samples=5).shape == (5, B, T, C)
    assert model.decode(mean, times).shape == (B, T, C)
    target_mask = ~mask
    elbo = model.elbo(times, values, mask, values, target_mask)
    assert elbo.shape == (B,) and torch.isfinite(elbo).all()
    # no observed target and no KL: the bound is exactly zero
    assert torch.equal(model.elbo(times, values, mask, values, torch.zeros_like(mask), kl_weight=0.0), torch.zeros(B))


def test_gaussian_kl():
    assert torch.equal(gaussian_kl(torch.zeros(3, 2), torch.ones(3, 2)), torch.zeros(3))
    mean, std = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    q = torch.distributions.Normal(mean, std)
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(gaussian_kl(mean, std), torch.distributions.kl_divergence(q, p).sum(-1))


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gru", "odernn", "cde_cubic", "latent"])
def test_bad_input_raises(series, name):
    times, values, mask = series
    model = models()[name]
    with pytest.raises(ValueError, match="strictly increasing"):
        model(times.flip(0), values, mask)
    with pytest.raises(ValueError, match="strictly increasing"):
        model(torch.cat([times[:1], times[:-1]]), values, mask)
    with pytest.raises(ValueError, match="one entry per time point"):
        model(times[:-1], values, mask)
    with pytest.raises(ValueError, match="mask must have the shape"):
        model(times, values, mask[:, :-1])
    with pytest.raises(ValueError, match="shape \\(batch, time, channels\\)"):
        model(times, values[0], mask[0])
    with pytest.raises(ValueError, match="input channels"):
        model(times, values[..., :1], mask[..., :1])
    with pytest.raises(TypeError, match="floating-point"):
        model(times, values.long(), mask)
    nan_values = values.clone()
    nan_values[mask] = float("nan")
    with pytest.raises(ValueError, match="NaN at entries"):
        model(times, nan_values, mask)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="interpolation"):
        NeuralCDE(2, 4, interpolation="quadratic")
    with pytest.raises(ValueError, match="hidden_channels"):
        ODERNN(2, 0)
    with pytest.raises(ValueError, match="obs_std"):
        LatentODE(2, 3, 4, obs_std=0.0)
    with pytest.raises(ValueError, match="rtol"):
        NeuralCDE(2, 4, rtol=-1.0)


# --- data generators -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("system", ["pendulum", "lotka_volterra", "spiral"])
def test_irregular_series_shapes_seeding_and_masks(system):
    data = irregular_series(20, system, n_times=30, missing=0.3, noise=0.1, seed=5)
    assert isinstance(data, IrregularSeries)
    assert data.times.shape == (30,) and (data.times[1:] > data.times[:-1]).all() and data.times[0] >= 0
    assert data.values.shape == data.mask.shape == data.clean.shape == (20, 30, 2)
    assert data.mask.dtype == torch.bool and 0.55 < data.mask.float().mean() < 0.85
    assert 0.05 < (data.values - data.clean).std() < 0.15
    again = irregular_series(20, system, n_times=30, missing=0.3, noise=0.1, seed=5)
    for a, b in zip(data, again):
        assert torch.equal(a, b)
    other = irregular_series(20, system, n_times=30, missing=0.3, noise=0.1, seed=6)
    assert not torch.equal(data.values, other.values)
    observed = data.observed()
    assert torch.isnan(observed[~data.mask]).all() and torch.equal(observed[data.mask], data.values[data.mask])


def test_irregular_series_whole_time_points_missing():
    data = irregular_series(10, n_times=25, missing=0.5, per_channel=False, seed=0)
    assert torch.equal(data.mask[..., 0], data.mask[..., 1])
    full = irregular_series(10, n_times=25, missing=0.0, noise=0.0, seed=0)
    assert full.mask.all() and torch.equal(full.values, full.clean)


def test_trajectory_generators():
    t, x = lotka_volterra(5, n_times=40, t_end=8.0)
    assert t.shape == (40,) and x.shape == (5, 40, 2) and (x > 0).all()
    # the Lotka-Volterra invariant V = delta x - gamma log x + beta y - alpha log y is conserved
    xd = x.double()
    invariant = xd[..., 0] - 3.0 * xd[..., 0].log() + xd[..., 1] - 1.5 * xd[..., 1].log()
    assert (invariant - invariant[:, :1]).abs().max() < 1e-4
    t, x = damped_pendulum(5, n_times=50, damping=0.0)
    energy = 0.5 * x[..., 1].double() ** 2 - 4.0 * torch.cos(x[..., 0].double())
    assert (energy - energy[:, :1]).abs().max() < 1e-4  # no damping: energy is conserved
    t, x = damped_pendulum(5, n_times=50, damping=0.5)
    energy = 0.5 * x[..., 1] ** 2 - 4.0 * torch.cos(x[..., 0])
    assert (energy[:, -1] < energy[:, 0]).all()
    t, x, clockwise = spiral_trajectories(6, n_times=20, irregular=True, seed=1)
    assert x.shape == (6, 20, 2) and clockwise.tolist() == [False, True] * 3
    assert (t[1:] > t[:-1]).all()
    # counter-clockwise spirals turn with positive angular momentum, clockwise ones with negative
    velocity = x[:, 1:] - x[:, :-1]
    spin = (x[:, :-1, 0] * velocity[..., 1] - x[:, :-1, 1] * velocity[..., 0]).sum(1)
    assert ((spin < 0) == clockwise).all()
    assert torch.equal(lotka_volterra(3, seed=2)[1], lotka_volterra(3, seed=2)[1])


def test_generators_reject_bad_arguments():
    with pytest.raises(ValueError, match="system"):
        irregular_series(4, "lorenz")
    with pytest.raises(ValueError, match="missing"):
        irregular_series(4, missing=1.0)
    with pytest.raises(ValueError, match="n_times"):
        irregular_series(4, n_times=1)
    with pytest.raises(ValueError, match="n must be"):
        damped_pendulum(0)
    with pytest.raises(ValueError, match="noise"):
        lotka_volterra(3, noise=-0.1)
    with pytest.raises(ValueError, match="t_end"):
        spiral_trajectories(3, t_end=0.0)


def test_stock_prices():
    try:
        days, close = load_stock_prices()
    except DataUnavailableError:
        pytest.skip("matplotlib does not ship goog.npz")
    assert days.shape == close.shape and days[0] == 0 and (days[1:] > days[:-1]).all()
    gaps = days[1:] - days[:-1]
    assert gaps.min() == 1 and gaps.max() >= 3  # weekends: irregular sampling


@pytest.mark.parametrize("system, typo", [("pendulum", "dampng"), ("lotka_volterra", "omega"), ("spiral", "alpha")])
def test_irregular_series_rejects_parameters_its_system_does_not_take(system, typo):
    with pytest.raises(TypeError, match=typo):
        irregular_series(4, system=system, **{typo: 0.5})
