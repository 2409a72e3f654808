"""Plotting helpers shared by the chapters: vector fields, trajectories, densities and comparison tables."""

from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=(4.5, 4))[1]


@torch.no_grad()
def vector_field(
    f: Callable[[Tensor, Tensor], Tensor],
    xlim: tuple[float, float] = (-2, 2),
    ylim: tuple[float, float] = (-2, 2),
    t: float = 0.0,
    n: int = 20,
    ax: Axes | None = None,
    **quiver_kwargs,
) -> Axes:
    """Arrows of a 2-D vector field ``f(t, y)`` on an ``n`` x ``n`` grid (a phase portrait)."""
    ax = _axes(ax)
    xs, ys = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    grid = torch.tensor(np.stack([xs.ravel(), ys.ravel()], 1), dtype=torch.get_default_dtype())
    try:
        device = next(f.parameters()).device  # type: ignore[attr-defined]
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    v = f(torch.tensor(t, device=device), grid.to(device)).cpu().numpy()
    ax.quiver(xs, ys, v[:, 0].reshape(n, n), v[:, 1].reshape(n, n), color="0.5", **quiver_kwargs)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    return ax


def trajectories(ys: Tensor, ax: Axes | None = None, max_paths: int = 50, **plot_kwargs) -> Axes:
    """Plot 2-D paths ``ys`` of shape ``(time, batch, 2)`` with a dot at each start."""
    ax = _axes(ax)
    ys = ys.detach().cpu()[:, :max_paths]
    ax.plot(ys[..., 0], ys[..., 1], **{"lw": 1, "alpha": 0.8, **plot_kwargs})
    ax.plot(ys[0, :, 0], ys[0, :, 1], "k.", ms=3)
    return ax


def density_2d(
    log_density: Callable[[Tensor], Tensor],
    xlim: tuple[float, float] = (-3, 3),
    ylim: tuple[float, float] = (-3, 3),
    n: int = 100,
    ax: Axes | None = None,
) -> Axes:
    """Image of ``exp(log_density(x))`` on an ``n`` x ``n`` grid of 2-D points."""
    ax = _axes(ax)
    xs, ys = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    grid = torch.tensor(np.stack([xs.ravel(), ys.ravel()], 1), dtype=torch.get_default_dtype())
    with torch.no_grad():
        p = log_density(grid).exp().cpu().numpy().reshape(n, n)
    ax.imshow(p, extent=(*xlim, *ylim), origin="lower", cmap="viridis")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def image_grid(images: Tensor, nrow: int = 8, ax: Axes | None = None, cmap: str = "gray") -> Axes:
    """Tile images of shape ``(N, C, H, W)`` (C = 1 or 3) into one picture."""
    ax = _axes(ax)
    images = images.detach().cpu().float()
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    canvas = torch.full((c, rows * (h + 1) + 1, ncol * (w + 1) + 1), float(images.min()))
    for i, img in enumerate(images):
        r, k = divmod(i, ncol)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min() + 1e-12)
    ax.imshow((canvas[0] if c == 1 else canvas.permute(1, 2, 0)).numpy(), cmap=cmap if c == 1 else None)
    ax.axis("off")
    return ax


def comparison_table(rows: Sequence[dict], floatfmt: str = "{:.4g}"):
    """A table of results, one dict per row, as a pandas DataFrame (rendered as HTML in the book)."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    return frame.style.format({c: floatfmt.format for c in frame.select_dtypes("number").columns}).hide(axis="index")


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std"`` of results over seeds (the sample standard deviation, ``ddof=1``), for the cells of a
    :func:`comparison_table`."""
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
