"""dedl.solvers.odeint: orders of convergence, adaptivity, agreement with torchdiffeq, shapes, dtypes, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dedl.solvers import (
    DOPRI5,
    RK4,
    TABLEAUX,
    ButcherTableau,
    adams_bashforth_coefficients,
    adams_bashforth_weights,
    odeint,
)
from dedl.utils import NFECounter


@pytest.fixture
def torchdiffeq():
    """torchdiffeq, for the comparisons with it; only they skip where it is not installed."""
    return pytest.importorskip("torchdiffeq")


# y1' = y1 cos t  -> y1 = exp(sin t);   y2' = -2 t y2 -> y2 = exp(-t^2)  (closed forms)
def field(t, y):
    return torch.stack([y[..., 0] * torch.cos(t), -2 * t * y[..., 1]], dim=-1)


def exact(t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.stack([torch.exp(torch.sin(t)), torch.exp(-t * t)], dim=-1)


Y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
T_END = 2.0


def global_error(method: str, n: int) -> float:
    t = torch.tensor([0.0, T_END], dtype=torch.float64)
    y = odeint(field, Y0, t, method=method, options={"step_size": T_END / n})
    return float((y[-1] - exact(T_END)).abs().max())


ORDERS = {
    "euler": (1, [20, 40, 80, 160, 320]),
    "midpoint": (2, [40, 80, 160, 320, 640]),
    "heun": (2, [20, 40, 80, 160, 320]),
    "rk4": (4, [20, 40, 80, 160, 320]),
    "rk4_38": (4, [20, 40, 80, 160, 320]),
    # the multistep errors reach their asymptotic rate later on this problem
    "adams_bashforth2": (2, [20, 40, 80, 160, 320]),
    "adams_bashforth3": (3, [160, 320, 640, 1280, 2560]),
    "adams_bashforth4": (4, [80, 160, 320, 640, 1280]),
}


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_convergence_order(method):
    order, ns = ORDERS[method]
    hs = [T_END / n for n in ns]
    errors = [global_error(method, n) for n in ns]
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.15, f"{method}: measured order {slope:.3f}, theory {order}"


@pytest.mark.parametrize("method", ["bosh3", "dopri5"])
def test_adaptive_error_decreases_and_meets_tolerance(method):
    t = torch.linspace(0, T_END, 9, dtype=torch.float64)
    errors = []
    for tol in (1e-4, 1e-6, 1e-8):
        y = odeint(field, Y0, t, method=method, rtol=tol, atol=tol)
        err = float(((y - exact(t)).abs() / (1 + exact(t).abs())).max())
        errors.append(err)
        assert err <= 10 * tol, f"{method} at tol {tol}: error {err}"
    assert errors[0] > errors[1] > errors[2]


def test_dense_output_keeps_accuracy():
    # many output times inside the steps: interpolation must not spoil the tolerance
    t = torch.linspace(0, T_END, 201, dtype=torch.float64)
    for method in ("bosh3", "dopri5"):
        y = odeint(field, Y0, t, method=method, rtol=1e-8, atol=1e-8)
        assert float((y - exact(t)).abs().max()) < 1e-6


def test_dopri5_dense_output_matches_b_at_theta_one():
    for row, b in zip(DOPRI5.dense, DOPRI5.b):
        assert sum(row) == pytest.approx(b, abs=1e-14)


def test_tableaux_are_consistent():
    for tab in TABLEAUX.values():
        assert sum(tab.b) == pytest.approx(1.0)
        for ci, row in zip(tab.c, tab.a):
            assert sum(row) == pytest.approx(ci)
        if tab.b_error is not None:
            assert sum(tab.b_error) == pytest.approx(1.0)
    # stability polynomial of an order-p method with p = s <= 4 is the Taylor polynomial of exp
    assert RK4.stability_polynomial() == pytest.approx([1, 1, 1 / 2, 1 / 6, 1 / 24])
    z = torch.tensor([-1.0 + 0.5j])
    assert RK4.stability_function(z).item() == pytest.approx(sum(z.item() ** j / math.factorial(j) for j in range(5)))


def test_custom_tableau_as_method():
    ralston = ButcherTableau(name="ralston", c=(0, 2 / 3), a=((), (2 / 3,)), b=(1 / 4, 3 / 4), order=2)
    e1, e2 = [
        float((odeint(field, Y0, torch.tensor([0.0, T_END], dtype=torch.float64), method=ralston,
                      options={"step_size": T_END / n})[-1] - exact(T_END)).abs().max())
        for n in (40, 80)
    ]
    assert math.log2(e1 / e2) == pytest.approx(2, abs=0.15)


def test_adams_bashforth_weights():
    for k in (2, 3, 4):
        nodes = [0.0 - j * 0.1 for j in range(k)]
        assert adams_bashforth_weights(nodes, 0.1) == pytest.approx(adams_bashforth_coefficients(k), abs=1e-12)


def test_adams_bashforth_on_nonuniform_grid_keeps_order():
    errors = []
    for n in (40, 80, 160):
        s = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        t = T_END * (s + 0.2 * torch.sin(math.pi * s) / math.pi)  # smoothly varying steps
        y = odeint(field, Y0, t, method="adams_bashforth3")
        errors.append(float((y[-1] - exact(T_END)).abs().max()))
    slope = math.log2(errors[0] / errors[1]), math.log2(errors[1] / errors[2])
    assert all(abs(s - 3) < 0.3 for s in slope)


# ---- agreement with torchdiffeq ------------------------------------------------------------------

SAME_FIXED = [("euler", "euler"), ("midpoint", "midpoint"), ("heun", "heun2"), ("rk4_38", "rk4")]


@pytest.mark.parametrize("ours,theirs", SAME_FIXED)
def test_fixed_step_agrees_with_torchdiffeq(ours, theirs, torchdiffeq):
    t = torch.linspace(0, T_END, 41, dtype=torch.float64)
    y = odeint(field, Y0, t, method=ours)
    y_td = torchdiffeq.odeint(field, Y0, t, method=theirs)
    torch.testing.assert_close(y, y_td, rtol=1e-12, atol=1e-12)


def test_classical_rk4_close_to_torchdiffeq_rk4(torchdiffeq):
    t = torch.linspace(0, T_END, 201, dtype=torch.float64)
    y = odeint(field, Y0, t, method="rk4")
    y_td = torchdiffeq.odeint(field, Y0, t, method="rk4")  # the 3/8 rule: same order, other constants
    torch.testing.assert_close(y, y_td, rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", ["bosh3", "dopri5"])
def test_adaptive_agrees_with_torchdiffeq(method, torchdiffeq):
    # bosh3: compare at the end point only, torchdiffeq's bosh3 interpolation is less accurate than its steps
    t = torch.linspace(0, T_END, 5 if method == "dopri5" else 2, dtype=torch.float64)
    y = odeint(field, Y0, t, method=method, rtol=1e-9, atol=1e-10)
    y_td = torchdiffeq.odeint(field, Y0, t, method=method, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y, y_td, rtol=0, atol=1e-7 if method == "dopri5" else 1e-6)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4_38", "bosh3", "dopri5"])
def test_backend_torchdiffeq_gives_same_answer(method, torchdiffeq):
    t = torch.linspace(0, T_END, 2 if method == "bosh3" else 11, dtype=torch.float64)
    y = odeint(field, Y0, t, method=method, rtol=1e-9, atol=1e-10)
    y_td = odeint(field, Y0, t, method=method, rtol=1e-9, atol=1e-10, backend="torchdiffeq")
    torch.testing.assert_close(y, y_td, rtol=0, atol=1e-4 if method == "euler" else 1e-6)


# ---- NFE -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_nfe_fixed_step(method, per_step):
    counter = NFECounter(field)
    odeint(counter, Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method=method, options={"step_size": 0.01})
    assert counter.nfe == per_step * 100


@pytest.mark.parametrize("order", [2, 3, 4])
def test_nfe_adams_bashforth(order):
    counter = NFECounter(field)
    odeint(counter, Y0, torch.linspace(0, 1, 51, dtype=torch.float64), method=f"adams_bashforth{order}")
    assert counter.nfe == 50 + 3 * (order - 1)  # RK4 start-up: 4 evaluations for each of order - 1 steps


def test_nfe_dopri5_matches_stats():
    counter = NFECounter(field)
    stats: dict = {}
    odeint(counter, Y0, torch.linspace(0, T_END, 4, dtype=torch.float64), options={"stats": stats})
    # one evaluation at t0, one for the first-step choice, then 6 per attempted step (FSAL)
    assert counter.nfe == stats["nfe"] == 2 + 6 * stats["n_steps"]
    assert stats["n_accepted"] + stats["n_rejected"] == stats["n_steps"]


# ---- time direction, shapes, dtypes ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "rk4", "adams_bashforth3", "bosh3", "dopri5"])
def test_backward_in_time(method):
    t = torch.linspace(T_END, 0.0, 21, dtype=torch.float64)
    y = odeint(field, exact(T_END), t, method=method, rtol=1e-9, atol=1e-10, options=None
               if method in ("bosh3", "dopri5") else {"step_size": 0.01})
    tol = {"euler": 5e-2, "adams_bashforth3": 1e-5}.get(method, 1e-6)
    torch.testing.assert_close(y, exact(t), rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["rk4", "adams_bashforth2", "dopri5"])
def test_batch_shapes(method):
    y0 = Y0.expand(3, 4, 2).clone()
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    y = odeint(field, y0, t, method=method)
    assert y.shape == (6, 3, 4, 2)
    torch.testing.assert_close(y[:, 1, 2], odeint(field, Y0, t, method=method))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["rk4", "adams_bashforth4", "dopri5"])
def test_dtypes(dtype, method):
    t = torch.linspace(0, 1, 11)
    y = odeint(field, Y0.to(dtype), t, method=method, rtol=1e-6, atol=1e-6, options=None
               if method == "dopri5" else {"step_size": 0.01})
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), exact(t.double()), rtol=0, atol=1e-5)


def test_single_time_point_returns_y0():
    y = odeint(field, Y0, torch.tensor([0.0]))
    assert y.shape == (1, 2)
    torch.testing.assert_close(y[0], Y0)


def test_step_size_lands_on_output_times():
    counter = NFECounter(field)
    t = torch.tensor([0.0, 0.25, 0.3, 1.0], dtype=torch.float64)
    y = odeint(counter, Y0, t, method="rk4", options={"step_size": 0.1})
    assert counter.nfe == 4 * (3 + 1 + 7)  # ceil(0.25/0.1) + ceil(0.05/0.1) + ceil(0.7/0.1) steps
    torch.testing.assert_close(y, exact(t), rtol=0, atol=1e-5)


def test_backprop_through_solver():
    y0 = Y0.clone().requires_grad_(True)
    y = odeint(field, y0, torch.tensor([0.0, T_END], dtype=torch.float64), method="dopri5")
    y[-1].sum().backward()
    # the flow is diagonal: d y_i(T) / d y_i(0) = exact_i(T)
    torch.testing.assert_close(y0.grad, exact(T_END), rtol=1e-6, atol=0)


# ---- bad input -----------------------------------------------------------------------------------

T01 = torch.tensor([0.0, 1.0], dtype=torch.float64)


def test_t_not_1d():
    with pytest.raises(ValueError, match="1-D"):
        odeint(field, Y0, torch.zeros(2, 2, dtype=torch.float64))


def test_t_not_monotone():
    with pytest.raises(ValueError, match="strictly monotone"):
        odeint(field, Y0, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="strictly monotone"):
        odeint(field, Y0, torch.tensor([0.0, 0.0, 1.0]))


def test_t_empty():
    with pytest.raises(ValueError, match="at least 1 time point"):
        odeint(field, Y0, torch.tensor([]))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        odeint(lambda t, y: y[:1], Y0, T01)
    with pytest.raises(ValueError, match="shape"):
        odeint(lambda t, y: y.sum(), Y0, T01, method="rk4")


def test_dtype_mismatch():
    with pytest.raises(TypeError, match="dtype"):
        odeint(lambda t, y: y.float(), Y0, T01)


def test_non_floating_y0():
    with pytest.raises(TypeError, match="floating-point"):
        odeint(field, torch.tensor([1, 2]), T01)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'rk45'.*dopri5"):
        odeint(field, Y0, T01, method="rk45")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'scipy'.*torchdiffeq"):
        odeint(field, Y0, T01, backend="scipy")


def test_unknown_option():
    with pytest.raises(ValueError, match="unknown option.*'stepsize'"):
        odeint(field, Y0, T01, method="rk4", options={"stepsize": 0.1})


def test_step_size_underflow_on_blow_up():
    # y' = y^2, y(0) = 1 has y = 1 / (1 - t): infinite at t = 1
    with pytest.raises(RuntimeError, match="underflow"):
        odeint(lambda t, y: y * y, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0, 2.0]))


def test_nan_in_state_fixed_step():
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        odeint(lambda t, y: y * y, torch.tensor([1.0]), torch.tensor([0.0, 2.0]), method="rk4",
               options={"step_size": 0.1})


def test_nan_in_state_adaptive():
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        odeint(lambda t, y: torch.where(t > 0.5, torch.nan, 1.0) * y, Y0, T01)


def test_nan_from_func_multistep():
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        odeint(lambda t, y: y / (t - t), Y0, T01, method="adams_bashforth2", options={"step_size": 0.1})


@pytest.mark.parametrize("step", [0.0, -0.1, float("nan")])
def test_bad_step_size(step):
    with pytest.raises(ValueError, match="step_size"):
        odeint(field, Y0, T01, method="rk4", options={"step_size": step})


def test_max_num_steps_fixed():
    with pytest.raises(RuntimeError, match="max_num_steps"):
        odeint(field, Y0, T01, method="euler", options={"step_size": 1e-3, "max_num_steps": 100})


def test_max_num_steps_adaptive():
    with pytest.raises(RuntimeError, match="max_num_steps"):
        odeint(field, Y0, T01, method="dopri5", rtol=1e-12, atol=1e-12, options={"max_num_steps": 5})


def test_bad_tolerance():
    with pytest.raises(ValueError, match="rtol"):
        odeint(field, Y0, T01, rtol=-1.0)


def test_y0_not_tensor():
    with pytest.raises(TypeError, match="y0"):
        odeint(field, [1.0, 1.0], T01)


def test_torchdiffeq_backend_rejects_multistep(torchdiffeq):
    with pytest.raises(ValueError, match="torchdiffeq has no"):
        odeint(field, Y0, T01, method="adams_bashforth2", backend="torchdiffeq")


# --- jump_t / step_t: steps end on the jumps of the field and read its one-sided limits -----------------------------


def square_wave(t, y):
    """``f = +1`` before ``t = 0.7`` and after ``t = 1.3``, ``-1`` between: a field with two jumps."""
    return torch.ones_like(y) * (-1.0 if 0.7 <= t < 1.3 else 1.0)


def square_wave_solution(t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return t - 2 * (t.clamp(0.7, 1.3) - 0.7)


@pytest.mark.parametrize("method", list(TABLEAUX) + ["adams_bashforth2", "adams_bashforth3", "adams_bashforth4"])
@pytest.mark.parametrize("t", [[0.0, 1.0, 2.0], [2.0, 0.5, 0.0]], ids=["forward", "backward"])
def test_jump_t_makes_every_method_exact_on_a_piecewise_constant_field(method, t):
    t = torch.tensor(t, dtype=torch.float64)
    y0 = square_wave_solution(t[0]).reshape(1)
    ys = odeint(square_wave, y0, t, method=method, options={"jump_t": torch.tensor([0.7, 1.3], dtype=torch.float64)})
    assert (ys[:, 0] - square_wave_solution(t)).abs().max() < 1e-12
    ys = odeint(square_wave, y0, t, method=method, options={"jump_t": [0.7, 1.3, 5.0]})  # 5.0: outside, ignored
    assert (ys[:, 0] - square_wave_solution(t)).abs().max() < 1e-12


def test_without_jump_t_rk4_reads_across_the_jump():
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    ys = odeint(square_wave, torch.zeros(1, dtype=torch.float64), t, method="rk4")
    assert (ys[:, 0] - square_wave_solution(t)).abs().max() > 0.1


def test_jump_t_restarts_the_adaptive_solver_and_step_t_does_not():
    """dopri5 is FSAL: at a step_t the last stage is the next first one; at a jump_t one more evaluation gives the
    right limit. Both land steps exactly on the given times."""
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    decay = lambda s, y: -y  # noqa: E731
    base, on_steps, on_jumps = {}, {}, {}
    odeint(decay, y0, t, options={"stats": base, "first_step": 0.3})
    odeint(decay, y0, t, options={"stats": on_steps, "first_step": 0.3, "step_t": [0.45, 1.234]})
    odeint(decay, y0, t, options={"stats": on_jumps, "first_step": 0.3, "jump_t": [0.45, 1.234]})
    for stats in (on_steps, on_jumps):
        assert 0.45 in stats["t"] and 1.234 in stats["t"]
    assert base["nfe"] == 6 * base["n_steps"] + 1 and on_steps["nfe"] == 6 * on_steps["n_steps"] + 1
    assert on_jumps["nfe"] == on_steps["nfe"] + 2 and on_jumps["n_steps"] == on_steps["n_steps"]


@pytest.mark.parametrize("bad", [[[0.5]], [float("nan")], "soon"])
def test_bad_jump_t(bad):
    with pytest.raises((ValueError, TypeError), match="jump_t"):
        odeint(field, Y0, [0.0, 1.0], method="rk4", options={"jump_t": bad})


def test_norm_option():
    """A max norm is stricter than the default RMS norm on a 2-D state: more steps, and a smaller error."""
    t = torch.tensor([0.0, T_END], dtype=torch.float64)
    rms, sup = {}, {}
    y_rms = odeint(field, Y0, t, rtol=1e-6, atol=1e-9, options={"stats": rms})
    y_sup = odeint(field, Y0, t, rtol=1e-6, atol=1e-9, options={"stats": sup, "norm": lambda x: x.abs().max()})
    assert sup["nfe"] >= rms["nfe"]
    assert float((y_sup[-1] - exact(T_END)).abs().max()) <= float((y_rms[-1] - exact(T_END)).abs().max())
    with pytest.raises(TypeError, match="norm"):
        odeint(field, Y0, t, options={"norm": "max"})
    with pytest.raises(ValueError, match="unknown option"):
        odeint(field, Y0, t, method="rk4", options={"norm": lambda x: x.abs().max()})


def test_perturb_reads_one_sided_limits_at_every_step_boundary():
    """With the jumps among the output times, perturb alone makes rk4 exact on the square wave."""
    t = torch.tensor([0.0, 0.7, 1.0, 1.3, 2.0], dtype=torch.float64)
    y0 = torch.zeros(1, dtype=torch.float64)
    assert (odeint(square_wave, y0, t, method="rk4", options={"perturb": True})[:, 0]
            - square_wave_solution(t)).abs().max() < 1e-12
    assert (odeint(square_wave, y0, t, method="rk4")[:, 0] - square_wave_solution(t)).abs().max() > 0.1
    with pytest.raises(ValueError, match="unknown option"):
        odeint(square_wave, y0, t, method="adams_bashforth2", options={"perturb": True})


@pytest.mark.parametrize("backend", ["dedl", "torchdiffeq"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_unknown_option_raises_under_both_backends(backend, method):
    if backend == "torchdiffeq":
        pytest.importorskip("torchdiffeq")
    with pytest.raises(ValueError, match="unknown option"):
        odeint(field, Y0, [0.0, 1.0], method=method, options={"stepsize": 0.1}, backend=backend)


@pytest.mark.parametrize(
    "method, options",
    [
        ("dopri5", {"jump_t": [0.7, 1.3]}),
        ("bosh3", {"jump_t": [0.7, 1.3]}),
        ("dopri5", {"step_t": [0.7, 1.3]}),
        ("rk4_38", {"perturb": True}),
        ("euler", {"perturb": True}),
        ("dopri5", {"norm": "max", "jump_t": [0.7, 1.3]}),
        ("dopri5", {"first_step": 0.05, "max_step": 0.2, "safety": 0.8, "jump_t": [0.7, 1.3]}),
    ],
)
def test_shared_options_give_the_same_answer_under_both_backends(method, options, torchdiffeq):
    """The square wave (jumps at 0.7 and 1.3) with outputs on the jumps: each option means the same in both.
    (step_t on the smooth ``field``: where the field jumps only jump_t is defined the same way, since
    torchdiffeq's adaptive steps always read the left limit at their end, also at a step_t.)"""
    if options.get("norm") == "max":
        options = dict(options, norm=lambda x: x.abs().max())
    f = field if "step_t" in options else square_wave
    t = torch.tensor([0.0, 0.7, 1.0, 1.3, 2.0], dtype=torch.float64)
    y0 = Y0 if "step_t" in options else torch.zeros(1, dtype=torch.float64)
    ours = odeint(f, y0, t, method=method, rtol=1e-9, atol=1e-10, options=dict(options))
    theirs = odeint(f, y0, t, method=method, rtol=1e-9, atol=1e-10, options=dict(options), backend="torchdiffeq")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)
    if "jump_t" in options or "perturb" in options:
        assert (ours[:, 0] - square_wave_solution(t)).abs().max() < 1e-12


def test_tableau_repr_is_one_line_summary():
    from dedl.solvers import DOPRI5, RK4

    assert repr(DOPRI5) == "ButcherTableau('dopri5': 7 stages, order 5, adaptive)"
    assert repr(RK4) == "ButcherTableau('rk4': 4 stages, order 4, fixed step)"
