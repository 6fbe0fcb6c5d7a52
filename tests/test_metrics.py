"""Metrics on small examples worked out by hand."""
import math

import numpy as np
import pytest

from rnnfast import metrics


def test_accuracy_from_labels_and_from_logits():
    targets = np.array([0, 1, 2, 1])
    assert metrics.accuracy(np.array([0, 1, 1, 1]), targets) == 0.75
    logits = np.array([[3.0, 0, 0], [0, 1, 0], [0, 0, -1], [0, 5, 0]])  # argmax 0, 1, 0, 1
    assert metrics.accuracy(logits, targets) == 0.75
    assert metrics.accuracy(np.ones((2, 3, 4)), np.zeros((2, 3), int)) == 1.0  # ties pick class 0, as argmax


# targets 0 0 1 1 2 2, predicted 0 1 1 1 0 2: per class tp (1, 2, 1), predicted (2, 3, 1), actual (2, 2, 2)
MULTI_TARGETS = np.array([0, 0, 1, 1, 2, 2])
MULTI_PRED = np.array([0, 1, 1, 1, 0, 2])
MULTI_EXPECTED = (
    (1 / 2 + 2 / 3 + 1) / 3,  # precision per class: 1/2, 2/3, 1
    (1 / 2 + 1 + 1 / 2) / 3,  # recall: 1/2, 1, 1/2
    (1 / 2 + 4 / 5 + 2 / 3) / 3,  # f1 = 2pr/(p+r): 1/2, 4/5, 2/3
)


def test_macro_precision_recall_f1_by_hand():
    assert metrics.precision_recall_f1(MULTI_PRED, MULTI_TARGETS) == pytest.approx(MULTI_EXPECTED)
    # a class that occurs nowhere is left out of the average, as scikit-learn does
    assert metrics.precision_recall_f1(MULTI_PRED, MULTI_TARGETS, num_classes=5) == pytest.approx(MULTI_EXPECTED)
    scores = np.eye(3)[MULTI_PRED] * 2.0 - 1.0  # one-hot scores give the same labels
    assert metrics.precision_recall_f1(scores, MULTI_TARGETS) == pytest.approx(MULTI_EXPECTED)


def test_binary_precision_recall_f1_by_hand():
    targets = np.array([1, 1, 1, 0, 0, 0, 1])
    pred = np.array([1, 0, 1, 1, 0, 0, 0])  # tp 2, fp 1, fn 2
    p, r, f1 = metrics.precision_recall_f1(pred, targets, average="binary")
    assert (p, r, f1) == pytest.approx((2 / 3, 1 / 2, 4 / 7))


def test_zero_denominators_count_as_zero():
    targets = np.array([1, 0, 1])
    assert metrics.precision_recall_f1(np.zeros(3, int), targets, average="binary") == (0.0, 0.0, 0.0)
    assert metrics.precision_recall_f1(np.ones(3, int), np.zeros(3, int), average="binary") == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: metrics.accuracy(np.zeros((2, 3)), np.zeros(3, int)), r"shape \(2, 3\) and targets \(3,\)"),
        (lambda: metrics.accuracy(np.zeros(0, int), np.zeros(0, int)), "no examples"),
        (lambda: metrics.precision_recall_f1(MULTI_PRED, MULTI_TARGETS, average="micro"), "unknown average 'micro'"),
        (lambda: metrics.precision_recall_f1(MULTI_PRED, MULTI_TARGETS, average="binary"), "use average='macro'"),
        (lambda: metrics.precision_recall_f1(MULTI_PRED, MULTI_TARGETS, "binary", num_classes=3), "needs two classes"),
        (lambda: metrics.precision_recall_f1(MULTI_PRED, MULTI_TARGETS, num_classes=2), r"\[0, 2\).*\[0, 2\]"),
        (lambda: metrics.precision_recall_f1(np.zeros(3), np.zeros(3)), "integer labels"),
        (lambda: metrics.mae(np.zeros(3), np.zeros(4)), r"shape \(3,\) but .* \(4,\)"),
        (lambda: metrics.rmse(np.zeros((2, 2)), np.zeros(4)), r"shape \(2, 2\) but .* \(4,\)"),
    ],
)
def test_bad_input_is_a_clear_error(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_language_model_metrics():
    assert metrics.bits_per_char(math.log(2.0)) == pytest.approx(1.0)
    assert metrics.bits_per_char(math.log(65.0)) == pytest.approx(math.log2(65.0))
    assert metrics.perplexity(math.log(65.0)) == pytest.approx(65.0)
    assert metrics.perplexity(0.0) == 1.0


def test_forecast_metrics():
    pred, target = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 1.0, 4.0])  # errors -1, 0, 2, 0
    assert metrics.mae(pred, target) == pytest.approx(3 / 4)
    assert metrics.rmse(pred, target) == pytest.approx(math.sqrt(5 / 4))
    assert isinstance(metrics.mae(pred, target), float) and isinstance(metrics.rmse(pred, target), float)


@pytest.mark.gpu
def test_metrics_on_gpu_match_cpu():
    import cupy as cp

    assert metrics.precision_recall_f1(cp.asarray(MULTI_PRED), cp.asarray(MULTI_TARGETS)) == pytest.approx(
        MULTI_EXPECTED
    )
    assert metrics.accuracy(cp.asarray(MULTI_PRED), cp.asarray(MULTI_TARGETS)) == pytest.approx(4 / 6)
    a, b = cp.asarray([1.0, 2.0]), cp.asarray([2.0, 4.0])
    assert metrics.mae(a, b) == pytest.approx(1.5) and metrics.rmse(a, b) == pytest.approx(math.sqrt(2.5))
