"""Tests of dedl.nn.sdenets: the noisy residual bodies and the SDEs they discretise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from dedl.nn.classifier import ImageClassifier
from dedl.nn.resnets import EulerResNet, ResidualFunction
from dedl.nn.sdenets import (
    DropoutResNet,
    GaussianNoiseResNet,
    ResidualSDE,
    ShakeShakeResNet,
    StochasticDepthResNet,
    linear_moments,
    sigma_from_drop_rate,
    sigma_from_noise_std,
    sigma_from_shake_spread,
)
from dedl.solvers import sdeint
from dedl.utils import fitted_order

WIDTH = 4
BODIES = {
    "dropout": DropoutResNet,
    "stochastic_depth": StochasticDepthResNet,
    "shake_shake": ShakeShakeResNet,
    "gaussian": GaussianNoiseResNet,
}
NOISE_TYPES = {"dropout": "diagonal", "stochastic_depth": "scalar", "shake_shake": "scalar", "gaussian": "diagonal"}
NAMES = sorted(BODIES)


def sample(kind: str, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, WIDTH, 5, 5) if kind == "conv" else (batch, WIDTH), generator=g)


def tied_linear(name: str, depth: int, sigma: float, T: float = 1.0, width: int = 3, seed: int = 0):
    """A body whose residual functions are one (two for shake-shake) bias-free linear map(s) for every block."""
    torch.manual_seed(seed)
    maps = [nn.Linear(width, width, bias=False) for _ in range(2 if name == "shake_shake" else 1)]
    cycle = itertools.cycle(maps)
    return BODIES[name](width, depth, T, kind="linear", residual=lambda w: next(cycle), sigma=sigma)


def mean_network(body) -> EulerResNet:
    """The plain Euler ResNet with the body's weights (½(f₁ + f₂) for shake-shake)."""

    class Mean(nn.Module):
        def __init__(self, fs):
            super().__init__()
            self.fs = fs

        def forward(self, x):
            return sum(f(x) for f in self.fs) / len(self.fs)

    blocks = iter(list(body.fields))
    return EulerResNet(body.width, body.depth, body.T, kind=body.kind, residual=lambda w: Mean(next(blocks)))


# --------------------------------------------------------------------------------------------------
# shapes, counts, modes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_counts_and_trajectory(name, kind):
    torch.manual_seed(0)
    body = BODIES[name](WIDTH, 3, kind=kind, sigma=0.5)
    x = sample(kind)
    branches = 2 if name == "shake_shake" else 1
    assert body(x).shape == x.shape and body.trajectory(x).shape == (4, *x.shape)
    assert body.nfe == 3 * branches and body.h == pytest.approx(1 / 3)
    count = sum(p.numel() for p in body.parameters())
    assert count == 3 * branches * ResidualFunction.count(WIDTH, kind)
    body(x).sum().backward()  # training mode: gradients flow through the noise
    assert all(p.grad is not None for p in body.parameters())


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_the_plain_euler_resnet(name, kind):
    torch.manual_seed(0)
    body = BODIES[name](WIDTH, 3, T=2.0, kind=kind, sigma=0.7)
    body(sample(kind, 8))  # one training pass moves the batch-norm statistics
    plain = mean_network(body).eval()
    body.eval()
    x = sample(kind)
    with torch.no_grad():
        assert torch.allclose(body(x), plain(x), atol=1e-6)
        assert torch.equal(body(x), body(x))  # deterministic
        assert torch.allclose(body.trajectory(x), plain.trajectory(x), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_sigma_zero_trains_as_the_mean_network(name):
    torch.manual_seed(0)
    body = BODIES[name](WIDTH, 3, kind="linear", sigma=0.0)
    x = sample("linear")
    assert torch.equal(body.train()(x), body.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_training_mean_over_draws_is_the_eval_output(name):
    # a linear field makes E x_{n+1} = (I + h B) E x_n exact, so the mean over draws is the eval output
    body = tied_linear(name, depth=4, sigma=0.5)
    x = torch.tensor([[1.0, -0.5, 0.3]]).expand(40_000, 3)
    torch.manual_seed(1)
    with torch.no_grad():
        out = body.train()(x)
        target = body.eval()(x[:1])[0]
    se = out.std(0) / math.sqrt(len(out))
    assert torch.all((out.mean(0) - target).abs() < 5 * se), (out.mean(0), target, se)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_noise_variance_is_h_sigma_squared_amplitude_squared(name):
    # one block (depth 1): Var x_1 = h σ² a(x)², a = f (dropout, stochastic depth), f₁ − f₂ (shake-shake), 1
    torch.manual_seed(0)
    body = BODIES[name](3, 1, T=0.5, kind="linear", sigma=0.5)
    x = torch.tensor([[0.8, -0.4, 1.2]]).expand(100_000, 3)
    with torch.no_grad():
        torch.manual_seed(2)
        var = body.train()(x).var(0)
        _, amplitude = body._drift_and_amplitude(0, x[:1])
    expected = body.h * body.sigma**2 * amplitude[0] ** 2
    assert torch.allclose(var, expected, rtol=0.03), (var, expected)


def test_the_discrete_rates_follow_sigma_and_h():
    d = DropoutResNet(WIDTH, 8, T=8.0, kind="linear", sigma=sigma_from_drop_rate(0.1, h=1.0))
    assert d.drop_rate == pytest.approx(0.1) and d.keep == pytest.approx(0.9)
    assert sigma_from_drop_rate(0.1, h=1.0) == pytest.approx(1 / 3)
    s = ShakeShakeResNet(WIDTH, 8, T=8.0, kind="linear", sigma=sigma_from_shake_spread(0.5, h=1.0))
    assert s.spread == pytest.approx(0.5) and s.sigma == pytest.approx(math.sqrt(1 / 12))
    g = GaussianNoiseResNet(WIDTH, 4, T=1.0, kind="linear", sigma=sigma_from_noise_std(0.1, h=0.25))
    assert g.noise_std == pytest.approx(0.1) and g.sigma == pytest.approx(0.2)
    # the depth limit at fixed sigma: q = h / (h + σ²) -> 0, s = √(3σ²/h) grows
    deep = [StochasticDepthResNet(2, n, kind="linear", sigma=0.5) for n in (4, 16, 64)]
    assert [b.keep for b in deep] == pytest.approx([0.25 / 0.5, 1 / 16 / (1 / 16 + 0.25), 1 / 64 / (1 / 64 + 0.25)])


def test_stochastic_depth_keeps_or_drops_whole_samples_and_dropout_elements():
    torch.manual_seed(0)
    body = StochasticDepthResNet(WIDTH, 1, kind="linear", sigma=1.0)
    x = sample("linear", 200)
    with torch.no_grad():
        out, step = body(x), body.fields[0][0](x) * body.h / body.keep
    kept = torch.isclose(out, x + step, atol=1e-6).all(1)
    dropped = torch.isclose(out, x, atol=1e-6).all(1)
    assert torch.all(kept | dropped) and kept.any() and dropped.any()
    torch.manual_seed(0)
    drop = DropoutResNet(WIDTH, 1, kind="linear", sigma=1.0)
    with torch.no_grad():
        out, step = drop(x), drop.fields[0][0](x) * drop.h / drop.keep
    per_element = torch.isclose(out, x + step, atol=1e-6) | torch.isclose(out, x, atol=1e-6)
    mixed = torch.isclose(out, x, atol=1e-6).any(1) & ~torch.isclose(out, x, atol=1e-6).all(1)
    assert per_element.all() and mixed.any()


def test_shake_shake_alpha_range_and_backward_modes():
    torch.manual_seed(0)
    body = ShakeShakeResNet(WIDTH, 1, kind="linear", sigma=sigma_from_shake_spread(0.5, h=1.0))
    x = sample("linear", 500)
    with torch.no_grad():
        f1, f2 = body.fields[0][0](x), body.fields[0][1](x)
        out = body(x)
    alpha = ((out - x) / body.h - f2) / (f1 - f2)  # the same α for every feature of a sample
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-3)
    assert alpha.min() >= -1e-4 and alpha.max() <= 1 + 1e-4  # spread ½: α ~ U(0, 1)
    # shake_backward changes the gradient, not the forward value
    keep = ShakeShakeResNet(WIDTH, 1, kind="linear", sigma=body.sigma, shake_backward=False)
    keep.load_state_dict(body.state_dict())
    grads = []
    for net in (body, keep):
        torch.manual_seed(3)
        y = net(x)
        net.zero_grad()
        y.pow(2).sum().backward()
        grads.append((y.detach(), net.fields[0][0].net[0].weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert not torch.allclose(grads[0][1], grads[1][1])


# --------------------------------------------------------------------------------------------------
# the SDE
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sde_shapes_noise_type_and_sdeint(name):
    torch.manual_seed(0)
    body = BODIES[name](WIDTH, 4, kind="linear", sigma=0.5)
    sde = body.sde()
    assert isinstance(sde, ResidualSDE) and sde.sde_type == "ito" and sde.noise_type == NOISE_TYPES[name]
    x = sample("linear")
    f, g = sde.f(0.0, x), sde.g(0.0, x)
    assert f.shape == x.shape and g.shape == (x.shape if sde.noise_type == "diagonal" else (*x.shape, 1))
    with torch.no_grad():
        assert torch.allclose(f, mean_network(body).fields[0](x))  # f_0, or ½(f₁ + f₂) for shake-shake
        ys = sdeint(sde, x, [0.0, 0.5, 1.0], method="euler", dt=0.05, seed=0)
    assert ys.shape == (3, *x.shape) and torch.isfinite(ys).all()
    # sigma = 0: one Euler step per block of the SDE is the network itself
    quiet = BODIES[name](WIDTH, 4, kind="linear", sigma=0.0)
    with torch.no_grad():
        ys = sdeint(quiet.sde(), x, [0.0, 1.0], method="euler", dt=quiet.h)
        assert torch.allclose(ys[-1], quiet.eval()(x), atol=1e-6)


def test_sde_drift_is_the_block_at_time_t_and_conv_states_flatten():
    torch.manual_seed(0)
    body = DropoutResNet(WIDTH, 4, T=2.0, sigma=0.3).eval()
    sde = body.sde(image_size=(5, 5))
    x = sample("conv")
    y = sde.flatten(x)
    assert y.shape == (3, WIDTH * 25) and torch.equal(sde.unflatten(y), x)
    with torch.no_grad():
        for t, n in [(0.0, 0), (0.49, 0), (0.5, 1), (1.0 - 1e-12, 2), (1.999, 3), (2.0, 3)]:
            assert sde.block(t) == n
            assert torch.allclose(sde.f(t, y), body.fields[n][0](x).flatten(1))
        assert torch.allclose(sde.g(0.7, y), 0.3 * body.fields[1][0](x).flatten(1))
        ys = sdeint(sde, y, [0.0, 2.0], method="euler", dt=0.25, seed=0)
    assert sde.unflatten(ys).shape == (2, *x.shape)


@pytest.mark.parametrize("name", NAMES)
def test_linear_moments_match_monte_carlo_of_the_network_and_of_sdeint(name):
    body = tied_linear(name, depth=4, sigma=0.5)
    x0 = torch.tensor([1.0, -0.5, 0.3])
    n = 40_000
    for sde in (False, True):
        mean, cov = linear_moments(body, x0, sde=sde)
        torch.manual_seed(4)
        with torch.no_grad():
            if sde:
                out = sdeint(body.sde(), x0.expand(n, 3), [0.0, 1.0], method="euler", dt=1 / 256, seed=5)[-1]
            else:
                out = body.train()(x0.expand(n, 3))
        out = out.double()
        se = out.std(0) / math.sqrt(n)
        assert torch.all((out.mean(0) - mean).abs() < 5 * se + (0.01 if sde else 0)), (sde, out.mean(0), mean)
        assert torch.allclose(out.T.cov(), cov, rtol=0.05, atol=3e-3), (sde, out.T.cov(), cov)


@pytest.mark.parametrize("name", NAMES)
def test_discrete_moments_converge_to_the_sde_at_weak_order_one(name):
    # the unit test of notebook 3: the statistic shrinks as depth grows at fixed T and fixed SDE
    x0 = torch.tensor([1.0, -0.5, 0.3])
    depths = [4, 8, 16, 32, 64]
    errors = []
    for depth in depths:
        body = tied_linear(name, depth, sigma=0.6, T=1.0)
        (m, c), (ms, cs) = linear_moments(body, x0), linear_moments(body, x0, sde=True)
        errors.append(float((m - ms).norm() + (c - cs).norm()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert abs(fitted_order([1 / d for d in depths], errors) - 1.0) < 0.1, errors


def test_stochastic_depth_limit_at_fixed_sigma_is_not_the_diffusion():
    # the caveat of the docstring: no block survives with probability (1 - q)^depth -> exp(-T/σ²) > 0
    torch.manual_seed(0)
    body = tied_linear("stochastic_depth", depth=64, sigma=1.0, T=1.0)
    x = torch.tensor([[1.0, -0.5, 0.3]]).expand(20_000, 3)
    with torch.no_grad():
        out = body.train()(x)
    untouched = float((out == x).all(1).double().mean())
    assert abs(untouched - (1 - body.keep) ** 64) < 0.02 and untouched > 0.3


# --------------------------------------------------------------------------------------------------
# frame, seeds, errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bodies_fit_the_image_classifier(name):
    torch.manual_seed(0)
    model = ImageClassifier(BODIES[name](8, 2, sigma=0.3), in_channels=1, width=8, num_classes=10)
    logits = model(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 10)
    logits.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_seeded_draws_are_reproducible(name):
    torch.manual_seed(0)
    body = BODIES[name](WIDTH, 3, kind="linear", sigma=0.5)
    x = sample("linear", 16)
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(body(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: DropoutResNet(4, 2), TypeError, "sigma"),
        (lambda: DropoutResNet(4, 2, sigma=-0.1), ValueError, "sigma"),
        (lambda: StochasticDepthResNet(4, 2, sigma="0.1"), TypeError, "sigma"),
        (lambda: GaussianNoiseResNet(4, 2, sigma=True), TypeError, "sigma"),
        (lambda: ShakeShakeResNet(4, 2, sigma=float("inf")), ValueError, "sigma"),
        (lambda: ShakeShakeResNet(4, 2, sigma=0.1, shake_backward=1), TypeError, "shake_backward"),
        (lambda: DropoutResNet(4, 0, sigma=0.1), ValueError, "depth"),
        (lambda: DropoutResNet(4, 2, T=0.0, sigma=0.1), ValueError, "T"),
        (lambda: DropoutResNet(4, 2, kind="dense", sigma=0.1), ValueError, "kind"),
        (lambda: DropoutResNet(4, 2, sigma=0.1)(torch.randn(2, 4)), ValueError, "4-D"),
        (lambda: DropoutResNet(4, 2, sigma=0.1).sde(), ValueError, "image_size"),
        (lambda: DropoutResNet(4, 2, sigma=0.1).sde(image_size=5), TypeError, "image_size"),
        (lambda: DropoutResNet(4, 2, kind="linear", sigma=0.1).sde(image_size=(5, 5)), ValueError, "image_size"),
        (lambda: sigma_from_drop_rate(1.0, h=1.0), ValueError, "drop"),
        (lambda: sigma_from_drop_rate(0.1, h=0.0), ValueError, "h"),
        (lambda: sigma_from_shake_spread(-0.5, h=1.0), ValueError, "spread"),
        (lambda: sigma_from_noise_std("0.1", h=1.0), TypeError, "std"),
        (lambda: linear_moments(EulerResNet(3, 2, kind="linear"), torch.zeros(3)), TypeError, "noisy body"),
        (lambda: linear_moments(DropoutResNet(3, 2, kind="linear", sigma=0.1), torch.zeros(3)), TypeError, "Linear"),
        (lambda: linear_moments(tied_linear("dropout", 2, 0.1), torch.zeros(2)), ValueError, "shape"),
        (lambda: linear_moments(tied_linear("dropout", 2, 0.1), [0.0, 0.0, 0.0]), TypeError, "x0"),
    ],
)
def test_argument_errors_name_the_problem(call, error, match):
    with pytest.raises(error, match=match):
        call()
