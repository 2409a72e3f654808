"""dedl.regularizers: closed forms on a linear field, unbiased estimators, solver agreement, gradients."""

import math

import pytest
import torch
from torch import nn

from dedl.regularizers import (
    NOISES,
    REGULARIZERS,
    exact_jacobian_frobenius,
    exact_trace,
    hutchinson_jacobian_frobenius,
    hutchinson_trace,
    kinetic_energy,
    regularized_odeint,
    sample_probe,
    steer_end_time,
    total_derivative,
)
from dedl.solvers import odeint

F64 = torch.float64
A = torch.tensor([[-0.5, 1.0, 0.2], [-1.0, -0.2, 0.0], [0.3, 0.1, -0.4]], dtype=F64)
T = 1.5


class Linear(nn.Module):
    """f(t, z) = A z with A a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


class MLP(nn.Module):
    """A smooth, time-dependent field whose samples do not interact."""

    def __init__(self, dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.double()

    def forward(self, t, z):
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], dim=1))


def z0(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(1))


def integral_of_quadratic_form(Q: torch.Tensor, t1: float) -> torch.Tensor:
    """int_0^t1 exp(A^T s) Q exp(A s) ds, exactly, by Van Loan's block matrix exponential."""
    n = A.shape[0]
    block = torch.zeros(2 * n, 2 * n, dtype=F64)
    block[:n, :n], block[:n, n:], block[n:, n:] = -A.T, Q, A
    E = torch.linalg.matrix_exp(block * t1)
    return E[n:, n:].T @ E[:n, n:]


def test_kinetic_penalty_matches_the_matrix_exponential():
    y0 = z0()
    _, pen = regularized_odeint(Linear(), y0, [0.0, T], "kinetic", rtol=1e-10, atol=1e-12)
    M = integral_of_quadratic_form(A.T @ A, T)
    exact = torch.einsum("bi,ij,bj->b", y0, M, y0)
    torch.testing.assert_close(pen["kinetic"], exact, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3])
def test_taylor_penalty_matches_the_matrix_exponential(order):
    y0 = z0()
    name = f"taylor{order}"
    _, pen = regularized_odeint(Linear(), y0, [0.0, T], name, rtol=1e-10, atol=1e-12)
    Ak = torch.linalg.matrix_power(A, order)
    exact = torch.einsum("bi,ij,bj->b", y0, integral_of_quadratic_form(Ak.T @ Ak, T), y0)
    torch.testing.assert_close(pen[name], exact, rtol=1e-8, atol=1e-10)


def test_exact_jacobian_penalty_is_T_times_the_frobenius_norm():
    _, pen = regularized_odeint(Linear(), z0(), [0.0, T], "jacobian_exact", method="rk4")
    torch.testing.assert_close(pen["jacobian_exact"], torch.full((4,), T * A.square().sum().item(), dtype=F64))


@pytest.mark.parametrize("noise", NOISES)
def test_hutchinson_estimators_are_unbiased(noise):
    f, n = MLP(), 4000
    z = z0(2).requires_grad_(True)
    t = torch.tensor(0.3, dtype=F64)
    dz = f(t, z)
    exact_tr, exact_fro = exact_trace(dz, z), exact_jacobian_frobenius(dz, z)
    gen = torch.Generator().manual_seed(0)
    draws = [sample_probe(z.expand(n, 2, 3), noise, gen)[k] for k in range(n)]
    tr = torch.stack([hutchinson_trace(dz, z, p) for p in draws]).detach()
    fro = torch.stack([hutchinson_jacobian_frobenius(dz, z, p) for p in draws]).detach()
    for estimate, exact in ((tr, exact_tr), (fro, exact_fro)):
        standard_error = estimate.std(dim=0) / math.sqrt(n)
        assert ((estimate.mean(dim=0) - exact.detach()).abs() < 4 * standard_error).all()


def test_exact_trace_and_frobenius_against_the_jacobian():
    f, z, t = MLP(), z0(3).requires_grad_(True), torch.tensor(0.7, dtype=F64)
    J = torch.stack([torch.autograd.functional.jacobian(lambda x: f(t, x[None])[0], zi) for zi in z])
    dz = f(t, z)
    torch.testing.assert_close(exact_trace(dz, z), J.diagonal(dim1=1, dim2=2).sum(-1))
    torch.testing.assert_close(exact_jacobian_frobenius(dz, z), J.square().sum((1, 2)))


def test_probes_have_identity_covariance():
    like = torch.zeros(20000, 3, dtype=F64)
    for noise in NOISES:
        e = sample_probe(like, noise, torch.Generator().manual_seed(0))
        torch.testing.assert_close(e.T @ e / len(e), torch.eye(3, dtype=F64), atol=0.05, rtol=0)
    assert set(sample_probe(like, "rademacher").unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="noise"):
        sample_probe(like, "uniform")


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_total_derivative_of_a_linear_field_is_a_power_of_A(order):
    z = z0()
    got = total_derivative(Linear(), torch.tensor(0.0, dtype=F64), z, order)
    torch.testing.assert_close(got, z @ torch.linalg.matrix_power(A, order).T)


def test_total_derivative_of_a_time_dependent_field_matches_finite_differences():
    f, z, h = MLP(), z0(2), 1e-3
    with torch.no_grad():  # the solution through z at t = 0.5, a step h forward and backward
        ahead, behind = (odeint(f, z, torch.tensor([0.5, 0.5 + s], dtype=F64), rtol=1e-13, atol=1e-14)[-1]
                         for s in (h, -h))
    second = total_derivative(f, torch.tensor(0.5, dtype=F64), z, 2)
    torch.testing.assert_close(second, (ahead - 2 * z + behind) / h**2, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("order", [0, 5, 2.0, True])
def test_total_derivative_rejects_bad_orders(order):
    with pytest.raises(ValueError, match="order"):
        total_derivative(Linear(), torch.tensor(0.0, dtype=F64), z0(), order)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "adams_bashforth4", "bosh3", "dopri5"])
@pytest.mark.parametrize("batch", [1, 5])
def test_ys_are_the_odeint_solution(method, batch):
    f, y0, t = MLP(), z0(batch), torch.linspace(0, 1, 4, dtype=F64)
    kwargs = {"method": method, "rtol": 1e-9, "atol": 1e-11, "options": None}
    if method not in ("bosh3", "dopri5"):
        kwargs["options"] = {"step_size": 0.05}
    ys, pen = regularized_odeint(f, y0, t, **kwargs)
    tol = 1e-7 if method in ("bosh3", "dopri5") else 1e-12
    torch.testing.assert_close(ys, odeint(f, y0, t, **kwargs), atol=tol, rtol=tol)
    assert set(pen) == {"kinetic", "jacobian"}
    assert all(p.shape == (batch,) and (p > 0).all() for p in pen.values())


def test_gradients_agree_between_backprop_and_adjoint():
    f, y0, t = MLP(), z0(3).requires_grad_(True), torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    regs = ("kinetic", "jacobian", "taylor2")

    def grads(adjoint):
        ys, pen = regularized_odeint(
            f, y0, t, regs, adjoint=adjoint, generator=torch.Generator().manual_seed(3), rtol=1e-10, atol=1e-12
        )
        loss = ys[-1].square().sum() + sum(p.sum() for p in pen.values())
        return torch.autograd.grad(loss, (y0, *f.parameters()))

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_penalty_gradients_match_finite_differences():
    f, y0 = Linear(), z0(2)
    _, pen = regularized_odeint(f, y0, [0.0, T], ("kinetic", "jacobian_exact"), rtol=1e-11, atol=1e-13)
    (grad,) = torch.autograd.grad(sum(p.sum() for p in pen.values()), f.A)
    eps, i, j = 1e-6, 0, 1
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            f.A[i, j] += sign * eps
            _, p = regularized_odeint(f, y0, [0.0, T], ("kinetic", "jacobian_exact"), rtol=1e-11, atol=1e-13)
            f.A[i, j] -= sign * eps
        values.append(sum(x.sum() for x in p.values()))
    assert abs((values[0] - values[1]) / (2 * eps) - grad[i, j]) < 1e-5 * abs(grad[i, j])


def test_custom_rate_backward_time_and_no_grad():
    def speed(t, z, dz):
        return dz.norm(dim=1)

    f, y0 = MLP(), z0(3)
    _, forward = regularized_odeint(f, y0, [0.0, 1.0], [speed, "kinetic"])
    ys, backward = regularized_odeint(f, y0, [1.0, 0.0], [speed])
    assert set(forward) == {"speed", "kinetic"} and (backward["speed"] > 0).all()
    with torch.no_grad():
        ys, pen = regularized_odeint(f, y0, [0.0, 1.0], "jacobian")
    assert not ys.requires_grad and not pen["jacobian"].requires_grad
    torch.testing.assert_close(kinetic_energy(torch.ones(2, 3, 4)), torch.full((2,), 12.0))


def test_bad_arguments_get_clear_errors():
    f, y0 = MLP(), z0()
    with pytest.raises(ValueError, match="batch"):
        regularized_odeint(f, y0[0], [0.0, 1.0])
    with pytest.raises(TypeError, match="floating"):
        regularized_odeint(f, y0.long(), [0.0, 1.0])
    with pytest.raises(ValueError, match="unknown regularizer"):
        regularized_odeint(f, y0, [0.0, 1.0], "energy")
    with pytest.raises(TypeError, match="regularizer"):
        regularized_odeint(f, y0, [0.0, 1.0], [3])
    with pytest.raises(ValueError, match="distinct"):
        regularized_odeint(f, y0, [0.0, 1.0], ["kinetic", "kinetic"])
    with pytest.raises(ValueError, match="empty"):
        regularized_odeint(f, y0, [0.0, 1.0], [])
    with pytest.raises(ValueError, match="noise"):
        regularized_odeint(f, y0, [0.0, 1.0], noise="normal")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        regularized_odeint(f, y0, [0.0, 1.0], lambda t, z, dz: dz)
    assert set(REGULARIZERS) >= {"kinetic", "jacobian", "jacobian_exact", "taylor2", "taylor3"}


def test_steer_end_time_stays_in_range_and_rejects_bad_b():
    gen = torch.Generator().manual_seed(0)
    draws = [steer_end_time(1.0, 0.5, generator=gen) for _ in range(2000)]
    assert min(draws) >= 0.5 and max(draws) <= 1.5
    assert min(draws) < 0.55 and max(draws) > 1.45  # it covers the interval
    assert abs(sum(draws) / len(draws) - 1.0) < 0.02
    assert steer_end_time(2.0, 0.0, t0=1.0) == 2.0
    again = torch.Generator().manual_seed(0)
    assert steer_end_time(1.0, 0.5, generator=again) == draws[0]
    for b in (-0.1, 1.0, 2.0, float("nan")):
        with pytest.raises(ValueError):
            steer_end_time(1.0, b)
    with pytest.raises(ValueError, match="after t0"):
        steer_end_time(0.0, 0.1, t0=1.0)


def test_neural_ode_penalties_in_training_only():
    from dedl.nn.odenets import AugmentedNeuralODE, MLPVectorField, NeuralODE, odenet

    torch.manual_seed(0)
    x = torch.randn(5, 2)
    for adjoint in (False, True):
        block = NeuralODE(MLPVectorField(2), regularizers=("kinetic", "jacobian"), adjoint=adjoint)
        out = block(x)
        assert set(block.penalties) == {"kinetic", "jacobian"}
        assert all(p.shape == (5,) for p in block.penalties.values())
        (out.square().sum() + block.penalties["kinetic"].mean()).backward()
        assert all(p.grad is not None for p in block.parameters())
        block.eval()
        torch.testing.assert_close(block(x), out.detach(), atol=1e-3, rtol=1e-3)
        assert block.penalties == {}
    augmented = AugmentedNeuralODE(MLPVectorField(3), augment_dim=1, regularizers="taylor2")
    augmented(x)
    assert set(augmented.penalties) == {"taylor2"}
    model = odenet(1, 4, 3, regularizers="kinetic")
    model(torch.randn(2, 1, 6, 6))
    assert model.body.penalties["kinetic"].shape == (2,)
    with pytest.raises(ValueError, match="unknown regularizer"):
        NeuralODE(MLPVectorField(2), regularizers="energy")
    with pytest.raises(ValueError, match="noise"):
        NeuralODE(MLPVectorField(2), regularizers="jacobian", noise="normal")


def test_neural_ode_steer_draws_the_end_time_in_training():
    from dedl.nn.odenets import MLPVectorField, NeuralODE

    torch.manual_seed(0)
    x = torch.randn(4, 2)
    block = NeuralODE(MLPVectorField(2), t=(0.0, 1.0), steer=0.5)
    train_outputs = [block(x) for _ in range(3)]
    assert not torch.allclose(train_outputs[0], train_outputs[1])
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    plain = NeuralODE(MLPVectorField(2))
    plain.load_state_dict(block.state_dict())
    torch.testing.assert_close(block(x), plain(x))
    with pytest.raises(ValueError, match="b must satisfy"):
        NeuralODE(MLPVectorField(2), steer=1.0)
    with pytest.raises(ValueError, match="t = \\(t0, t1\\)"):
        NeuralODE(MLPVectorField(2), t=(0.0, 0.5, 1.0), steer=0.1)
