"""Tests of the toy generators of dedl.data (two_moons, concentric_circles, spirals, checkerboard, gaussian_mixture)
and of load_digits: shapes, dtypes, labels, seeding, the effect of ``noise`` and the digits split.

Everything here is generated in memory or read from the copy of the digits shipped with scikit-learn; a test
checks that the latter holds with sockets disabled.
"""

from __future__ import annotations

import math
import socket
from collections import Counter

import numpy as np
import pytest
import torch

from dedl.data import checkerboard, concentric_circles, gaussian_mixture, load_digits, spirals, two_moons

# Each labelled generator as a function of (n, noise, seed), so that the common properties are tested once.
LABELLED = {
    "two_moons": lambda n, noise, seed: two_moons(n, noise=noise, seed=seed),
    "concentric_circles": lambda n, noise, seed: concentric_circles(n, noise=noise, seed=seed),
    "spirals": lambda n, noise, seed: spirals(n, noise=noise, seed=seed),
}
# Each unlabelled density sampler as a function of (n, seed).
UNLABELLED = {
    "checkerboard": lambda n, seed: checkerboard(n, seed=seed),
    "gaussian_mixture": lambda n, seed: gaussian_mixture(n, seed=seed),
}


# --------------------------------------------------------------------------------------------------
# common properties
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LABELLED)
def test_labelled_generators_return_points_and_binary_labels(name):
    x, y = LABELLED[name](300, 0.1, 0)
    assert x.shape == (300, 2) and x.dtype == torch.get_default_dtype()
    assert y.shape == (300,) and y.dtype == torch.long
    assert set(y.tolist()) == {0, 1}
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", UNLABELLED)
def test_density_samplers_return_finite_points(name):
    x = UNLABELLED[name](300, 0)
    assert isinstance(x, torch.Tensor)
    assert x.shape == (300, 2) and x.dtype == torch.get_default_dtype()
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", LABELLED)
def test_labelled_generators_repeat_with_the_seed_and_differ_across_seeds(name):
    x1, y1 = LABELLED[name](200, 0.1, 5)
    x2, y2 = LABELLED[name](200, 0.1, 5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = LABELLED[name](200, 0.1, 6)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("name", UNLABELLED)
def test_density_samplers_repeat_with_the_seed_and_differ_across_seeds(name):
    assert torch.equal(UNLABELLED[name](200, 5), UNLABELLED[name](200, 5))
    assert not torch.equal(UNLABELLED[name](200, 5), UNLABELLED[name](200, 6))


@pytest.mark.parametrize("name", [*LABELLED, *UNLABELLED])
def test_generators_ignore_the_global_torch_seed(name):
    """The ``seed`` argument alone fixes the sample: the global torch state neither changes it nor is consumed."""

    def draw():
        return LABELLED[name](50, 0.1, 0)[0] if name in LABELLED else UNLABELLED[name](50, 0)

    torch.manual_seed(1)
    a = draw()
    after = torch.rand(3)
    torch.manual_seed(2)
    b = draw()
    assert torch.equal(a, b)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)


@pytest.mark.parametrize("name", LABELLED)
def test_noise_is_an_additive_gaussian_scaled_by_noise(name):
    """Same seed, same clean points: the offset from the noise-free sample is proportional to ``noise``."""
    x0, y0 = LABELLED[name](500, 0.0, 3)
    x1, y1 = LABELLED[name](500, 0.1, 3)
    x2, y2 = LABELLED[name](500, 0.2, 3)
    assert torch.equal(y0, y1) and torch.equal(y0, y2)
    d1, d2 = x1 - x0, x2 - x0
    assert d1.abs().max() > 0
    assert torch.allclose(d2, 2 * d1, atol=1e-5)


@pytest.mark.parametrize("name", ["two_moons", "spirals"])
def test_noise_offsets_are_standard_normal_times_noise(name):
    x0, _ = LABELLED[name](4000, 0.0, 0)
    x1, _ = LABELLED[name](4000, 0.3, 0)
    d = (x1 - x0) / 0.3
    assert abs(d.mean().item()) < 0.05
    assert abs(d.std().item() - 1) < 0.05


# --------------------------------------------------------------------------------------------------
# two_moons
# --------------------------------------------------------------------------------------------------


def test_two_moons_without_noise_lie_on_the_two_half_circles():
    x, y = two_moons(400, noise=0.0, seed=0)
    upper, lower = x[y == 0], x[y == 1]
    assert torch.allclose(upper.norm(dim=1), torch.ones(len(upper)), atol=1e-5)
    assert (upper[:, 1] >= -1e-6).all()
    centre = torch.tensor([1.0, 0.5])
    assert torch.allclose((lower - centre).norm(dim=1), torch.ones(len(lower)), atol=1e-5)
    assert (lower[:, 1] <= 0.5 + 1e-6).all()


def test_two_moons_classes_are_roughly_balanced():
    _, y = two_moons(2000, seed=1)
    assert 0.45 < y.float().mean().item() < 0.55


# --------------------------------------------------------------------------------------------------
# concentric_circles
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
@pytest.mark.parametrize("radii", [(1.0, 2.0), (0.5, 1.5, 3.0)])
def test_concentric_circles_without_noise_lie_on_the_spheres(dim, radii):
    x, y = concentric_circles(600, radii=radii, noise=0.0, dim=dim, seed=0)
    assert x.shape == (600, dim)
    assert set(y.tolist()) == set(range(len(radii)))
    assert torch.allclose(x.norm(dim=1), torch.tensor(radii)[y], atol=1e-5)


def test_concentric_circles_in_one_dimension_are_the_points_plus_minus_r():
    x, y = concentric_circles(400, radii=(1.0, 2.0), noise=0.0, dim=1, seed=0)
    r = torch.tensor([1.0, 2.0])[y]
    assert torch.allclose(x[:, 0].abs(), r)
    for label in (0, 1):  # both signs of each radius occur
        signs = set(torch.sign(x[y == label, 0]).tolist())
        assert signs == {-1.0, 1.0}


def test_concentric_circles_noise_is_radial():
    """The noise moves points along their radius: the direction stays that of the noise-free sample."""
    x0, _ = concentric_circles(300, noise=0.0, seed=2)
    x1, _ = concentric_circles(300, noise=0.1, seed=2)
    u0 = x0 / x0.norm(dim=1, keepdim=True)
    u1 = x1 / x1.norm(dim=1, keepdim=True)
    assert torch.allclose(u0, u1, atol=1e-5)
    assert not torch.allclose(x0.norm(dim=1), x1.norm(dim=1))


def test_concentric_circles_radial_noise_is_standard_normal_times_noise():
    x0, _ = concentric_circles(4000, noise=0.0, seed=0)
    x1, _ = concentric_circles(4000, noise=0.1, seed=0)
    d = (x1.norm(dim=1) - x0.norm(dim=1)) / 0.1
    assert abs(d.mean().item()) < 0.05
    assert abs(d.std().item() - 1) < 0.05


# --------------------------------------------------------------------------------------------------
# spirals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("turns", [0.5, 1.5, 3.0])
def test_spirals_without_noise_follow_the_archimedean_spirals(turns):
    """Radius ``s`` in [0, 1) and angle ``2 pi turns s + pi label``: the second arm is the first turned by pi."""
    x, y = spirals(500, turns=turns, noise=0.0, seed=0)
    s = x.norm(dim=1)
    assert (s < 1).all()
    angle = 2 * math.pi * turns * s + math.pi * y
    expected = s[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    assert torch.allclose(x, expected, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# checkerboard
# --------------------------------------------------------------------------------------------------


def test_checkerboard_fills_the_black_squares_of_a_4x4_board():
    x = checkerboard(8000, seed=0)
    assert (x >= -2).all() and (x < 2).all()
    cells = torch.floor(x).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only squares of one colour
    counts = Counter(map(tuple, cells.tolist()))
    assert len(counts) == 8  # all eight squares of that colour are used ...
    assert all(abs(c / 8000 - 1 / 8) < 0.02 for c in counts.values())  # ... evenly


# --------------------------------------------------------------------------------------------------
# gaussian_mixture
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modes, radius", [(8, 2.0), (3, 1.0), (5, 4.0)])
def test_gaussian_mixture_with_zero_std_gives_the_centres(modes, radius):
    x = gaussian_mixture(2000, modes=modes, radius=radius, std=0.0, seed=0)
    assert torch.allclose(x.norm(dim=1), torch.full((2000,), radius), atol=1e-5)
    k = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (2 * math.pi / modes)).long() % modes
    centres = radius * torch.stack(
        [torch.cos(2 * math.pi * k / modes), torch.sin(2 * math.pi * k / modes)], 1
    ).to(x.dtype)
    assert torch.allclose(x, centres, atol=1e-5)
    freq = torch.bincount(k, minlength=modes).float() / 2000
    assert len(freq) == modes and (freq - 1 / modes).abs().max() < 0.04  # equal weights


def test_gaussian_mixture_std_sets_the_spread_around_each_centre():
    centres = gaussian_mixture(5000, std=0.0, seed=1)
    x = gaussian_mixture(5000, std=0.15, seed=1)
    offsets = x - centres
    assert abs(offsets.std().item() - 0.15) < 0.01
    assert abs(offsets.mean().item()) < 0.01


# --------------------------------------------------------------------------------------------------
# load_digits
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a network connection fails."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_load_digits_needs_no_network(no_network):
    x_train, _, x_test, _ = load_digits()
    assert len(x_train) + len(x_test) == 1797


@pytest.mark.parametrize("test_fraction", [0.25, 0.5, 0.1])
def test_load_digits_split_sizes_are_stratified(test_fraction):
    from sklearn.datasets import load_digits as sklearn_digits

    per_class = np.bincount(sklearn_digits().target, minlength=10)
    x_train, y_train, x_test, y_test = load_digits(test_fraction=test_fraction)
    expected = [round(test_fraction * int(c)) for c in per_class]
    assert torch.bincount(y_test, minlength=10).tolist() == expected
    assert torch.bincount(y_train, minlength=10).tolist() == [int(c) - e for c, e in zip(per_class, expected)]
    assert x_train.shape == (len(y_train), 1, 8, 8) and x_test.shape == (len(y_test), 1, 8, 8)
    assert x_train.dtype == torch.float32 and x_test.dtype == torch.float32
    assert y_train.dtype == torch.long and y_test.dtype == torch.long
    assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(10))


def test_load_digits_standardises_with_the_training_statistics():
    x_train, _, x_test, _ = load_digits()
    assert abs(x_train.mean().item()) < 1e-5
    assert abs(x_train.std().item() - 1) < 1e-5
    # The raw pixels run from 0 to 16 in both splits, so one affine map (the training one) undoes both.
    scale = 16 / (x_train.max() - x_train.min())
    shift = -x_train.min() * scale
    for split in (x_train, x_test):
        raw = split * scale + shift
        assert torch.allclose(raw, raw.round(), atol=1e-3)
        assert raw.min() > -1e-3 and raw.max() < 16 + 1e-3


def test_load_digits_splits_partition_the_data_set():
    """Train and test together are exactly scikit-learn's 1797 images with their labels, none twice."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x_train, y_train, x_test, y_test = load_digits(seed=3)
    scale = 16 / (x_train.max() - x_train.min())
    shift = -x_train.min() * scale
    ours = Counter()
    for x, y in ((x_train, y_train), (x_test, y_test)):
        raw = (x * scale + shift).round().to(torch.int64).reshape(len(x), 64)
        ours.update((tuple(row), label) for row, label in zip(raw.tolist(), y.tolist()))
    theirs = Counter(
        (tuple(row), int(label))
        for row, label in zip(digits.images.reshape(-1, 64).astype(np.int64).tolist(), digits.target)
    )
    assert ours == theirs


def test_load_digits_split_is_fixed_by_the_seed():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])  # another seed, other test images
    assert torch.equal(torch.bincount(a[3], minlength=10), torch.bincount(c[3], minlength=10))  # same strata
