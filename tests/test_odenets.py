"""Tests of dedl.nn.odenets: Neural ODE, adjoint gradients, NFE counts, ANODE, second-order and Hamiltonian models, ODE-Net."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dedl.nn.classifier import ImageClassifier
from dedl.nn.odenets import (
    AugmentedNeuralODE,
    ConvVectorField,
    HamiltonianVectorField,
    MLPVectorField,
    NeuralODE,
    SecondOrderNeuralODE,
    odenet,
)


class Linear(nn.Module):
    """``f(t, y) = -y``, closed form ``y(t) = exp(-t) y0``."""

    def forward(self, t, y):
        return -y


def make_mlp_node(dim=3, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    return NeuralODE(MLPVectorField(dim, hidden=16, time_dependent=True), **kwargs).to(dtype)


# --- NeuralODE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.1}), ("euler", {"step_size": 0.1})])
def test_neural_ode_shapes(method, options):
    node = make_mlp_node(method=method, options=options)
    x = torch.randn(5, 3)
    assert node(x).shape == (5, 3)
    assert node.trajectory(x, torch.linspace(0, 1, 7)).shape == (7, 5, 3)
    assert NeuralODE(MLPVectorField(3), t=torch.linspace(0, 2, 4)).trajectory(x).shape == (4, 5, 3)


def test_neural_ode_matches_closed_form():
    node = NeuralODE(Linear(), t=(0.0, 2.0), rtol=1e-10, atol=1e-10).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(node(x), math.exp(-2.0) * x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    node = make_mlp_node(dtype=dtype)
    out = node(torch.randn(4, 3, dtype=dtype))
    assert out.dtype == dtype


def test_adjoint_gradients_equal_backprop_gradients():
    """d loss / d (theta, x0) through the solver's operations equals the adjoint method's (float64, tight tolerances)."""
    grads = {}
    x0 = torch.randn(6, 3, dtype=torch.float64)
    for adjoint in (False, True):
        node = make_mlp_node(dtype=torch.float64, rtol=1e-12, atol=1e-12, adjoint=adjoint)
        x = x0.clone().requires_grad_(True)
        loss = (node(x) ** 2).sum()
        loss.backward()
        grads[adjoint] = [p.grad.clone() for p in node.parameters()] + [x.grad.clone()]
    for g_backprop, g_adjoint in zip(grads[False], grads[True]):
        assert (g_adjoint - g_backprop).norm() <= 1e-6 * g_backprop.norm()


def test_nfe_fixed_step_is_exact():
    node = NeuralODE(Linear(), t=(0.0, 1.0), method="rk4", options={"step_size": 0.25})
    node(torch.randn(3, 2))
    assert node.nfe == 4 * 4  # four evaluations per RK4 step, four steps
    node = NeuralODE(Linear(), t=(0.0, 1.0), method="euler", options={"step_size": 0.125})
    node(torch.randn(3, 2))
    assert node.nfe == 8


def test_nfe_adaptive_counts_every_call():
    calls = []

    class Recording(nn.Module):
        def forward(self, t, y):
            calls.append(float(t))
            return -y

    stats: dict = {}
    node = NeuralODE(Recording(), t=(0.0, 3.0), method="dopri5", rtol=1e-6, atol=1e-8, options={"stats": stats})
    node(torch.randn(3, 2))
    assert node.nfe == len(calls) == stats["nfe"] > 6  # the solver's own count agrees
    # a tighter tolerance takes more evaluations
    loose = NeuralODE(Linear(), t=(0.0, 3.0), rtol=1e-3, atol=1e-3)
    loose(torch.randn(3, 2))
    assert loose.nfe < node.nfe


def test_nfe_backward_zero_without_adjoint_positive_with():
    for adjoint in (False, True):
        node = make_mlp_node(adjoint=adjoint)
        loss = node(torch.randn(4, 3)).sum()
        nfe = node.nfe
        assert node.nfe_backward == 0
        loss.backward()
        assert node.nfe == nfe
        assert (node.nfe_backward > 0) == adjoint


def test_gradients_flow_to_parameters_and_input():
    node = make_mlp_node()
    x = torch.randn(4, 3, requires_grad=True)
    node(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in node.parameters())


def test_bad_input_raises():
    with pytest.raises(TypeError):
        NeuralODE(lambda t, y: -y)  # not a module: parameters would not train
    with pytest.raises(ValueError):
        NeuralODE(Linear(), t=(0.0,))
    with pytest.raises(ValueError):
        NeuralODE(Linear(), t=(0.0, 1.0, 0.5))
    with pytest.raises(ValueError):
        NeuralODE(Linear(), rtol=0.0)
    node = make_mlp_node()
    with pytest.raises(ValueError):
        node(torch.randn(4, 5))  # wrong feature dimension
    with pytest.raises(TypeError):
        node(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        MLPVectorField(2, activation="sigmoidish")
    with pytest.raises(ValueError):
        MLPVectorField(0)


# --- Augmented Neural ODE ----------------------------------------------------------------------------


def test_anode_augmented_dims_start_at_zero_and_can_be_dropped():
    torch.manual_seed(0)
    anode = AugmentedNeuralODE(MLPVectorField(2 + 3, hidden=16), augment_dim=3, t=(0.0, 1.0))
    x = torch.randn(7, 2)
    z0 = anode.augment(x)
    assert z0.shape == (7, 5)
    assert torch.equal(z0[:, :2], x) and torch.equal(z0[:, 2:], torch.zeros(7, 3))
    traj = anode.trajectory(x, torch.linspace(0, 1, 4))
    assert traj.shape == (4, 7, 5)
    assert torch.equal(traj[0, :, 2:], torch.zeros(7, 3))  # the solve starts from [x, 0]
    assert traj[-1, :, 2:].abs().sum() > 0  # and uses the extra room
    assert anode(x).shape == (7, 5)  # the paper's classifier reads the whole augmented state
    anode.return_augmented = False
    out = anode(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, traj[-1, :, :2])


def test_anode_zero_augmentation_is_a_neural_ode():
    torch.manual_seed(0)
    func = MLPVectorField(2, hidden=8)
    x = torch.randn(5, 2)
    torch.testing.assert_close(AugmentedNeuralODE(func, augment_dim=0)(x), NeuralODE(func)(x))


def test_anode_on_feature_maps_augments_channels():
    anode = AugmentedNeuralODE(ConvVectorField(4 + 2), augment_dim=2, method="rk4", options={"step_size": 0.5})
    assert anode(torch.randn(2, 4, 8, 8)).shape == (2, 6, 8, 8)


def test_anode_bad_input():
    with pytest.raises(ValueError):
        AugmentedNeuralODE(MLPVectorField(2), augment_dim=-1)
    with pytest.raises(TypeError):
        AugmentedNeuralODE(MLPVectorField(2), augment_dim=1.5)
    anode = AugmentedNeuralODE(MLPVectorField(3), augment_dim=1)
    with pytest.raises(ValueError):
        anode(torch.randn(4))  # no batch dimension
    with pytest.raises(ValueError):
        anode(torch.randn(4, 3))  # 3 + 1 features, but the field expects 3


# --- Second-order and Hamiltonian ----------------------------------------------------------------------


class Spring(nn.Module):
    """``x'' = -x``: the harmonic oscillator."""

    def forward(self, t, z):
        x, _ = z.chunk(2, dim=1)
        return -x


class UnitVelocity(nn.Module):
    def forward(self, x):
        return torch.ones_like(x)


def test_second_order_harmonic_oscillator():
    t = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)
    at_rest = SecondOrderNeuralODE(Spring(), t=t, rtol=1e-10, atol=1e-10, return_velocity=True)
    z = at_rest.trajectory(torch.ones(1, 1, dtype=torch.float64))  # x(0) = 1, v(0) = 0
    assert z.shape == (9, 1, 2)
    torch.testing.assert_close(z[:, 0, 0], torch.cos(t), rtol=0, atol=1e-8)
    torch.testing.assert_close(z[:, 0, 1], -torch.sin(t), rtol=0, atol=1e-8)
    moving = SecondOrderNeuralODE(Spring(), t=t, rtol=1e-10, atol=1e-10, velocity_init=UnitVelocity())
    x = moving.trajectory(torch.zeros(1, 1, dtype=torch.float64))  # x(0) = 0, v(0) = 1
    assert x.shape == (9, 1, 1)
    torch.testing.assert_close(x[:, 0, 0], torch.sin(t), rtol=0, atol=1e-8)


def test_second_order_shapes_and_learned_velocity():
    torch.manual_seed(0)
    model = SecondOrderNeuralODE(MLPVectorField(2 * 3, hidden=16, out_dim=3), velocity_init=nn.Linear(3, 3))
    x = torch.randn(5, 3)
    assert model(x).shape == (5, 3)
    model.return_velocity = True
    assert model(x).shape == (5, 6)
    model(x).sum().backward()
    assert model.velocity_init.weight.grad is not None


def test_second_order_bad_input():
    with pytest.raises(ValueError):
        SecondOrderNeuralODE(MLPVectorField(4, out_dim=3))(torch.randn(2, 2))  # acceleration of the wrong size
    with pytest.raises(ValueError):
        SecondOrderNeuralODE(Spring(), velocity_init=lambda x: x[:, :1])(torch.randn(2, 2))


class Quadratic(nn.Module):
    def forward(self, z):
        return 0.5 * (z**2).sum(1)


def test_hamiltonian_field_is_the_oscillator_and_conserves_energy():
    field = HamiltonianVectorField(Quadratic())
    z = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(field(torch.tensor(0.0), z), torch.tensor([[0.0, -1.0]]))
    torch.manual_seed(0)
    learned = HamiltonianVectorField(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))).double()
    node = NeuralODE(learned, t=(0.0, 3.0), rtol=1e-10, atol=1e-10)
    z0 = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        z1 = node(z0)
        torch.testing.assert_close(learned.energy(z1), learned.energy(z0), rtol=1e-7, atol=1e-8)
    for adjoint in (False, True):  # parameters of H get gradients, also through the adjoint
        node.adjoint = adjoint
        learned.zero_grad()
        node(z0).pow(2).sum().backward()
        weights = [p for name, p in learned.named_parameters() if name != "hamiltonian.2.bias"]  # a constant in H
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    with pytest.raises(ValueError):
        field(torch.tensor(0.0), torch.randn(2, 3))


# --- ODE-Net ---------------------------------------------------------------------------------------


def test_odenet_on_digit_shaped_input():
    torch.manual_seed(0)
    model = odenet(in_channels=1, width=8, num_classes=10, method="rk4", options={"step_size": 0.5})
    assert isinstance(model, ImageClassifier) and isinstance(model.body, NeuralODE)
    x = torch.randn(4, 1, 8, 8)
    logits = model(x)
    assert logits.shape == (4, 10)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.body.nfe == 2 * 4
    with pytest.raises(ValueError):
        model(torch.randn(4, 8, 8))
    with pytest.raises(ValueError):
        ConvVectorField(8)(torch.tensor(0.0), torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError):
        ConvVectorField(8, norm="batch")  # batch statistics would make f depend on the rest of the batch


def test_conv_vector_field_without_normalisation_and_pooled_features_see_the_block():
    field = ConvVectorField(4, norm=None, time_dependent=False)
    assert not any(isinstance(m, nn.GroupNorm) for m in field.modules())
    assert field(torch.tensor(0.0), torch.randn(2, 4, 8, 8)).shape == (2, 4, 8, 8)
    # with group normalisation at small width, each channel's spatial mean must still depend on the input
    torch.manual_seed(0)
    field = ConvVectorField(8)
    pooled = field(torch.tensor(0.0), torch.randn(5, 8, 8, 8)).mean(dim=(2, 3))
    assert pooled.std(dim=0).max() > 1e-3


def test_odenet_adaptive_eval_and_float64():
    model = odenet(in_channels=1, width=4, num_classes=3).double().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64
    assert model.body.nfe >= 6
