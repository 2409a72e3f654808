"""Tests of dedl.utils: device, seeding, the scale switch, the NFE counter and parameter counts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from dedl.utils import NFECounter, get_device, get_scale, parameter_count, scaled, seed_everything


def test_get_device_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_seed_everything_repeats_every_generator():
    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_scale_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("DEDL_SCALE", raising=False)
    assert get_scale() == "ci" and scaled(ci=1, full=2) == 1
    monkeypatch.setenv("DEDL_SCALE", "FULL")
    assert get_scale() == "full" and scaled(ci=1, full=2) == 2
    monkeypatch.setenv("DEDL_SCALE", "huge")
    with pytest.raises(ValueError, match="DEDL_SCALE"):
        get_scale()


def test_nfe_counter_counts_and_resets():
    counter = NFECounter(lambda t, y: -y)
    for _ in range(3):
        counter(torch.tensor(0.0), torch.ones(2))
    assert counter.nfe == 3
    counter.reset()
    assert counter.nfe == 0


def test_parameter_count_counts_trainable_parameters_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert parameter_count(model) == 3 * 4 + 4 + 4 * 2 + 2
    model[1].requires_grad_(False)
    assert parameter_count(model) == 3 * 4 + 4
