"""Tests of dedl.plot on small inputs, drawn with matplotlib's non-interactive Agg backend.

Each helper must return the Axes it drew on (a new one when none is given) and put the promised data on it;
comparison_table returns a pandas Styler over the rows. Every figure is closed after its test.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # in the tests only: no window, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402
from torch import nn  # noqa: E402

from dedl.plot import comparison_table, density_2d, image_grid, trajectories, vector_field  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rotation(t, y):
    """The vector field (-y2, y1), a rotation."""
    return torch.stack([-y[:, 1], y[:, 0]], 1)


# --------------------------------------------------------------------------------------------------
# vector_field
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 7])
def test_vector_field_draws_the_field_on_an_n_by_n_grid(n):
    ax = vector_field(rotation, xlim=(-1, 3), ylim=(-2, 2), n=n)
    assert isinstance(ax, Axes)
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert quiver.N == n * n
    xs, ys = np.meshgrid(np.linspace(-1, 3, n), np.linspace(-2, 2, n))
    np.testing.assert_allclose(quiver.X.ravel(), xs.ravel(), atol=1e-6)
    np.testing.assert_allclose(quiver.Y.ravel(), ys.ravel(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(quiver.U).ravel(), -ys.ravel(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(quiver.V).ravel(), xs.ravel(), atol=1e-5)
    assert ax.get_xlim() == (-1, 3) and ax.get_ylim() == (-2, 2)


def test_vector_field_uses_the_given_axes_and_passes_t():
    seen = []

    def field(t, y):
        seen.append(float(t))
        return torch.ones_like(y) * t

    fig, ax = plt.subplots()
    out = vector_field(field, t=0.7, n=4, ax=ax)
    assert out is ax
    assert seen == [pytest.approx(0.7)]
    assert len(fig.axes) == 1


@pytest.mark.parametrize("with_parameters", [True, False])
def test_vector_field_accepts_modules(with_parameters):
    """An nn.Module field works whether or not it has parameters (the device is read from them if any)."""

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2) if with_parameters else nn.Identity()

        def forward(self, t, y):
            return self.lin(y)

    assert isinstance(vector_field(Field(), n=5), Axes)


# --------------------------------------------------------------------------------------------------
# trajectories
# --------------------------------------------------------------------------------------------------


def test_trajectories_draws_one_line_per_path_and_the_starts():
    ys = torch.randn(6, 4, 2).cumsum(0)
    ax = trajectories(ys.requires_grad_(True))
    assert isinstance(ax, Axes)
    lines = ax.get_lines()
    assert len(lines) == 4 + 1  # four paths, one marker line for the starts
    for k in range(4):
        np.testing.assert_allclose(lines[k].get_xdata(), ys[:, k, 0].detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(lines[k].get_ydata(), ys[:, k, 1].detach().numpy(), atol=1e-6)
    starts = lines[-1]
    np.testing.assert_allclose(starts.get_xdata(), ys[0, :, 0].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(starts.get_ydata(), ys[0, :, 1].detach().numpy(), atol=1e-6)


def test_trajectories_caps_the_number_of_paths_and_forwards_plot_kwargs():
    ys = torch.randn(5, 12, 2)
    _, ax = plt.subplots()
    out = trajectories(ys, ax=ax, max_paths=3, color="red", lw=2.5)
    assert out is ax
    lines = ax.get_lines()
    assert len(lines) == 3 + 1
    assert all(line.get_linewidth() == 2.5 and line.get_color() == "red" for line in lines[:3])


# --------------------------------------------------------------------------------------------------
# density_2d
# --------------------------------------------------------------------------------------------------


def test_density_2d_shows_exp_of_the_log_density_on_the_grid():
    n = 9
    ax = density_2d(lambda x: -0.5 * (x**2).sum(1), xlim=(-2, 2), ylim=(-3, 3), n=n)
    assert isinstance(ax, Axes)
    (image,) = ax.get_images()
    p = np.asarray(image.get_array())
    xs, ys = np.meshgrid(np.linspace(-2, 2, n), np.linspace(-3, 3, n))
    np.testing.assert_allclose(p, np.exp(-0.5 * (xs**2 + ys**2)), rtol=1e-5)
    assert tuple(image.get_extent()) == (-2, 2, -3, 3)


def test_density_2d_puts_low_y_at_the_bottom():
    """With ``origin='lower'`` the first row of the image is the smallest y: a density growing with y."""
    _, ax = plt.subplots()
    out = density_2d(lambda x: x[:, 1], n=6, ax=ax)
    assert out is ax
    p = np.asarray(ax.get_images()[0].get_array())
    assert ax.get_images()[0].origin == "lower"
    assert (np.diff(p, axis=0) > 0).all() and np.allclose(np.diff(p, axis=1), 0)


# --------------------------------------------------------------------------------------------------
# image_grid
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, channels, nrow, grid",
    [(5, 1, 3, (2, 3)), (4, 3, 8, (1, 4)), (6, 1, 2, (3, 2)), (1, 3, 4, (1, 1))],
)
def test_image_grid_tiles_the_images(n, channels, nrow, grid):
    h, w = 4, 5
    images = torch.rand(n, channels, h, w)
    ax = image_grid(images, nrow=nrow)
    assert isinstance(ax, Axes)
    (image,) = ax.get_images()
    shown = np.asarray(image.get_array())
    rows, cols = grid
    expected = (rows * (h + 1) + 1, cols * (w + 1) + 1)
    assert shown.shape == (expected if channels == 1 else (*expected, 3))
    assert shown.min() >= 0 and shown.max() <= 1 and np.isclose(shown.max(), 1)  # rescaled to [0, 1]
    assert not ax.axison


def test_image_grid_places_each_image_in_its_cell():
    images = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 1, 2, 2)
    _, ax = plt.subplots()
    assert image_grid(images, nrow=2, ax=ax) is ax
    shown = np.asarray(ax.get_images()[0].get_array())
    lo, hi = float(images.min()), float(images.max())
    scaled = (images[:, 0].numpy() - lo) / (hi - lo)
    np.testing.assert_allclose(shown[1:3, 1:3], scaled[0], atol=1e-6)  # row 0, column 0
    np.testing.assert_allclose(shown[1:3, 4:6], scaled[1], atol=1e-6)  # row 0, column 1
    np.testing.assert_allclose(shown[4:6, 1:3], scaled[2], atol=1e-6)  # row 1, column 0


# --------------------------------------------------------------------------------------------------
# comparison_table
# --------------------------------------------------------------------------------------------------


def test_comparison_table_is_a_styler_over_the_rows():
    rows = [{"model": "ResNet", "accuracy": 0.912345, "params": 1200}, {"model": "ODE-Net", "accuracy": 0.5}]
    table = comparison_table(rows)
    assert isinstance(table, pd.io.formats.style.Styler)
    frame = table.data
    assert list(frame.columns) == ["model", "accuracy", "params"]
    assert frame["model"].tolist() == ["ResNet", "ODE-Net"]
    assert frame["accuracy"].tolist() == [0.912345, 0.5]
    assert frame["params"].isna().tolist() == [False, True]


@pytest.mark.parametrize("floatfmt, shown", [("{:.4g}", "0.9123"), ("{:.2f}", "0.91"), ("{:.1%}", "91.2%")])
def test_comparison_table_formats_the_numbers_and_hides_the_index(floatfmt, shown):
    table = comparison_table([{"model": "ResNet", "accuracy": 0.912345}], floatfmt=floatfmt)
    html = table.to_html()
    assert f">{shown}</td>" in html
    assert "0.912345" not in html
    assert ">ResNet</td>" in html  # text columns are left as they are
    assert "row_heading" not in html  # no index column
