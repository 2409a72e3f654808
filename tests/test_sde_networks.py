"""Tests of Part V's models in dedl.nn.sdenets: NeuralSDE, SDE-Net, MC predictions, deep ensembles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dedl.nn.odenets import MLPVectorField, NeuralODE
from dedl.nn.sdenets import (
    NEURAL_SDE_NOISES,
    DeepEnsemble,
    DropoutResNet,
    NeuralSDE,
    SDENet,
    _NeuralSDETerms,
    mc_predict,
    neural_sde_net,
    sdenet,
    sdenet_loss,
)
from dedl.solvers import BrownianPath, sdeint, sdeint_adjoint
from dedl.train import accuracy


def block(noise: str, sigma: float = 0.5, **kwargs) -> NeuralSDE:
    torch.manual_seed(0)
    return NeuralSDE(MLPVectorField(3, hidden=8), noise=noise, sigma=sigma, **kwargs)


X = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("noise", NEURAL_SDE_NOISES)
def test_neural_sde_shapes_nfe_and_training_noise(noise):
    b = block(noise)
    torch.manual_seed(0)
    y1 = b(X)
    y2 = b(X)
    assert y1.shape == X.shape and b.nfe == 10
    assert not torch.allclose(y1, y2)  # training mode: a fresh path each call
    assert b.trajectory(X, [0.0, 0.5, 1.0]).shape == (3, 5, 3)


@pytest.mark.parametrize("noise", NEURAL_SDE_NOISES)
def test_neural_sde_eval_is_the_deterministic_drift_ode(noise):
    b = block(noise).eval()
    ode = block(noise, sigma=0.0).train()  # same weights (same seed), no diffusion
    with torch.no_grad():
        assert torch.equal(b(X), b(X))
        assert torch.allclose(b(X), ode(X), atol=1e-6)
        # forward Euler with dt = 0.1 on [0, 1], as NeuralODE's rk-free Euler
        euler = NeuralODE(b.func, method="euler", options={"step_size": 0.1})
        assert torch.allclose(b(X), euler(X), atol=1e-5)


@pytest.mark.parametrize("noise", NEURAL_SDE_NOISES)
def test_neural_sde_test_time_average_of_paths(noise):
    b = block(noise, sigma=0.3, n_samples=400).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        mean = b(X)
        b.n_samples = 0
        drift = b(X)
    assert mean.shape == X.shape
    assert not torch.allclose(mean, drift)
    assert (mean - drift).abs().max() < 0.1  # the mean path stays near the drift ODE for small sigma


def test_neural_sde_diffusions_are_the_papers():
    t = torch.tensor(0.0)
    y = torch.randn(4, 3)
    for noise, expected in [
        ("additive", lambda f: torch.full_like(y, 0.5)),
        ("multiplicative", lambda f: 0.5 * y),
        ("dropout", lambda f: 0.5 * f),
    ]:
        b = block(noise, sigma=0.5)
        terms = _NeuralSDETerms(b, (3,), noisy=True)
        f, g = terms.f_and_g(t, y)
        assert torch.allclose(g, expected(f)) and torch.allclose(terms.g(t, y), g)


def test_neural_sde_variance_grows_with_sigma():
    spreads = []
    for sigma in (0.1, 0.4):
        b = block("additive", sigma=sigma)
        torch.manual_seed(0)
        with torch.no_grad():
            paths = torch.stack([b(X) for _ in range(50)])
        spreads.append(paths.var(0).mean().item())
    assert spreads[1] > 4 * spreads[0]


def test_neural_sde_net_conv_and_milstein():
    torch.manual_seed(0)
    model = neural_sde_net(1, 4, 10, noise="multiplicative", sigma=0.2, dt=0.25)
    x = torch.randn(2, 1, 6, 6)
    assert model(x).shape == (2, 10) and model.body.nfe == 4
    model.eval()
    assert torch.equal(model(x), model(x))
    m = block("multiplicative", method="milstein")
    assert m(X).shape == X.shape


def _gradients(solve, x, field):
    y = solve()
    (y**2).sum().backward()
    grads = (x.grad.clone(), field.net[0].weight.grad.clone())
    x.grad = None
    field.zero_grad()
    return y.detach(), grads


def test_neural_sde_adjoint_flag_matches_backprop_as_dt_shrinks():
    errors = []
    for dt in (0.1, 0.025):
        torch.manual_seed(0)
        field = MLPVectorField(3, hidden=8, time_dependent=True).double()
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        blocks = [NeuralSDE(field, noise="additive", sigma=0.0, dt=dt, adjoint=a) for a in (False, True)]
        (y0, g0), (y1, g1) = (_gradients(lambda: b(x), x, field) for b in blocks)
        assert torch.equal(y0, y1)  # sigma = 0: the same forward solve
        errors.append(max((a - b).abs().max().item() for a, b in zip(g0, g1)))
    assert errors[1] < errors[0] / 2  # the adjoint's gradients converge to backprop's
    # with noise, on one Brownian path: the block's SDE through sdeint and sdeint_adjoint
    errors = []
    for dt in (0.1, 0.025):
        torch.manual_seed(0)
        field = MLPVectorField(3, hidden=8, time_dependent=True).double()
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        terms = _NeuralSDETerms(NeuralSDE(field, noise="additive", sigma=0.5, dt=dt), (3,), noisy=True)
        bm = BrownianPath(0.0, 1.0, size=(4, 3), dtype=torch.float64, seed=3)
        ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
        (y0, g0), (y1, g1) = (
            _gradients(lambda: solve(terms, x, ts, bm=bm, method="euler", dt=dt)[-1], x, field)
            for solve in (sdeint, lambda *a, **k: sdeint_adjoint(*a, **k, adjoint_params=tuple(field.parameters())))
        )
        assert torch.equal(y0, y1)
        errors.append(max((a - b).abs().max().item() for a, b in zip(g0, g1)))
    assert errors[1] < errors[0] / 2
    torch.manual_seed(0)
    noisy = NeuralSDE(MLPVectorField(3), noise="multiplicative", sigma=0.5, adjoint=True)
    noisy(X).sum().backward()
    assert all(p.grad is not None for p in noisy.parameters())


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: NeuralSDE(lambda t, h: h), TypeError),
        (lambda: block("dropout", adjoint=True), ValueError),
        (lambda: block("additive", adjoint=1), TypeError),
        (lambda: block("gaussian"), ValueError),
        (lambda: block("additive", method="heun"), ValueError),
        (lambda: block("dropout", method="milstein"), ValueError),
        (lambda: block("additive", sigma=-1.0), ValueError),
        (lambda: block("additive", dt=0.0), ValueError),
        (lambda: block("additive", n_samples=1.5), TypeError),
        (lambda: block("additive")(torch.zeros(3, dtype=torch.long)), TypeError),
        (lambda: block("additive")([[1.0]]), TypeError),
        (lambda: block("additive")(torch.zeros(3)), ValueError),
    ],
)
def test_neural_sde_argument_errors(make, error):
    with pytest.raises(error):
        make()


# ----------------------------------------------------------------------------------------------------
# SDE-Net
# ----------------------------------------------------------------------------------------------------


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_sdenet_without_diffusion_is_its_drift_only_ode_network(kind):
    torch.manual_seed(0)
    net = sdenet(1 if kind == "conv" else 2, 3, width=4, kind=kind, T=6.0, steps=6)
    x = torch.randn(4, 1, 5, 5) if kind == "conv" else torch.randn(4, 2)
    net.diffusion = Zero()
    ode = NeuralODE(net.drift, t=(0.0, 6.0), method="euler", options={"step_size": 1.0})
    with torch.no_grad():
        expected = net.head(ode(net.embedding(x)))
        assert torch.allclose(net(x), expected, atol=1e-5)
        assert torch.equal(net(x), net(x))
        assert net.trajectory(x).shape[0] == 7 and net.nfe == 6


def test_sdenet_predictive_variance_grows_with_the_diffusion():
    torch.manual_seed(0)
    net = sdenet(2, 3, width=8, kind="linear")
    x = torch.randn(20, 2)
    variances = []
    for sigma_max in (0.5, 2.0, 8.0):
        net.sigma_max = sigma_max
        torch.manual_seed(0)
        probs = mc_predict(net, x, n_samples=30)
        variances.append(probs.var(0).sum(-1).mean().item())
    assert variances[0] < variances[1] < variances[2]


def test_sdenet_diffusion_level_and_conv_downsampling():
    torch.manual_seed(0)
    net = sdenet(1, 10, width=8, downsample=2)
    x = torch.randn(3, 1, 28, 28)
    assert net(x).shape == (3, 10)
    level = net.diffusion_level(x)
    assert level.shape == (3,) and ((level > 0) & (level < 1)).all()


def test_sdenet_loss_trains_the_diffusion_by_bce_alone():
    torch.manual_seed(0)
    net = sdenet(2, 2, width=8, kind="linear")
    x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
    prediction = nn.functional.cross_entropy(net(x), y)
    prediction.backward()
    assert all(p.grad is None for p in net.diffusion.parameters())  # the path sees g detached
    net.zero_grad()
    loss = sdenet_loss(net, (x, y))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.diffusion.parameters())
    # a few steps push g down on the data and up off it
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        sdenet_loss(net, (x, y)).backward()
        opt.step()
    with torch.no_grad():
        far = net.diffusion_level(x + 2.0 * torch.randn(16, 2)).mean()
        near = net.diffusion_level(x).mean()
    assert far > near + 0.2


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: SDENet(nn.Identity(), lambda t, h: h, nn.Identity(), nn.Identity()), TypeError),
        (lambda: sdenet(2, 2, kind="graph"), ValueError),
        (lambda: sdenet(2, 2, kind="linear", downsample=1), ValueError),
        (lambda: sdenet(2, 2, steps=0), ValueError),
        (lambda: sdenet(2, 2, kind="linear")(torch.zeros(3, 2, dtype=torch.long)), TypeError),
        (lambda: sdenet_loss(nn.Linear(2, 2), (torch.zeros(1, 2), torch.zeros(1).long())), TypeError),
        (lambda: sdenet_loss(sdenet(2, 2, kind="linear"), (torch.zeros(1, 2), torch.zeros(1).long()), 0.0),
         ValueError),
    ],
)
def test_sdenet_argument_errors(make, error):
    with pytest.raises(error):
        make()


def test_sdenet_diffusion_must_return_one_value_per_sample():
    net = sdenet(2, 2, width=4, kind="linear")
    net.diffusion = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="one value per sample"):
        net(torch.randn(2, 2))


# ----------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------


def test_mc_predict_switches_on_dropout_but_keeps_batch_norm_in_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    net.train()
    x = torch.randn(8, 2)
    probs = mc_predict(net, x, n_samples=5, batch_size=3)
    assert probs.shape == (5, 8, 3) and torch.allclose(probs.sum(-1), torch.ones(5, 8))
    assert probs.var(0).sum() > 0  # dropout is on
    assert net.training and net[3].training  # modes restored
    running = net[1].running_mean.clone()
    mc_predict(net, x, n_samples=2)
    assert torch.equal(running, net[1].running_mean)  # batch norm was not updated
    deterministic = nn.Sequential(nn.Linear(2, 3))
    p = mc_predict(deterministic, x, 3)
    assert torch.allclose(p[0], p[2])


def test_mc_predict_samples_noisy_bodies_and_neural_sde_blocks():
    torch.manual_seed(0)
    body = DropoutResNet(4, 3, kind="linear", sigma=0.5)
    model = nn.Sequential(nn.Linear(2, 4), body, nn.Linear(4, 3)).eval()
    assert mc_predict(model, torch.randn(6, 2), 4).var(0).sum() > 0 and not body.training
    sde = nn.Sequential(NeuralSDE(MLPVectorField(2), sigma=0.5), nn.Linear(2, 3)).eval()
    assert mc_predict(sde, torch.randn(6, 2), 4).var(0).sum() > 0
    with pytest.raises(ValueError):
        mc_predict(model, torch.randn(6, 2), 0)


def test_deep_ensemble_averages_the_softmax():
    torch.manual_seed(0)
    members = [nn.Linear(2, 3) for _ in range(3)]
    ensemble = DeepEnsemble(members)
    x = torch.randn(7, 2)
    expected = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
    assert torch.allclose(ensemble(x).softmax(-1), expected, atol=1e-6)
    assert torch.allclose(ensemble(x).exp(), expected, atol=1e-6)
    assert 0.0 <= accuracy(ensemble, x, torch.zeros(7, dtype=torch.long)) <= 1.0
    with pytest.raises(ValueError):
        DeepEnsemble([])
    with pytest.raises(TypeError):
        DeepEnsemble([lambda x: x])
