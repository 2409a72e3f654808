"""Tests of dedl.nn.pde: parabolic and hyperbolic CNNs and their fixed-stencil PDE limits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dedl.nn.classifier import ImageClassifier
from dedl.nn.pde import (
    HyperbolicCNN,
    ParabolicCNN,
    PDEForce,
    gradient_stencil,
    heat_equation,
    identity,
    wave_equation,
)
from dedl.utils import parameter_count

LAPLACIAN = torch.tensor([[[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]])


def _images(batch: int = 3, width: int = 4, size: int = 6, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn(batch, width, size, size, generator=g, dtype=dtype)


@pytest.mark.parametrize("cls", [ParabolicCNN, HyperbolicCNN])
@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_counts_gradients(cls, norm, dtype):
    torch.manual_seed(0)
    net = cls(4, 3, T=1.0, hidden=5, norm=norm).to(dtype)
    x = _images(dtype=dtype).requires_grad_(True)
    y = net(x)
    assert y.shape == x.shape and y.dtype == dtype
    per_layer = 5 * 4 * 9 + (2 * 5 if norm == "batch" else 5)
    assert parameter_count(net) == 3 * per_layer
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("cls", [ParabolicCNN, HyperbolicCNN])
def test_bodies_fit_the_image_classifier(cls):
    torch.manual_seed(0)
    model = ImageClassifier(cls(8, 2), in_channels=1, width=8, num_classes=10)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_stencil_operator_is_the_laplacian_in_the_interior():
    x = _images(batch=2, width=1, size=7, dtype=torch.float64)
    force = PDEForce(1, activation=identity, norm=None, stencil=gradient_stencil(torch.float64)).double()
    minus_laplacian = -F.conv2d(x, LAPLACIAN.double(), padding=1)
    assert torch.allclose(force(x)[..., 1:-1, 1:-1], minus_laplacian[..., 1:-1, 1:-1])
    assert parameter_count(force) == 2  # only the (zero) bias of the two difference channels


def test_heat_and_wave_equations_are_parameter_free():
    x = _images(batch=1, width=1, size=6)
    heat, wave = heat_equation(5, 0.2), wave_equation(5, 0.5)
    assert parameter_count(heat) == 0 and parameter_count(wave) == 0
    assert heat(x).shape == x.shape and wave(x).shape == x.shape
    assert heat.h == pytest.approx(0.2) and wave.h == pytest.approx(0.5)


def test_parabolic_step_is_a_contraction_below_the_limit_and_not_above():
    torch.manual_seed(0)
    op_norm_sq = heat_equation(1, 0.1).layers[0].force.op.norm((1, 8, 8), iterations=500) ** 2
    limit = 2 / op_norm_sq
    assert 0.25 <= limit < 0.26
    y1, y2 = _images(batch=16, width=1, size=8, dtype=torch.float64).chunk(2)
    for activation in (identity, torch.tanh, torch.relu):
        step = ParabolicCNN(1, 1, T=0.98 * limit, activation=activation, norm=None,
                            stencil=gradient_stencil()).double()
        ratio = (step(y1) - step(y2)).flatten(1).norm(dim=1) / (y1 - y2).flatten(1).norm(dim=1)
        assert (ratio <= 1 + 1e-12).all()
    # above the limit the highest-frequency mode grows
    checker = (-1.0) ** (torch.arange(8)[:, None] + torch.arange(8)[None, :]).double()
    y = checker.reshape(1, 1, 8, 8)
    too_big = heat_equation(30, 1.2 * limit).double()
    assert too_big(y).norm() > 10 * y.norm()
    assert heat_equation(30, 0.9 * limit).double()(y).norm() < y.norm()


def test_heat_equation_smooths_and_conserves_sign():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[..., 4, 4] = 1.0
    y = heat_equation(10, 0.2).double()(x)
    assert y.min() >= 0 and y.max() < 0.5 and y[..., 4, 4] == y.max()


def test_hyperbolic_is_reversible_and_conserves_energy():
    x = _images(batch=1, width=1, size=8, dtype=torch.float64)
    wave = wave_equation(200, 0.5).double()
    with torch.no_grad():
        states = wave.trajectory(x)
        pair = wave.forward_pair(x, x)
        back = wave.inverse_pair(*pair)
    assert (back[1] - x).abs().max() < 1e-9
    force = wave.blocks[0].force

    def energy(a, b):
        return (((b - a) / wave.h) ** 2).sum() + (b * force(a)).sum()

    energies = torch.stack([energy(a, b) for a, b in zip(states[:-1], states[1:])])
    assert (energies.max() - energies.min()) / energies.abs().mean() < 1e-9


def test_hyperbolic_memory_free_backward_matches():
    torch.manual_seed(0)
    net = HyperbolicCNN(4, 3, norm=None)
    x = _images().requires_grad_(True)
    net(x).sum().backward()
    reference = [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    x.grad = None
    net.memory_efficient = True
    net(x).sum().backward()
    for a, b in zip(reference, [x.grad] + [p.grad for p in net.parameters()]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="depth"):
        ParabolicCNN(4, 0)
    with pytest.raises(ValueError, match="T"):
        HyperbolicCNN(4, 2, T=0)
    with pytest.raises(ValueError, match="h"):
        heat_equation(3, -0.1)
    with pytest.raises(ValueError, match="norm"):
        ParabolicCNN(4, 2, norm="layer")
    with pytest.raises(ValueError, match="stencil"):
        ParabolicCNN(4, 2, stencil=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        ParabolicCNN(4, 2)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="channels"):
        HyperbolicCNN(4, 2)(torch.randn(2, 3, 5, 5))
