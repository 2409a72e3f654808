"""Tests of dedl.solvers.sde: convergence orders on closed forms, agreement with torchsde, Brownian paths, bad input.

Everything runs in float64 with seeded Brownian paths and thousands of sample paths, so that the measured orders
are stable: a strong order is the slope of log E|Y_N - X_T| against log h, measured on one Brownian path per
sample, at step sizes 2^-3 ... 2^-8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchsde

from dedl.solvers import BrownianPath, sdeint, step_grid

DTYPE = torch.float64
STEPS = [2.0**-k for k in range(3, 9)]


def slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


class GBM:
    """Geometric Brownian motion dX = mu X dt + sigma X dW (Itô) or with o dW (Stratonovich), diagonal noise."""

    noise_type = "diagonal"

    def __init__(self, mu: float = 0.5, sigma: float = 0.8, sde_type: str = "ito"):
        self.mu, self.sigma, self.sde_type = mu, sigma, sde_type

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y

    def exact(self, y0, w, t):
        """Closed form on the path: X_t = X_0 exp((mu - sigma^2/2) t + sigma W_t) (Itô), without -sigma^2/2 (Strat)."""
        drift = self.mu - 0.5 * self.sigma**2 if self.sde_type == "ito" else self.mu
        return y0 * torch.exp(drift * t + self.sigma * w)


class NonlinearDiagonal:
    """A 2-D SDE with a nonlinear drift and diagonal, state-dependent noise (no closed form)."""

    noise_type = "diagonal"

    def __init__(self, sde_type: str = "ito"):
        self.sde_type = sde_type

    def f(self, t, y):
        return torch.sin(y).flip(-1) - 0.3 * y + 0.1 * t

    def g(self, t, y):
        return 0.3 * torch.cos(y) + 0.1 * t


class LinearScalar:
    """dX = a X dt + B X dW with one Brownian motion (scalar noise) and a non-symmetric B.

    Closed form (Itô): X_t = expm((a I - B^2/2) t + B W_t) X_0, since a I and B commute.
    """

    noise_type = "scalar"
    sde_type = "ito"
    a = 0.2
    B = torch.tensor([[0.3, 0.5], [-0.2, 0.1]], dtype=DTYPE)

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return (y @ self.B.T).unsqueeze(-1)

    def exact(self, y0, w, t):
        eye = torch.eye(2, dtype=DTYPE)
        m = (self.a * eye - 0.5 * self.B @ self.B)[None] * t + w[:, :, None] * self.B[None]
        return (torch.linalg.matrix_exp(m) @ y0.unsqueeze(-1)).squeeze(-1)


class GeneralNoise:
    """d = 2 states driven by m = 3 Brownian motions."""

    noise_type = "general"

    def __init__(self, sde_type: str = "ito"):
        self.sde_type = sde_type

    def f(self, t, y):
        return -y

    def g(self, t, y):
        base = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, 0.1]], dtype=y.dtype)
        return base + 0.1 * torch.tanh(y).unsqueeze(-1)


# --------------------------------------------------------------------------------------------------------------
# Convergence orders
# --------------------------------------------------------------------------------------------------------------


def strong_errors(sde, method, batch=4000, options=None, seed=0):
    bm = BrownianPath(0.0, 1.0, (batch, 1), levels=10, seed=seed, dtype=DTYPE)
    y0 = torch.ones(batch, 1, dtype=DTYPE)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    errors = []
    for h in STEPS:
        ys = sdeint(sde, y0, [0.0, 1.0], method=method, dt=h, bm=bm, options=options)
        errors.append((ys[-1] - exact).abs().mean().item())
    return errors


def test_euler_maruyama_strong_order_half_on_gbm():
    order = slope(STEPS, strong_errors(GBM(), "euler"))
    assert abs(order - 0.5) <= 0.15, order


@pytest.mark.parametrize("grad_free", [False, True])
def test_milstein_strong_order_one_on_gbm(grad_free):
    order = slope(STEPS, strong_errors(GBM(), "milstein", options={"grad_free": grad_free}))
    assert abs(order - 1.0) <= 0.15, order


@pytest.mark.parametrize("method", ["heun", "midpoint", "milstein"])
def test_stratonovich_methods_strong_order_one_on_gbm(method):
    order = slope(STEPS, strong_errors(GBM(sde_type="stratonovich"), method))
    assert abs(order - 1.0) <= 0.15, order


@pytest.mark.parametrize("grad_free", [False, True])
def test_milstein_scalar_noise_non_symmetric_jacobian(grad_free):
    """Scalar noise in d = 2 needs (dg/dy) g, a Jacobian-vector product, not g^T (dg/dy)."""
    sde, batch = LinearScalar(), 2000
    bm = BrownianPath(0.0, 1.0, (batch, 1), levels=10, seed=1, dtype=DTYPE)
    y0 = torch.ones(batch, 2, dtype=DTYPE)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    errors = []
    for h in STEPS:
        ys = sdeint(sde, y0, [0.0, 1.0], method="milstein", dt=h, bm=bm, options={"grad_free": grad_free})
        errors.append((ys[-1] - exact).norm(dim=-1).mean().item())
    assert abs(slope(STEPS, errors) - 1.0) <= 0.15


class StateFreeNoise:
    """dX = -X dt + g(t) dW with a diffusion that does not depend on the state: 0.5, or 0.5 + t (time only)."""

    def __init__(self, noise_type: str, sde_type: str, time_dependent: bool):
        self.noise_type, self.sde_type, self.time_dependent = noise_type, sde_type, time_dependent

    def f(self, t, y):
        return -y

    def g(self, t, y):
        g = (0.5 + t) * torch.ones_like(y) if self.time_dependent else torch.full_like(y, 0.5)
        return g if self.noise_type == "diagonal" else g.unsqueeze(-1)


@pytest.mark.parametrize("time_dependent", [False, True])
@pytest.mark.parametrize("sde_type", ["ito", "stratonovich"])
@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_milstein_with_a_state_free_diffusion(noise_type, sde_type, time_dependent):
    """(dg/dy) g = 0, so the autograd Milstein step is the derivative-free one, and both are y + f h + g dW."""
    sde, batch = StateFreeNoise(noise_type, sde_type, time_dependent), 16
    m = 2 if noise_type == "diagonal" else 1
    bm = BrownianPath(0.0, 1.0, (batch, m), levels=5, seed=6, dtype=DTYPE)
    y0 = torch.ones(batch, 2, dtype=DTYPE)
    autograd = sdeint(sde, y0, [0.0, 0.5, 1.0], method="milstein", dt=2**-5, bm=bm)
    grad_free = sdeint(sde, y0, [0.0, 0.5, 1.0], method="milstein", dt=2**-5, bm=bm, options={"grad_free": True})
    torch.testing.assert_close(autograd, grad_free, rtol=0, atol=1e-14)
    y, t = y0, torch.tensor(0.0, dtype=DTYPE)
    for _ in range(32):  # y + f h + g dW by hand
        g = sde.g(t, y) if noise_type == "diagonal" else sde.g(t, y).squeeze(-1)
        y = y + sde.f(t, y) * 2**-5 + g * bm(t, t + 2**-5)
        t = t + 2**-5
    torch.testing.assert_close(autograd[-1], y, rtol=0, atol=1e-13)


def test_euler_maruyama_weak_order_one_on_gbm():
    """Weak error |E[Y_N] - E[X_T]| with E[X_T] = X_0 e^{mu T}.

    Variance reduction: E[Y_N] - E[X_T] = E[Y_N - X_T(W)] exactly, and the sample mean of Y_N - X_T(W) over
    paths (the exact solution on the same Brownian path as the control variate) has a standard error set by the
    strong error, about 100 times smaller than that of the plain sample mean of Y_N. With 40 000 paths the
    standard error is below 3 % of the smallest weak error measured, so the fitted slope is stable to well
    within the tolerance.
    """
    sde, batch, T = GBM(mu=1.5, sigma=0.5), 40_000, 1.0
    hs = [2.0**-k for k in range(3, 8)]
    bm = BrownianPath(0.0, T, (batch, 1), levels=7, seed=2, dtype=DTYPE)
    y0 = torch.ones(batch, 1, dtype=DTYPE)
    exact_path = sde.exact(y0, bm(0.0, T), T)
    errors, stderr = [], []
    for h in hs:
        diff = sdeint(sde, y0, [0.0, T], method="euler", dt=h, bm=bm)[-1] - exact_path
        errors.append(diff.mean().abs().item())
        stderr.append(diff.std().item() / math.sqrt(batch))
    assert max(s / e for s, e in zip(stderr, errors)) < 0.05
    # The mean of Euler-Maruyama on this linear SDE is known exactly: E[Y_N] = X_0 (1 + mu h)^N.
    for h, e in zip(hs, errors):
        bias = math.exp(sde.mu * T) - (1 + sde.mu * h) ** round(T / h)
        assert abs(e - bias) < 5 * stderr[hs.index(h)] + 1e-12
    assert abs(slope(hs, errors) - 1.0) <= 0.15


# --------------------------------------------------------------------------------------------------------------
# Agreement with torchsde given the same Brownian motion
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sde_type,method,options",
    [
        ("ito", "euler", None),
        ("ito", "milstein", None),
        ("ito", "milstein", {"grad_free": True}),
        ("stratonovich", "milstein", None),
        ("stratonovich", "milstein", {"grad_free": True}),
        ("stratonovich", "heun", None),
        ("stratonovich", "midpoint", None),
    ],
)
def test_agrees_with_torchsde_on_the_same_brownian_path(sde_type, method, options):
    sde, batch = NonlinearDiagonal(sde_type), 64
    bm = BrownianPath(0.0, 1.0, (batch, 2), levels=8, seed=3, dtype=DTYPE)
    y0 = torch.randn(batch, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    ours = sdeint(sde, y0, ts, method=method, dt=2**-6, bm=bm, options=options)
    theirs = torchsde.sdeint(sde, y0, ts, method=method, dt=2**-6, bm=bm, options=options)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # and the backend switch hands over the very same call
    swapped = sdeint(sde, y0, ts, method=method, dt=2**-6, bm=bm, options=options, backend="torchsde")
    torch.testing.assert_close(swapped, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("sde_type,method", [("ito", "euler"), ("stratonovich", "heun"), ("stratonovich", "midpoint")])
def test_general_noise_agrees_with_torchsde(sde_type, method):
    sde, batch = GeneralNoise(sde_type), 32
    bm = BrownianPath(0.0, 1.0, (batch, 3), levels=6, seed=4, dtype=DTYPE)
    y0 = torch.ones(batch, 2, dtype=DTYPE)
    ours = sdeint(sde, y0, [0.0, 1.0], method=method, dt=2**-5, bm=bm)
    theirs = torchsde.sdeint(sde, y0, torch.tensor([0.0, 1.0], dtype=DTYPE), method=method, dt=2**-5, bm=bm)
    assert ours.shape == (2, batch, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_brownian_interval_is_accepted():
    sde, batch = NonlinearDiagonal(), 16

    def interval():
        return torchsde.BrownianInterval(0.0, 1.0, size=(batch, 2), dtype=DTYPE, dt=2**-5, entropy=7)

    y0 = torch.ones(batch, 2, dtype=DTYPE)
    ts = torch.tensor([0.0, 1.0], dtype=DTYPE)
    ours = sdeint(sde, y0, ts, method="euler", dt=2**-5, bm=interval())
    theirs = torchsde.sdeint(sde, y0, ts, method="euler", dt=2**-5, bm=interval())
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_gradients_flow_through_milstein_like_torchsde():
    """The autograd Milstein term keeps its graph, so parameters get the same gradient as with torchsde."""

    class Param(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.tensor(0.7, dtype=DTYPE))

        def f(self, t, y):
            return -self.theta * y

        def g(self, t, y):
            return self.theta * torch.sin(y)

    sde, batch = Param(), 32
    bm = BrownianPath(0.0, 1.0, (batch, 1), levels=6, seed=5, dtype=DTYPE)
    y0 = torch.ones(batch, 1, dtype=DTYPE)
    grads = []
    for solve in (sdeint, torchsde.sdeint):
        sde.zero_grad()
        ys = solve(sde, y0, torch.tensor([0.0, 1.0], dtype=DTYPE), method="milstein", dt=2**-5, bm=bm)
        ys[-1].pow(2).mean().backward()
        grads.append(sde.theta.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs() > 0


# --------------------------------------------------------------------------------------------------------------
# The default call: its own increments, one randn call, a robust step grid
# --------------------------------------------------------------------------------------------------------------


def test_default_call_draws_all_increments_with_one_randn(monkeypatch):
    calls = []
    randn = torch.randn

    def counting_randn(*args, **kwargs):
        calls.append(args)
        return randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", counting_randn)
    y0 = torch.ones(256, 2)
    ys = sdeint(NonlinearDiagonal(), y0, torch.tensor([0.0, 1.0]), method="euler", dt=0.01, seed=0)
    assert ys.shape == (2, 256, 2) and ys.dtype == torch.float32
    assert len(calls) == 1 and tuple(calls[0][0]) == (100, 256, 2)
    # srk (the Itô default) draws dW and I_(1,0) together
    ys = sdeint(NonlinearDiagonal(), y0, torch.tensor([0.0, 1.0]), dt=0.01, seed=0)
    assert len(calls) == 2 and tuple(calls[1][0]) == (100, 2, 256, 2)


def test_seed_and_global_rng_make_runs_repeat():
    sde, y0 = NonlinearDiagonal(), torch.ones(8, 2, dtype=DTYPE)
    a = sdeint(sde, y0, [0.0, 1.0], dt=0.1, seed=11)
    b = sdeint(sde, y0, [0.0, 1.0], dt=0.1, seed=11)
    c = sdeint(sde, y0, [0.0, 1.0], dt=0.1, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = sdeint(sde, y0, [0.0, 1.0], dt=0.1)
    torch.manual_seed(3)
    e = sdeint(sde, y0, [0.0, 1.0], dt=0.1)
    assert torch.equal(d, e)


def test_default_increments_have_variance_of_the_step():
    class Pure:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.zeros_like(y)

        def g(self, t, y):
            return torch.ones_like(y)

    ys = sdeint(Pure(), torch.zeros(20_000, 1, dtype=DTYPE), [0.0, 0.3, 1.0], dt=0.07, seed=0)
    var = ys[:, :, 0].var(dim=1)
    assert abs(var[1].item() - 0.3) < 0.02 and abs(var[2].item() - 1.0) < 0.05


def test_step_grid_is_robust_to_rounding_and_hits_observation_times():
    t32 = torch.linspace(0, 1, 11, dtype=torch.float32).tolist()
    grid, obs = step_grid(t32, 0.01)
    assert len(grid) == 101 and obs == list(range(0, 101, 10))
    grid, obs = step_grid([0.0, 0.25, 1.0], 0.1)  # 0.25 = 2 steps + 0.05, 0.75 = 7 steps + 0.05
    assert len(grid) - 1 == 3 + 8 and grid[obs[1]] == 0.25 and grid[-1] == 1.0
    assert min(b - a for a, b in zip(grid[:-1], grid[1:])) > 0


def test_observation_times_are_hit_exactly():
    class Clock:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.ones_like(y)

        def g(self, t, y):
            return torch.zeros_like(y)

    ts = [0.0, 0.13, 0.5, 0.77]
    ys = sdeint(Clock(), torch.zeros(3, 1, dtype=DTYPE), ts, dt=0.1, seed=0)
    torch.testing.assert_close(ys[:, 0, 0], torch.tensor(ts, dtype=DTYPE))


# --------------------------------------------------------------------------------------------------------------
# BrownianPath
# --------------------------------------------------------------------------------------------------------------


def test_brownian_path_increments_add_up():
    bm = BrownianPath(0.0, 1.0, (50, 3), levels=6, seed=0, dtype=DTYPE)
    for a, b, c in [(0.0, 0.25, 1.0), (0.1, 0.33, 0.9), (0.2, 0.2001, 0.2002)]:
        torch.testing.assert_close(bm(a, c), bm(a, b) + bm(b, c), rtol=0, atol=1e-12)
    assert bm(0.4, 0.4).abs().max() == 0
    torch.testing.assert_close(bm(0.7), bm(0.0, 0.7))


def test_brownian_path_same_values_at_any_query_granularity():
    bm = BrownianPath(0.0, 2.0, (10, 2), levels=9, seed=1, dtype=DTYPE)
    coarse = bm(0.0, 2.0)
    for n in (1, 4, 32, 512):
        fine = sum(bm(2.0 * i / n, 2.0 * (i + 1) / n) for i in range(n))
        torch.testing.assert_close(fine, coarse, rtol=0, atol=1e-12)
    # off the grid too: the Brownian bridge values are cached
    off = [0.0, 0.0013, 0.7001, 1.3, 2.0]
    torch.testing.assert_close(sum(bm(a, b) for a, b in zip(off[:-1], off[1:])), coarse, rtol=0, atol=1e-12)
    first = bm(0.0013, 0.7001)
    torch.testing.assert_close(bm(0.0013, 0.7001), first, rtol=0, atol=0)


def test_brownian_path_is_reproducible_from_its_seed():
    a = BrownianPath(0.0, 1.0, (4, 2), levels=5, seed=9)
    b = BrownianPath(0.0, 1.0, (4, 2), levels=5, seed=9)
    c = BrownianPath(0.0, 1.0, (4, 2), levels=5, seed=10)
    assert torch.equal(a(0.25, 0.5), b(0.25, 0.5)) and not torch.equal(a(0.25, 0.5), c(0.25, 0.5))
    assert torch.equal(a(0.1, 0.37), b(0.1, 0.37))


def test_brownian_path_variance_is_the_time_step():
    bm = BrownianPath(0.0, 1.0, (40_000, 1), levels=4, seed=2, dtype=DTYPE)
    for a, b in [(0.0, 1.0), (0.25, 0.5), (0.3, 0.34), (0.301, 0.302)]:  # the last two are off the grid (bridge)
        dw = bm(a, b)
        assert abs(dw.mean().item()) < 5 * math.sqrt((b - a) / 40_000)
        assert abs(dw.var().item() / (b - a) - 1) < 0.05
    # independent increments over disjoint intervals
    r = torch.corrcoef(torch.stack([bm(0.0, 0.3)[:, 0], bm(0.3, 0.31)[:, 0]]))[0, 1]
    assert abs(r.item()) < 0.03


def test_brownian_path_dtype_device_and_torchsde_attributes():
    bm = BrownianPath(0.0, 1.0, (3, 2), dt=0.01, seed=0, dtype=torch.float32, device="cpu")
    assert bm.n_cells == 100 and bm.shape == (3, 2) and bm.levy_area_approximation == "none"
    dw = bm(torch.tensor(0.1), torch.tensor(0.37))
    assert dw.dtype == torch.float32 and dw.device.type == "cpu" and dw.shape == (3, 2)
    assert bm.grid_values.shape == (101, 3, 2) and bm.grid_times.shape == (101,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_brownian_path_and_sdeint_on_gpu():
    device = torch.device("cuda")
    bm = BrownianPath(0.0, 1.0, (8, 2), levels=5, seed=0, device=device)
    ys = sdeint(NonlinearDiagonal(), torch.ones(8, 2, device=device), [0.0, 1.0], dt=2**-5, bm=bm)
    assert ys.device.type == "cuda"
    ys = sdeint(NonlinearDiagonal(), torch.ones(8, 2, device=device), [0.0, 1.0], dt=2**-5, seed=0)
    assert ys.device.type == "cuda"
    # srk with the space-time area, on and off the grid, and reversible Heun
    bm = BrownianPath(0.0, 1.0, (8, 2), levels=5, seed=0, device=device, levy_area_approximation="space-time")
    for dt in (2**-5, 0.03):
        ys = sdeint(NonlinearDiagonal(), torch.ones(8, 2, device=device), [0.0, 1.0], bm, "srk", dt)
        assert ys.device.type == "cuda" and torch.isfinite(ys).all()
    ys = sdeint(NonlinearDiagonal("stratonovich"), torch.ones(8, 2, device=device), [0.0, 1.0], bm,
                "reversible_heun", 2**-5)
    assert ys.device.type == "cuda"


def test_brownian_path_bad_input():
    with pytest.raises(ValueError, match="t0 < t1"):
        BrownianPath(1.0, 0.0, (2, 1))
    bm = BrownianPath(0.0, 1.0, (2, 1), levels=3, seed=0)
    with pytest.raises(ValueError, match="outside"):
        bm(0.0, 1.5)
    with pytest.raises(ValueError, match="ta <= tb"):
        bm(0.5, 0.25)


# --------------------------------------------------------------------------------------------------------------
# Bad input: one test per case
# --------------------------------------------------------------------------------------------------------------

Y0 = torch.ones(4, 2, dtype=DTYPE)


@pytest.mark.parametrize("t", [[0.0, 0.5, 0.5, 1.0], [0.0, 0.7, 0.4, 1.0]])
def test_t_not_strictly_increasing(t):
    with pytest.raises(ValueError, match="strictly increasing"):
        sdeint(NonlinearDiagonal(), Y0, t, dt=0.1)


def test_decreasing_t_is_refused_with_an_explanation():
    with pytest.raises(ValueError, match="forward in time only"):
        sdeint(NonlinearDiagonal(), Y0, [1.0, 0.0], dt=0.1)


@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan")])
def test_dt_not_positive(dt):
    with pytest.raises(ValueError, match="dt must be a positive"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=dt)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'rk4'"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], method="rk4", dt=0.1)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'diffrax'"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, backend="diffrax")


def test_euler_refuses_a_stratonovich_sde():
    with pytest.raises(ValueError, match="does not solve stratonovich SDEs.*heun"):
        sdeint(NonlinearDiagonal("stratonovich"), Y0, [0.0, 1.0], method="euler", dt=0.1)


def test_heun_refuses_an_ito_sde():
    with pytest.raises(ValueError, match="'heun' does not solve ito SDEs"):
        sdeint(NonlinearDiagonal("ito"), Y0, [0.0, 1.0], method="heun", dt=0.1)


def test_milstein_refuses_general_noise():
    with pytest.raises(ValueError, match="does not support general noise"):
        sdeint(GeneralNoise(), Y0, [0.0, 1.0], method="milstein", dt=0.1)


def test_unknown_noise_type():
    sde = NonlinearDiagonal()
    sde.noise_type = "multiplicative"
    with pytest.raises(ValueError, match="noise_type must be one of"):
        sdeint(sde, Y0, [0.0, 1.0], dt=0.1)


@pytest.mark.parametrize("y0", [torch.ones(2, dtype=DTYPE), torch.ones(4, 2, 1, dtype=DTYPE)])
def test_y0_not_two_dimensional(y0):
    with pytest.raises(ValueError, match=r"y0 must be 2-D, shape \(batch, d\)"):
        sdeint(NonlinearDiagonal(), y0, [0.0, 1.0], dt=0.1)


def test_diagonal_noise_with_a_matrix_diffusion():
    sde = NonlinearDiagonal()
    sde.g = lambda t, y: torch.ones(*y.shape, 1, dtype=y.dtype)
    with pytest.raises(ValueError, match=r"diagonal noise: g\(t, y\) must have shape \(batch, d\)"):
        sdeint(sde, Y0, [0.0, 1.0], dt=0.1)


def test_scalar_noise_with_a_vector_diffusion():
    sde = LinearScalar()
    sde.g = lambda t, y: y
    with pytest.raises(ValueError, match=r"scalar noise: g\(t, y\) must have shape \(batch, d, 1\)"):
        sdeint(sde, Y0, [0.0, 1.0], method="milstein", dt=0.1)


def test_drift_of_the_wrong_shape():
    sde = NonlinearDiagonal()
    sde.f = lambda t, y: y.sum(-1)
    with pytest.raises(ValueError, match="drift f"):
        sdeint(sde, Y0, [0.0, 1.0], dt=0.1)


def test_nan_in_the_state_names_the_time():
    class Blowup:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.where(t > 0.45, torch.full_like(y, float("nan")), y)

        def g(self, t, y):
            return torch.zeros_like(y)

    with pytest.raises(FloatingPointError, match=r"between t=0\.4 and t=0\.6"):
        sdeint(Blowup(), Y0, [0.0, 0.2, 0.4, 0.6, 0.8], dt=0.05, seed=0)


def test_inf_in_y0():
    with pytest.raises(FloatingPointError, match="t=0.0"):
        sdeint(NonlinearDiagonal(), torch.full((2, 2), float("inf"), dtype=DTYPE), [0.0, 1.0], dt=0.1)


def test_bm_increments_of_the_wrong_shape():
    def bad_bm(ta, tb):
        return torch.zeros(4, 3, dtype=DTYPE)

    with pytest.raises(ValueError, match=r"increment of shape \(4, 3\); expected \(batch, m\) = \(4, 2\)"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], method="euler", dt=0.1, bm=bad_bm)
    with pytest.raises(ValueError, match=r"bm has shape \(4, 1\)"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, bm=BrownianPath(0.0, 1.0, (4, 1), levels=3))


def test_seed_together_with_bm():
    with pytest.raises(ValueError, match="seed"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, seed=0, bm=BrownianPath(0.0, 1.0, (4, 2), levels=3))


def test_unknown_option():
    with pytest.raises(ValueError, match="unknown options"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, method="milstein", options={"gradfree": True})


def test_sde_without_diffusion():
    class DriftOnly:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return y

    with pytest.raises(TypeError, match=r"no diffusion: define a method g\(t, y\)"):
        sdeint(DriftOnly(), Y0, [0.0, 1.0], dt=0.1)


def test_bm_of_another_dtype():
    with pytest.raises(ValueError, match="bm has dtype torch.float32 but y0 has dtype torch.float64"):
        bm = BrownianPath(0.0, 1.0, (4, 2), levels=3, dtype=torch.float32)
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, bm=bm)


def test_bm_on_another_device():
    class MetaBrownian:
        shape, dtype, device = (4, 2), DTYPE, torch.device("meta")

        def __call__(self, ta, tb):
            return torch.zeros(4, 2, dtype=DTYPE)

    with pytest.raises(ValueError, match="bm is on device meta but y0 is on cpu"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, bm=MetaBrownian())


def test_additive_noise_milstein_is_euler_maruyama():
    class Additive:
        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.2, 0.4]], dtype=y.dtype).expand(y.shape[0], 2, 3)

    bm = BrownianPath(0.0, 1.0, (8, 3), levels=5, seed=0, dtype=DTYPE)
    em = sdeint(Additive(), Y0.repeat(2, 1), [0.0, 1.0], method="euler", dt=2**-5, bm=bm)
    mil = sdeint(Additive(), Y0.repeat(2, 1), [0.0, 1.0], method="milstein", dt=2**-5, bm=bm)
    torch.testing.assert_close(em, mil, rtol=0, atol=1e-14)


def test_torchsde_backend_with_a_seed_is_reproducible():
    a = sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, seed=5, backend="torchsde")
    b = sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, seed=5, backend="torchsde")
    assert a.shape == (2, 4, 2) and torch.equal(a, b)


# --------------------------------------------------------------------------------------------------------------
# torchsde's call: signature, names, fast paths, logqp, extra
# --------------------------------------------------------------------------------------------------------------


def test_signature_is_torchsdes_in_torchsdes_order():
    import inspect

    ours = list(inspect.signature(sdeint).parameters.values())
    theirs = [p for p in inspect.signature(torchsde.sdeint).parameters.values() if p.kind != p.VAR_KEYWORD]
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [(p.name, p.default) for p in theirs]
    assert ours[len(theirs)].name == "backend" and all(p.kind == p.KEYWORD_ONLY for p in ours[len(theirs) + 1 :])


def test_called_positionally_and_by_keyword_as_torchsdes_docs_write_it():
    sde, batch = NonlinearDiagonal(), 8
    bm = BrownianPath(0.0, 1.0, (batch, 2), levels=6, seed=3, dtype=DTYPE)
    y0, ts = torch.ones(batch, 2, dtype=DTYPE), torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    theirs = torchsde.sdeint(sde, y0, ts, bm, "euler", 2**-6)
    torch.testing.assert_close(sdeint(sde, y0, ts, bm, "euler", 2**-6), theirs, rtol=1e-12, atol=1e-12)
    by_keyword = sdeint(sde=sde, y0=y0, ts=ts, bm=bm, method="euler", dt=2**-6)
    torch.testing.assert_close(by_keyword, theirs, rtol=1e-12, atol=1e-12)


def test_default_methods_are_torchsdes():
    """Itô: srk, euler for general noise; Stratonovich: midpoint."""
    bm = BrownianPath(0.0, 1.0, (4, 2), levels=5, seed=0, dtype=DTYPE, levy_area_approximation="space-time")
    bm3 = BrownianPath(0.0, 1.0, (4, 3), levels=5, seed=0, dtype=DTYPE)
    cases = [(NonlinearDiagonal("ito"), bm, "srk"), (NonlinearDiagonal("stratonovich"), bm, "midpoint"),
             (GeneralNoise("ito"), bm3, "euler")]
    for sde, path, method in cases:
        expected = sdeint(sde, Y0, [0.0, 1.0], path, method, 2**-5)
        torch.testing.assert_close(sdeint(sde, Y0, [0.0, 1.0], path, dt=2**-5), expected, rtol=0, atol=0)


def test_torchsde_backend_hands_over_the_call_unresolved():
    """method=None goes to torchsde as None, so torchsde picks its own default (srk for this Itô SDE)."""
    sde, batch = NonlinearDiagonal(), 8
    y0, ts = torch.ones(batch, 2, dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE)

    def interval():
        return torchsde.BrownianInterval(
            0.0, 1.0, size=(batch, 2), dtype=DTYPE, entropy=4, levy_area_approximation="space-time"
        )

    ours = sdeint(sde, y0, ts, interval(), dt=2**-5, backend="torchsde")
    torch.testing.assert_close(ours, torchsde.sdeint(sde, y0, ts, interval(), dt=2**-5), rtol=0, atol=0)
    srk = torchsde.sdeint(sde, y0, ts, interval(), method="srk", dt=2**-5)
    torch.testing.assert_close(ours, srk, rtol=0, atol=0)


class Renamed:
    """NonlinearDiagonal with its drift and diffusion under other names, and a prior drift."""

    noise_type, sde_type = "diagonal", "ito"

    def drift(self, t, y):
        return NonlinearDiagonal().f(t, y)

    def diffusion(self, t, y):
        return NonlinearDiagonal().g(t, y)

    def prior(self, t, y):
        return -y


def test_names_rename_drift_and_diffusion():
    bm = BrownianPath(0.0, 1.0, (4, 2), levels=5, seed=0, dtype=DTYPE)
    names = {"drift": "drift", "diffusion": "diffusion"}
    expected = sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], bm, "milstein", 2**-5)
    ours = sdeint(Renamed(), Y0, [0.0, 1.0], bm, "milstein", 2**-5, names=names)
    theirs = torchsde.sdeint(Renamed(), Y0, torch.tensor([0.0, 1.0], dtype=DTYPE), bm, "milstein", 2**-5, names=names)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_names_drift_skips_a_fast_path_that_would_compute_the_other_drift():
    """names={"drift": "h"} samples the prior of a latent SDE; its f_and_g computes the posterior drift."""

    class Latent(Renamed):
        f, g, h = Renamed.drift, Renamed.diffusion, Renamed.prior

        def f_and_g(self, t, y):
            return self.f(t, y), self.g(t, y)

    class Prior(Renamed):
        f, g = Renamed.prior, Renamed.diffusion

    bm = BrownianPath(0.0, 1.0, (4, 2), levels=5, seed=0, dtype=DTYPE)
    prior = sdeint(Latent(), Y0, [0.0, 1.0], bm, "euler", 2**-5, names={"drift": "h"})
    torch.testing.assert_close(prior, sdeint(Prior(), Y0, [0.0, 1.0], bm, "euler", 2**-5), rtol=0, atol=0)


@pytest.mark.parametrize(
    "names,error,match",
    [
        ({"drfit": "f"}, ValueError, "unknown names keys"),
        ({"drift": "nope"}, ValueError, "has no method 'nope'"),
        ({"drift": 3}, TypeError, "must be the name of a method"),
    ],
)
def test_bad_names(names, error, match):
    with pytest.raises(error, match=match):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, names=names)


class Counting:
    """General-noise SDE that defines only the fast path(s) it is built with, and counts their calls."""

    noise_type, sde_type = "general", "stratonovich"
    base = GeneralNoise("stratonovich")

    def __init__(self, *paths):
        self.calls = dict.fromkeys(paths, 0)
        for path in paths:
            setattr(self, path, self._counted(path))

    def _counted(self, path):
        def fast(t, y, *v):
            self.calls[path] += 1
            f, g = self.base.f(t, y), self.base.g(t, y)
            gv = (g @ v[0].unsqueeze(-1)).squeeze(-1) if v else g
            return {"f": f, "g": g, "f_and_g": (f, g), "g_prod": gv, "f_and_g_prod": (f, gv)}[path]

        return fast


@pytest.mark.parametrize("paths", [("f_and_g",), ("f", "g_prod"), ("f_and_g_prod",)])
def test_fast_paths_are_used_when_defined(paths):
    batch, dt = 4, 2**-4
    bm = BrownianPath(0.0, 1.0, (batch, 3), levels=4, seed=0, dtype=DTYPE)
    y0 = torch.ones(batch, 2, dtype=DTYPE)
    expected = sdeint(GeneralNoise("stratonovich"), y0, [0.0, 1.0], bm, "heun", dt)
    sde = Counting(*paths)
    torch.testing.assert_close(sdeint(sde, y0, [0.0, 1.0], bm, "heun", dt), expected, rtol=0, atol=1e-15)
    assert all(n >= 2 * 16 for n in sde.calls.values()), sde.calls  # two evaluations a step, through the fast path
    theirs = torchsde.sdeint(Counting(*paths), y0, torch.tensor([0.0, 1.0], dtype=DTYPE), bm, "heun", dt)
    torch.testing.assert_close(theirs, expected, rtol=1e-12, atol=1e-12)


def test_methods_that_need_g_itself_refuse_an_sde_with_g_prod_only():
    class ProdOnly:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g_prod(self, t, y, v):
            return 0.5 * v

    for method in ("milstein", "srk", "reversible_heun", None):  # None: srk, the Itô default
        ProdOnly.sde_type = "stratonovich" if method == "reversible_heun" else "ito"
        with pytest.raises(TypeError, match=f"'{method or 'srk'}' needs the drift f and the diffusion g"):
            sdeint(ProdOnly(), Y0, [0.0, 1.0], method=method, dt=0.1)
    ProdOnly.sde_type = "ito"
    assert sdeint(ProdOnly(), Y0, [0.0, 1.0], method="euler", dt=0.1, seed=0).shape == (2, 4, 2)


class LatentOU:
    """Posterior dX = (c - X) dt + s dW and prior dX = -X dt + s dW: u = (f - h)/g = c/s, a constant."""

    sde_type = "ito"

    def __init__(self, noise_type="diagonal", c=0.6, s=0.4):
        self.noise_type, self.c, self.s = noise_type, c, s

    def f(self, t, y):
        return self.c - y

    def h(self, t, y):
        return -y

    def g(self, t, y):
        g = self.s * torch.ones_like(y)
        return g if self.noise_type == "diagonal" else g.unsqueeze(-1)


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_logqp_is_the_girsanov_log_ratio(noise_type, method):
    """Constant u: the log-ratio over [a, b] is |u|^2 (b - a) / 2 on every path, for every method."""
    sde, batch, ts = LatentOU(noise_type), 6, [0.0, 0.3, 1.0]
    ys, log_ratio = sdeint(sde, Y0.repeat(2, 1)[:batch], ts, method=method, dt=0.05, seed=0, logqp=True)
    assert ys.shape == (3, batch, 2) and log_ratio.shape == (2, batch)
    u2 = 2 * (sde.c / sde.s) ** 2 if noise_type == "diagonal" else 2 * sde.c**2 / (2 * sde.s**2)
    expected = torch.tensor([0.3, 0.7], dtype=DTYPE)[:, None].expand(2, batch) * 0.5 * u2
    torch.testing.assert_close(log_ratio, expected, rtol=1e-12, atol=1e-12)
    # the state is the one solved without logqp, on the same increments
    torch.testing.assert_close(ys, sdeint(sde, Y0.repeat(2, 1)[:batch], ts, method=method, dt=0.05, seed=0))


@pytest.mark.parametrize(
    "sde_type,noise_type,method",
    [
        ("ito", "diagonal", "euler"),
        ("ito", "diagonal", "milstein"),
        ("stratonovich", "diagonal", "midpoint"),
        ("stratonovich", "diagonal", "heun"),
        ("ito", "general", "euler"),
    ],
)
def test_logqp_agrees_with_torchsde(sde_type, noise_type, method):
    class Latent(NonlinearDiagonal if noise_type == "diagonal" else GeneralNoise):
        def h(self, t, y):
            return -0.5 * y

    sde, batch = Latent(sde_type), 8
    m = 2 if noise_type == "diagonal" else 3
    y0, ts = torch.ones(batch, 2, dtype=DTYPE) * 0.3, torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    # torchsde needs one Brownian motion more for diagonal noise (it multiplies the log-ratio's zero diffusion)
    bm = BrownianPath(0.0, 1.0, (batch, m + (noise_type == "diagonal")), levels=6, seed=2, dtype=DTYPE)
    theirs = torchsde.sdeint(sde, y0, ts, bm, method, 2**-6, logqp=True)
    for ours in (
        sdeint(sde, y0, ts, bm, method, 2**-6, logqp=True),
        sdeint(sde, y0, ts, lambda a, b: bm(a, b)[:, :m], method, 2**-6, logqp=True),  # the SDE's own bm shape
    ):
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_logqp_needs_a_prior_drift():
    with pytest.raises(TypeError, match="prior drift h"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, logqp=True)


def test_extra_returns_the_solver_state_last():
    ys, state = sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, seed=0, extra=True)
    assert ys.shape == (2, 4, 2) and state == ()
    ys, log_ratio, state = sdeint(LatentOU(), Y0, [0.0, 1.0], dt=0.1, seed=0, logqp=True, extra=True)
    assert log_ratio.shape == (1, 4) and state == ()
    with pytest.raises(ValueError, match="keeps no solver state"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, extra_solver_state=(Y0,))


def test_adaptive_is_refused_clearly():
    with pytest.raises(NotImplementedError, match="fixed dt only"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], dt=0.1, adaptive=True)


# --------------------------------------------------------------------------------------------------------------
# srk (Rößler 2010) and reversible Heun (Kidger et al. 2021); the space-time area of BrownianPath
# --------------------------------------------------------------------------------------------------------------


def space_time_path(batch, m, seed, levels=10):
    return BrownianPath(
        0.0, 1.0, (batch, m), levels=levels, seed=seed, dtype=DTYPE, levy_area_approximation="space-time"
    )


def test_brownian_path_space_time_area_has_the_right_law():
    """(dW, U) over [a, b]: Var dW = h, Var U = h^3/3, Cov = h^2/2, on and off the grid (Brownian bridge of (W, V))."""
    bm = space_time_path(40_000, 1, seed=0, levels=4)
    for a, b in [(0.0, 1.0), (0.25, 0.5), (0.3, 0.34), (0.301, 0.302)]:
        w, u = bm(a, b, return_U=True)
        h = b - a
        assert abs(w.var().item() / h - 1) < 0.03
        assert abs(u.var().item() / (h**3 / 3) - 1) < 0.03
        assert abs((w * u).mean().item() / (h**2 / 2) - 1) < 0.03
    w, u = bm(0.6, 0.7, return_U=True)  # the space-time Levy area U/h - dW/2 is independent of dW
    assert abs(torch.corrcoef(torch.stack([(u / 0.1 - w / 2)[:, 0], w[:, 0]]))[0, 1].item()) < 0.03


def test_brownian_path_space_time_area_is_consistent_under_refinement():
    """U_{a,c} = U_{a,b} + U_{b,c} + (c - b) W_{a,b}, at any points; the grid increments are those of 'none'."""
    bm = space_time_path(5, 2, seed=1, levels=3)
    points = [0.0, 0.013, 0.2, 0.37, 0.5, 0.77, 1.0]
    w_total, u_total = bm(0.0, 1.0, return_U=True)
    w, u = torch.zeros_like(w_total), torch.zeros_like(u_total)
    for a, b in zip(points[:-1], points[1:]):
        wi, ui = bm(a, b, return_U=True)
        w, u = w + wi, u + ui + (b - a) * w
    torch.testing.assert_close(w, w_total, rtol=0, atol=1e-13)
    torch.testing.assert_close(u, u_total, rtol=0, atol=1e-13)
    plain = BrownianPath(0.0, 1.0, (5, 2), levels=3, seed=1, dtype=DTYPE)
    torch.testing.assert_close(bm(0.25, 0.75), plain(0.25, 0.75), rtol=0, atol=0)


def test_brownian_path_space_time_bad_input():
    with pytest.raises(ValueError, match="levy_area_approximation must be 'none' or 'space-time'"):
        BrownianPath(0.0, 1.0, (2, 1), levy_area_approximation="foster")
    with pytest.raises(ValueError, match="return_U needs"):
        BrownianPath(0.0, 1.0, (2, 1), levels=2)(0.0, 0.5, return_U=True)
    with pytest.raises(ValueError, match="no Levy area A"):
        space_time_path(2, 1, seed=0, levels=2)(0.0, 0.5, return_A=True)


def test_srk_strong_order_one_and_a_half_on_gbm():
    sde, batch = GBM(), 4000
    bm = space_time_path(batch, 1, seed=0)
    y0 = torch.ones(batch, 1, dtype=DTYPE)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    errors = [(sdeint(sde, y0, [0.0, 1.0], bm, "srk", h)[-1] - exact).abs().mean().item() for h in STEPS]
    assert abs(slope(STEPS, errors) - 1.5) <= 0.15, errors


class LinearScalarSDE(LinearScalar):
    """LinearScalar in the Itô or the Stratonovich sense: dY = a Y dt + B Y dW, or with o dW (no -B^2/2)."""

    def __init__(self, sde_type="ito"):
        self.sde_type = sde_type

    def exact(self, y0, w, t):
        eye = torch.eye(2, dtype=DTYPE)
        correction = 0.5 * self.B @ self.B if self.sde_type == "ito" else 0 * eye
        m = (self.a * eye - correction)[None] * t + w[:, :, None] * self.B[None]
        return (torch.linalg.matrix_exp(m) @ y0.unsqueeze(-1)).squeeze(-1)


def scalar_errors(sde, method, batch=2000):
    bm = space_time_path(batch, 1, seed=1)
    y0 = torch.ones(batch, 2, dtype=DTYPE)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    return [(sdeint(sde, y0, [0.0, 1.0], bm, method, h)[-1] - exact).norm(dim=-1).mean().item() for h in STEPS]


def test_srk_strong_order_one_and_a_half_with_scalar_noise():
    errors = scalar_errors(LinearScalarSDE("ito"), "srk")
    assert abs(slope(STEPS, errors) - 1.5) <= 0.15, errors


class ForcedOU:
    """dX = (-X + sin 3t) dt + 0.8 dW, additive noise (the same SDE in either sense)."""

    noise_type, theta, sigma = "additive", 1.0, 0.8

    def __init__(self, sde_type="ito"):
        self.sde_type = sde_type

    def f(self, t, y):
        return -self.theta * y + torch.sin(3 * t)

    def g(self, t, y):
        return torch.full((y.shape[0], 1, 1), self.sigma, dtype=y.dtype)

    def exact(self, bm, y0):
        """X_1 = e^{-1} X_0 + int_0^1 e^{-(1-s)} sin 3s ds + sigma int_0^1 e^{-(1-s)} dW_s, the last integral cell by
        cell of the path's grid from (dW, U): int_a^b e^{-(b-s)} dW_s = e^{-h}(dW + h dW - U) + O(h^{5/2})."""
        n = bm.n_cells
        h = 1.0 / n
        dw, du = bm._increments([k * h for k in range(n + 1)], DTYPE)
        decay = torch.exp(-(1.0 - torch.arange(1, n + 1, dtype=DTYPE) * h))[:, None, None]
        stochastic = (decay * math.exp(-h) * (dw + h * dw - du)).sum(0)
        deterministic = (math.sin(3) - 3 * math.cos(3) + 3 / math.e) / 10  # int_0^1 e^{s-1} sin 3s ds, by parts
        return math.exp(-1.0) * y0 + deterministic + self.sigma * stochastic


def additive_errors(sde, method, batch=4000):
    bm = space_time_path(batch, 1, seed=2)
    y0 = torch.ones(batch, 1, dtype=DTYPE)
    exact = sde.exact(bm, y0)
    return [(sdeint(sde, y0, [0.0, 1.0], bm, method, h)[-1] - exact).abs().mean().item() for h in STEPS]


def test_srk_additive_noise_order_at_least_one_and_a_half_ito_and_stratonovich():
    """SRA1: strong order 1.5 in general; on this drift, linear in X, the measured slope is 2."""
    ito = additive_errors(ForcedOU("ito"), "srk")
    assert slope(STEPS, ito) >= 1.5 - 0.15, ito
    assert additive_errors(ForcedOU("stratonovich"), "srk") == ito  # Itô and Stratonovich coincide


def test_reversible_heun_strong_orders():
    """Order 1 for additive noise (Kidger et al. 2021); measured 1 on dY = B Y o dW (scalar noise, d = 2) and GBM."""
    assert abs(slope(STEPS, additive_errors(ForcedOU("stratonovich"), "reversible_heun")) - 1.0) <= 0.15
    assert abs(slope(STEPS, scalar_errors(LinearScalarSDE("stratonovich"), "reversible_heun")) - 1.0) <= 0.15
    assert abs(slope(STEPS, strong_errors(GBM(sde_type="stratonovich"), "reversible_heun")) - 1.0) <= 0.15


@pytest.mark.parametrize(
    "sde,m",
    [(NonlinearDiagonal("ito"), 2), (LinearScalarSDE("ito"), 1), (ForcedOU("ito"), 1)],
    ids=["diagonal", "scalar", "additive"],
)
def test_srk_agrees_with_torchsde_on_the_same_brownian_path(sde, m):
    batch = 32
    bm = space_time_path(batch, m, seed=3, levels=8)
    y0 = torch.randn(batch, 2 if m == 2 or isinstance(sde, LinearScalarSDE) else 1, dtype=DTYPE,
                     generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    ours = sdeint(sde, y0, ts, bm, "srk", 2**-6)
    torch.testing.assert_close(ours, torchsde.sdeint(sde, y0, ts, bm, "srk", 2**-6), rtol=1e-10, atol=1e-10)
    # and on torchsde's own Brownian motion
    def interval():
        return torchsde.BrownianInterval(0.0, 1.0, size=(batch, m), dtype=DTYPE, entropy=5,
                                         levy_area_approximation="space-time")

    ours = sdeint(sde, y0, ts, interval(), "srk", 2**-6)
    torch.testing.assert_close(ours, torchsde.sdeint(sde, y0, ts, interval(), "srk", 2**-6), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde,m", [(NonlinearDiagonal("stratonovich"), 2), (GeneralNoise("stratonovich"), 3)])
def test_reversible_heun_agrees_with_torchsde_and_continues_from_its_state(sde, m):
    batch = 16
    bm = BrownianPath(0.0, 1.0, (batch, m), levels=8, seed=4, dtype=DTYPE)
    y0 = torch.ones(batch, 2, dtype=DTYPE) * 0.5
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    ours, state = sdeint(sde, y0, ts, bm, "reversible_heun", 2**-6, extra=True)
    theirs, their_state = torchsde.sdeint(sde, y0, ts, bm, "reversible_heun", 2**-6, extra=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    for a, b in zip(state, their_state):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # two solves, the second started from the first's state, are the one solve
    first, mid_state = sdeint(sde, y0, ts[:2], bm, "reversible_heun", 2**-6, extra=True)
    second = sdeint(sde, first[-1], ts[1:], bm, "reversible_heun", 2**-6, extra_solver_state=mid_state)
    torch.testing.assert_close(second[-1], ours[-1], rtol=0, atol=1e-13)


def test_reversible_heun_is_algebraically_reversible():
    """(Y_n, Z_n) comes back from (Y_{n+1}, Z_{n+1}) by running the step backwards (Kidger et al. 2021)."""
    sde, batch, h = NonlinearDiagonal("stratonovich"), 8, 0.1
    y = torch.randn(batch, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    t0, t1 = torch.tensor(0.3, dtype=DTYPE), torch.tensor(0.4, dtype=DTYPE)
    dw = BrownianPath(0.0, 1.0, (batch, 2), levels=4, seed=5, dtype=DTYPE)(0.3, 0.4)
    from dedl.solvers.sde import reversible_heun_step

    z = y + 0.1
    state = (sde.f(t0, z), sde.g(t0, z), z)
    y1, (f1, g1, z1) = reversible_heun_step(sde, t1, y, h, dw, state, "diagonal")
    # backwards: Z_n = 2 Y_{n+1} - Z_{n+1} - f(t1, Z1) h - g(t1, Z1) dW, then Y_n from the Y update
    z0 = 2 * y1 - z1 - f1 * h - g1 * dw
    f0, g0 = sde.f(t0, z0), sde.g(t0, z0)
    y0 = y1 - (f0 + f1) * (h / 2) - (g0 + g1) * dw / 2
    torch.testing.assert_close(z0, z, rtol=0, atol=1e-14)
    torch.testing.assert_close(y0, y, rtol=0, atol=1e-14)


def test_srk_needs_the_space_time_area():
    with pytest.raises(ValueError, match="levy_area_approximation='space-time'"):
        sdeint(NonlinearDiagonal(), Y0, [0.0, 1.0], BrownianPath(0.0, 1.0, (4, 2), levels=3, dtype=DTYPE), "srk", 0.1)


def test_srk_refuses_general_noise_and_multiplicative_stratonovich():
    with pytest.raises(ValueError, match="does not support general noise for ito SDEs"):
        sdeint(GeneralNoise(), Y0, [0.0, 1.0], method="srk", dt=0.1)
    with pytest.raises(ValueError, match="does not support diagonal noise for stratonovich SDEs"):
        sdeint(NonlinearDiagonal("stratonovich"), Y0, [0.0, 1.0], method="srk", dt=0.1)


def test_reversible_heun_refuses_an_ito_sde_and_a_bad_state():
    with pytest.raises(ValueError, match="'reversible_heun' does not solve ito SDEs"):
        sdeint(NonlinearDiagonal("ito"), Y0, [0.0, 1.0], method="reversible_heun", dt=0.1)
    with pytest.raises(ValueError, match=r"is \(f, g, z\)"):
        sdeint(NonlinearDiagonal("stratonovich"), Y0, [0.0, 1.0], method="reversible_heun", dt=0.1,
               extra_solver_state=(Y0,))


@pytest.mark.parametrize("sde_type,method", [("ito", "srk"), ("stratonovich", "reversible_heun")])
def test_logqp_with_srk_and_reversible_heun_agrees_with_torchsde(sde_type, method):
    class Latent(NonlinearDiagonal):
        def h(self, t, y):
            return -0.5 * y

    sde, batch = Latent(sde_type), 8
    y0, ts = torch.ones(batch, 2, dtype=DTYPE) * 0.3, torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    bm = space_time_path(batch, 3, seed=2, levels=6)  # torchsde's: one more Brownian motion, for the log-ratio

    class FirstTwo:  # the SDE's own Brownian motion: the first two channels of bm
        shape, dtype, device, levy_area_approximation = (batch, 2), DTYPE, bm.device, "space-time"

        def __call__(self, ta, tb, return_U=False):
            out = bm(ta, tb, return_U=return_U)
            return tuple(x[:, :2] for x in out) if return_U else out[:, :2]

    theirs = torchsde.sdeint(sde, y0, ts, bm, method, 2**-6, logqp=True)
    for path in (bm, FirstTwo()):
        ours = sdeint(sde, y0, ts, path, method, 2**-6, logqp=True)
        assert ours[0].shape == (3, batch, 2) and ours[1].shape == (2, batch)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_torchsde_backend_hands_over_names_logqp_and_extra():
    sde, y0, ts = Renamed(), torch.ones(4, 2, dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE)
    names = {"drift": "drift", "diffusion": "diffusion", "prior_drift": "prior"}
    bm = BrownianPath(0.0, 1.0, (4, 3), levels=5, seed=0, dtype=DTYPE)
    ours = sdeint(sde, y0, ts, bm, "euler", 2**-5, names=names, logqp=True, extra=True, backend="torchsde")
    theirs = torchsde.sdeint(sde, y0, ts, bm, "euler", 2**-5, names=names, logqp=True, extra=True)
    assert len(ours) == 3
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_srk_keeps_its_order_off_the_brownian_grid():
    """Steps of 1/10 ... 1/160 on a 16-cell path: the (W, int W) bridge fills in U consistently, order 1.5 stays."""
    sde, batch = GBM(), 2000
    bm = space_time_path(batch, 1, seed=0, levels=4)
    y0 = torch.ones(batch, 1, dtype=DTYPE)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    hs = [1 / 10, 1 / 20, 1 / 40, 1 / 80, 1 / 160]
    errors = [(sdeint(sde, y0, [0.0, 1.0], bm, "srk", h)[-1] - exact).abs().mean().item() for h in hs]
    assert abs(slope(hs, errors) - 1.5) <= 0.15, errors
