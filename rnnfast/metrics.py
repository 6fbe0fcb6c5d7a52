"""Evaluation metrics, each returning Python floats: classification (accuracy, precision/recall/F1),
language modelling (bits per character, perplexity from a mean NLL in nats), forecasting (MAE, RMSE).

    >>> import numpy as np
    >>> accuracy(np.array([[2.0, 0.1], [0.3, 0.9]]), np.array([0, 0]))   # logits or labels
    0.5
    >>> round(perplexity(np.log(65.0)), 6)                                  # uniform over 65 chars
    65.0
"""
from __future__ import annotations

import math

import numpy as np

from rnnfast.backend import get_array_module, to_numpy
from rnnfast.losses import _check_same_shape


def _labels(pred, targets, what: str):
    """Class labels from ``pred``: labels shaped like targets, or scores shaped (*targets.shape, C)."""
    if pred.shape == targets.shape:
        labels = pred
    elif pred.ndim == targets.ndim + 1 and pred.shape[:-1] == targets.shape:
        labels = pred.argmax(axis=-1)
    else:
        raise ValueError(
            f"{what}: predictions have shape {tuple(pred.shape)} and targets {tuple(targets.shape)}; pass labels "
            "of the targets' shape or scores with one extra class axis"
        )
    if targets.size == 0:
        raise ValueError(f"{what}: no examples to score")
    return labels


def accuracy(pred, targets) -> float:
    """Fraction of correct labels. pred: (...) labels or (..., C) scores; targets: (...) labels."""
    labels = _labels(pred, targets, "accuracy")
    return float((labels == targets).mean())


def precision_recall_f1(pred, targets, average: str = "macro", num_classes: int | None = None):
    """(precision, recall, f1) as floats; a ratio with a zero denominator counts as 0 (as scikit-learn).

    pred: (...) labels or (..., C) scores; targets: (...) integer labels.
    ``average="binary"`` scores class 1 of a two-class problem; ``"macro"`` averages the per-class
    values over the classes that occur in targets or predictions (scikit-learn's default).
    ``num_classes`` (default: largest label + 1) bounds the labels.
    """
    if average not in ("macro", "binary"):
        raise ValueError(f"unknown average {average!r}; use 'macro' or 'binary'")
    labels = _labels(pred, targets, "precision_recall_f1")
    xp = get_array_module(labels, targets)
    if labels.dtype.kind not in "iu" or targets.dtype.kind not in "iu":
        raise ValueError(f"precision_recall_f1 needs integer labels, got {labels.dtype} and {targets.dtype}")
    low, high = min(int(labels.min()), int(targets.min())), max(int(labels.max()), int(targets.max()))
    if average == "binary":
        if num_classes not in (None, 2):
            raise ValueError(f"average='binary' needs two classes, got num_classes={num_classes}; use 'macro'")
        num_classes = 2
    num_classes = high + 1 if num_classes is None else num_classes
    if low < 0 or high >= num_classes:
        hint = "; use average='macro' for more than two classes" if average == "binary" else ""
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low}, {high}]{hint}")
    # confusion[t, p] = count of target t predicted as p, built on the arrays' device then copied (C x C)
    flat = targets.reshape(-1).astype(xp.int64) * num_classes + labels.reshape(-1).astype(xp.int64)
    confusion = to_numpy(xp.bincount(flat, minlength=num_classes * num_classes)).reshape(num_classes, num_classes)
    true_pos = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    if average == "binary":
        return float(precision[1]), float(recall[1]), float(f1[1])
    present = (predicted + actual) > 0
    return float(precision[present].mean()), float(recall[present].mean()), float(f1[present].mean())


def bits_per_char(mean_nll_nats: float) -> float:
    """Mean negative log-likelihood per character in nats -> bits per character."""
    return float(mean_nll_nats) / math.log(2.0)


def perplexity(mean_nll_nats: float) -> float:
    """exp(mean NLL in nats): the effective number of equally likely next tokens."""
    x = float(mean_nll_nats)
    return math.exp(x) if x < 709.0 else math.inf  # exp overflows a double past ~709.78


def mae(pred, target) -> float:
    """Mean absolute error. pred, target: (...)."""
    _check_same_shape(pred, target, "mae")
    xp = get_array_module(pred, target)
    return float(xp.abs(pred - target).mean())


def rmse(pred, target) -> float:
    """Root mean squared error. pred, target: (...)."""
    _check_same_shape(pred, target, "rmse")
    diff = pred - target
    return math.sqrt(float((diff * diff).mean()))
