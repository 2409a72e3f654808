"""dedl.solvers.odeint_adjoint: gradients against backprop through the solver, t-gradients, memory, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dedl.solvers import odeint, odeint_adjoint
from dedl.utils import NFECounter


@pytest.fixture
def torchdiffeq():
    """torchdiffeq, for the comparisons with it; only they skip where it is not installed."""
    return pytest.importorskip("torchdiffeq")


class Field(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y) * (1 + 0.5 * torch.sin(t))


def make(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    func = Field().to(dtype)
    y0 = torch.randn(5, 2, dtype=dtype, requires_grad=True)
    return func, y0


def loss_of(ys):
    return (ys**2).sum() + ys[1].sin().sum()


SETTINGS = {
    "dopri5": dict(method="dopri5", rtol=1e-11, atol=1e-12),
    "rk4": dict(method="rk4", options={"step_size": 1e-2}),
    "adams_bashforth4": dict(method="adams_bashforth4", options={"step_size": 1e-3}),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_adjoint_matches_backprop(name):
    func, y0 = make()
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    kw = SETTINGS[name]
    g_bp = torch.autograd.grad(loss_of(odeint(func, y0, t, **kw)), (y0, *func.parameters()))
    g_adj = torch.autograd.grad(loss_of(odeint_adjoint(func, y0, t, **kw)), (y0, *func.parameters()))
    # rk4 / AB4: the backward solve is the same scheme on the same grid, so both are O(h^p) from the
    # exact gradient; dopri5 at tight tolerance: both are close to it.
    tol = {"dopri5": 1e-6, "rk4": 1e-6, "adams_bashforth4": 1e-6}[name]
    for a, b in zip(g_adj, g_bp):
        assert float((a - b).norm() / b.norm()) < tol


def test_adjoint_forward_equals_odeint():
    func, y0 = make()
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(odeint_adjoint(func, y0, t), odeint(func, y0, t))


def time_gradient_by_finite_differences(func, y0, t, kw, eps=1e-6):
    """Central differences of the loss with respect to each output time, solved with odeint."""
    fd = torch.empty_like(t.detach())
    for i in range(len(t)):
        tp, tm = t.detach().clone(), t.detach().clone()
        tp[i] += eps
        tm[i] -= eps
        with torch.no_grad():
            fd[i] = (loss_of(odeint(func, y0, tp, **kw)) - loss_of(odeint(func, y0, tm, **kw))) / (2 * eps)
    return fd


def test_adjoint_time_gradients_match_finite_differences():
    func, y0 = make()
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64, requires_grad=True)
    kw = SETTINGS["dopri5"]
    (g_t,) = torch.autograd.grad(loss_of(odeint_adjoint(func, y0, t, **kw)), (t,))
    fd = time_gradient_by_finite_differences(func, y0, t, kw)
    torch.testing.assert_close(g_t, fd, rtol=1e-5, atol=1e-6)


def test_adjoint_backward_in_time():
    func, y0 = make()
    t = torch.linspace(1, 0, 3, dtype=torch.float64)
    kw = SETTINGS["dopri5"]
    g_bp = torch.autograd.grad(loss_of(odeint(func, y0, t, **kw)), (y0, *func.parameters()))
    g_adj = torch.autograd.grad(loss_of(odeint_adjoint(func, y0, t, **kw)), (y0, *func.parameters()))
    for a, b in zip(g_adj, g_bp):
        assert float((a - b).norm() / b.norm()) < 1e-6


def test_adjoint_float32():
    func, y0 = make(torch.float32)
    t = torch.linspace(0, 1, 3)
    ys = odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-7)
    assert ys.dtype == torch.float32
    g = torch.autograd.grad(loss_of(ys), (y0, *func.parameters()))
    g_bp = torch.autograd.grad(loss_of(odeint(func, y0, t, rtol=1e-6, atol=1e-7)), (y0, *func.parameters()))
    for a, b in zip(g, g_bp):
        assert a.dtype == torch.float32
        assert float((a - b).norm() / b.norm()) < 1e-3


def test_adjoint_backend_torchdiffeq_same_gradients(torchdiffeq):
    func, y0 = make()
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    kw = SETTINGS["dopri5"]
    g = torch.autograd.grad(loss_of(odeint_adjoint(func, y0, t, **kw)), (y0, *func.parameters()))
    g_td = torch.autograd.grad(
        loss_of(odeint_adjoint(func, y0, t, backend="torchdiffeq", **kw)), (y0, *func.parameters())
    )
    for a, b in zip(g, g_td):
        assert float((a - b).norm() / b.norm()) < 1e-6


def test_adjoint_params_explicit_for_plain_function():
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = odeint_adjoint(lambda t, y: -w * y, y0, t, adjoint_params=(w,), rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(ys[-1].sum(), (w,))
    # y(1) = exp(-w): dy/dw = -exp(-w)
    assert float(g) == pytest.approx(-float(torch.exp(-w.detach())), rel=1e-7)


def test_adjoint_needs_module_or_params():
    with pytest.raises(TypeError, match="nn.Module"):
        odeint_adjoint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]))


def test_adjoint_bad_input_raises_like_odeint():
    func, y0 = make()
    with pytest.raises(ValueError, match="unknown method"):
        odeint_adjoint(func, y0, torch.tensor([0.0, 1.0]), method="nope")
    with pytest.raises(ValueError, match="strictly monotone"):
        odeint_adjoint(func, y0, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="unknown backend"):
        odeint_adjoint(func, y0, torch.tensor([0.0, 1.0]), backend="jax")


def _saved_bytes(fn) -> int:
    """Bytes that autograd keeps for the backward pass while ``fn`` runs (tensors saved by the graph)."""
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    return total, out


def test_adjoint_memory_independent_of_steps():
    func, y0 = make()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    saved = {}
    for n in (10, 1000):
        opts = {"step_size": 1.0 / n}
        saved["adjoint", n], _ = _saved_bytes(lambda: odeint_adjoint(func, y0, t, method="rk4", options=opts))
        saved["backprop", n], _ = _saved_bytes(lambda: odeint(func, y0, t, method="rk4", options=opts))
    assert saved["adjoint", 1000] == saved["adjoint", 10]
    assert saved["backprop", 1000] > 50 * saved["backprop", 10]


# --- double backward and gradients with respect to t ----------------------------------------------------------------


def riccati(t, y):
    return -(y**2)


def test_odeint_supports_double_backward():
    """``y' = -y^2``: ``y(T) = y0 / (1 + y0 T)``, ``d^2 y(T) / dy0^2 = -2T / (1 + y0 T)^3`` = -0.25 at y0 = T = 1."""
    y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(odeint(riccati, y0, t, rtol=1e-10, atol=1e-12)[-1].sum(), y0, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), y0)
    assert float(g.detach()) == pytest.approx(0.25, abs=1e-8)
    assert float(h) == pytest.approx(-0.25, abs=1e-7)


def test_adjoint_refuses_double_backward():
    """Before, create_graph=True gave a zero Hessian-vector product without a word; now it raises."""
    func, y0 = make()
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    ys = odeint_adjoint(func, y0, t, method="rk4", options={"step_size": 0.1})
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss_of(ys), y0, create_graph=True)
    ys = odeint_adjoint(func, y0, t, method="rk4", options={"step_size": 0.1})
    (g,) = torch.autograd.grad(loss_of(ys), y0)  # first derivatives still work
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("kw", [SETTINGS["dopri5"], SETTINGS["rk4"]], ids=["dopri5", "rk4"])
def test_odeint_time_gradients_match_finite_differences_and_the_adjoint(kw):
    func, y0 = make()
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64, requires_grad=True)
    ys = odeint(func, y0, t, **kw)
    torch.testing.assert_close(ys, odeint(func, y0, t.detach(), **kw))  # the values are unchanged
    g_t, g_y0 = torch.autograd.grad(loss_of(ys), (t, y0))
    a_t, a_y0 = torch.autograd.grad(loss_of(odeint_adjoint(func, y0, t, **SETTINGS["dopri5"])), (t, y0))
    torch.testing.assert_close(g_t, a_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_y0, a_y0, rtol=1e-5, atol=1e-6)
    fd = time_gradient_by_finite_differences(func, y0, t, kw)
    torch.testing.assert_close(g_t, fd, rtol=1e-4, atol=1e-5)


def test_odeint_time_gradients_match_torchdiffeq(torchdiffeq):
    func, y0 = make()
    t = torch.tensor([0.2, 0.5, 1.1], dtype=torch.float64, requires_grad=True)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    ours = torch.autograd.grad(loss_of(odeint(func, y0, t, **kw)), t)[0]
    theirs = torch.autograd.grad(loss_of(torchdiffeq.odeint(func, y0, t, **kw)), t)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_adjoint_seminorm_keeps_the_gradient_and_takes_no_more_backward_steps():
    """Kidger, Chen and Lyons (2021): leaving the parameter adjoint out of the backward error norm saves steps."""
    func, y0 = make()
    t = torch.linspace(0, 2, 3, dtype=torch.float64)
    counted = NFECounter(func)
    params = tuple(func.parameters())
    kw = dict(method="dopri5", rtol=1e-6, atol=1e-8)
    costs, grads = {}, {}
    for norm in (None, "seminorm"):
        ys = odeint_adjoint(counted, y0, t, adjoint_params=params, **kw,
                            adjoint_options=None if norm is None else {"norm": norm})
        counted.reset()
        grads[norm] = torch.autograd.grad(loss_of(ys), (y0, *params))
        costs[norm] = counted.nfe
    exact = torch.autograd.grad(loss_of(odeint(func, y0, t, method="dopri5", rtol=1e-11, atol=1e-12)), (y0, *params))
    for g, e in zip(grads["seminorm"], exact):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert costs["seminorm"] < costs[None], costs


def test_adjoint_options_are_checked_at_the_call():
    func, y0 = make()
    with pytest.raises(ValueError, match="unknown option"):
        odeint_adjoint(func, y0, [0.0, 1.0], adjoint_options={"norm": "seminorm", "stepsize": 0.1})
    with pytest.raises(TypeError, match="norm"):
        odeint_adjoint(func, y0, [0.0, 1.0], adjoint_options={"norm": "l2"})
