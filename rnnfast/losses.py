"""Losses that return ``(loss, dgrad)``: the value as a Python float and its gradient with respect
to the first argument, so no autograd is needed to start the backward pass.

    >>> import numpy as np
    >>> loss, dlogits = cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    >>> round(loss, 4), dlogits.shape        # log(4)
    (1.3863, (2, 4))
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_array_module, get_backend

REDUCTIONS = ("mean", "sum")


def _check_same_shape(a, b, what: str, a_name: str = "pred", b_name: str = "target") -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: {a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; they must match"
        )


def _scale(reduction: str, count: int) -> float:
    """Factor that turns a sum over ``count`` elements into the requested reduction."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    return 1.0 / count if reduction == "mean" and count else 1.0


def _shifted_exp(logits, axis: int):
    """z = logits - max (so exp cannot overflow), e = exp(z), s = sum(e) along axis (kept)."""
    xp = get_array_module(logits)
    z = logits - logits.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    return z, e, e.sum(axis=axis, keepdims=True)


def softmax(logits, axis: int = -1):
    """logits: (..., V) -> probabilities (..., V), computed without overflow."""
    _, e, s = _shifted_exp(logits, axis)
    return e / s


def cross_entropy(logits, targets, ignore_index: int | None = None, reduction: str = "mean"):
    """Fused log-softmax + negative log-likelihood, as torch.nn.functional.cross_entropy.

    logits: (..., V) floats; targets: (...) integers in [0, V) (or ``ignore_index``).
    Returns ``(loss, dlogits: (..., V))``. With ``reduction="mean"`` the loss is averaged over the
    targets that are not ignored; a batch where every target is ignored gives loss 0 and a zero
    gradient (torch gives NaN, which would trip the non-finite-loss guard on pure padding).
    On the CPU, float32 and float64 logits go through one compiled pass
    (:func:`rnnfast.kernels.cpu.cross_entropy.cross_entropy_rows`); the array formulas below are
    the GPU path and the specification.
    """
    backend = get_backend(logits, targets)
    xp = backend.xp
    if logits.ndim == 0 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: logits have shape {tuple(logits.shape)} and targets {tuple(targets.shape)}; "
            "logits must be targets' shape plus a class axis (..., V)"
        )
    if targets.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy takes integer class targets, got dtype {targets.dtype}")
    num_classes = logits.shape[-1]
    scored = targets.reshape(-1) if ignore_index is None else targets[targets != ignore_index]
    n_valid = int(scored.size)
    if n_valid and (int(scored.min()) < 0 or int(scored.max()) >= num_classes):
        raise ValueError(
            f"cross_entropy targets must lie in [0, {num_classes}) (or equal ignore_index={ignore_index}), "
            f"got values in [{int(scored.min())}, {int(scored.max())}]"
        )
    scale = _scale(reduction, n_valid)
    logits2 = logits.reshape(-1, num_classes)
    if backend.name == "cpu" and logits.dtype in backend.kernels.FLOAT_DTYPES:
        dlogits = np.empty(logits2.shape, logits.dtype)
        # -1 is never a valid target, so with no ignore_index no row is skipped
        nll = backend.kernels.cross_entropy_rows(
            np.ascontiguousarray(logits2), np.ascontiguousarray(targets.reshape(-1), dtype=np.intp),
            -1 if ignore_index is None else int(ignore_index), float(scale), dlogits)
        return nll * scale, dlogits.reshape(logits.shape)
    valid = (targets != ignore_index).reshape(-1) if ignore_index is not None else xp.ones(targets.size, bool)
    # ignored positions point at class 0 so the gather stays in range; `valid` zeroes them after
    safe = xp.where(valid, targets.reshape(-1), 0)
    rows = xp.arange(safe.size)
    z, e, s = _shifted_exp(logits2, -1)
    mask = valid.astype(logits.dtype)
    nll = (xp.log(s).reshape(-1) - z[rows, safe]) * mask
    dlogits = e / s
    dlogits[rows, safe] -= 1  # rows are distinct, so fancy-index -= is exact here
    dlogits *= (mask * scale)[:, None]
    return float(nll.sum()) * scale, dlogits.reshape(logits.shape)


def mse(pred, target, reduction: str = "mean"):
    """Squared error, as torch.nn.functional.mse_loss. pred, target: (...) -> (loss, dpred: (...))."""
    _check_same_shape(pred, target, "mse")
    diff = pred - target
    scale = _scale(reduction, diff.size)
    return float((diff * diff).sum()) * scale, ((2.0 * scale) * diff).astype(pred.dtype, copy=False)


def bce_with_logits(logits, targets, reduction: str = "mean"):
    """Binary cross-entropy on raw scores, as torch.nn.functional.binary_cross_entropy_with_logits.

    logits, targets: (...) with targets in [0, 1] -> (loss, dlogits: (...)).
    Uses ``max(x, 0) - x*t + log1p(exp(-|x|))``, which never overflows.
    """
    _check_same_shape(logits, targets, "bce_with_logits", "logits", "targets")
    xp = get_array_module(logits, targets)
    e = xp.exp(-xp.abs(logits))
    per_element = xp.maximum(logits, 0) - logits * targets + xp.log1p(e)
    # sigmoid from the same e: 1/(1+e) for x >= 0, e/(1+e) for x < 0, neither overflows
    sigmoid = xp.where(logits >= 0, 1.0, e) / (1.0 + e)
    scale = _scale(reduction, logits.size)
    return float(per_element.sum()) * scale, ((sigmoid - targets) * scale).astype(logits.dtype, copy=False)
