"""dedl.solvers.timegrid.check_time_grid: the one validator of time grids (ODE, SDE, CDE solves and paths)."""

from __future__ import annotations

import pytest
import torch

from dedl.solvers.timegrid import check_time_grid


def test_accepts_tensors_lists_and_both_directions():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    out = check_time_grid(t)
    assert not out.requires_grad and out.dtype == torch.float64
    assert check_time_grid([2, 1, 0]).dtype == torch.float64  # integers become float64
    assert check_time_grid((0.0, 1.0)).dtype == torch.get_default_dtype()
    assert check_time_grid([3.0]).numel() == 1


@pytest.mark.parametrize(
    "t, kwargs, error, match",
    [
        ([[0.0, 1.0]], {}, ValueError, "1-D"),
        ([], {}, ValueError, "at least 1 time point"),
        ([0.0], {"min_points": 2}, ValueError, "at least 2 time point"),
        ([0.0, float("nan")], {}, ValueError, "finite"),
        ([0.0, float("inf")], {}, ValueError, "finite"),
        ([0.0, 1.0, 0.5], {}, ValueError, "strictly monotone"),
        ([0.0, 0.0, 1.0], {}, ValueError, "strictly monotone"),
        ([1.0, 0.0], {"increasing": True}, ValueError, r"strictly increasing, but t\[0\] = 1.0 >= t\[1\] = 0.0"),
        ([0.0, 1.0j], {}, TypeError, "real"),
        ("abc", {}, TypeError, "sequence of times"),
    ],
)
def test_bad_grids_raise(t, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_time_grid(t, **kwargs)


def test_the_name_appears_in_the_message():
    with pytest.raises(ValueError, match="ts must be strictly increasing"):
        check_time_grid([1.0, 0.0], "ts", increasing=True)
