"""Tests of dedl.uncertainty (AUROC, calibration, likelihood, entropy) and the out-of-distribution data."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dedl.data import OOD_KINDS, hold_out_classes, out_of_distribution_images
from dedl.uncertainty import (
    auroc,
    expected_calibration_error,
    negative_log_likelihood,
    predictive_entropy,
    reliability_diagram,
)


def test_auroc_hand_case_with_a_tie():
    s_in = torch.tensor([0.1, 0.4, 0.35, 0.8])
    s_out = torch.tensor([0.4, 0.9, 0.35])
    # 0.4: > 0.1, 0.35; = 0.4 -> 2.5; 0.9: 4; 0.35: > 0.1, = 0.35 -> 1.5; total 8 of 12
    assert auroc(s_in, s_out) == pytest.approx(8 / 12)
    assert auroc(torch.zeros(3), torch.ones(2)) == 1.0
    assert auroc(torch.ones(3), torch.zeros(2)) == 0.0
    assert auroc(torch.ones(3), torch.ones(2)) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    s_in = torch.randn(200, generator=g)
    s_out = torch.randn(150, generator=g) + 0.7
    s_out[:20] = s_in[:20]  # ties across the two sets
    labels = [0] * 200 + [1] * 150
    expected = roc_auc_score(labels, torch.cat([s_in, s_out]).numpy())
    assert auroc(s_in, s_out) == pytest.approx(expected, abs=1e-12)


def test_ece_and_reliability_hand_case():
    # confidences 0.9, 0.9, 0.7, 0.7 (two bins of 5: (0.8, 1] and (0.6, 0.8]); accuracies 1/2 and 1
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.7, 0.3], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 0, 1])
    diagram = reliability_diagram(probs, labels, bins=5)
    assert diagram.count.tolist() == [0, 0, 0, 2, 2]
    assert diagram.accuracy[4] == pytest.approx(0.5) and diagram.confidence[4] == pytest.approx(0.9)
    assert diagram.accuracy[3] == pytest.approx(1.0) and diagram.confidence[3] == pytest.approx(0.7)
    assert math.isnan(diagram.accuracy[0]) and len(diagram.edges) == 6
    # ECE = 2/4 |0.5 - 0.9| + 2/4 |1 - 0.7| = 0.35
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.35)


def test_ece_of_a_calibrated_predictor_is_small_and_bins_edges_are_right_closed():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(20000, generator=g) * 0.5 + 0.5
    labels = (torch.rand(20000, generator=g) > p).long()  # class 0 with probability p
    probs = torch.stack([p, 1 - p], 1)
    assert expected_calibration_error(probs, labels) < 0.02
    one = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert reliability_diagram(one, torch.tensor([0, 1]), bins=4).count.tolist() == [0, 0, 0, 2]


def test_nll_and_entropy():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    labels = torch.tensor([0, 0, 1])
    assert negative_log_likelihood(probs, labels) == pytest.approx((math.log(2) + 0 - math.log(0.75)) / 3)
    entropy = predictive_entropy(probs)
    assert entropy.shape == (3,)
    assert entropy[0] == pytest.approx(math.log(2)) and entropy[1] == 0.0
    assert negative_log_likelihood(torch.tensor([[0.0, 1.0]]), torch.tensor([0])) == pytest.approx(-math.log(1e-12))


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: auroc([0.1], torch.ones(2)), TypeError),
        (lambda: auroc(torch.ones(0), torch.ones(2)), ValueError),
        (lambda: auroc(torch.ones(2, 2), torch.ones(2)), ValueError),
        (lambda: auroc(torch.tensor([float("nan")]), torch.ones(2)), ValueError),
        (lambda: expected_calibration_error(torch.ones(2, 2), torch.zeros(2).long()), ValueError),
        (lambda: expected_calibration_error(torch.full((2, 2), 0.5), torch.zeros(2)), TypeError),
        (lambda: expected_calibration_error(torch.full((2, 2), 0.5), torch.tensor([0, 2])), ValueError),
        (lambda: expected_calibration_error(torch.full((2, 2), 0.5), torch.zeros(3).long()), ValueError),
        (lambda: expected_calibration_error(torch.full((2, 2), 0.5), torch.zeros(2).long(), bins=0), ValueError),
        (lambda: predictive_entropy(torch.ones(2, 2, dtype=torch.long)), TypeError),
        (lambda: predictive_entropy(torch.full((3,), 1 / 3)), ValueError),
    ],
)
def test_argument_errors(call, error):
    with pytest.raises(error):
        call()


# ----------------------------------------------------------------------------------------------------
# out-of-distribution data
# ----------------------------------------------------------------------------------------------------


def test_out_of_distribution_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g)
    for kind in OOD_KINDS:
        out = out_of_distribution_images(x, kind)
        assert out.shape == x.shape and out.dtype == x.dtype and not torch.allclose(out, x)
    assert torch.equal(out_of_distribution_images(x, "noise", seed=3), out_of_distribution_images(x, "noise", seed=3))
    inverted = out_of_distribution_images(x, "inverted")
    assert torch.allclose(inverted.amax((1, 2, 3)), x.amax((1, 2, 3)))  # same range, reflected
    assert torch.allclose(out_of_distribution_images(inverted, "inverted"), x, atol=1e-6)
    rotated = out_of_distribution_images(x, "rotated")
    assert torch.equal(rotated[0, 0, 0, :], x[0, 0, :, -1])
    with pytest.raises(ValueError):
        out_of_distribution_images(x, "blur")
    with pytest.raises(ValueError):
        out_of_distribution_images(torch.randn(2, 1, 4, 5), "rotated")
    with pytest.raises(TypeError):
        out_of_distribution_images(torch.zeros(2, 1, 4, 4, dtype=torch.long), "noise")


def test_hold_out_classes_relabels_in_order():
    x = torch.arange(10.0).view(10, 1)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    x_in, y_in, x_out = hold_out_classes(x, y, (1, 3))
    assert y_in.tolist() == [0, 1, 2, 0, 1, 2] and x_in[:, 0].tolist() == [0, 2, 4, 5, 7, 9]
    assert x_out[:, 0].tolist() == [1, 3, 6, 8]
    with pytest.raises(ValueError):
        hold_out_classes(x, y, (7,))
    with pytest.raises(ValueError):
        hold_out_classes(x, y, range(5))
    with pytest.raises(TypeError):
        hold_out_classes(x, y.float(), (1,))


def test_classification_scores_gathers_the_metrics():
    from dedl.uncertainty import classification_scores

    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])  # the second prediction is wrong
    out = {"far": torch.tensor([[0.5, 0.5], [0.55, 0.45]])}
    scores = classification_scores(probs, labels, out)
    assert scores["accuracy"] == 0.75
    assert scores["NLL"] == pytest.approx(negative_log_likelihood(probs, labels))
    assert scores["ECE"] == pytest.approx(expected_calibration_error(probs, labels))
    assert scores["misclassification"] == pytest.approx(1.0)  # the wrong one is least confident
    assert scores["far"] == pytest.approx(1.0)  # both far inputs are less confident than all
    assert math.isnan(classification_scores(probs[2:], labels[2:])["misclassification"])
    with pytest.raises(ValueError, match="classes"):
        classification_scores(probs, labels, {"bad": torch.full((2, 3), 1 / 3)})
