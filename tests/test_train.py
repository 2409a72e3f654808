"""Tests of dedl.train: the training loop, the classification helpers and the robustness metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dedl.data import two_moons
from dedl.train import accuracy, cross_entropy_loss, fgsm, fit, robust_accuracy, shuffled_batches


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))


@pytest.fixture(scope="module")
def moons() -> tuple[torch.Tensor, torch.Tensor]:
    return two_moons(256, noise=0.1, seed=0)


def train(moons, epochs: int = 20, seed: int = 0):
    x, y = moons
    model = classifier()
    history = fit(model, cross_entropy_loss, shuffled_batches(x, y, 32), epochs=epochs, lr=1e-2, seed=seed,
                  metrics={"accuracy": lambda m: accuracy(m, x, y)}, progress=False)
    return model, history


def test_fit_lowers_the_loss_and_records_every_epoch(moons):
    model, history = train(moons)
    assert len(history.loss) == 20 and len(history.metrics["accuracy"]) == 20
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.metrics["accuracy"][-1] > 0.85
    assert history.seconds > 0


def test_fit_repeats_with_the_same_seed(moons):
    assert train(moons, epochs=3)[1].loss == train(moons, epochs=3)[1].loss


def test_fit_rejects_bad_input(moons):
    x, y = moons
    with pytest.raises(ValueError, match="epochs"):
        fit(classifier(), cross_entropy_loss, [(x, y)], epochs=0, progress=False)
    with pytest.raises(ValueError, match="no batch"):
        fit(classifier(), cross_entropy_loss, [], epochs=1, progress=False)
    with pytest.raises(FloatingPointError, match="loss became"):
        fit(classifier(), lambda m, b: m(b[0]).sum() * math.nan, [(x, y)], epochs=1, progress=False)


def test_cross_entropy_loss_is_the_cross_entropy_of_the_logits(moons):
    x, y = moons
    model = classifier()
    assert torch.equal(cross_entropy_loss(model, (x, y)), nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_batches_cover_the_data_in_a_fresh_order(drop_last):
    x, y = torch.arange(10.0), torch.arange(10)
    batches = shuffled_batches(x, y, 4, drop_last=drop_last)
    torch.manual_seed(0)
    first = batches()
    assert [len(b) for b, _ in first] == ([4, 4] if drop_last else [4, 4, 2])
    for xb, yb in first:
        assert torch.equal(xb.long(), yb)
    seen = torch.cat([yb for _, yb in first])
    assert len(set(seen.tolist())) == len(seen) == (8 if drop_last else 10)
    second = batches()
    assert not torch.equal(seen, torch.cat([yb for _, yb in second]))
    torch.manual_seed(0)
    assert torch.equal(seen, torch.cat([yb for _, yb in batches()]))


def test_shuffled_batches_reject_bad_input():
    x, y = torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="same length"):
        shuffled_batches(x, y[:4], 2)
    with pytest.raises(ValueError, match="batch_size"):
        shuffled_batches(x, y, 0)
    with pytest.raises(ValueError, match="leaves no batch"):
        shuffled_batches(x, y, 8, drop_last=True)


def test_accuracy_counts_the_argmax():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert accuracy(model, x, torch.tensor([0, 1, 1, 1]), batch_size=3) == 0.75


def test_fgsm_moves_every_input_by_epsilon_and_raises_the_loss(moons):
    model, _ = train(moons, epochs=5)
    x, y = moons
    x_adv = fgsm(model, x, y, 0.1)
    assert torch.allclose((x_adv - x).abs(), torch.full_like(x, 0.1))
    with torch.no_grad():
        assert cross_entropy_loss(model, (x_adv, y)) > cross_entropy_loss(model, (x, y))
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, -0.1)


def test_robust_accuracy_falls_under_perturbation_and_chunks_consistently(moons):
    model, _ = train(moons)
    x, y = moons
    clean = accuracy(model, x, y)
    assert robust_accuracy(model, x, y) == clean
    assert robust_accuracy(model, x, y, fgsm_epsilon=0.3) < clean
    assert robust_accuracy(model, x, y, noise_std=0.5) < clean
    assert robust_accuracy(model, x, y, noise_std=0.5, seed=1) == robust_accuracy(model, x, y, noise_std=0.5, seed=1)
    whole = robust_accuracy(model, x, y, fgsm_epsilon=0.3, batch_size=len(x))
    assert robust_accuracy(model, x, y, fgsm_epsilon=0.3, batch_size=50) == pytest.approx(whole)
