"""dedl.generative.metrics against scipy and closed forms on Gaussians."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from dedl.data import load_digits
from dedl.generative import (
    digit_classifier,
    digit_features,
    digit_frechet_distance,
    frechet_distance,
    gaussian_statistics,
    sliced_wasserstein,
    wasserstein_1d,
)


@pytest.mark.parametrize("n, m", [(50, 50), (37, 81)])
def test_wasserstein_1d_matches_scipy(n, m):
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=n), rng.gamma(2.0, size=m)
    expected = scipy.stats.wasserstein_distance(u, v)
    assert wasserstein_1d(torch.tensor(u), torch.tensor(v)) == pytest.approx(expected, rel=1e-10)


def test_sliced_wasserstein_on_shifted_gaussians_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 2, generator=g)
    shift = torch.tensor([1.5, -1.0])
    y = torch.randn(3000, 2, generator=g) + shift
    assert sliced_wasserstein(x, y) == pytest.approx(2 * shift.norm().item() / math.pi, rel=0.06)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)  # deterministic
    x3 = torch.randn(500, 3, generator=g)
    assert sliced_wasserstein(x3, x3 + 1, n_projections=64) > 0.5


def test_frechet_distance_matches_sqrtm_and_a_hand_case():
    # hand case: N(0, I) vs N((3, 4), 4 I) in 2-D: 25 + tr(I + 4I - 2 * 2I) = 25 + 2
    got = frechet_distance(torch.zeros(2), torch.eye(2), torch.tensor([3.0, 4.0]), 4 * torch.eye(2))
    assert got == pytest.approx(27.0)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T, b @ b.T + np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    expected = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    got = frechet_distance(*(torch.tensor(v) for v in (m1, c1, m2, c2)))
    assert got == pytest.approx(expected, rel=1e-8)


def test_gaussian_statistics():
    x = torch.randn(100, 3, dtype=torch.float64)
    mu, cov = gaussian_statistics(x)
    torch.testing.assert_close(cov, torch.tensor(np.cov(x.numpy().T)))
    torch.testing.assert_close(mu, x.mean(0))


def test_digit_features_and_frechet_distance():
    x_train, _, x_test, y_test = load_digits()
    net = digit_classifier()
    assert digit_classifier() is net  # trained once
    assert (net(x_test).argmax(1) == y_test).float().mean() > 0.93
    assert digit_features(x_test).shape == (len(x_test), 32)
    real = digit_frechet_distance(x_train, x_test)
    noise = digit_frechet_distance(x_train, torch.randn_like(x_test))
    assert digit_frechet_distance(x_test, x_test) == pytest.approx(0.0, abs=1e-6)
    assert 10 * real < noise


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="shape"):
        sliced_wasserstein(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="NaN"):
        wasserstein_1d(torch.tensor([0.0, float("nan")]), torch.zeros(2))
    with pytest.raises(TypeError, match="floating"):
        wasserstein_1d(torch.arange(3), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="two samples"):
        gaussian_statistics(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="8, 8"):
        digit_features(torch.zeros(3, 1, 7, 7))
