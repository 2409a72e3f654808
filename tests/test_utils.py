"""Tests of dedl.utils: the device order, seeding, the scale switch, the NFE counter (forwarding, parameters,
use inside a solver) and parameter counts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from dedl.solvers import odeint
from dedl.utils import (
    SCALES,
    NFECounter,
    cpu_seconds,
    fitted_order,
    get_device,
    get_scale,
    parameter_count,
    scaled,
    seed_everything,
)

# --------------------------------------------------------------------------------------------------
# get_device
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(False, False, "cpu"), (True, False, "cuda"), (True, True, "cuda"), (False, True, "mps")],
)
def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    device = get_device()
    assert isinstance(device, torch.device) and device.type == expected


def test_get_device_without_an_mps_backend_is_the_cpu(monkeypatch):
    """Builds of torch without ``torch.backends.mps`` fall back to the CPU when CUDA is hidden."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends, "mps", None)
    assert get_device() == torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# seed_everything
# --------------------------------------------------------------------------------------------------


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.randn(3).tolist(), torch.randperm(10).tolist()


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_seed_everything_repeats_python_numpy_and_torch(seed):
    seed_everything(seed)
    first = draws()
    seed_everything(seed)
    assert draws() == first


def test_seed_everything_with_another_seed_draws_otherwise():
    seed_everything(0)
    a = draws()
    seed_everything(1)
    b = draws()
    assert all(u != v for u, v in zip(a, b))


def test_seed_everything_makes_module_initialisation_repeat():
    seed_everything(7)
    a = nn.Linear(4, 3)
    seed_everything(7)
    b = nn.Linear(4, 3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


# --------------------------------------------------------------------------------------------------
# get_scale and scaled
# --------------------------------------------------------------------------------------------------


def test_scale_defaults_to_ci(monkeypatch):
    monkeypatch.delenv("DEDL_SCALE", raising=False)
    assert get_scale() == "ci"
    assert scaled(ci=5, full=200) == 5


@pytest.mark.parametrize("value, scale", [("ci", "ci"), ("full", "full"), (" Full\n", "full"), ("CI", "ci")])
def test_scale_is_read_case_and_space_insensitively(monkeypatch, value, scale):
    monkeypatch.setenv("DEDL_SCALE", value)
    assert get_scale() == scale
    assert scaled(ci="small", full="large") == ("large" if scale == "full" else "small")


@pytest.mark.parametrize("value", ["huge", "", "fu ll", "ci,full", "0"])
def test_invalid_scale_raises_naming_the_variable_and_the_choices(monkeypatch, value):
    monkeypatch.setenv("DEDL_SCALE", value)
    with pytest.raises(ValueError) as info:
        get_scale()
    message = str(info.value)
    assert "DEDL_SCALE" in message and all(s in message for s in SCALES)
    with pytest.raises(ValueError):
        scaled(ci=1, full=2)


def test_scaled_returns_the_objects_themselves(monkeypatch):
    ci, full = [1], [2]
    monkeypatch.setenv("DEDL_SCALE", "full")
    assert scaled(ci=ci, full=full) is full
    monkeypatch.setenv("DEDL_SCALE", "ci")
    assert scaled(ci=ci, full=full) is ci


# --------------------------------------------------------------------------------------------------
# NFECounter
# --------------------------------------------------------------------------------------------------


def test_nfe_counter_forwards_arguments_and_result():
    seen = []

    def field(t, y):
        seen.append((t, y))
        return 2 * y + t

    counter = NFECounter(field)
    t, y = torch.tensor(0.5), torch.arange(3.0)
    assert torch.equal(counter(t, y), 2 * y + t)
    assert len(seen) == 1 and seen[0][0] is t and seen[0][1] is y
    assert counter.nfe == 1


def test_nfe_counter_starts_at_zero_and_counts_again_after_reset():
    counter = NFECounter(lambda t, y: y)
    assert counter.nfe == 0
    for _ in range(4):
        counter(0.0, torch.zeros(1))
    counter.reset()
    counter(0.0, torch.zeros(1))
    assert counter.nfe == 1


def test_nfe_counter_shows_the_parameters_of_a_module_field():
    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, t, y):
            return self.lin(y)

    field = Field()
    counter = NFECounter(field)
    assert counter.func is field
    assert [id(p) for p in counter.parameters()] == [id(p) for p in field.parameters()]
    out = counter(torch.tensor(0.0), torch.ones(5, 2)).sum()
    out.backward()
    assert field.lin.weight.grad is not None


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_nfe_counter_counts_the_evaluations_of_a_fixed_step_solver(steps):
    """Euler with ``steps`` steps on [0, 1] evaluates the field once per step."""
    counter = NFECounter(lambda t, y: -y)
    y = odeint(counter, torch.ones(3), torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 1 / steps})
    assert counter.nfe == steps
    assert torch.allclose(y[-1], torch.full((3,), (1 - 1 / steps) ** steps), atol=1e-6)


def test_parameter_count_counts_trainable_parameters_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert parameter_count(model) == 3 * 4 + 4 + 4 * 2 + 2
    model[1].requires_grad_(False)
    assert parameter_count(model) == 3 * 4 + 4


@pytest.mark.parametrize("order", [0.5, 1.0, 4.0])
def test_fitted_order_recovers_the_power_of_a_power_law(order):
    hs = np.array([0.1, 0.05, 0.025, 0.0125])
    assert fitted_order(hs, 3.0 * hs**order) == pytest.approx(order)


def test_fitted_order_is_the_least_squares_slope_of_noisy_errors():
    hs = np.array([0.1, 0.05, 0.025])
    errors = hs**2 * np.array([1.0, 1.2, 1.0])
    assert fitted_order(hs, errors) == pytest.approx(np.polyfit(np.log(hs), np.log(errors), 1)[0])
    assert 1.5 < fitted_order(hs, errors) < 2.5


@pytest.mark.parametrize(
    "steps, errors",
    [([0.1], [1e-2]), ([0.1, 0.05], [1e-2]), ([0.1, 0.05], [1e-2, 0.0]), ([0.1, -0.05], [1e-2, 1e-3]),
     ([0.1, 0.05], [1e-2, float("nan")]), ([0.1, 0.1], [1e-2, 1e-3])],
)
def test_fitted_order_rejects_what_has_no_logarithmic_slope(steps, errors):
    with pytest.raises(ValueError):
        fitted_order(steps, errors)


def test_cpu_seconds_times_the_work_on_one_thread_and_restores_the_thread_count():
    threads = torch.get_num_threads()
    seen = []
    x = torch.randn(200, 200)

    def work():
        seen.append(torch.get_num_threads())
        for _ in range(20):
            x @ x

    seconds = cpu_seconds(work, repeats=3)
    assert seen == [1, 1, 1] and torch.get_num_threads() == threads
    assert seconds > 0


@pytest.mark.parametrize("repeats", [0, -1, 1.5, True])
def test_cpu_seconds_rejects_a_bad_number_of_repeats(repeats):
    with pytest.raises(ValueError, match="repeats"):
        cpu_seconds(lambda: None, repeats=repeats)


def test_peak_allocated_bytes_sees_a_temporary_tensor():
    from dedl.utils import peak_allocated_bytes

    def make_and_drop():
        torch.zeros(1 << 18, dtype=torch.float32).sum()  # 1 MiB, freed at once

    assert peak_allocated_bytes(make_and_drop) >= 1 << 20
