"""The stepping core of dedl.solvers.ode: the PI controller, the dense output's order, tuple states and events.

These tests use dedl alone (no torchdiffeq), so they run wherever dedl does."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dedl.solvers import PIController, odeint, odeint_adjoint, odeint_event
from dedl.utils import fitted_order


# --- the step-size controller -----------------------------------------------------------------------------------


def test_pi_controller_follows_its_formula():
    control = PIController(order=4, beta=0.04)
    alpha = 1 / 5 - 0.75 * 0.04
    accepted, h = control.accept(0.1, 0.5, landed=False)
    assert accepted and h == pytest.approx(0.1 * 0.9 * 0.5**-alpha * 1e-4**0.04)
    accepted, h2 = control.accept(h, 0.25, landed=False)  # the previous ratio 0.5 enters with exponent beta
    assert accepted and h2 == pytest.approx(h * 0.9 * 0.25**-alpha * 0.5**0.04)
    accepted, h3 = control.accept(h2, 4.0, landed=False)
    assert not accepted and h3 == pytest.approx(h2 * 0.9 * 4.0**-alpha)
    accepted, h4 = control.accept(h3, 1e-3, landed=False)  # no growth right after a rejection
    assert accepted and h4 == h3


def test_pi_controller_clips_and_lands_on_stops():
    control = PIController(order=4, ifactor=5.0, dfactor=0.5, max_step=0.3, stops=(0.5,), t_end=1.0)
    assert control.accept(0.1, 0.0, landed=False) == (True, pytest.approx(0.3))  # ifactor, then max_step
    assert control.accept(0.1, 1e6, landed=False) == (False, pytest.approx(0.05))  # dfactor
    assert control.landing(0.2, 0.4, 1.0) == (pytest.approx(0.3), 0.5, True)  # cut onto the stop
    assert control.landing(0.2, 0.299, 1.0) == (pytest.approx(0.3), 0.5, True)  # stretched by < 1%
    control.accept(0.3, 0.5, landed=True)
    assert control.landing(0.5, 0.2, 1.0) == (0.2, 0.7, False)
    with pytest.raises(ValueError, match="beta"):
        PIController(order=4, beta=0.5)


def test_pi_control_damps_the_step_size_oscillation():
    """Gustafsson's PI controller (beta = 0.04) on a mildly stiff problem: fewer rejected steps than I control."""
    lam = torch.tensor([[-50.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    stats = {}
    for beta in (0.0, 0.04):
        stats[beta] = {}
        odeint(lambda t, y: y @ lam.T, y0, [0.0, 10.0], rtol=1e-4, atol=1e-6,
               options={"beta": beta, "stats": stats[beta]})
    assert stats[0.04]["n_rejected"] < stats[0.0]["n_rejected"], stats


# --- dense output ----------------------------------------------------------------------------------------------


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("method, order", [("dopri5", 4), ("bosh3", 3)])
def test_dense_output_converges_at_its_order(method, order):
    """Between the steps of a fixed grid (first_step = max_step = h), the interpolant's error falls as h^(order+1)
    locally: a log-log slope of ``order + 1`` at the midpoints (dopri5's continuous extension: 4; Hermite: 3)."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sizes = [0.2, 0.1, 0.05, 0.025]
    errors = []
    for h in sizes:
        # one step of size h from 0, evaluated at h / 3 (inside the step) and at h (the step's end)
        t = torch.tensor([0.0, h / 3, h], dtype=torch.float64)
        ys = odeint(oscillator, y0, t, method=method, rtol=1e3, atol=1e3,
                    options={"first_step": h, "max_step": h})
        exact = torch.stack([torch.cos(t[1]), -torch.sin(t[1])])
        errors.append(float((ys[1] - exact).norm()))
    slope = fitted_order(sizes, errors)
    assert abs(slope - (order + 1)) < 0.3, (errors, slope)


# --- tuple states -----------------------------------------------------------------------------------------------


def test_tuple_state_matches_the_flat_state():
    def split(t, state):
        x, v = state
        return v, -x

    x0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    v0 = torch.tensor([[0.0], [0.2]], dtype=torch.float64).reshape(2)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    for method in ("rk4", "dopri5"):
        xs, vs = odeint(split, (x0, v0), t, method=method)
        joint = odeint(lambda s, y: torch.cat([y[2:], -y[:2]]), torch.cat([x0, v0]), t, method=method)
        assert xs.shape == (5, 2) and vs.shape == (5, 2)
        torch.testing.assert_close(torch.cat([xs, vs], dim=1), joint)


def test_tuple_state_gradients_backprop_and_adjoint():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, t, state):
            x, v = state
            return v, -self.k * x

    func = Split()
    x0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    v0 = torch.tensor([0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    grads = []
    for solver in (odeint, odeint_adjoint):
        xs, _ = solver(func, (x0, v0), t, **kw)
        grads.append(torch.autograd.grad(xs[-1].sum(), (x0, func.k)))
    w = math.sqrt(1.5)  # x(1) = x0 cos(w)
    assert float(grads[0][0]) == pytest.approx(math.cos(w), abs=1e-8)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-8)


def test_tuple_state_bad_input():
    with pytest.raises(TypeError, match="share one dtype"):
        odeint(lambda t, s: s, (torch.zeros(1), torch.zeros(1, dtype=torch.float64)), [0.0, 1.0])
    with pytest.raises(ValueError, match="part 1"):
        odeint(lambda t, s: (s[0], torch.zeros(3)), (torch.zeros(1), torch.zeros(2)), [0.0, 1.0])


# --- events -----------------------------------------------------------------------------------------------------


class Fall(nn.Module):
    """A ball under gravity ``g``: ``(x, v)' = (v, -g)``; it hits the ground ``x = 0`` at ``sqrt(2 x0 / g)``."""

    def __init__(self, g=9.81):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=torch.float64))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[1])])


def test_event_time_and_its_gradients_match_the_closed_form():
    """t* = sqrt(2 x0 / g): dt*/dx0 = 1 / sqrt(2 g x0), dt*/dg = -t* / (2 g); the impact speed v* = -g t*."""
    func = Fall()
    x0 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    y0 = torch.stack([x0, torch.zeros((), dtype=torch.float64)])
    event_t, ys = odeint_event(func, y0, 0.0, event_fn=lambda t, y: y[0], rtol=1e-10, atol=1e-12)
    g = 9.81
    t_star = math.sqrt(2 * 2.0 / g)
    assert float(event_t.detach()) == pytest.approx(t_star, abs=1e-9)
    assert ys.shape == (2, 2) and float(ys[-1, 0].detach()) == pytest.approx(0.0, abs=1e-9)
    assert float(ys[-1, 1].detach()) == pytest.approx(-g * t_star, abs=1e-8)
    d_x0, d_g = torch.autograd.grad(event_t, (x0, func.g), retain_graph=True)
    assert float(d_x0) == pytest.approx(1 / math.sqrt(2 * g * 2.0), rel=1e-7)
    assert float(d_g) == pytest.approx(-t_star / (2 * g), rel=1e-7)
    (dv_dx0,) = torch.autograd.grad(ys[-1, 1], x0)  # v* = -sqrt(2 g x0)
    assert float(dv_dx0) == pytest.approx(-g / math.sqrt(2 * g * 2.0), rel=1e-6)


def test_bouncing_ball_with_the_adjoint():
    """Chen et al. (2021)'s demo: bounces with restitution e = 0.8 from x0 = 1; the k-th impact at
    t_k = t_1 (1 + 2 e (1 - e^(k-1)) / (1 - e)), t_1 = sqrt(2 / g)."""
    func, e = Fall(), 0.8
    t0 = torch.tensor(0.0, dtype=torch.float64)
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    impacts = []
    for _ in range(3):
        t0, ys = odeint_event(func, y, t0, event_fn=lambda t, s: s[0], odeint_interface=odeint_adjoint,
                              rtol=1e-10, atol=1e-12)
        impacts.append(float(t0.detach()))
        y = torch.stack([ys[-1, 0].detach() * 0 + 1e-12, -e * ys[-1, 1]])  # bounce: just above the ground
    t1 = math.sqrt(2 / 9.81)
    expected = [t1 * (1 + 2 * e * (1 - e ** (k - 1)) / (1 - e)) for k in (1, 2, 3)]
    assert impacts == pytest.approx(expected, abs=1e-8)


def test_event_needs_an_adaptive_method_and_a_callable():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="adaptive"):
        odeint_event(Fall(), y0, 0.0, event_fn=lambda t, y: y[0], method="rk4")
    with pytest.raises(TypeError, match="event_fn"):
        odeint_event(Fall(), y0, 0.0, event_fn=None)


# --- the method registry ----------------------------------------------------------------------------------------


def test_method_registry_dispatches_by_name():
    from dedl.solvers import METHODS, RK4, Method, register_method

    assert METHODS["rk4"].tableau is RK4 and METHODS["adams_bashforth3"].tableau is None
    assert "max_step" in METHODS["dopri5"].options and "max_step" not in METHODS["rk4"].options

    def exact_decay(func, y0, t_list, rtol, atol, options):  # y' = -y solved exactly, ignoring func
        return torch.stack([y0 * math.exp(-(t - t_list[0])) for t in t_list])

    register_method(Method("exact_decay", ("stats",), exact_decay))
    try:
        ys = odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), [0.0, 1.0], method="exact_decay")
        assert float(ys[-1]) == pytest.approx(math.exp(-1))
        with pytest.raises(ValueError, match="unknown option"):
            odeint(lambda t, y: -y, torch.ones(1), [0.0, 1.0], method="exact_decay", options={"step_size": 0.1})
        with pytest.raises(ValueError, match="already registered"):
            register_method(Method("exact_decay", (), exact_decay))
    finally:
        del METHODS["exact_decay"]
