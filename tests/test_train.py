"""Tests of dedl.train: the contract of fit (progress bar, metrics, optimiser,
kinds of ``batches``, non-finite losses), shuffled_batches' coverage, and the exact behaviour of accuracy, fgsm
and robust_accuracy on a logistic regression (a linear model, for which FGSM provably cannot help).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dedl.train import History, accuracy, cross_entropy_loss, fgsm, fit, robust_accuracy, shuffled_batches


def blobs(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs around (-1.5, 0) and (1.5, 0): a linearly separable problem (up to a few points)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.7 * torch.randn(n, 2, generator=g)
    x[:, 0] += 3.0 * y - 1.5
    return x, y


def logistic(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


def run(model, x, y, epochs=3, **kwargs) -> History:
    kwargs = {"lr": 0.05, "progress": False, **kwargs}
    return fit(model, cross_entropy_loss, shuffled_batches(x, y, 32), epochs=epochs, **kwargs)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A logistic regression fitted to the blobs (a few epochs), with its data."""
    x, y = blobs()
    model = logistic()
    run(model, x, y, epochs=5)
    return model, x, y


# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


def test_fit_trains_a_logistic_regression():
    x, y = blobs()
    model = logistic()
    before = cross_entropy_loss(model, (x, y)).item()
    history = run(model, x, y, epochs=4, metrics={"acc": lambda m: accuracy(m, x, y)})
    assert isinstance(history, History)
    assert len(history.loss) == 4 and all(isinstance(v, float) for v in history.loss)
    assert history.loss[-1] < history.loss[0]
    assert cross_entropy_loss(model, (x, y)).item() < 0.5 * before
    assert list(history.metrics) == ["acc"] and len(history.metrics["acc"]) == 4
    assert history.metrics["acc"][-1] > 0.95
    assert history.seconds > 0


def test_fit_with_another_seed_gives_other_losses():
    """The seed fixes the batch order: identical models, different seeds, different epoch losses."""
    x, y = blobs()
    a = run(logistic(), x, y, seed=0).loss
    b = run(logistic(), x, y, seed=0).loss
    c = run(logistic(), x, y, seed=1).loss
    assert a == b and a != c


@pytest.mark.parametrize("kind", ["list", "callable", "dataloader"])
def test_fit_rereads_every_kind_of_batches_each_epoch(kind):
    x, y = blobs(64)
    pairs = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    batches = {
        "list": pairs,
        "callable": lambda: iter(pairs),
        "dataloader": DataLoader(TensorDataset(x, y), batch_size=16),
    }[kind]
    seen = []

    def loss_fn(model, batch):
        seen.append(len(batch[0]))
        return cross_entropy_loss(model, batch)

    history = fit(logistic(), loss_fn, batches, epochs=3, progress=False)
    assert len(history.loss) == 3
    assert seen == [16] * 12  # four batches in each of the three epochs


def test_fit_epoch_loss_is_the_mean_batch_loss():
    """With lr = 0 nothing moves, so the epoch loss is the mean of the batch losses of the fixed model."""
    x, y = blobs(60)
    pairs = [(x[:20], y[:20]), (x[20:50], y[20:50]), (x[50:], y[50:])]
    model = logistic()
    expected = sum(cross_entropy_loss(model, b).item() for b in pairs) / 3
    history = fit(model, cross_entropy_loss, pairs, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                  progress=False)
    assert history.loss == pytest.approx([expected, expected], rel=1e-6)


def test_fit_uses_the_given_optimizer():
    x, y = blobs()
    model = logistic()
    start = copy.deepcopy(model.state_dict())
    run(model, x, y, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), lr=10.0)
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_fit_evaluates_metrics_once_per_epoch_in_eval_mode_without_grad():
    x, y = blobs(64)
    calls = []

    def metric(model):
        calls.append((model.training, torch.is_grad_enabled()))
        return 1.0

    training_modes = []

    def loss_fn(model, batch):
        training_modes.append(model.training)
        return cross_entropy_loss(model, batch)

    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.1), nn.Linear(8, 2))
    history = fit(model, loss_fn, [(x, y)], epochs=3, metrics={"m": metric}, progress=False)
    assert calls == [(False, False)] * 3
    assert training_modes == [True] * 3
    assert history.metrics == {"m": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fit_stops_at_a_non_finite_loss_before_stepping(bad):
    x, y = blobs(64)
    model = logistic()
    start = copy.deepcopy(model.state_dict())
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(model, lambda m, b: cross_entropy_loss(m, b) * bad, [(x, y)], epochs=2, progress=False)
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_fit_reports_the_epoch_in_which_the_loss_blew_up():
    x, y = blobs(64)
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return cross_entropy_loss(model, batch) * (math.nan if len(calls) == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="epoch 3"):
        fit(logistic(), loss_fn, [(x, y)], epochs=5, progress=False)


@pytest.mark.parametrize("epochs", [0, -1])
def test_fit_rejects_fewer_than_one_epoch(epochs):
    x, y = blobs(16)
    with pytest.raises(ValueError, match="epochs"):
        fit(logistic(), cross_entropy_loss, [(x, y)], epochs=epochs, progress=False)


def test_fit_rejects_batches_that_yield_nothing():
    x, y = blobs(16)
    with pytest.raises(ValueError, match="no batch"):
        fit(logistic(), cross_entropy_loss, lambda: [], epochs=1, progress=False)
    # A generator is read once: the second epoch finds it empty, which must not pass silently.
    with pytest.raises(ValueError, match="no batch"):
        fit(logistic(), cross_entropy_loss, ((x, y) for _ in range(1)), epochs=2, progress=False)


def test_fit_progress_bar_shows_only_when_asked(capsys):
    x, y = blobs(32)
    fit(logistic(), cross_entropy_loss, [(x, y)], epochs=2, progress=False, desc="quiet-run")
    captured = capsys.readouterr()
    assert "quiet-run" not in captured.err + captured.out
    fit(logistic(), cross_entropy_loss, [(x, y)], epochs=2, progress=True, desc="loud-run")
    captured = capsys.readouterr()
    assert "loud-run" in captured.err and "loss=" in captured.err


def test_fit_moves_batches_to_the_given_device():
    x, y = blobs(32)
    devices = []

    def loss_fn(model, batch):
        devices.extend(b.device for b in batch)
        return cross_entropy_loss(model, batch)

    fit(logistic(), loss_fn, [(x, y)], epochs=1, device="cpu", progress=False)
    assert devices == [torch.device("cpu")] * 2


def test_history_defaults_are_not_shared():
    a, b = History(), History()
    a.loss.append(1.0)
    a.metrics["x"] = [1.0]
    assert b.loss == [] and b.metrics == {} and b.seconds == 0.0


# --------------------------------------------------------------------------------------------------
# cross_entropy_loss and shuffled_batches
# --------------------------------------------------------------------------------------------------


def test_cross_entropy_loss_matches_torch_for_many_classes():
    torch.manual_seed(0)
    model = nn.Linear(4, 5)
    x, y = torch.randn(7, 4), torch.randint(0, 5, (7,))
    loss = cross_entropy_loss(model, (x, y))
    assert loss.shape == () and loss.requires_grad
    assert torch.allclose(loss, nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (5, 8), (1, 1), (7, 7)])
def test_shuffled_batches_cover_every_index_once(n, batch_size):
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    y = torch.arange(n)
    batches = shuffled_batches(x, y, batch_size)()
    sizes = [len(yb) for _, yb in batches]
    assert sizes[:-1] == [batch_size] * (len(sizes) - 1) and 1 <= sizes[-1] <= batch_size
    assert sorted(torch.cat([yb for _, yb in batches]).tolist()) == list(range(n))
    for xb, yb in batches:  # pairs stay together
        assert torch.equal(xb[:, 0].long(), yb) and torch.equal(xb[:, 1].long(), yb)


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (7, 7), (8, 1)])
def test_shuffled_batches_drop_last_keeps_only_full_batches(n, batch_size):
    y = torch.arange(n)
    batches = shuffled_batches(y.float(), y, batch_size, drop_last=True)()
    assert [len(yb) for _, yb in batches] == [batch_size] * (n // batch_size)
    seen = torch.cat([yb for _, yb in batches]).tolist()
    assert len(set(seen)) == len(seen)


def test_shuffled_batches_draw_from_the_global_torch_seed():
    y = torch.arange(50)
    batches = shuffled_batches(y.float(), y, 10)
    torch.manual_seed(4)
    first = torch.cat([yb for _, yb in batches()])
    second = torch.cat([yb for _, yb in batches()])
    torch.manual_seed(4)
    assert torch.equal(torch.cat([yb for _, yb in batches()]), first)
    assert torch.equal(torch.cat([yb for _, yb in batches()]), second)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("batch_size", [0, -3, 2.0, True])
def test_shuffled_batches_reject_a_batch_size_that_is_not_a_positive_int(batch_size):
    y = torch.arange(6)
    with pytest.raises(ValueError, match="batch_size"):
        shuffled_batches(y.float(), y, batch_size)


def test_shuffled_batches_drop_last_needs_one_full_batch():
    y = torch.arange(6)
    assert len(shuffled_batches(y.float(), y, 6, drop_last=True)()) == 1
    with pytest.raises(ValueError, match="no batch"):
        shuffled_batches(y.float(), y, 7, drop_last=True)
    assert len(shuffled_batches(y.float(), y, 7, drop_last=False)()) == 1


# --------------------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------------------


def argmax_model(dropout: float = 0.0) -> nn.Module:
    """Logits = the input itself (behind an optional dropout): the prediction is the argmax of x."""
    linear = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3))
    return nn.Sequential(nn.Dropout(dropout), linear)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 1024])
def test_accuracy_of_known_predictions(batch_size):
    x = torch.tensor([[3.0, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0], [0, 5, 1]])  # predicts 0, 1, 2, 0, 1
    y = torch.tensor([0, 1, 1, 2, 1])
    result = accuracy(argmax_model(), x, y, batch_size=batch_size)
    assert isinstance(result, float) and result == pytest.approx(3 / 5)


def test_accuracy_puts_the_model_in_eval_mode():
    """A dropout of 0.9 would scramble the predictions in training mode; accuracy must switch it off."""
    torch.manual_seed(0)
    x = torch.eye(3).repeat(20, 1) * 2 + 0.1
    y = torch.arange(3).repeat(20)
    model = argmax_model(dropout=0.9).train()
    assert accuracy(model, x, y) == 1.0
    assert not model.training


# --------------------------------------------------------------------------------------------------
# fgsm
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.01, 0.25, 1.0])
def test_fgsm_steps_by_epsilon_along_the_gradient_sign(epsilon):
    x, y = blobs(64)
    model = logistic(seed=3)
    x_in = x.clone()
    x_adv = fgsm(model, x, y, epsilon)
    assert torch.equal(x, x_in)  # the input is not modified
    assert not x_adv.requires_grad
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y), xg)
    assert (grad != 0).all()
    assert torch.allclose(x_adv - x, epsilon * grad.sign(), atol=1e-6)
    assert torch.allclose((x_adv - x).abs().amax(dim=1), torch.full((64,), epsilon), atol=1e-6)  # L-inf = epsilon


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.5, 2.0])
def test_fgsm_never_lowers_the_loss_of_a_linear_model(epsilon, trained):
    """The cross entropy of a linear model is convex in x, so a step along the gradient sign cannot lower it."""
    model, x, y = trained
    x_adv = fgsm(model, x, y, epsilon)  # needs autograd: outside no_grad
    with torch.no_grad():
        clean = cross_entropy_loss(model, (x, y))
        attacked = cross_entropy_loss(model, (x_adv, y))
    assert attacked >= clean
    if epsilon > 0:
        assert attacked > clean


def test_fgsm_with_zero_epsilon_is_the_identity_and_negative_epsilon_raises():
    x, y = blobs(16)
    model = logistic()
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, -1e-3)


def test_fgsm_is_deterministic_despite_dropout():
    """fgsm evaluates the model in eval mode: dropout must not make two attacks differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.5), nn.Linear(16, 2)).train()
    x, y = blobs(32)
    assert torch.equal(fgsm(model, x, y, 0.1), fgsm(model, x, y, 0.1))


# --------------------------------------------------------------------------------------------------
# robust_accuracy
# --------------------------------------------------------------------------------------------------


def test_robust_accuracy_without_perturbation_is_the_accuracy(trained):
    model, x, y = trained
    assert robust_accuracy(model, x, y) == accuracy(model, x, y)
    assert robust_accuracy(model, x, y, batch_size=7) == pytest.approx(accuracy(model, x, y))


def test_robust_accuracy_under_fgsm_never_exceeds_clean_accuracy_and_falls_with_epsilon(trained):
    """For a two-class linear model FGSM lowers every margin by epsilon * |w1 - w0|_1: accuracy is monotone."""
    model, x, y = trained
    clean = accuracy(model, x, y)
    scores = [robust_accuracy(model, x, y, fgsm_epsilon=eps) for eps in (0.0, 0.1, 0.3, 0.6, 1.0, 2.0)]
    assert scores[0] == clean
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    assert scores[-1] < clean
    # Per example: no misclassified point becomes correct under the attack.
    x_adv = fgsm(model, x, y, 0.3)
    with torch.no_grad():
        right = model(x).argmax(1) == y
        right_adv = model(x_adv).argmax(1) == y
    assert not (right_adv & ~right).any()


@pytest.mark.parametrize("noise_std", [0.3, 1.0, 3.0])
def test_robust_accuracy_noise_is_gaussian_with_the_given_std_and_seed(noise_std, trained):
    model, x, y = trained
    g = torch.Generator().manual_seed(5)
    noisy = x + noise_std * torch.randn(x.shape, generator=g)
    assert robust_accuracy(model, x, y, noise_std=noise_std, seed=5) == accuracy(model, noisy, y)


def test_robust_accuracy_large_noise_lowers_accuracy_towards_chance(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    noisy = robust_accuracy(model, x, y, noise_std=20.0)
    assert noisy < clean - 0.2 and 0.3 < noisy < 0.7


def test_robust_accuracy_applies_noise_then_fgsm(trained):
    model, x, y = trained
    g = torch.Generator().manual_seed(2)
    noisy = x + 0.5 * torch.randn(x.shape, generator=g)
    expected = accuracy(model, fgsm(model, noisy, y, 0.4), y)
    assert robust_accuracy(model, x, y, noise_std=0.5, fgsm_epsilon=0.4, seed=2) == expected


@pytest.mark.parametrize("batch_size", [13, 50, 199])
def test_robust_accuracy_chunks_draw_noise_with_seed_plus_start_index(batch_size, trained):
    model, x, y = trained
    correct = 0.0
    for i in range(0, len(x), batch_size):
        xi, yi = x[i : i + batch_size], y[i : i + batch_size]
        correct += robust_accuracy(model, xi, yi, noise_std=1.0, fgsm_epsilon=0.2, seed=9 + i) * len(yi)
    chunked = robust_accuracy(model, x, y, noise_std=1.0, fgsm_epsilon=0.2, seed=9, batch_size=batch_size)
    assert chunked == pytest.approx(correct / len(x))


@pytest.mark.parametrize("batch_size", [200, 500])
def test_robust_accuracy_with_one_chunk_equals_the_unchunked_score(batch_size, trained):
    model, x, y = trained
    whole = robust_accuracy(model, x, y, noise_std=1.0, seed=3)
    assert robust_accuracy(model, x, y, noise_std=1.0, seed=3, batch_size=batch_size) == whole


def test_robust_accuracy_rejects_a_zero_batch_size(trained):
    model, x, y = trained
    with pytest.raises(ValueError):
        robust_accuracy(model, x, y, batch_size=0)


def test_robust_accuracy_rejects_a_negative_batch_size(trained):
    model, x, y = trained
    with pytest.raises(ValueError):
        robust_accuracy(model, x, y, batch_size=-10)


def test_robust_accuracy_rejects_a_negative_fgsm_epsilon(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="epsilon"):
        robust_accuracy(model, x, y, fgsm_epsilon=-0.1)


def test_robust_accuracy_rejects_a_negative_noise_std(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="noise"):
        robust_accuracy(model, x, y, noise_std=-0.1)


def test_fgsm_and_robust_accuracy_work_inside_no_grad(trained):
    model, x, y = trained
    with torch.no_grad():
        x_adv = fgsm(model, x, y, 0.1)
        assert robust_accuracy(model, x, y, fgsm_epsilon=0.1) <= accuracy(model, x, y)
    assert torch.allclose((x_adv - x).abs(), torch.full_like(x, 0.1))
