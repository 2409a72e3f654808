"""One small training loop that every chapter reuses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dedl.utils import seed_everything

Batch = tuple[Tensor, ...]


@dataclass
class History:
    """What a run of :func:`fit` records: the mean loss of each epoch, extra metrics, and wall time."""

    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def cross_entropy_loss(model: nn.Module, batch: Batch) -> Tensor:
    """The classification loss for :func:`fit`: ``cross_entropy(model(x), y)`` on a batch ``(x, y)`` of inputs
    and integer labels."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def shuffled_batches(
    x: Tensor, y: Tensor, batch_size: int, drop_last: bool = False
) -> Callable[[], list[tuple[Tensor, Tensor]]]:
    """The ``batches`` argument of :func:`fit` for in-memory data: a function that returns the mini-batches
    ``(x[i], y[i])`` of one epoch in a fresh random order (``torch.randperm``, so :func:`fit`'s seed fixes it).

    ``drop_last=True`` leaves out the last, incomplete batch (batch norm then never sees a tiny batch).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if drop_last and len(x) < batch_size:
        raise ValueError(f"drop_last=True with {len(x)} examples and batch_size {batch_size} leaves no batch")
    stop = len(x) - batch_size + 1 if drop_last else len(x)

    def batches() -> list[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(x))
        return [(x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, stop, batch_size)]

    return batches


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    batches: Callable[[], Iterable[Batch]] | Iterable[Batch],
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    metrics: dict[str, Callable[[nn.Module], float]] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> History:
    """Minimise ``loss_fn(model, batch)`` over ``epochs`` passes of ``batches``.

    ``batches`` is an iterable re-read each epoch (a ``DataLoader`` or a list), or a function
    returning a fresh iterable. Each batch is moved to ``device`` (the model's device when
    omitted). ``metrics`` maps names to functions of the model, evaluated after every epoch
    under ``torch.no_grad``. A tqdm bar shows the epoch and the latest loss.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if seed is not None:
        seed_everything(seed)
    if device is None:
        device = next(model.parameters()).device
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    history = History(metrics={name: [] for name in (metrics or {})})
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for _ in bar:
        model.train()
        total, count = 0.0, 0
        for batch in batches() if callable(batches) else batches:
            batch = tuple(b.to(device) for b in batch)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {len(history.loss) + 1}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            count += 1
        if count == 0:
            raise ValueError("batches yielded no batch")
        history.loss.append(total / count)
        model.eval()
        with torch.no_grad():
            for name, metric in (metrics or {}).items():
                history.metrics[name].append(float(metric(model)))
        bar.set_postfix(loss=f"{history.loss[-1]:.4g}")
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (argmax of the logits)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        correct += (logits.argmax(-1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / len(x)


def fgsm(model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
    """The fast gradient sign perturbation ``x + epsilon * sign(grad_x loss)`` (Goodfellow et al. 2015, eq. 3).

    ``epsilon`` is measured in the units of ``x`` (for the book's normalised images, standard deviations).
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():  # the attack needs a gradient even when called under torch.no_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return (x + epsilon * grad.sign()).detach()


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise_std: float = 0.0,
    fgsm_epsilon: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
) -> float:
    """Accuracy on inputs perturbed by Gaussian noise of ``noise_std`` and then an FGSM step of ``fgsm_epsilon``.

    ``batch_size`` scores the set in chunks, as a large test set needs on a GPU (the FGSM step keeps a graph of
    the whole chunk); the noise of the chunk that starts at index ``i`` is drawn with the seed ``seed + i``.
    """
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if not fgsm_epsilon >= 0:
        raise ValueError(f"fgsm_epsilon must be >= 0, got {fgsm_epsilon}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if batch_size is not None and batch_size < len(x):
        correct = 0.0
        for i in range(0, len(x), batch_size):
            xi, yi = x[i : i + batch_size], y[i : i + batch_size]
            correct += robust_accuracy(model, xi, yi, noise_std, fgsm_epsilon, seed + i) * len(yi)
        return correct / len(y)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if noise_std > 0:
        g = torch.Generator(device=x.device).manual_seed(seed)
        x = x + noise_std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    if fgsm_epsilon > 0:
        x = fgsm(model, x, y, fgsm_epsilon)
    return accuracy(model, x.cpu(), y.cpu())
