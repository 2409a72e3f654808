"""dedl.cde.cdeint: exact at the kinks of a piecewise-linear control, and each method's order on a CDE."""

from __future__ import annotations

import math

import pytest
import torch

from dedl.cde import ControlledField, cdeint
from dedl.interpolation import LinearInterpolation, NaturalCubicSpline
from dedl.solvers import METHODS, odeint
from dedl.utils import fitted_order

KNOTS = torch.tensor([0.0, 0.37, 0.8, 1.45, 1.6, 2.0], dtype=torch.float64)
# a kinked control: slopes change sign at every knot
VALUES = torch.tensor([[0.0, 1.0], [0.9, -0.4], [-0.3, 0.5], [1.2, 1.1], [0.2, -0.6], [0.7, 0.3]], dtype=torch.float64)
FIXED = [m for m in METHODS if m not in ("bosh3", "dopri5")]
ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk4_38": 4,
          "adams_bashforth2": 2, "adams_bashforth3": 3, "adams_bashforth4": 4}


def constant_field(t, z):
    """``f(t, z) = M``: independent of ``z``, so ``z(t) = z_0 + M (X(t) - X(t_0))``, whatever the control."""
    m = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], dtype=z.dtype)
    return m.expand(*z.shape, 2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("step_size", [None, 0.1])
@pytest.mark.parametrize("outputs", ["knots", "coarse"])
def test_every_method_is_exact_on_a_kinked_linear_control(method, step_size, outputs):
    """Between knots the CDE's field is constant, so every method is exact provided no step reads a slope across
    a kink (issue 9: rk4 was off by 0.28, rk4_38 by 0.21, heun by 0.85 before the knots became jump times)."""
    path = LinearInterpolation(KNOTS, VALUES)
    t = KNOTS if outputs == "knots" else torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    z0 = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    options = None if step_size is None else {"step_size": step_size}
    if method in ("bosh3", "dopri5"):
        options = None
    z = cdeint(path, constant_field, z0, t, method=method, rtol=1e-6, atol=1e-8, options=options)
    m = constant_field(None, z0)
    expected = z0 + (m @ (path.evaluate(t) - path.evaluate(t[0])).unsqueeze(-1)).squeeze(-1)
    assert (z - expected).abs().max() < 1e-12


def test_exact_backward_in_time():
    path = LinearInterpolation(KNOTS, VALUES)
    t = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    z0 = torch.zeros(3, dtype=torch.float64)
    m = constant_field(None, z0)
    expected = (m @ (path.evaluate(t) - path.evaluate(t[0])).unsqueeze(-1)).squeeze(-1)
    for method in ("rk4", "heun", "dopri5"):
        assert (cdeint(path, constant_field, z0, t, method=method) - expected).abs().max() < 1e-12, method


class TanhField(torch.nn.Module):
    """``f(z) = tanh(W z + b)`` reshaped to ``(3, 2)``: a field that depends on the state."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(6, 3, generator=g, dtype=torch.float64)
        self.b = torch.randn(6, generator=g, dtype=torch.float64)

    def forward(self, t, z):
        return torch.tanh(z @ self.w.T + self.b).view(*z.shape, 2)


@pytest.mark.parametrize("path_cls", [LinearInterpolation, NaturalCubicSpline])
@pytest.mark.parametrize("method", FIXED)
def test_each_method_converges_at_its_order(path_cls, method):
    """Steps cut by ``step_size`` between the knots: the error falls as ``h^order`` (slope of a log-log fit over
    four step sizes; measured 0.97-0.99, 1.93-2.00, 2.95-3.13 and 3.79-3.99 for orders 1, 2, 3, 4)."""
    path = path_cls(KNOTS, VALUES)
    f = TanhField()
    z0 = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    reference = cdeint(path, f, z0, t, method="dopri5", rtol=1e-13, atol=1e-13)[-1]
    sizes = [0.01, 0.005, 0.0025, 0.00125]
    errors = [float((cdeint(path, f, z0, t, method=method, options={"step_size": h})[-1] - reference).norm())
              for h in sizes]
    order = fitted_order(sizes, errors)
    assert abs(order - ORDERS[method]) < 0.25, (errors, order)


def test_adaptive_solve_steps_onto_the_knots_and_meets_the_tolerance():
    path = LinearInterpolation(KNOTS, VALUES)
    f = TanhField()
    z0 = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    reference = cdeint(path, f, z0, t, method="rk4", options={"step_size": 1e-3})
    stats: dict = {}
    z = cdeint(path, f, z0, t, method="dopri5", rtol=1e-9, atol=1e-9, options={"stats": stats})
    assert (z - reference).abs().max() < 1e-8
    starts = torch.tensor(stats["t"] + [2.0], dtype=torch.float64)
    for knot in KNOTS[1:-1]:  # every interior knot is the start of an accepted step
        assert bool((starts == knot).any()), float(knot)


def test_cdeint_keeps_the_callers_jump_times():
    """A jump of the field at t = 1.2 that the control does not know about, passed by the caller."""
    path = LinearInterpolation(KNOTS, VALUES)

    def field(t, z):
        return constant_field(t, z) * (1.0 if t < 1.2 else -1.0)

    z0 = torch.zeros(3, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    x = path.evaluate(torch.tensor([0.0, 1.2, 2.0], dtype=torch.float64))
    m = constant_field(None, z0)
    expected = m @ (x[1] - x[0]) - m @ (x[2] - x[1])
    z = cdeint(path, field, z0, t, method="rk4", options={"jump_t": [1.2]})
    assert (z[-1] - expected).abs().max() < 1e-12


def test_neural_cde_linear_is_exact_with_rk4_on_a_constant_field():
    """NeuralCDE's default solver (rk4) through the moved cdeint: a z-independent field is integrated exactly."""
    from dedl.nn.odenets import NeuralCDE

    torch.manual_seed(0)
    model = NeuralCDE(2, 3, width=4, interpolation="linear").double()
    model.func.func = ControlledFieldCheck()
    times = KNOTS
    values = VALUES.unsqueeze(0)
    path = model.control(times, values)
    z = cdeint(path, model.func, model.initial(path.evaluate(times[0])), times, **model.solver)
    expected = model.initial(path.evaluate(times[0])) + (path.evaluate(times) - path.evaluate(times[0])).sum(-1, True)
    assert (z.squeeze(1) - expected.squeeze(0)).abs().max() < 1e-12


class ControlledFieldCheck(torch.nn.Module):
    def forward(self, t, z):
        return torch.ones(*z.shape, 3, dtype=z.dtype)


def test_controlled_field_checks():
    t = torch.linspace(0, 1, 4)
    path = LinearInterpolation(t, torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="matrix"):
        cdeint(path, lambda s, z: torch.zeros(2, 5, 2), torch.zeros(2, 5), t)
    with pytest.raises(TypeError, match="derivative"):
        ControlledField(lambda s, z: z, object())


def test_left_limit_of_the_derivative_at_a_knot():
    """The one-sided evaluation a solver makes: just below a knot the left piece's slope, at it the right one."""
    path = LinearInterpolation(KNOTS, VALUES)
    slopes = (VALUES[1:] - VALUES[:-1]) / (KNOTS[1:] - KNOTS[:-1]).unsqueeze(-1)
    for k in range(1, len(KNOTS) - 1):
        below = torch.nextafter(KNOTS[k], torch.tensor(-math.inf, dtype=torch.float64))
        torch.testing.assert_close(path.derivative(below), slopes[k - 1])
        torch.testing.assert_close(path.derivative(KNOTS[k]), slopes[k])
