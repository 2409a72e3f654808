"""Data for the book: generators that need no download, and loaders for real data sets at full scale.

Nothing here touches the network unless a full-scale loader is asked for a data set that is
not on disk; such a loader then raises :class:`DataUnavailableError` with instructions.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from pathlib import Path
from typing import NamedTuple

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


#: The shifts of :func:`out_of_distribution_images`.
OOD_KINDS = ("noise", "inverted", "rotated")


def out_of_distribution_images(x: Tensor, kind: str, seed: int = 0) -> Tensor:
    """Out-of-distribution inputs made offline from a batch of images ``x`` of shape ``(N, C, H, W)``.

    * ``"noise"``: Gaussian noise images with the mean and standard deviation of ``x`` (drawn with ``seed``);
    * ``"inverted"``: each image's intensities reflected, ``max + min − x`` per image (dark strokes on a light
      ground for digits);
    * ``"rotated"``: each image turned by 90 degrees (``H = W`` needed).

    Scaled digits stay near their scale, so a detector cannot tell them apart by intensity statistics alone
    (except for ``"noise"``, the easy case). Returns a new tensor of the shape and dtype of ``x``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 4 or x.numel() == 0:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if kind not in OOD_KINDS:
        raise ValueError(f"kind must be one of {OOD_KINDS}, got {kind!r}")
    if kind == "noise":
        noise = torch.randn(x.shape, generator=_generator(seed), dtype=x.dtype)
        return x.mean() + x.std() * noise.to(x.device)
    if kind == "inverted":
        flat = x.flatten(1)
        top, bottom = flat.amax(1), flat.amin(1)
        return (top + bottom).view(-1, 1, 1, 1) - x
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"kind='rotated' needs square images, got {tuple(x.shape[2:])}")
    return torch.rot90(x, 1, dims=(2, 3)).contiguous()


def hold_out_classes(x: Tensor, y: Tensor, classes: tuple[int, ...] | list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Split a labelled set into the classes a model is trained on and held-out classes (out of distribution).

    Returns ``x_in, y_in, x_out``: the examples of the other classes with their labels renumbered
    ``0, ..., K − 1`` in increasing order of the original label (e.g. holding out digits 8 and 9 leaves labels
    0-7 as they were), and the inputs of the held-out ``classes``.
    """
    if not isinstance(y, Tensor) or y.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"y must be an integer Tensor of labels, got {getattr(y, 'dtype', type(y).__name__)}")
    if not isinstance(x, Tensor) or len(x) != len(y):
        raise ValueError("x must be a Tensor with one input per label")
    held = sorted({int(c) for c in classes})
    present = set(y.unique().tolist())
    missing = [c for c in held if c not in present]
    if not held or missing:
        raise ValueError(f"classes must name labels present in y; got {list(classes)} (absent: {missing})")
    kept = sorted(present - set(held))
    if not kept:
        raise ValueError("holding out every class leaves nothing to train on")
    out = torch.isin(y, torch.tensor(held, dtype=y.dtype))
    relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    relabel[torch.tensor(kept)] = torch.arange(len(kept))
    return x[~out], relabel[y[~out]], x[out]


# ----------------------------------------------------------------------------------------------------
# Trajectories of known dynamics, and irregularly sampled, partially observed series built from them
# ----------------------------------------------------------------------------------------------------

#: The dynamical systems that :func:`irregular_series` can sample.
SYSTEMS = ("pendulum", "lotka_volterra", "spiral")
#: The parameters of each system that :func:`irregular_series` passes on (any other name is an error).
SYSTEM_PARAMS = {
    "pendulum": ("omega", "damping"),
    "lotka_volterra": ("alpha", "beta", "gamma", "delta"),
    "spiral": ("a", "b"),
}


def _check_series_args(n: int, n_times: int, t_end: float, noise: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(n_times, bool) or not isinstance(n_times, int) or n_times < 2:
        raise ValueError(f"n_times must be an int >= 2, got {n_times!r}")
    if not t_end > 0:
        raise ValueError(f"t_end must be positive, got {t_end}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")


def _series_times(n_times: int, t_end: float, irregular: bool, g: torch.Generator) -> Tensor:
    """``n_times`` times in ``[0, t_end]``: equally spaced, or sorted uniform draws (redrawn until distinct)."""
    if not irregular:
        return torch.linspace(0.0, t_end, n_times, dtype=torch.float64)
    while True:
        times = torch.sort(torch.rand(n_times, generator=g, dtype=torch.float64) * t_end).values
        if (times[1:] > times[:-1]).all():
            return times


def _integrate(rhs, y0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Solve ``y' = rhs(t, y)`` from ``t = 0`` for states ``y0`` of shape ``(n, d)``; returns ``(n, T, d)``."""
    from scipy.integrate import solve_ivp

    n, d = y0.shape
    sol = solve_ivp(
        lambda t, y: rhs(t, y.reshape(n, d)).ravel(),
        (0.0, float(times[-1])),
        y0.ravel(),
        t_eval=times,
        method="DOP853",
        rtol=1e-9,
        atol=1e-9,
    )
    if not sol.success:  # pragma: no cover - the systems below are smooth and bounded
        raise FloatingPointError(f"integrating the trajectories failed: {sol.message}")
    return sol.y.reshape(n, d, len(times)).transpose(0, 2, 1)


def _finish(times: Tensor, values: np.ndarray | Tensor, noise: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    values = torch.as_tensor(values, dtype=torch.float64)
    values = values + noise * torch.randn(values.shape, generator=g, dtype=torch.float64)
    dtype = torch.get_default_dtype()
    return times.to(dtype), values.to(dtype)


def _lotka_volterra(y0: Tensor, times: Tensor, alpha: float, beta: float, gamma: float, delta: float) -> np.ndarray:
    def rhs(t, y):
        prey, predator = y[:, 0], y[:, 1]
        return np.stack([alpha * prey - beta * prey * predator, delta * prey * predator - gamma * predator], 1)

    return _integrate(rhs, y0.numpy(), times.numpy())


def _pendulum(y0: Tensor, times: Tensor, omega: float, damping: float) -> np.ndarray:
    def rhs(t, y):
        return np.stack([y[:, 1], -(omega**2) * np.sin(y[:, 0]) - damping * y[:, 1]], 1)

    return _integrate(rhs, y0.numpy(), times.numpy())


def _pendulum_start(n: int, g: torch.Generator) -> Tensor:
    """Initial angles uniform in ``[-2, 2]`` and angular velocities uniform in ``[-1, 1]``, shape ``(n, 2)``."""
    angle = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    velocity = 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1
    return torch.stack([angle, velocity], 1)


def _spiral(start: Tensor, clockwise: Tensor, times: Tensor, a: float, b: float) -> Tensor:
    angle = start[:, None] + times[None, :]  # (n, T), one radian per unit of time
    radius = a + b * angle
    y = radius * torch.sin(angle)
    return torch.stack([radius * torch.cos(angle), torch.where(clockwise[:, None], -y, y)], -1)


def lotka_volterra(
    n: int,
    n_times: int = 100,
    t_end: float = 10.0,
    noise: float = 0.0,
    alpha: float = 1.5,
    beta: float = 1.0,
    gamma: float = 3.0,
    delta: float = 1.0,
    irregular: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Predator-prey trajectories ``x' = alpha x - beta x y``, ``y' = delta x y - gamma y`` (Lotka-Volterra).

    ``n`` initial populations drawn uniformly from ``[0.5, 3]^2``, integrated from ``t = 0`` with an adaptive
    8th-order Runge-Kutta method (tolerance ``1e-9``) and read at ``n_times`` times in ``[0, t_end]``
    (equally spaced, or sorted uniform draws with ``irregular=True``), plus Gaussian ``noise``. The orbits are
    closed: each trajectory is periodic, with a period that depends on its initial condition.
    Returns ``times`` of shape ``(n_times,)`` and ``values`` of shape ``(n, n_times, 2)`` (prey, predator).
    """
    _check_series_args(n, n_times, t_end, noise)
    g = _generator(seed)
    times = _series_times(n_times, t_end, irregular, g)
    y0 = 0.5 + 2.5 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    return _finish(times, _lotka_volterra(y0, times, alpha, beta, gamma, delta), noise, g)


def damped_pendulum(
    n: int,
    n_times: int = 100,
    t_end: float = 10.0,
    noise: float = 0.0,
    omega: float = 2.0,
    damping: float = 0.2,
    irregular: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Damped pendulum ``theta'' = -omega^2 sin(theta) - damping theta'`` as the state ``(theta, theta')``.

    Initial angles are drawn uniformly from ``[-2, 2]`` radians and initial angular velocities from ``[-1, 1]``;
    the nonlinear equation (not its small-angle linearisation) is integrated from ``t = 0`` as in
    :func:`lotka_volterra`. Returns ``times`` of shape ``(n_times,)`` and ``values`` of shape ``(n, n_times, 2)``.
    """
    _check_series_args(n, n_times, t_end, noise)
    g = _generator(seed)
    times = _series_times(n_times, t_end, irregular, g)
    return _finish(times, _pendulum(_pendulum_start(n, g), times, omega, damping), noise, g)


def spiral_trajectories(
    n: int,
    n_times: int = 100,
    t_end: float = 2 * math.pi,
    noise: float = 0.0,
    a: float = 0.0,
    b: float = 0.3,
    irregular: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Two-dimensional Archimedean spirals, half clockwise, half counter-clockwise {cite}`chen2018neural` (Sec. 5.1).

    The latent-ODE experiment of Chen et al. fits 2-D spirals that start at different points and turn either way.
    Here each trajectory follows ``r = a + b phi`` with the angle ``phi(t) = phi_0 + t`` (one radian per unit
    time), ``phi_0`` uniform in ``[0, 4 pi]``; a clockwise spiral is the mirror image ``(x, -y)``. Returns
    ``times`` ``(n_times,)``, ``values`` ``(n, n_times, 2)`` and the boolean label ``clockwise`` ``(n,)``.
    """
    _check_series_args(n, n_times, t_end, noise)
    g = _generator(seed)
    times = _series_times(n_times, t_end, irregular, g)
    start = 4 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    clockwise = torch.arange(n) % 2 == 1
    times, values = _finish(times, _spiral(start, clockwise, times, a, b), noise, g)
    return times, values, clockwise


def ornstein_uhlenbeck(
    n: int,
    n_times: int = 50,
    t_end: float = 5.0,
    noise: float = 0.0,
    theta: float = 1.0,
    mu: float = 0.0,
    sigma: float = 0.5,
    x0: float | tuple[float, float] | None = None,
    irregular: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Sample paths of the Ornstein-Uhlenbeck process ``dX = theta (mu - X) dt + sigma dW`` {cite}`uhlenbeck1930theory`.

    A stochastic system whose drift and diffusion are known, for fitting SDE models (the latent SDE of Part V).
    The paths are drawn *exactly*, with no discretisation error, from the Gaussian transition law between
    consecutive times ``s < t``: ``X_t = mu + (X_s - mu) e^{-theta (t - s)} + sigma sqrt((1 - e^{-2 theta (t - s)})
    / (2 theta)) Z`` with ``Z ~ N(0, 1)`` {cite}`uhlenbeck1930theory`. ``x0``: None draws ``X_0`` from the stationary
    law ``N(mu, sigma^2 / (2 theta))``; a number starts every path there; a pair ``(low, high)`` draws ``X_0``
    uniformly from it. Times as :func:`lotka_volterra` (``n_times`` in ``[0, t_end]``, equally spaced or
    ``irregular``), plus Gaussian observation ``noise``. Returns ``times`` ``(n_times,)`` and ``values``
    ``(n, n_times, 1)``.
    """
    _check_series_args(n, n_times, t_end, noise)
    if not theta > 0 or not sigma >= 0:
        raise ValueError(f"ornstein_uhlenbeck needs theta > 0 and sigma >= 0, got theta={theta}, sigma={sigma}")
    g = _generator(seed)
    times = _series_times(n_times, t_end, irregular, g)
    if x0 is None:
        start = mu + sigma / math.sqrt(2 * theta) * torch.randn(n, generator=g, dtype=torch.float64)
    elif isinstance(x0, (tuple, list)):
        low, high = (float(v) for v in x0)
        if not low <= high:
            raise ValueError(f"x0 = (low, high) needs low <= high, got {x0}")
        start = low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)
    else:
        start = torch.full((n,), float(x0), dtype=torch.float64)
    decay = torch.exp(-theta * (times[1:] - times[:-1]))
    spread = sigma * torch.sqrt((1 - decay**2) / (2 * theta))
    z = torch.randn(n, n_times - 1, generator=g, dtype=torch.float64)
    path = [start]
    for k in range(n_times - 1):
        path.append(mu + (path[-1] - mu) * decay[k] + spread[k] * z[:, k])
    return _finish(times, torch.stack(path, 1).unsqueeze(-1), noise, g)


class IrregularSeries(NamedTuple):
    """An irregularly sampled, partially observed data set (see :func:`irregular_series`).

    ``times`` ``(T,)`` is the union of all observation times; ``values`` ``(n, T, C)`` holds the noisy
    measurements at every time, ``mask`` ``(n, T, C)`` (bool) says which of them were observed, and ``clean``
    ``(n, T, C)`` is the noise-free state. Models may only look at ``values[mask]``; the rest is kept for
    evaluation. :meth:`observed` gives the values with ``NaN`` where nothing was observed.
    """

    times: Tensor
    values: Tensor
    mask: Tensor
    clean: Tensor

    def observed(self) -> Tensor:
        """``values`` with ``NaN`` at every unobserved entry (the input format of :mod:`dedl.interpolation`)."""
        return torch.where(self.mask, self.values, torch.full_like(self.values, float("nan")))


def irregular_series(
    n: int,
    system: str = "pendulum",
    n_times: int = 100,
    t_end: float = 10.0,
    missing: float = 0.5,
    noise: float = 0.05,
    per_channel: bool = True,
    seed: int = 0,
    **params: float,
) -> IrregularSeries:
    """Trajectories of a known system sampled at irregular random times, with missing observations and noise.

    The setting of Rubanova et al. {cite}`rubanova2019latent` (Sec. 4) and Kidger et al. {cite}`kidger2020neural`
    (Sec. 4.1): ``n_times`` times are drawn uniformly at random in ``[0, t_end]`` and sorted (the union of all
    observation times of the batch); every series is the solution of ``system`` (``"pendulum"``:
    :func:`damped_pendulum`, ``"lotka_volterra"``: :func:`lotka_volterra`, ``"spiral"``:
    :func:`spiral_trajectories`; ``params`` go to it, and a name it does not take raises ``TypeError``) from its own random initial state; each entry is dropped
    independently with probability ``missing`` (``per_channel=False`` drops whole time points instead), so each
    series is seen at its own irregular subset of the times; and Gaussian ``noise`` of that standard deviation is
    added to the measurements. Seeded: the same arguments give the same data.
    """
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    if not 0 <= missing < 1:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    _check_series_args(n, n_times, t_end, noise)
    unknown = sorted(set(params) - set(SYSTEM_PARAMS[system]))
    if unknown:
        raise TypeError(
            f"irregular_series(system={system!r}) got unknown parameters {unknown}; "
            f"{system!r} takes {', '.join(SYSTEM_PARAMS[system])}"
        )
    g = _generator(seed)
    times = _series_times(n_times, t_end, True, g)
    if system == "pendulum":
        omega, damping = params.get("omega", 2.0), params.get("damping", 0.2)
        clean = torch.as_tensor(_pendulum(_pendulum_start(n, g), times, omega, damping))
    elif system == "lotka_volterra":
        y0 = 0.5 + 2.5 * torch.rand(n, 2, generator=g, dtype=torch.float64)
        keys = dict(alpha=1.5, beta=1.0, gamma=3.0, delta=1.0)
        clean = torch.as_tensor(_lotka_volterra(y0, times, **{k: params.get(k, v) for k, v in keys.items()}))
    else:
        start = 4 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        clockwise = torch.arange(n) % 2 == 1
        clean = _spiral(start, clockwise, times, params.get("a", 0.0), params.get("b", 0.3))
    shape = clean.shape if per_channel else clean.shape[:2] + (1,)
    mask = (torch.rand(shape, generator=g, dtype=torch.float64) >= missing).expand(clean.shape).clone()
    times, values = _finish(times, clean, noise, g)
    return IrregularSeries(times, values, mask, clean.to(values.dtype))


def load_stock_prices() -> tuple[Tensor, Tensor]:
    """A real irregularly sampled series that ships with matplotlib: Google's daily closing price, 2004-2008.

    Prices exist on trading days only, so the gaps are one day, three days over a weekend and more over
    holidays. Returns ``days`` (float, days since the first quote) and ``close`` (US dollars), both ``(1047,)``
    for the copy in matplotlib's sample data. Raises :class:`DataUnavailableError` if matplotlib no longer ships it.
    """
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("goog.npz") as data:
            prices = data["price_data"]
    except (OSError, KeyError, ValueError) as err:
        raise DataUnavailableError(
            "matplotlib's sample file goog.npz was not found; any other daily price series works the same way"
        ) from err
    dates = prices["date"].astype("datetime64[D]").astype(np.int64)
    days = torch.tensor(dates - dates[0], dtype=torch.get_default_dtype())
    return days, torch.tensor(prices["close"], dtype=torch.get_default_dtype())


# ----------------------------------------------------------------------------------------------------
# Real image data sets for full-scale runs: CIFAR-10/100 (python pickle batches) and MNIST (idx files)
# ----------------------------------------------------------------------------------------------------


# Per-channel statistics of the training images in [0, 1], the usual normalisation constants.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

_CIFAR10_FOLDER, _CIFAR100_FOLDER = "cifar-10-batches-py", "cifar-100-python"
_CIFAR10_FILES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}
_CIFAR100_FILES = {True: ["train"], False: ["test"]}
_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder that the full-scale loaders read: ``root``, else ``$DEDL_DATA``, else ``~/.cache/dedl``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("DEDL_DATA") or Path.home() / ".cache" / "dedl").expanduser()


def _torchvision_download(dataset: str, root: Path, train: bool) -> None:
    """Fetch ``dataset`` (a ``torchvision.datasets`` class name) into ``root`` with torchvision.

    Raises whatever torchvision raises, and ``ImportError`` when torchvision is not installed or does not load.
    """
    try:
        import torchvision.datasets as datasets
    except Exception as err:  # not installed, or built against another torch
        raise ImportError(f"torchvision is not usable here ({err})") from err
    getattr(datasets, dataset)(str(root), train=train, download=True)


def _fetch_or_explain(
    dataset: str, root: Path, train: bool, download: bool, missing: list[Path], instructions: str
) -> None:
    """Try a torchvision download when allowed; otherwise, or when it fails, raise :class:`DataUnavailableError`."""
    reason = "download=False"
    if download:
        try:
            _torchvision_download(dataset, root, train)
            return
        except ImportError as err:
            reason = str(err)
        except Exception as err:  # offline, server down, checksum mismatch, ...
            reason = f"the torchvision download failed: {type(err).__name__}: {err}"
    listing = ", ".join(str(p) for p in missing)
    display = {"CIFAR10": "CIFAR-10", "CIFAR100": "CIFAR-100"}.get(dataset, dataset)
    raise DataUnavailableError(
        f"{display} is not on disk: missing {listing}. {instructions} "
        f"(Looked in {root}; pass root=... or set the environment variable DEDL_DATA to change the folder. "
        f"No automatic download: {reason}.)"
    )


def _normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], normalize: bool) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    if normalize:
        shape = (1, len(mean), 1, 1)
        x = (x - torch.tensor(mean).reshape(shape)) / torch.tensor(std).reshape(shape)
    return x


def _unpickle(path: Path) -> dict:
    """One batch file of the CIFAR "python version" (a pickled dict; byte-string keys as the originals have)."""
    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _read_cifar(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{folder / name} is not a CIFAR batch: it lacks the keys 'data' and {label_key!r}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / name}: expected data of shape (N, 3072), got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))  # rows hold the red, green and blue 32x32 planes in turn
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _load_cifar(
    dataset: str,
    folder_name: str,
    files: dict[bool, list[str]],
    label_key: str,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    root: str | os.PathLike | None,
    train: bool,
    normalize: bool,
    download: bool,
    instructions: str,
) -> tuple[Tensor, Tensor]:
    base = data_root(root)
    folder = base / folder_name
    missing = [folder / name for name in files[train] if not (folder / name).is_file()]
    if missing:
        _fetch_or_explain(dataset, base, train, download, missing, instructions)
    images, labels = _read_cifar(folder, files[train], label_key)
    return _normalise(images, *stats, normalize), torch.from_numpy(labels)


def load_cifar10(
    root: str | os.PathLike | None = None, train: bool = True, normalize: bool = True, download: bool = True
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test colour images of 32x32 pixels, 10 classes.

    Reads the "CIFAR-10 python version" from ``data_root(root) / "cifar-10-batches-py"`` (``data_batch_1`` ...
    ``data_batch_5`` for ``train=True``, ``test_batch`` otherwise; the files are Python pickles, so only read
    copies you trust). Returns images ``(N, 3, 32, 32)`` float32, scaled to ``[0, 1]`` and, with ``normalize``,
    standardised per channel with the training-set statistics ``CIFAR10_MEAN`` / ``CIFAR10_STD``, and labels
    ``(N,)`` int64 in ``0..9``. If the files are missing and ``download`` is true, torchvision (if it is
    installed and the network is reachable) fetches them; otherwise :class:`DataUnavailableError` says where
    to put which files. Nothing is downloaded unless this function is called.
    """
    return _load_cifar(
        "CIFAR10",
        _CIFAR10_FOLDER,
        _CIFAR10_FILES,
        "labels",
        (CIFAR10_MEAN, CIFAR10_STD),
        root,
        train,
        normalize,
        download,
        "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into "
        f"the data folder, so that it holds {_CIFAR10_FOLDER}/data_batch_1 ... data_batch_5 and test_batch.",
    )


def load_cifar100(
    root: str | os.PathLike | None = None,
    train: bool = True,
    normalize: bool = True,
    download: bool = True,
    label: str = "fine",
) -> tuple[Tensor, Tensor]:
    """CIFAR-100: the CIFAR-10 format with 100 ``"fine"`` classes grouped into 20 ``"coarse"`` superclasses.

    Reads ``data_root(root) / "cifar-100-python" / ("train" | "test")`` and returns images as
    :func:`load_cifar10` does (standardised with ``CIFAR100_MEAN`` / ``CIFAR100_STD``) and the ``label``
    (``"fine"``, 0..99, or ``"coarse"``, 0..19) of each image. Missing files: as in :func:`load_cifar10`.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    return _load_cifar(
        "CIFAR100",
        _CIFAR100_FOLDER,
        _CIFAR100_FILES,
        f"{label}_labels",
        (CIFAR100_MEAN, CIFAR100_STD),
        root,
        train,
        normalize,
        download,
        "Download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into "
        f"the data folder, so that it holds {_CIFAR100_FOLDER}/train and {_CIFAR100_FOLDER}/test.",
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an array in LeCun's idx format (the MNIST files), optionally gzip-compressed (``.gz``).

    The header is two zero bytes, a type code (only ``0x08``, unsigned bytes, is used by MNIST and accepted
    here), the number of dimensions ``d``, and ``d`` big-endian 32-bit sizes; the data follow in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte idx files (type 0x08) are supported, got type {raw[2]:#04x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: the header announces shape {shape} but the file holds {len(raw) - header} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_idx(base: Path, name: str) -> Path | None:
    for folder in (base / "MNIST" / "raw", base / "mnist", base):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_mnist(
    root: str | os.PathLike | None = None, train: bool = True, normalize: bool = True, download: bool = True
) -> tuple[Tensor, Tensor]:
    """MNIST (LeCun et al. 1998): 60,000 training and 10,000 test handwritten digits of 28x28 pixels.

    Reads the four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each possibly ``.gz``) from
    ``data_root(root) / "MNIST" / "raw"`` (torchvision's layout), ``data_root(root) / "mnist"`` or
    ``data_root(root)``. Returns images ``(N, 1, 28, 28)`` float32 in ``[0, 1]``, standardised with
    ``MNIST_MEAN`` / ``MNIST_STD`` when ``normalize``, and labels ``(N,)`` int64. Missing files: as in
    :func:`load_cifar10`.
    """
    base = data_root(root)
    names = _MNIST_FILES[train]
    paths = [_find_idx(base, name) for name in names]
    if any(p is None for p in paths):
        missing = [base / "MNIST" / "raw" / n for n, p in zip(names, paths) if p is None]
        _fetch_or_explain(
            "MNIST",
            base,
            train,
            download,
            missing,
            "Download the four idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from a MNIST mirror and put them in "
            "MNIST/raw/ inside the data folder.",
        )
        paths = [_find_idx(base, name) for name in names]
        if any(p is None for p in paths):  # torchvision stored them somewhere else
            raise DataUnavailableError(f"MNIST files still missing under {base} after the download")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST files disagree: images {images.shape}, labels {labels.shape}")
    return _normalise(images[:, None], MNIST_MEAN, MNIST_STD, normalize), torch.from_numpy(labels.astype(np.int64))
