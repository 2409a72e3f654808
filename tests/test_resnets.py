"""Tests of dedl.nn.resnets: shapes, parameter counts, gradients, dtypes, the orders of the schemes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dedl.nn.classifier import ImageClassifier
from dedl.nn.resnets import (
    EulerResNet,
    FractalNet,
    LMResNet,
    PolyNet,
    ResidualFunction,
    RKNet,
    survival_probabilities,
)
from dedl.solvers import DOPRI5, odeint

WIDTH = 4


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# Each body with the parameter count its docstring states (P = parameters of one residual function).
def bodies(kind: str):
    P = ResidualFunction.count(WIDTH, kind)
    P_norm = 4 * WIDTH if kind == "conv" else 0  # the batch norms that each extra power of PolyNet has
    return [
        ("euler", lambda: EulerResNet(WIDTH, 3, kind=kind), 3 * P, 3),
        ("lm", lambda: LMResNet(WIDTH, 3, kind=kind), 3 * P + 2, 3),
        ("lm-sd", lambda: LMResNet(WIDTH, 3, kind=kind, survival=0.5), 3 * P + 2, 3),
        ("rk4", lambda: RKNet(WIDTH, 2, kind=kind), 2 * 4 * P, 8),
        ("rk2-shared", lambda: RKNet(WIDTH, 2, kind=kind, scheme="midpoint", shared_stages=True), 2 * P, 4),
        ("poly2", lambda: PolyNet(WIDTH, 3, kind=kind), 3 * (P + P_norm), 6),
        ("poly3", lambda: PolyNet(WIDTH, 2, kind=kind, order=3), 2 * (P + 2 * P_norm), 6),
        ("fractal3", lambda: FractalNet(WIDTH, 2, kind=kind, columns=3, drop_path=0.15), 2 * 7 * P, 14),
    ]


CASES = [(kind, *case) for kind in ("conv", "linear") for case in bodies(kind)]
IDS = [f"{kind}-{name}" for kind, name, *_ in CASES]


def sample(kind: str, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (3, WIDTH, 5, 5) if kind == "conv" else (3, WIDTH)
    return torch.randn(shape, generator=g).to(dtype)


def test_residual_function_counts() -> None:
    for kind in ("conv", "linear"):
        for hidden in (None, 6):
            for norm in ("batch", None):
                f = ResidualFunction(WIDTH, kind, hidden=hidden, norm=norm)
                assert n_params(f) == ResidualFunction.count(WIDTH, kind, hidden=hidden, norm=norm)
    w, m, k = WIDTH, 6, 3
    assert ResidualFunction.count(w, "conv", m) == 2 * m * w * k * k + 2 * w + 2 * m
    assert ResidualFunction.count(w, "conv", m, norm=None) == 2 * m * w * k * k + m + w
    assert ResidualFunction.count(w, "linear", m) == 2 * m * w + m + w


@pytest.mark.parametrize("kind,name,make,count,nfe", CASES, ids=IDS)
def test_shapes_counts_and_gradients(kind, name, make, count, nfe) -> None:
    torch.manual_seed(0)
    body = make()
    assert n_params(body) == count
    assert body.nfe == nfe
    x = sample(kind)
    body.train()
    y = body(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    # stochastic bodies may skip a block in one pass: accumulate a few passes
    for _ in range(6):
        body(x).square().mean().backward()
    missing = [n for n, p in body.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reaches {missing}"
    states = body.eval().trajectory(x)
    assert isinstance(states, torch.Tensor) and states.shape == (body.depth + 1, *x.shape)
    assert torch.equal(states[0], x)
    assert torch.allclose(states[-1], body(x))


@pytest.mark.parametrize("kind,name,make,count,nfe", CASES, ids=IDS)
def test_float64(kind, name, make, count, nfe) -> None:
    body = make().double().eval()
    x = sample(kind, torch.float64)
    y = body(x)
    assert y.dtype == torch.float64 and torch.isfinite(y).all()


def test_image_classifier_frame() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(LMResNet(8, 2), in_channels=1, width=8, num_classes=10)
    logits = model(torch.randn(5, 1, 8, 8))
    assert logits.shape == (5, 10)


# --------------------------------------------------------------------------------------------------
# the numerical schemes, with a fixed smooth or linear field shared by every step
# --------------------------------------------------------------------------------------------------


def slopes(errors: list[float], steps: list[int]) -> list[float]:
    return [math.log(errors[i] / errors[i + 1]) / math.log(steps[i + 1] / steps[i]) for i in range(len(steps) - 1)]


@pytest.fixture
def smooth_field():
    torch.manual_seed(1)
    return ResidualFunction(2, "linear", hidden=8).double()


@pytest.fixture
def linear_field():
    """``f(x) = A x`` with a damped rotation ``A``: ``x(T) = exp(TA) x(0)``."""
    f = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[-0.3, -1.0], [1.0, -0.3]]))
    return f


def reference(f, x0: torch.Tensor, T: float) -> torch.Tensor:
    """A tight solution of ``x' = f(x)`` at ``T`` by dedl's adaptive Dormand-Prince solver."""
    return odeint(lambda t, x: f(x), x0, torch.tensor([0.0, T], dtype=x0.dtype), rtol=1e-12, atol=1e-12)[-1]


def test_euler_resnet_converges_to_the_ode_at_order_one(smooth_field) -> None:
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    T, Ns = 1.0, [8, 16, 32, 64]
    with torch.no_grad():
        exact = reference(smooth_field, x0, T)
        errors = [(EulerResNet(2, N, T, kind="linear", residual=lambda w: smooth_field)(x0) - exact).norm().item()
                  for N in Ns]
    assert all(abs(s - 1) < 0.15 for s in slopes(errors, Ns)), slopes(errors, Ns)


@pytest.mark.parametrize("scheme,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_rknet_order_on_a_linear_field(linear_field, scheme, order) -> None:
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    T, Ns = 2.0, [4, 8, 16, 32]
    exact = x0 @ torch.linalg.matrix_exp(T * linear_field.weight).T
    with torch.no_grad():
        errors = [(RKNet(2, N, T, kind="linear", residual=lambda w: linear_field, scheme=scheme,
                         shared_stages=True)(x0) - exact).norm().item() for N in Ns]
    s = slopes(errors, Ns)
    assert abs(s[-1] - order) < 0.15, s


def test_lm_resnet_with_k_zero_is_the_euler_resnet() -> None:
    torch.manual_seed(0)
    euler = EulerResNet(WIDTH, 4).eval()
    fields = iter(euler.fields)
    lm = LMResNet(WIDTH, 4, residual=lambda w: next(fields), k_init=0.0).eval()
    x = sample("conv")
    assert torch.allclose(lm(x), euler(x), atol=0, rtol=1e-6)
    assert n_params(lm) == n_params(euler) + 3


def test_lm_resnet_default_k_and_fixed_k() -> None:
    torch.manual_seed(0)
    lm = LMResNet(WIDTH, 6)
    assert lm.k.shape == (5,) and lm.k.requires_grad
    assert ((lm.k >= -0.1) & (lm.k <= 0.0)).all()
    fixed = LMResNet(WIDTH, 6, k_init=0.5, learn_k=False)
    assert not fixed.k.requires_grad and torch.all(fixed.k == 0.5)
    assert n_params(fixed) == 6 * ResidualFunction.count(WIDTH)


def test_lm_resnet_two_step_order(smooth_field) -> None:
    """Consistent with (1 + k) x' = f: order 1 for k = 0.5, order 2 for k = 1 (leapfrog)."""
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    T, Ns = 1.0, [16, 32, 64]
    for k, order in [(0.5, 1), (1.0, 2)]:
        scaled = lambda x, k=k: smooth_field(x) / (1 + k)  # noqa: E731
        with torch.no_grad():
            exact = reference(scaled, x0, T)
            errors = [(LMResNet(2, N, T, kind="linear", residual=lambda w: smooth_field, k_init=k,
                                rescaled_start=True)(x0) - exact).norm().item() for N in Ns]
        s = slopes(errors, Ns)
        assert abs(s[-1] - order) < 0.15, (k, s)


def test_stochastic_depth() -> None:
    assert survival_probabilities(4, 0.5) == [0.875, 0.75, 0.625, 0.5]
    torch.manual_seed(0)
    lm = LMResNet(WIDTH, 4, kind="linear", survival=0.5)
    x = sample("linear")
    lm.eval()
    assert torch.equal(lm(x), lm(x))  # deterministic in evaluation
    lm.train()
    outs = {tuple(lm(x).flatten().tolist()) for _ in range(20)}
    assert len(outs) > 1  # random in training
    # the expected training step equals the evaluation step: check on the first block alone
    one = LMResNet(WIDTH, 1, kind="linear", survival=0.5).train()
    torch.manual_seed(1)
    mean = torch.stack([one(x) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, one.eval()(x), atol=0.05)


def test_poly2_is_backward_euler_to_third_order(linear_field) -> None:
    """One poly-2 step (I + hA + h²A²) differs from backward Euler (I − hA)⁻¹ by O(h³)."""
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    A, hs = linear_field.weight.detach(), [0.2, 0.1, 0.05, 0.025]
    differences = []
    for h in hs:
        with torch.no_grad():
            poly = PolyNet(2, 1, h, kind="linear", residual=lambda w: linear_field)(x0)
        backward = torch.linalg.solve(torch.eye(2, dtype=torch.float64) - h * A, x0.T).T
        differences.append((poly - backward).norm().item())
    s = slopes(differences, [round(1 / h) for h in hs])
    assert all(abs(v - 3) < 0.15 for v in s), s


def test_polynet_powers_share_convolutions_but_not_batch_norms() -> None:
    body = PolyNet(WIDTH, 1, order=3)
    first, second, third = body.fields[0]
    convs = [m for m in first.modules() if isinstance(m, nn.Conv2d)]
    convs2 = [m for m in second.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(a.weight is b.weight for a, b in zip(convs, convs2))
    norms = [(a, b) for a, b in zip(first.modules(), third.modules()) if isinstance(a, nn.BatchNorm2d)]
    assert norms and all(a.weight is not b.weight and a.running_mean is not b.running_mean for a, b in norms)


def test_polynet_converges_at_order_one_on_a_linear_field(linear_field) -> None:
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    T, Ns = 1.0, [8, 16, 32, 64]
    exact = x0 @ torch.linalg.matrix_exp(T * linear_field.weight).T
    with torch.no_grad():
        errors = [(PolyNet(2, N, T, kind="linear", residual=lambda w: linear_field)(x0) - exact).norm().item()
                  for N in Ns]
    assert abs(slopes(errors, Ns)[-1] - 1) < 0.15


def test_fractalnet_structure_and_order(smooth_field) -> None:
    body = FractalNet(WIDTH, 1, kind="linear", columns=3)
    assert [len(col) for col in body.blocks[0]] == [1, 2, 4]
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    T, Ns = 1.0, [8, 16, 32]
    with torch.no_grad():
        exact = reference(smooth_field, x0, T)
        errors = [(FractalNet(2, N, T, kind="linear", residual=lambda w: smooth_field, columns=2)(x0) - exact)
                  .norm().item() for N in Ns]
    assert abs(slopes(errors, Ns)[-1] - 1) < 0.15
    # C = 2 on f(x) = λx multiplies by 1 + z + z²/8 per block
    lam, tau = -0.7, 0.3
    f = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        f.weight.fill_(lam)
        block = FractalNet(1, 1, tau, kind="linear", residual=lambda w: f, columns=2)
        out = block(torch.ones(1, 1, dtype=torch.float64))
    z = tau * lam
    assert out.item() == pytest.approx(1 + z + z * z / 8, rel=1e-12)


def test_fractal_drop_path_is_random_only_in_training() -> None:
    torch.manual_seed(0)
    body = FractalNet(WIDTH, 1, kind="linear", columns=3, drop_path=0.5)
    x = sample("linear")
    body.train()
    assert len({tuple(body(x).flatten().tolist()) for _ in range(20)}) > 1
    body.eval()
    assert torch.equal(body(x), body(x))


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [EulerResNet, LMResNet, RKNet, PolyNet, FractalNet])
def test_bad_arguments(cls) -> None:
    with pytest.raises(ValueError, match="depth"):
        cls(WIDTH, 0)
    with pytest.raises(TypeError, match="depth"):
        cls(WIDTH, 2.0)
    with pytest.raises(ValueError, match="T must"):
        cls(WIDTH, 2, T=0.0)
    with pytest.raises(ValueError, match="T must"):
        cls(WIDTH, 2, T=-1.0)
    with pytest.raises(ValueError, match="width"):
        cls(0, 2)
    with pytest.raises(ValueError, match="kind"):
        cls(WIDTH, 2, kind="dense")
    body = cls(WIDTH, 2)
    with pytest.raises(ValueError, match="4-D"):
        body(torch.randn(3, WIDTH))
    with pytest.raises(ValueError, match="channels"):
        body(torch.randn(3, WIDTH + 1, 5, 5))
    with pytest.raises(TypeError):
        body([1.0, 2.0])
    linear = cls(WIDTH, 2, kind="linear")
    with pytest.raises(ValueError, match="2-D"):
        linear(torch.randn(3, WIDTH, 5, 5))


def test_bad_scheme_specific_arguments() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RKNet(WIDTH, 2, scheme="dopri5")  # adaptive: not a fixed block
    with pytest.raises(ValueError, match="embedded pair"):
        RKNet(WIDTH, 2, scheme=DOPRI5)  # the same tableau as an object
    with pytest.raises(ValueError, match="scheme"):
        RKNet(WIDTH, 2, scheme="rk7")
    with pytest.raises(ValueError, match="order"):
        PolyNet(WIDTH, 2, order=0)
    with pytest.raises(ValueError, match="columns"):
        FractalNet(WIDTH, 2, columns=0)
    with pytest.raises(ValueError, match="drop_path"):
        FractalNet(WIDTH, 2, drop_path=1.0)
    with pytest.raises(ValueError, match="survival"):
        LMResNet(WIDTH, 2, survival=0.0)
    with pytest.raises(ValueError, match="kernel_size"):
        ResidualFunction(WIDTH, kernel_size=2)
    with pytest.raises(TypeError, match="residual"):
        EulerResNet(WIDTH, 2, residual=lambda w: "not a module")
