"""Data for the book: generators that need no download, and loaders for real data sets at full scale.

Nothing here touches the network unless a full-scale loader is asked for a data set that is
not on disk; such a loader then raises :class:`DataUnavailableError` with instructions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


class DataUnavailableError(RuntimeError):
    """A data set is not on disk and cannot be downloaded here; the message says how to get it."""


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def two_moons(n: int, noise: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two interleaved half circles in 2-D; labels 0 and 1."""
    g = _generator(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], 1)
    x = torch.where(y[:, None] == 0, upper, lower)
    return x + noise * torch.randn(n, 2, generator=g), y


def concentric_circles(
    n: int, radii: tuple[float, ...] = (1.0, 2.0), noise: float = 0.05, dim: int = 2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Points on concentric spheres in ``dim`` dimensions (circles for ``dim=2``); label = index of the sphere.

    With ``dim=1`` the "spheres" are the points +-r: the nested intervals that a 1-D Neural ODE cannot
    separate (Dupont et al. 2019).
    """
    g = _generator(seed)
    y = torch.randint(0, len(radii), (n,), generator=g)
    direction = torch.randn(n, dim, generator=g)
    direction = direction / direction.norm(dim=1, keepdim=True)
    r = torch.tensor(radii)[y] + noise * torch.randn(n, generator=g)
    return direction * r[:, None], y


def spirals(n: int, turns: float = 1.5, noise: float = 0.05, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two interleaved Archimedean spirals in 2-D; labels 0 and 1."""
    g = _generator(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    s = torch.rand(n, generator=g)
    angle = 2 * math.pi * turns * s + math.pi * y
    x = s[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return x + noise * torch.randn(n, 2, generator=g), y


def checkerboard(n: int, seed: int = 0) -> Tensor:
    """Samples from the 4x4 checkerboard density on [-2, 2]^2 (Grathwohl et al. 2019), for density models."""
    g = _generator(seed)
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1)


def gaussian_mixture(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.15, seed: int = 0) -> Tensor:
    """Samples from ``modes`` equal Gaussians placed on a circle of ``radius``, for density models."""
    g = _generator(seed)
    k = torch.randint(0, modes, (n,), generator=g)
    angle = 2 * math.pi * k / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return centres + std * torch.randn(n, 2, generator=g)


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn: no download).

    Returns ``x_train, y_train, x_test, y_test`` with images of shape ``(N, 1, 8, 8)`` scaled to
    zero mean and unit variance (statistics of the training split), labels 0-9, and a stratified
    split fixed by ``seed``.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    test_idx = []
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        test_idx.extend(rng.choice(idx, size=round(test_fraction * len(idx)), replace=False))
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    test_mask[torch.tensor(sorted(test_idx))] = True
    x_train, x_test = x[~test_mask], x[test_mask]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[~test_mask], (x_test - mean) / std, y[test_mask]
