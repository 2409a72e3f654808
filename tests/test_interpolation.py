"""Tests of dedl.interpolation: natural cubic splines, linear interpolation and the filling of missing values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dedl.interpolation import LinearInterpolation, NaturalCubicSpline, fill_missing

NAN = float("nan")


def irregular_data(batch=(3,), n=9, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    gaps = 0.05 + torch.rand(n - 1, generator=g, dtype=torch.float64)
    t = torch.cat([torch.zeros(1, dtype=torch.float64), gaps.cumsum(0)])
    x = torch.randn(*batch, n, channels, generator=g, dtype=torch.float64)
    return t, x


# --- natural cubic spline -----------------------------------------------------------------------------


def test_spline_passes_through_the_data():
    t, x = irregular_data()
    spline = NaturalCubicSpline(t, x)
    torch.testing.assert_close(spline.evaluate(t), x, rtol=1e-12, atol=1e-12)
    for k in range(len(t)):
        torch.testing.assert_close(spline.evaluate(t[k]), x[..., k, :], rtol=1e-12, atol=1e-12)


def test_spline_derivatives_are_continuous_at_the_knots():
    """First and second derivatives seen from the left and from the right of every interior knot agree."""
    t, x = irregular_data(batch=(4,), n=12)
    spline = NaturalCubicSpline(t, x)
    delta = 1e-10
    for k in range(1, len(t) - 1):
        left, right = t[k] - delta, t[k] + delta
        for derivative in (spline.derivative, spline.second_derivative):
            torch.testing.assert_close(derivative(left), derivative(right), rtol=0, atol=1e-6)
        torch.testing.assert_close(spline.evaluate(left), spline.evaluate(right), rtol=0, atol=1e-8)


def test_spline_third_derivative_jumps():
    """A cubic spline is only C^2: its second derivative has kinks, so the check above is not vacuous."""
    t, x = irregular_data(n=10)
    spline = NaturalCubicSpline(t, x)
    jumps = spline.d[..., 1:, :] - spline.d[..., :-1, :]
    assert jumps.abs().max() > 1e-3


def test_spline_has_natural_boundary():
    t, x = irregular_data()
    spline = NaturalCubicSpline(t, x)
    torch.testing.assert_close(spline.second_derivative(t[0]), torch.zeros_like(x[..., 0, :]), rtol=0, atol=1e-10)
    torch.testing.assert_close(spline.second_derivative(t[-1]), torch.zeros_like(x[..., 0, :]), rtol=0, atol=1e-9)


def test_spline_matches_scipy():
    scipy_interpolate = pytest.importorskip("scipy.interpolate")
    t, x = irregular_data(batch=(2,), n=15, channels=3)
    spline = NaturalCubicSpline(t, x)
    reference = scipy_interpolate.CubicSpline(t.numpy(), x.numpy(), axis=1, bc_type="natural")
    s = torch.linspace(float(t[0]), float(t[-1]), 101, dtype=torch.float64)
    np.testing.assert_allclose(spline.evaluate(s).numpy(), reference(s.numpy()), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(spline.derivative(s).numpy(), reference(s.numpy(), 1), rtol=1e-7, atol=1e-7)


def test_spline_reproduces_a_straight_line():
    t, _ = irregular_data()
    x = (2.0 * t - 1.0).view(-1, 1)
    spline = NaturalCubicSpline(t, x)
    s = torch.linspace(0, float(t[-1]), 37, dtype=torch.float64)
    torch.testing.assert_close(spline.evaluate(s), (2.0 * s - 1.0).view(-1, 1), rtol=1e-10, atol=1e-10)
    two = torch.full((37, 1), 2.0, dtype=torch.float64)
    torch.testing.assert_close(spline.derivative(s), two, rtol=1e-9, atol=1e-9)


def test_spline_batches_are_independent_and_shapes():
    t, x = irregular_data(batch=(2, 3), n=8, channels=4)
    spline = NaturalCubicSpline(t, x)
    assert spline.evaluate(t[3]).shape == (2, 3, 4)
    assert spline.evaluate(torch.linspace(0, 1, 5, dtype=torch.float64)).shape == (2, 3, 5, 4)
    single = NaturalCubicSpline(t, x[1, 2])
    s = torch.linspace(0, float(t[-1]), 11, dtype=torch.float64)
    torch.testing.assert_close(spline.evaluate(s)[1, 2], single.evaluate(s), rtol=1e-12, atol=1e-12)


def test_two_points_give_a_straight_line():
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    x = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    spline = NaturalCubicSpline(t, x)
    half = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(spline.evaluate(half), torch.tensor([1.5], dtype=torch.float64))


def test_spline_with_missing_values():
    t, x = irregular_data(batch=(2,), n=10)
    x_missing = x.clone()
    x_missing[0, 3, 0] = NAN
    x_missing[0, 4:6, 1] = NAN
    spline = NaturalCubicSpline(t, x_missing)
    values = spline.evaluate(torch.linspace(0, float(t[-1]), 50, dtype=torch.float64))
    assert torch.isfinite(values).all()
    observed = ~torch.isnan(x_missing)
    torch.testing.assert_close(spline.evaluate(t)[observed], x[observed], rtol=1e-12, atol=1e-12)
    # the series without missing values is unaffected by its neighbour's gaps
    torch.testing.assert_close(spline.evaluate(t)[1], NaturalCubicSpline(t, x[1]).evaluate(t), rtol=1e-12, atol=1e-12)
    # a missing point is filled on the straight line between its channel's neighbours
    expected = x[0, 2, 0] + (t[3] - t[2]) / (t[4] - t[2]) * (x[0, 4, 0] - x[0, 2, 0])
    torch.testing.assert_close(spline.evaluate(t[3])[0, 0], expected)


# --- linear interpolation -----------------------------------------------------------------------------


def test_linear_interpolation_is_exact_at_knots_and_linear_between():
    t, x = irregular_data()
    path = LinearInterpolation(t, x)
    torch.testing.assert_close(path.evaluate(t), x, rtol=1e-12, atol=1e-12)
    middle = (t[:-1] + t[1:]) / 2
    torch.testing.assert_close(path.evaluate(middle), (x[..., :-1, :] + x[..., 1:, :]) / 2, rtol=1e-12, atol=1e-12)
    slopes = (x[..., 1:, :] - x[..., :-1, :]) / (t[1:] - t[:-1]).unsqueeze(-1)
    torch.testing.assert_close(path.derivative(middle), slopes, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path.second_derivative(middle), torch.zeros_like(slopes))


def test_linear_interpolation_uses_the_right_derivative_at_a_knot():
    t, x = irregular_data(n=5, batch=())
    path = LinearInterpolation(t, x)
    torch.testing.assert_close(path.derivative(t[2]), (x[3] - x[2]) / (t[3] - t[2]))


def test_linear_interpolation_with_missing_values():
    t = torch.tensor([0.0, 1.0, 3.0, 4.0])
    x = torch.tensor([[0.0], [NAN], [6.0], [NAN]])
    path = LinearInterpolation(t, x)
    torch.testing.assert_close(path.evaluate(t), torch.tensor([[0.0], [2.0], [6.0], [6.0]]))


# --- filling missing values ---------------------------------------------------------------------------


def test_fill_missing_linear_and_forward():
    t = torch.tensor([0.0, 1.0, 2.0, 4.0, 5.0])
    x = torch.tensor([[NAN, 1.0], [2.0, NAN], [NAN, NAN], [8.0, 3.0], [NAN, NAN]])
    linear = fill_missing(t, x, "linear")
    torch.testing.assert_close(linear, torch.tensor([[2.0, 1.0], [2.0, 1.5], [4.0, 2.0], [8.0, 3.0], [8.0, 3.0]]))
    forward = fill_missing(t, x, "forward")
    torch.testing.assert_close(forward, torch.tensor([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [8.0, 3.0], [8.0, 3.0]]))


def test_fill_missing_leaves_observed_values_and_zeroes_empty_channels():
    t, x = irregular_data(batch=(2,), n=6, channels=3)
    x[0, :, 1] = NAN
    x[1, 2, 2] = NAN
    filled = fill_missing(t, x)
    assert torch.isfinite(filled).all()
    assert (filled[0, :, 1] == 0).all()
    observed = ~torch.isnan(x)
    assert torch.equal(filled[observed], x[observed])
    assert fill_missing(t, filled) is filled  # nothing missing: returned as it is


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [LinearInterpolation, NaturalCubicSpline])
def test_bad_input_raises(cls):
    t, x = irregular_data()
    with pytest.raises(ValueError, match="strictly increasing"):
        cls(t.flip(0), x)
    with pytest.raises(ValueError, match="strictly increasing"):
        cls(torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], dtype=torch.float64), x)
    with pytest.raises(ValueError, match="time points"):
        cls(t[:-1], x)
    with pytest.raises(ValueError, match="1-D"):
        cls(t.view(1, -1), x)
    with pytest.raises(TypeError, match="floating point"):
        cls(t, x.long())
    with pytest.raises(ValueError, match="inf"):
        cls(t, x.clone().index_fill_(-2, torch.tensor([2]), float("inf")))
    with pytest.raises(ValueError, match="shape"):
        cls(t, x[0, :, 0])
    with pytest.raises(ValueError, match="method"):
        cls(t, x, fill="cubic")
    with pytest.raises(ValueError, match="scalar or 1-D"):
        cls(t, x).evaluate(torch.zeros(2, 2))
