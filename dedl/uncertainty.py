"""Metrics of predictive uncertainty: out-of-distribution detection, calibration, likelihood, entropy.

Every function takes plain tensors (no model), so that it scores any classifier the same way: the predictive
distribution ``probs`` of shape ``(batch, num_classes)`` (rows of non-negative numbers that sum to one, e.g. the
mean over samples of :func:`dedl.nn.sdenets.mc_predict`, or ``model(x).softmax(-1)``), integer ``labels`` of shape
``(batch,)``, and scores of shape ``(n,)``.

* :func:`auroc` -- the area under the ROC curve of a score that separates two sets (e.g. in- from
  out-of-distribution inputs, or misclassified from correct predictions) {cite}`kong2020sde`;
* :func:`expected_calibration_error` and :func:`reliability_diagram` -- the calibration of the confidence
  ``max_k p_k`` {cite}`guo2017calibration`;
* :func:`negative_log_likelihood` and :func:`predictive_entropy`;
* :func:`classification_scores` -- all of them for one classifier at once, as the comparison tables report them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "auroc",
    "expected_calibration_error",
    "reliability_diagram",
    "ReliabilityDiagram",
    "negative_log_likelihood",
    "predictive_entropy",
    "classification_scores",
]


def _scores(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of scores, got shape {tuple(x.shape)}")
    if not x.is_floating_point() and x.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must hold numbers, got {x.dtype}")
    x = x.detach().to(torch.float64).cpu()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return x


def _probs_and_labels(probs: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point Tensor, got {getattr(probs, 'dtype', type(probs).__name__)}")
    if probs.dim() != 2 or probs.numel() == 0:
        raise ValueError(f"probs must have shape (batch, num_classes), got {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64).cpu()
    rows_sum_to_one = torch.allclose(p.sum(-1), torch.ones(len(p), dtype=p.dtype), atol=1e-4)
    if not torch.isfinite(p).all() or (p < 0).any() or not rows_sum_to_one:
        raise ValueError("probs must hold probabilities: non-negative rows that sum to one (apply softmax to logits)")
    if labels is None:
        return p, None
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"labels must be an integer Tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (len(p),):
        raise ValueError(f"labels must have shape ({len(p)},), got {tuple(labels.shape)}")
    labels = labels.cpu().long()
    if (labels < 0).any() or (labels >= p.shape[1]).any():
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, labels


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """The area under the ROC curve for telling ``scores_out`` (positives) from ``scores_in`` (negatives).

    Larger scores must mean "more likely out": the predictive entropy, one minus the confidence, an SDE-Net's
    diffusion. The AUROC is the probability that a random positive scores above a random negative, ties counted
    one half (the Mann–Whitney statistic, equal to the trapezoidal area under the ROC curve): 1 separates
    perfectly, 0.5 is chance. The SDE-Net paper reports it for out-of-distribution and misclassification
    detection {cite}`kong2020sde`. Computed from the joint ranks in ``O(n log n)``.
    """
    s_in, s_out = _scores("scores_in", scores_in), _scores("scores_out", scores_out)
    both = torch.cat([s_in, s_out])
    _, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    # mid-ranks of tied values: the average of the positions they occupy (1-based)
    ends = counts.cumsum(0).to(torch.float64)
    mid = ends - (counts.to(torch.float64) - 1) / 2
    ranks = mid[inverse]
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


class ReliabilityDiagram(NamedTuple):
    """The data of a reliability diagram {cite}`guo2017calibration`: for each of ``bins`` equal-width confidence
    bins of ``(0, 1]``, its ``edges`` (``bins + 1`` numbers), the ``count`` of predictions in it, their mean
    ``confidence`` and their ``accuracy`` (both NaN where the bin is empty, so that a plot skips it)."""

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor


def reliability_diagram(probs: Tensor, labels: Tensor, bins: int = 15) -> ReliabilityDiagram:
    """Bin the predictions by confidence ``max_k p_k`` into ``bins`` equal-width bins of ``(0, 1]`` (bin ``m`` is
    ``((m − 1)/M, m/M]``) and return each bin's count, mean confidence and accuracy {cite}`guo2017calibration`
    (Sec. 2). A calibrated model has accuracy equal to confidence in every bin."""
    p, y = _probs_and_labels(probs, labels)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    confidence, prediction = p.max(-1)
    correct = (prediction == y).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins)
    total_conf = torch.bincount(index, weights=confidence, minlength=bins)
    total_acc = torch.bincount(index, weights=correct, minlength=bins)
    nan = torch.full((bins,), float("nan"), dtype=torch.float64)
    filled = count > 0
    mean_conf = torch.where(filled, total_conf / count.clamp(min=1), nan)
    mean_acc = torch.where(filled, total_acc / count.clamp(min=1), nan)
    return ReliabilityDiagram(edges, count, mean_conf, mean_acc)


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """The expected calibration error ``Σ_m (|B_m| / n) |acc(B_m) − conf(B_m)|`` over ``bins`` equal-width
    confidence bins {cite}`guo2017calibration` (eq. 3); 0 for a perfectly calibrated model. The bins are those of
    :func:`reliability_diagram` (15 as in Guo et al.)."""
    diagram = reliability_diagram(probs, labels, bins)
    filled = diagram.count > 0
    gap = (diagram.accuracy[filled] - diagram.confidence[filled]).abs()
    return float((diagram.count[filled].to(torch.float64) * gap).sum() / diagram.count.sum())


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """The mean negative log-likelihood ``−(1/n) Σ_i log p_{i, y_i}`` of the labels (``p`` clamped below at
    ``eps``, so that a confident mistake costs ``−log eps`` rather than infinity): a proper scoring rule
    {cite}`lakshminarayanan2017simple`."""
    p, y = _probs_and_labels(probs, labels)
    return float(-p[torch.arange(len(y)), y].clamp(min=eps).log().mean())


def predictive_entropy(probs: Tensor) -> Tensor:
    """The entropy ``−Σ_k p_k log p_k`` of each predictive distribution, shape ``(batch,)``, float64 on the CPU
    (``0 log 0 = 0``):
    0 for a one-hot prediction, ``log K`` for the uniform one. Of a Monte Carlo mean it measures the total
    uncertainty {cite}`gal2016dropout`; as a score for :func:`auroc`, larger means more uncertain."""
    p, _ = _probs_and_labels(probs, None)
    return -torch.special.xlogy(p, p).sum(-1)


def classification_scores(
    probs: Tensor, labels: Tensor, out_of_distribution: dict[str, Tensor] | None = None
) -> dict[str, float]:
    """The scores of one classifier's predictive distribution, as Part V's tables report them.

    ``"accuracy"``, ``"NLL"`` (:func:`negative_log_likelihood`), ``"ECE"`` (:func:`expected_calibration_error`),
    ``"misclassification"``: the :func:`auroc` of ``1 − confidence`` for telling the wrong predictions from the
    right ones (``nan`` when every prediction is right or every one wrong), and, for each named set of
    ``out_of_distribution`` predictive distributions, the :func:`auroc` of ``1 − confidence`` for telling that
    set from ``probs``: the maximum-softmax baseline of out-of-distribution detection {cite}`kong2020sde`.
    """
    p, y = _probs_and_labels(probs, labels)
    confidence, predicted = p.max(1)
    wrong = predicted != y
    scores = {
        "accuracy": float((~wrong).double().mean()),
        "NLL": negative_log_likelihood(p, y),
        "ECE": expected_calibration_error(p, y),
        "misclassification": (
            auroc(1 - confidence[~wrong], 1 - confidence[wrong]) if 0 < wrong.sum() < len(y) else float("nan")
        ),
    }
    for name, p_out in (out_of_distribution or {}).items():
        q, _ = _probs_and_labels(p_out, None)
        if q.shape[1] != p.shape[1]:
            raise ValueError(f"out_of_distribution[{name!r}] has {q.shape[1]} classes, probs has {p.shape[1]}")
        scores[name] = auroc(1 - confidence, 1 - q.max(1).values)
    return scores
