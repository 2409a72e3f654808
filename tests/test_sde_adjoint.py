"""Tests of dedl.solvers.sdeint_adjoint: gradients against backpropagation through sdeint on the same Brownian path
(converging with dt for the continuous adjoint, equal to floating point for reversible Heun), against
torchsde.sdeint_adjoint, memory flat in the number of steps, and the errors that bad input gets. float64 throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchsde
from torch import nn

from dedl.solvers import BrownianPath, sdeint, sdeint_adjoint
from dedl.utils import peak_allocated_bytes

DTYPE = torch.float64
BATCH, D, M_ADDITIVE = 4, 2, 3
TS = [0.0, 0.5, 1.0]


class SmallSDE(nn.Module):
    """A 2-D SDE with an MLP drift, a prior drift for logqp and state-dependent noise of each type."""

    def __init__(self, noise_type: str = "diagonal", sde_type: str = "stratonovich"):
        super().__init__()
        self.noise_type, self.sde_type = noise_type, sde_type
        torch.manual_seed(0)
        self.lin = nn.Linear(D, D).double()
        self.sigma = nn.Parameter(torch.tensor([0.3, 0.5], dtype=DTYPE))
        self.mix = nn.Parameter(torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]], dtype=DTYPE))

    def f(self, t, y):
        return torch.tanh(self.lin(y)) - 0.2 * y + 0.1 * t

    def h(self, t, y):
        return -y

    def g(self, t, y):
        diag = self.sigma * (1.5 + torch.cos(y))
        if self.noise_type == "diagonal":
            return diag
        if self.noise_type == "scalar":
            return diag.unsqueeze(-1)
        if self.noise_type == "additive":
            return (self.sigma.unsqueeze(-1) * self.mix * (1 + t)).expand(y.shape[0], D, M_ADDITIVE)
        return self.sigma.unsqueeze(-1) * self.mix + 0.1 * torch.tanh(y).unsqueeze(-1)  # general


def m_of(noise_type: str) -> int:
    return {"diagonal": D, "scalar": 1}.get(noise_type, M_ADDITIVE)


def y0_of() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, BATCH * D, dtype=DTYPE).reshape(BATCH, D).requires_grad_(True)


def gradients(solve, sde, y0, bm, method, dt, **kwargs) -> list[torch.Tensor]:
    """Gradients wrt y0 and the parameters of a loss of every output (a jump of the adjoint at each time)."""
    out = solve(sde, y0, TS, bm=bm, method=method, dt=dt, **kwargs)
    ys, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    loss = ys.square().sum() + ys[1].sum()
    if rest and kwargs.get("logqp"):
        loss = loss + (rest[0] * torch.tensor([[1.0], [2.0]], dtype=DTYPE)).sum()
    return list(torch.autograd.grad(loss, (y0, *sde.parameters()), allow_unused=True, materialize_grads=True))


def max_relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    scale = max(float(x.abs().max()) for x in a)
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) / scale


CONTINUOUS = [
    ("diagonal", "stratonovich", "midpoint", "midpoint"),
    ("diagonal", "stratonovich", "heun", "heun"),
    ("scalar", "stratonovich", "midpoint", "midpoint"),
    ("additive", "stratonovich", "midpoint", "heun"),
    ("diagonal", "ito", "milstein", "midpoint"),
    ("scalar", "ito", "milstein", "midpoint"),
    ("additive", "ito", "euler", "midpoint"),
]


@pytest.mark.parametrize("noise_type, sde_type, method, adjoint_method", CONTINUOUS)
def test_continuous_adjoint_converges_to_backprop(noise_type, sde_type, method, adjoint_method):
    sde, y0 = SmallSDE(noise_type, sde_type), y0_of()
    bm = BrownianPath(0.0, 1.0, (BATCH, m_of(noise_type)), levels=8, seed=1, dtype=DTYPE)
    dts = [2.0**-3, 2.0**-5, 2.0**-7]
    errors = [
        max_relative_error(
            gradients(sdeint, sde, y0, bm, method, dt),
            gradients(sdeint_adjoint, sde, y0, bm, method, dt, adjoint_method=adjoint_method),
        )
        for dt in dts
    ]
    assert errors[0] > errors[1] > errors[2], errors
    order = float(np.polyfit(np.log(dts), np.log(errors), 1)[0])
    assert order > 0.7, (order, errors)  # the gradient error shrinks with dt (first order here)
    assert errors[-1] < 0.03, errors


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar", "additive", "general"])
def test_reversible_heun_is_exact(noise_type):
    sde, y0 = SmallSDE(noise_type), y0_of()
    bm = BrownianPath(0.0, 1.0, (BATCH, m_of(noise_type)), levels=7, seed=2, dtype=DTYPE)
    for dt in (2.0**-3, 2.0**-7, 0.3):  # 0.3: steps clipped at the output times, off the path's grid
        backprop = gradients(sdeint, sde, y0, bm, "reversible_heun", dt)
        adjoint = gradients(sdeint_adjoint, sde, y0, bm, "reversible_heun", dt)
        assert max_relative_error(backprop, adjoint) < 1e-12


def test_reversible_heun_extra_state_and_logqp_are_exact():
    sde, y0 = SmallSDE(), y0_of()
    bm = BrownianPath(0.0, 1.0, (BATCH, D), levels=6, seed=3, dtype=DTYPE)
    backprop = gradients(sdeint, sde, y0, bm, "reversible_heun", 2.0**-5, logqp=True)
    adjoint = gradients(sdeint_adjoint, sde, y0, bm, "reversible_heun", 2.0**-5, logqp=True)
    assert max_relative_error(backprop, adjoint) < 1e-12
    # gradients flow into extra_solver_state and out of the extra outputs
    grads = []
    for solve in (sdeint, sdeint_adjoint):
        f0, g0, z0 = (x.detach().requires_grad_(True) for x in (sde.f(0.0, y0), sde.g(0.0, y0), y0 + 0.1))
        ys, (f1, g1, z1) = solve(
            sde, y0, TS, bm, "reversible_heun", dt=2.0**-5, extra=True, extra_solver_state=(f0, g0, z0)
        )
        loss = ys.square().sum() + f1.sum() + (g1 * z1).sum()
        grads.append(torch.autograd.grad(loss, (y0, f0, g0, z0, *sde.parameters()), materialize_grads=True))
    assert max_relative_error(*grads) < 1e-12


def test_continuous_adjoint_logqp():
    sde, y0 = SmallSDE(), y0_of()
    bm = BrownianPath(0.0, 1.0, (BATCH, D), levels=8, seed=4, dtype=DTYPE)
    errors = [
        max_relative_error(
            gradients(sdeint, sde, y0, bm, "midpoint", dt, logqp=True),
            gradients(sdeint_adjoint, sde, y0, bm, "midpoint", dt, logqp=True),
        )
        for dt in (2.0**-3, 2.0**-6)
    ]
    assert errors[1] < errors[0] / 4 and errors[1] < 0.01, errors
    ys, kl = sdeint_adjoint(sde, y0, TS, bm, "midpoint", dt=2.0**-6, logqp=True)
    ys_ref, kl_ref = sdeint(sde, y0, TS, bm, "midpoint", dt=2.0**-6, logqp=True)
    torch.testing.assert_close(ys, ys_ref)
    torch.testing.assert_close(kl, kl_ref)


def interval(noise_type: str, entropy: int = 5) -> torchsde.BrownianInterval:
    return torchsde.BrownianInterval(
        0.0, 1.0, size=(BATCH, m_of(noise_type)), dtype=DTYPE, entropy=entropy, dt=2.0**-5
    )


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_torchsde_brownian_interval_and_torchsde_gradients(noise_type):
    sde, y0 = SmallSDE(noise_type), y0_of()
    for method, adjoint_method in (("midpoint", "midpoint"), ("reversible_heun", "adjoint_reversible_heun")):
        backprop = gradients(sdeint, sde, y0, interval(noise_type), method, 2.0**-5)
        ours = gradients(sdeint_adjoint, sde, y0, interval(noise_type), method, 2.0**-5, adjoint_method=adjoint_method)
        theirs = gradients(
            torchsde.sdeint_adjoint, sde, y0, interval(noise_type), method, 2.0**-5, adjoint_method=adjoint_method
        )
        assert max_relative_error(theirs, ours) < 1e-12  # the same backward solve as torchsde's
        handed_over = gradients(
            sdeint_adjoint, sde, y0, interval(noise_type), method, 2.0**-5, adjoint_method=adjoint_method,
            backend="torchsde",
        )
        assert max_relative_error(theirs, handed_over) == 0.0
        tol = 1e-12 if method == "reversible_heun" else 0.05
        assert max_relative_error(backprop, ours) < tol


def test_memory_does_not_grow_with_steps():
    sde, y0 = SmallSDE(), torch.randn(64, D, dtype=DTYPE, requires_grad=True)
    peaks: dict[tuple[str, int], int] = {}
    for steps in (16, 128):
        bm = BrownianPath(0.0, 1.0, (64, D), dt=1 / steps, seed=0, dtype=DTYPE)  # the path is the input
        for name, solve, method in (
            ("backprop", sdeint, "midpoint"),
            ("midpoint", sdeint_adjoint, "midpoint"),
            ("reversible_heun", sdeint_adjoint, "reversible_heun"),
        ):

            def once():
                solve(sde, y0, [0.0, 1.0], bm=bm, method=method, dt=1 / steps)[-1].square().sum().backward()

            peaks[name, steps] = peak_allocated_bytes(once)
    assert peaks["backprop", 128] > 4 * peaks["backprop", 16], peaks
    for name in ("midpoint", "reversible_heun"):
        assert peaks[name, 128] < 1.2 * peaks[name, 16], peaks
        assert peaks[name, 128] < peaks["backprop", 128] / 10, peaks


def test_seed_and_default_brownian_path():
    sde, y0 = SmallSDE(), y0_of()
    a = sdeint_adjoint(sde, y0, TS, dt=0.1, seed=7)
    b = sdeint_adjoint(sde, y0, TS, dt=0.1, seed=7)
    c = sdeint_adjoint(sde, y0, TS, dt=0.1, seed=8)
    path = BrownianPath(0.0, 1.0, (BATCH, D), dt=0.1, seed=7, dtype=DTYPE)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, sdeint(sde, y0, TS, bm=path, dt=0.1), rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # default methods: midpoint forward and backward for Stratonovich; the gradient is a real gradient
    a.square().sum().backward()
    assert y0.grad is not None and torch.isfinite(y0.grad).all()


def test_adjoint_params_and_non_module():
    class Plain:
        noise_type, sde_type = "diagonal", "stratonovich"

        def __init__(self, theta):
            self.theta = theta

        def f(self, t, y):
            return -self.theta * y

        def g(self, t, y):
            return 0.5 * torch.ones_like(y)

    theta = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)
    y0 = y0_of()
    bm = BrownianPath(0.0, 1.0, (BATCH, D), levels=6, seed=0, dtype=DTYPE)
    with pytest.raises(TypeError, match="nn.Module"):
        sdeint_adjoint(Plain(theta), y0, TS, bm, dt=0.1)
    ys = sdeint_adjoint(Plain(theta), y0, TS, bm, "reversible_heun", dt=2.0**-4, adjoint_params=(theta,))
    (g_adj,) = torch.autograd.grad(ys.sum(), theta)
    (g_bp,) = torch.autograd.grad(sdeint(Plain(theta), y0, TS, bm, "reversible_heun", dt=2.0**-4).sum(), theta)
    torch.testing.assert_close(g_adj, g_bp, rtol=1e-12, atol=1e-12)
    ys = sdeint_adjoint(Plain(theta), y0, TS, bm, dt=2.0**-4, adjoint_params=())  # y0 only
    (g_y0,) = torch.autograd.grad(ys.sum(), y0)
    assert torch.isfinite(g_y0).all()


def test_errors():
    sde, y0 = SmallSDE(), y0_of()
    ito = SmallSDE(sde_type="ito")
    bm = BrownianPath(0.0, 1.0, (BATCH, D), levels=4, seed=0, dtype=DTYPE)
    with pytest.raises(NotImplementedError, match="adaptive"):
        sdeint_adjoint(sde, y0, TS, bm, dt=0.1, adaptive=True)
    with pytest.raises(NotImplementedError, match="adaptive"):
        sdeint_adjoint(sde, y0, TS, bm, dt=0.1, adjoint_adaptive=True)
    with pytest.raises(ValueError, match="Stratonovich form"):
        sdeint_adjoint(ito, y0, TS, bm, "milstein", adjoint_method="milstein", dt=0.1)
    with pytest.raises(ValueError, match="needs method='reversible_heun'"):
        sdeint_adjoint(sde, y0, TS, bm, "midpoint", adjoint_method="reversible_heun", dt=0.1)
    with pytest.raises(ValueError, match="does not solve ito"):  # sdeint's check: Itô SDE, Stratonovich method
        sdeint_adjoint(ito, y0, TS, bm, "reversible_heun", dt=0.1)
    with pytest.raises(ValueError, match="general"):
        general = SmallSDE("general", "ito")
        sdeint_adjoint(general, y0, TS, dt=0.1, method="euler")
    with pytest.raises(ValueError, match="adjoint_options"):
        sdeint_adjoint(sde, y0, TS, bm, dt=0.1, adjoint_options={"grad_free": True})
    with pytest.raises(ValueError, match="gradient with respect to ts"):
        sdeint_adjoint(sde, y0, torch.tensor(TS, dtype=DTYPE, requires_grad=True), bm, dt=0.1)
    with pytest.raises(ValueError, match="seed"):
        sdeint_adjoint(sde, y0, TS, bm, dt=0.1, seed=0)
    with pytest.raises(ValueError, match="backend"):
        sdeint_adjoint(sde, y0, TS, bm, dt=0.1, backend="diffrax")
    with pytest.raises(ValueError, match="dt"):
        sdeint_adjoint(sde, y0, TS, bm, dt=0.0)
    with pytest.raises(ValueError, match="2-D"):
        sdeint_adjoint(sde, y0[0], TS, dt=0.1)
    with pytest.raises(ValueError, match="shape"):
        sdeint_adjoint(sde, y0, TS, BrownianPath(0.0, 1.0, (BATCH, 3), levels=4, dtype=DTYPE), dt=0.1)
    ys = sdeint_adjoint(sde, y0, TS, bm, dt=0.25)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ys.square().sum(), y0, create_graph=True)
