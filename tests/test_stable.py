"""Tests of dedl.nn.stable: antisymmetric, Hamiltonian, leapfrog and reversible networks, AntisymmetricRNN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dedl.nn.classifier import ImageClassifier
from dedl.nn.stable import (
    AdditiveCoupling,
    AntisymmetricLayer,
    AntisymmetricResNet,
    AntisymmetricRNN,
    HamiltonianNet,
    LeapfrogNet,
    Operator,
    RevNet,
    reversible_sequence,
)
from dedl.utils import parameter_count

BODIES = [AntisymmetricResNet, HamiltonianNet, LeapfrogNet, RevNet]
REVERSIBLE = [HamiltonianNet, LeapfrogNet, RevNet]


def _input(kind: str, width: int = 6, dtype=torch.float32, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (batch, width, 5, 4) if kind == "conv" else (batch, width)
    return torch.randn(shape, generator=g, dtype=dtype)


def _expected_count(cls, kind: str, width: int, depth: int, k: int = 3) -> int:
    k = k if kind == "conv" else 1
    c = width // 2
    if cls is AntisymmetricResNet:
        return depth * (width**2 * k**2 + width)
    if cls is HamiltonianNet:
        return depth * 2 * (c * c * k**2 + c)
    if cls is LeapfrogNet:
        return depth * (width * width * k**2 + width)
    return depth * 2 * (2 * c * c * k**2 + c + c)  # RevNet


@pytest.mark.parametrize("cls", BODIES)
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_counts_and_gradients(cls, kind, dtype):
    torch.manual_seed(0)
    net = cls(6, 3, T=1.0, kind=kind).to(dtype)
    x = _input(kind, dtype=dtype).requires_grad_(True)
    y = net(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert parameter_count(net) == _expected_count(cls, kind, 6, 3)
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


def test_hidden_width_changes_the_count():
    assert parameter_count(HamiltonianNet(8, 2, hidden=6)) == 2 * 2 * (6 * 4 * 9 + 6)
    assert parameter_count(LeapfrogNet(8, 2, hidden=5)) == 2 * (5 * 8 * 9 + 5)
    assert parameter_count(RevNet(8, 2, hidden=3)) == 2 * 2 * (2 * 3 * 4 * 9 + 3 + 4)


@pytest.mark.parametrize("cls", BODIES)
def test_bodies_fit_the_image_classifier(cls):
    torch.manual_seed(0)
    model = ImageClassifier(cls(8, 2), in_channels=1, width=8, num_classes=10)
    logits = model(torch.randn(5, 1, 8, 8))
    assert logits.shape == (5, 10)
    logits.sum().backward()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("cls", [RevNet, HamiltonianNet])
def test_inverse_reconstructs_the_input(cls, dtype, tol):
    torch.manual_seed(0)
    net = cls(6, 8, kind="conv").to(dtype)
    x = _input("conv", dtype=dtype)
    with torch.no_grad():
        assert (net.inverse(net(x)) - x).abs().max() < tol


@pytest.mark.parametrize("cls", REVERSIBLE)
@pytest.mark.parametrize("kind, depth", [("conv", 5), ("linear", 5), ("linear", 1)])
def test_memory_free_backward_matches_autograd(cls, kind, depth):
    torch.manual_seed(0)
    net = cls(6, depth, kind=kind, memory_efficient=False)
    x = _input(kind).requires_grad_(True)
    net(x).sin().sum().backward()
    reference = [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    x.grad = None
    net.memory_efficient = True
    net(x).sin().sum().backward()
    recomputed = [x.grad] + [p.grad for p in net.parameters()]
    for a, b in zip(reference, recomputed):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_memory_free_forward_keeps_no_activations():
    """Bytes saved for backward by the forward pass: constant in depth when memory-free, linear otherwise."""

    def saved_bytes(depth: int, memory_efficient: bool) -> int:
        torch.manual_seed(0)
        net = RevNet(4, depth, kind="linear", memory_efficient=memory_efficient)
        param_ptrs = {p.data_ptr() for p in net.parameters()}
        total = 0

        def pack(t):
            nonlocal total
            if t.data_ptr() not in param_ptrs:
                total += t.numel() * t.element_size()
            return t

        x = torch.randn(64, 4, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x).sum()
        return total

    assert saved_bytes(2, True) == saved_bytes(16, True)
    assert saved_bytes(16, False) > 4 * saved_bytes(2, False)


def test_memory_free_backward_leaves_batchnorm_running_stats_as_one_forward():
    torch.manual_seed(0)
    residual = lambda c: nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh())
    nets = [RevNet(4, 3, residual=residual, memory_efficient=m) for m in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = _input("conv", width=4, batch=8)
    for net in nets:
        net.train()
        net(x).sum().backward()
    for a, b in zip(nets[0].buffers(), nets[1].buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_antisymmetric_linearisation_has_imaginary_eigenvalues():
    torch.manual_seed(0)
    for kind, shape in [("linear", (1, 6)), ("conv", (1, 3, 4, 4))]:
        layer = AntisymmetricLayer(shape[1], h=0.1, gamma=0.0, kind=kind).double()
        with torch.no_grad():
            layer.bias.normal_()
        y = torch.randn(shape, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(layer.vector_field, y).reshape(y.numel(), y.numel())
        eig = torch.linalg.eigvals(jac)
        assert eig.real.abs().max() < 1e-10
        assert eig.imag.abs().max() > 1e-3  # not trivially zero


def test_antisymmetric_damping_moves_eigenvalues_left():
    torch.manual_seed(0)
    layer = AntisymmetricLayer(6, h=0.1, gamma=0.5, kind="linear").double()
    y = torch.randn(1, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(layer.vector_field, y).reshape(6, 6)
    real = torch.linalg.eigvals(jac).real
    assert (real < 1e-12).all() and (real > -0.5 - 1e-12).all()


def test_operator_adjoint_and_norm():
    torch.manual_seed(0)
    for kind, shape in [("conv", (2, 3, 5, 6)), ("linear", (2, 3))]:
        op = Operator(3, 4, kind=kind).double()
        y = torch.randn(shape, dtype=torch.float64)
        z = torch.randn_like(op(y))
        assert torch.allclose((op(y) * z).sum(), (y * op.adjoint(z)).sum())
    op = Operator(3, 4, kind="linear").double()
    assert op.norm(iterations=500) == pytest.approx(torch.linalg.matrix_norm(op.weight, 2).item(), rel=1e-6)


@pytest.mark.parametrize("cls", [HamiltonianNet, LeapfrogNet])
def test_time_reversibility(cls):
    torch.manual_seed(0)
    net = cls(6, 40, T=4.0, kind="linear").double()
    x = _input("linear", dtype=torch.float64)
    with torch.no_grad():
        pair = net.forward_pair(*net.split(x))
        back = net.inverse_pair(*pair)
    assert (net.merge(*back) - x).abs().max() < 1e-10
    assert (back[0] - net.split(x)[0]).abs().max() < 1e-10


def test_trajectory_ends_at_output():
    torch.manual_seed(0)
    for net in [AntisymmetricResNet(4, 3, kind="linear"), HamiltonianNet(4, 3, kind="linear")]:
        x = _input("linear", width=4)
        states = net.trajectory(x)
        assert isinstance(states, torch.Tensor) and states.shape == (4, *x.shape)
        assert torch.allclose(states[-1], net(x)) and torch.equal(states[0], x)


def test_additive_coupling_is_a_revnet_block():
    torch.manual_seed(0)
    f, g = nn.Linear(3, 3), nn.Linear(3, 3)
    block = AdditiveCoupling(f, g, h=0.5)
    x1, x2 = torch.randn(2, 3), torch.randn(2, 3)
    y1, y2 = block(x1, x2)
    assert torch.allclose(y1, x1 + 0.5 * f(x2)) and torch.allclose(y2, x2 + 0.5 * g(y1))
    z1, z2 = reversible_sequence([block, block], x1, x2, memory_efficient=True)
    assert torch.allclose(z1, block(*block(x1, x2))[0])


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_antisymmetric_rnn(gated, dtype):
    torch.manual_seed(0)
    rnn = AntisymmetricRNN(3, 5, eps=0.1, gamma=0.01, gated=gated).to(dtype)
    assert parameter_count(rnn) == 5 * 5 + (2 if gated else 1) * (3 * 5 + 5)
    x = torch.randn(2, 7, 3, dtype=dtype)
    out, h = rnn(x)
    assert out.shape == (2, 7, 5) and h.shape == (2, 5) and out.dtype == dtype
    assert torch.equal(out[:, -1], h)
    h.sum().backward()
    assert all(p.grad is not None for p in rnn.parameters())
    m = rnn.recurrent_matrix()
    assert torch.allclose(m + m.T, -0.02 * torch.eye(5, dtype=dtype))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="depth"):
        HamiltonianNet(4, 0)
    with pytest.raises(ValueError, match="T"):
        LeapfrogNet(4, 2, T=0.0)
    with pytest.raises(ValueError, match="T"):
        AntisymmetricResNet(4, 2, T=-1.0)
    with pytest.raises(ValueError, match="even"):
        RevNet(5, 2)
    with pytest.raises(ValueError, match="even"):
        HamiltonianNet(3, 2)
    with pytest.raises(ValueError, match="kind"):
        RevNet(4, 2, kind="dense")
    with pytest.raises(ValueError, match="odd"):
        AntisymmetricResNet(4, 2, kernel_size=2)
    with pytest.raises(ValueError, match="gamma"):
        AntisymmetricResNet(4, 2, gamma=-0.1)
    with pytest.raises(TypeError):
        RevNet(4, 2.5)
    with pytest.raises(ValueError, match="4-D"):
        RevNet(4, 2)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="channels"):
        HamiltonianNet(4, 2)(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match="2-D"):
        AntisymmetricResNet(4, 2, kind="linear")(torch.randn(2, 4, 3, 3))
    with pytest.raises(NotImplementedError, match="inverse_pair"):
        LeapfrogNet(4, 2).inverse(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="input of shape"):
        AntisymmetricRNN(3, 4)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="eps"):
        AntisymmetricRNN(3, 4, eps=0)
    with pytest.raises(ValueError, match="at least one block"):
        reversible_sequence([], torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="input_shape"):
        Operator(2, 2).norm()


def euler_amplification(matrix: torch.Tensor, h: float) -> float:
    """max |1 + h λ| over the eigenvalues λ of the linearisation (σ' = 1) of a forward Euler step."""
    return (1 + h * torch.linalg.eigvals(matrix)).abs().max().item()


def least_stable_damping(h: float, omega: float) -> float:
    """The smallest γ with h (γ² + ω²) ≤ 2γ (about h ω² / 2 when h ω is small)."""
    return (1 - math.sqrt(1 - (h * omega) ** 2)) / h


def test_antisymmetric_euler_step_is_stable_only_when_damping_beats_h_omega_squared():
    """The docstrings' claim: γ > 0 alone does not make forward Euler stable; γ ≥ h ω_max² / 2 does."""
    torch.manual_seed(0)
    layer = AntisymmetricLayer(16, h=0.1, kind="linear").double()  # default γ = 0.01
    A = layer.antisymmetric(torch.eye(16, dtype=torch.float64)).T
    assert euler_amplification(A, layer.h) > 1  # the defaults amplify
    omega = torch.linalg.eigvals(A).imag.abs().max().item()
    assert least_stable_damping(layer.h, omega) == pytest.approx(layer.h * omega**2 / 2, rel=0.05)
    layer.gamma = least_stable_damping(layer.h, omega) * 1.01
    A = layer.antisymmetric(torch.eye(16, dtype=torch.float64)).T
    assert euler_amplification(A, layer.h) <= 1


def test_antisymmetric_rnn_default_step_amplifies_and_enough_damping_fixes_it():
    torch.manual_seed(0)
    rnn = AntisymmetricRNN(3, 16).double()
    assert euler_amplification(rnn.recurrent_matrix().detach(), rnn.eps) > 1
    omega = torch.linalg.eigvals(rnn.recurrent_matrix().detach()).imag.abs().max().item()
    rnn.gamma = least_stable_damping(rnn.eps, omega) * 1.01
    assert euler_amplification(rnn.recurrent_matrix().detach(), rnn.eps) <= 1
