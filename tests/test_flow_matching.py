"""dedl.generative.flow_matching: the loss of the exact conditional velocity, straightness, sampling, errors."""

import pytest
import torch

from dedl.generative import OTPath, VPPath, flow_matching_loss, flow_sample, reflow_pairs, straightness
from dedl.nn.odenets import MLPVectorField


@pytest.mark.parametrize("path", [OTPath(), OTPath(sigma_min=1e-2), VPPath()])
def test_loss_is_zero_for_the_exact_conditional_velocity(path):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(64, 2, generator=g, dtype=torch.float64) + 3
    loss = flow_matching_loss(lambda t, x: path.conditional_velocity(x, x1, t), x1, path, generator=g)
    assert loss.item() < 1e-20
    assert flow_matching_loss(lambda t, x: torch.zeros_like(x), x1, path, generator=g).item() > 1


@pytest.mark.parametrize("path", [OTPath(sigma_min=1e-2), VPPath()])
def test_conditional_velocity_is_the_time_derivative_of_the_path(path):
    x0, x1 = torch.randn(2, 5, 3, dtype=torch.float64)
    t, h = torch.full((5, 1), 0.4, dtype=torch.float64), 1e-6
    fd = (path.sample(x0, x1, t + h) - path.sample(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(path.conditional_velocity(path.sample(x0, x1, t), x1, t), fd, rtol=1e-6, atol=1e-6)


def test_ot_path_ends():
    x0, x1 = torch.randn(2, 4, 2)
    path = OTPath(sigma_min=0.0)
    torch.testing.assert_close(path.sample(x0, x1, torch.zeros(4, 1)), x0)
    torch.testing.assert_close(path.sample(x0, x1, torch.ones(4, 1)), x1)


def test_straightness_is_zero_for_a_straight_flow_and_positive_for_a_curved_one():
    x0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert straightness(lambda t, x: c.expand_as(x), x0) < 1e-24
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert straightness(lambda t, x: x @ rotation.T, x0) > 0.1


def test_flow_sample_fixed_and_adaptive():
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    x0 = torch.randn(8, 2, dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(rotation).T
    field = lambda t, x: x @ rotation.T  # noqa: E731
    stats = {}
    torch.testing.assert_close(flow_sample(field, x0, "dopri5", None, stats=stats), exact, rtol=1e-4, atol=1e-4)
    assert stats["nfe"] > 6
    errors = [(flow_sample(field, x0, "euler", n) - exact).abs().max().item() for n in (10, 20)]
    assert 1.7 < errors[0] / errors[1] < 2.3  # first order
    stats = {}
    flow_sample(field, x0, "midpoint", 5, stats=stats)
    assert stats["nfe"] == 10


def test_reflow_pairs_are_the_flow_outputs():
    torch.manual_seed(0)
    v = MLPVectorField(2, 16, time_dependent=True)
    x0 = torch.randn(10, 2)
    p0, p1 = reflow_pairs(v, x0, "rk4", 10)
    assert p0 is x0 and not p1.requires_grad
    torch.testing.assert_close(p1, flow_sample(v, x0, "rk4", 10).detach())
    loss = flow_matching_loss(v, p1, OTPath(), x0=p0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in v.parameters())


def test_bad_input_is_refused():
    x = torch.randn(4, 2)
    field = lambda t, y: y  # noqa: E731
    with pytest.raises(ValueError, match="sigma_min"):
        OTPath(sigma_min=1.0)
    with pytest.raises(ValueError, match="beta_min"):
        VPPath(beta_min=5.0, beta_max=1.0)
    with pytest.raises(TypeError, match="GaussianPath"):
        flow_matching_loss(field, x, path="ot")
    with pytest.raises(ValueError, match="same shape"):
        flow_matching_loss(field, x, x0=torch.randn(3, 2))
    with pytest.raises(ValueError, match="one time per sample"):
        flow_matching_loss(field, x, t=torch.rand(3))
    with pytest.raises(ValueError, match="shape"):
        flow_matching_loss(field, torch.randn(4))
    with pytest.raises(TypeError, match="floating"):
        flow_sample(field, torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="adaptive"):
        flow_sample(field, x, "dopri5", 10)
    with pytest.raises(ValueError, match="unknown method"):
        flow_sample(field, x, "rk45", 10)
    with pytest.raises(ValueError, match="n_steps"):
        flow_sample(field, x, "euler", 0)
    with pytest.raises(ValueError, match="fixed-step"):
        straightness(field, x, method="dopri5")
