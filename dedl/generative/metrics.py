r"""Sample quality, written once: a two-sample distance for point clouds and a Fréchet distance for digits.

* :func:`wasserstein_1d` and :func:`sliced_wasserstein`: the 1-Wasserstein distance between two empirical
  distributions on the line, :math:`W_1 = \int |F(x) - G(x)|\,\mathrm dx`, and its sliced version in
  :math:`\mathbb R^d`, the mean of :math:`W_1` between the projections on random unit directions
  {cite}`bonneel2015sliced` — the distance between two 2-D sample sets that Part VI reports.
* :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between two Gaussians,
  :math:`\|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1 \Sigma_2)^{1/2}\big)`
  {cite}`dowson1982frechet`; on the features of an Inception network it is the FID {cite}`heusel2017gans`.
* :func:`digit_features` and :func:`digit_frechet_distance`: the same on the penultimate-layer features of
  a small classifier of scikit-learn's 8x8 digits, which dedl trains once per process, deterministically, in
  a few seconds (:func:`digit_classifier`): the book's stand-in for FID, nothing downloaded.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from dedl.nn.checks import positive_int

__all__ = [
    "wasserstein_1d",
    "sliced_wasserstein",
    "gaussian_statistics",
    "frechet_distance",
    "digit_classifier",
    "digit_features",
    "digit_frechet_distance",
]


def _check_samples(name: str, x: Tensor, dims: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.dim() != dims or x.shape[0] == 0:
        shape = "(n,)" if dims == 1 else "(n, dim)"
        raise ValueError(f"{name} must be a non-empty tensor of shape {shape}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return x


def _w1_rows(u: Tensor, v: Tensor) -> Tensor:
    r""":math:`W_1` between the empirical distributions of each row of ``u`` (k, n) and of ``v`` (k, m)."""
    u, v = u.sort(dim=1).values, v.sort(dim=1).values
    points = torch.cat([u, v], dim=1).sort(dim=1).values
    widths = points.diff(dim=1)
    left = points[:, :-1].contiguous()
    cdf_u = torch.searchsorted(u.contiguous(), left, right=True).to(u.dtype) / u.shape[1]
    cdf_v = torch.searchsorted(v.contiguous(), left, right=True).to(v.dtype) / v.shape[1]
    return ((cdf_u - cdf_v).abs() * widths).sum(dim=1)


def wasserstein_1d(u: Tensor, v: Tensor) -> float:
    r"""The 1-Wasserstein distance :math:`\int |F_u - F_v|` between the empirical distributions of two 1-D
    samples of any sizes (the quantity of :func:`scipy.stats.wasserstein_distance`)."""
    u, v = _check_samples("u", u, 1), _check_samples("v", v, 1)
    return float(_w1_rows(u[None].double(), v[None].double())[0])


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    r"""The sliced 1-Wasserstein distance :math:`\mathbb E_\theta\, W_1(\theta^\top x, \theta^\top y)` between
    two samples ``(n, dim)`` and ``(m, dim)``, over ``n_projections`` directions :math:`\theta` uniform on the
    unit sphere {cite}`bonneel2015sliced`. In 2-D the directions are evenly spaced angles (shifted by a
    ``seed``-drawn offset), elsewhere normalised Gaussian draws; a fixed ``seed`` makes it deterministic.
    Between :math:`\mathcal N(0, I)` and :math:`\mathcal N(m, I)` in 2-D it is :math:`2\|m\|/\pi`."""
    x, y = _check_samples("x", x, 2), _check_samples("y", y, 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    positive_int("n_projections", n_projections)
    g = torch.Generator().manual_seed(seed)
    if x.shape[1] == 2:
        angle = (torch.arange(n_projections, dtype=torch.float64) + torch.rand((), generator=g, dtype=torch.float64))
        angle = angle * math.pi / n_projections
        theta = torch.stack([angle.cos(), angle.sin()], dim=1)
    else:
        theta = torch.randn(n_projections, x.shape[1], generator=g, dtype=torch.float64)
        theta = theta / theta.norm(dim=1, keepdim=True)
    theta = theta.to(x.device)
    return float(_w1_rows(theta @ x.double().T, theta @ y.double().T).mean())


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and the (unbiased) covariance of a sample ``(n, dim)``, in float64, for :func:`frechet_distance`."""
    features = _check_samples("features", features, 2).double()
    if features.shape[0] < 2:
        raise ValueError("a covariance needs at least two samples")
    return features.mean(dim=0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def _sqrt_psd(a: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, q = torch.linalg.eigh(a)
    return (q * w.clamp(min=0).sqrt()) @ q.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r"""The Fréchet distance :math:`\|\mu_1 - \mu_2\|^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 -
    2(\Sigma_1\Sigma_2)^{1/2})` between :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2,
    \Sigma_2)` {cite}`dowson1982frechet,heusel2017gans` (the squared 2-Wasserstein distance). The trace of the
    square root is computed as :math:`\operatorname{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}`, a
    symmetric matrix with the same eigenvalues as :math:`\Sigma_1\Sigma_2`."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match mu1, got {tuple(c.shape)}")
    if mu1.dim() != 1 or mu2.shape != mu1.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got {tuple(mu1.shape)}, {tuple(mu2.shape)}")
    root1 = _sqrt_psd(cov1)
    middle = _sqrt_psd(root1 @ cov2 @ root1)
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * middle.trace())


class _DigitNet(nn.Module):
    """The feature network: 64 pixels -> 64 -> 32 features (tanh), and a linear head to 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@functools.lru_cache(maxsize=1)
def digit_classifier() -> nn.Module:
    """The small classifier of 8x8 digits behind :func:`digit_features`, trained once per process.

    An MLP (64 -> 64 -> 32 -> 10, tanh), trained full-batch with Adam (300 steps, learning rate 0.01, seed 0,
    one thread) on the training split of :func:`dedl.data.load_digits` (about 97% test accuracy). Cached, in
    evaluation mode, with frozen parameters. Inputs are images ``(n, 1, 8, 8)`` in the standardisation of
    :func:`dedl.data.load_digits`.
    """
    from dedl.data import load_digits

    x, y, _, _ = load_digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = _DigitNet()
            opt = torch.optim.Adam(net.parameters(), lr=0.01)
            for _ in range(300):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    net.requires_grad_(False)
    return net


def digit_features(images: Tensor) -> Tensor:
    """The 32 penultimate-layer features of :func:`digit_classifier` for images ``(n, 1, 8, 8)`` (or ``(n, 64)``)
    in the standardisation of :func:`dedl.data.load_digits`, shape ``(n, 32)``."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating-point Tensor, got {getattr(images, 'dtype', type(images))}")
    if images.dim() < 2 or images[0].numel() != 64:
        raise ValueError(f"images must have shape (n, 1, 8, 8) or (n, 64), got {tuple(images.shape)}")
    net = digit_classifier()
    with torch.no_grad():
        return net.features(images.reshape(len(images), 64).float().cpu())


def digit_frechet_distance(x: Tensor, y: Tensor) -> float:
    """The Fréchet distance between the Gaussians fitted to the :func:`digit_features` of two sets of 8x8
    digit images: FID {cite}`heusel2017gans` with the book's digit classifier in place of Inception."""
    return frechet_distance(*gaussian_statistics(digit_features(x)), *gaussian_statistics(digit_features(y)))
