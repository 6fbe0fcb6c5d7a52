"""A trained model used past its data: a forecaster's values after the end of a series
(:func:`forecast`), and a character model's loss on each of several texts (:func:`text_losses`).
``rnnfast predict`` is these on files; a classifier's labels are its own ``predict``/``predict_proba``.

    >>> import numpy as np, rnnfast as rf
    >>> model = rf.models.SeqRegressor(1, hidden_size=8, output_size=2, seed=0)
    >>> series = np.sin(np.arange(50) / 4)             # in the units the model was trained in
    >>> forecast(model, series, steps=5, window=16).shape  # 2 values a pass, the 2 after fed back in
    (5,)
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_array_module, to_numpy
from rnnfast.errors import DataError
from rnnfast.losses import cross_entropy


def future_rows_needed(steps: int, horizon: int) -> int:
    """How many future rows of the features a forecast of ``steps`` values needs, ``horizon`` values a
    pass: the rows of every pass but the last, whose window ends inside the forecast."""
    return (-(-steps // horizon) - 1) * horizon


def forecast(model, history, steps: int, window: int, future=None) -> np.ndarray:
    """The ``steps`` values after ``history``, in the units the model reads (scale before, invert after).

    history: (N,) the target, or (N, F) rows of the target then its F - 1 features (N >= window),
    as :class:`~rnnfast.models.SeqRegressor` ``model`` (many-to-one, ``input_size`` F) was trained on.
    Each pass reads the last ``window`` rows and predicts the next ``output_size`` (its horizon)
    values; past the horizon they are appended to the history and read as inputs, so a pass never
    reads a value that is not data or its own prediction. With features, the appended rows take
    theirs from ``future``: (M, F - 1) the features at the future steps, in order, M at least
    :func:`future_rows_needed`. Returns (steps,) float64.
    """
    if model.many_to_many:
        raise ValueError("forecast takes a many-to-one SeqRegressor (one prediction per window)")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    rows = np.asarray(history, dtype=np.float64).reshape(len(history), -1)
    if rows.shape[1] != model.input_size:
        raise ValueError(f"history has {rows.shape[1]} columns, but the model reads {model.input_size}")
    if len(rows) < window:
        raise DataError(f"the series holds {len(rows)} values, but the model reads the last --window {window}; "
                        f"pass at least {window}")
    horizon = model.output_size
    needed = future_rows_needed(steps, horizon)
    if rows.shape[1] > 1 and needed:
        future = np.empty((0, rows.shape[1] - 1)) if future is None else np.asarray(future, np.float64)
        if future.ndim != 2 or future.shape[1] != rows.shape[1] - 1:
            raise ValueError(f"future must be (M, {rows.shape[1] - 1}), the features' future rows; "
                             f"got shape {future.shape}")
        if len(future) < needed:
            raise DataError(f"forecasting {steps} steps, {horizon} a pass, reads the features at the first {needed} "
                            f"future steps, but the future values given hold {len(future)}; give {needed} rows, or "
                            f"forecast at most {horizon + len(future) // horizon * horizon} steps")
    values = []
    while True:
        pred = np.asarray(to_numpy(model.predict(rows[None, -window:]))[0], np.float64)  # (horizon,)
        values.append(pred)
        if len(values) * horizon >= steps:
            return np.concatenate(values)[:steps]
        fed = pred[:, None]
        if rows.shape[1] > 1:
            done = len(rows) - len(history)
            fed = np.column_stack([pred, future[done : done + horizon]])
        rows = np.concatenate([rows, fed])


def text_losses(model, texts, batch_size: int = 64) -> np.ndarray:
    """The mean next-character loss (nats) of a :class:`~rnnfast.models.CharRNN` on each text.

    texts: N sequences of ids, each (n_i,) with n_i >= 2: the first id is the context it starts
    from (a new line, say) and is not scored; each text is read from a zero state. Texts of similar
    length are run together, ``batch_size`` at a time, padded at their ends, which no earlier step
    reads. Returns (N,) float64.
    """
    lengths = np.array([len(t) for t in texts])
    if (lengths < 2).any():
        raise ValueError("each text needs a starting id and at least one id to score")
    out = np.empty(len(texts))
    was_training = model.training
    model.eval()
    try:
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids = np.zeros((int(lengths[chunk].max()), len(chunk)), np.int64)  # (T + 1, B)
            for b, k in enumerate(chunk):
                ids[: lengths[k], b] = texts[k]
            logits, _ = model(ids[:-1])  # (T, B, V)
            targets = get_array_module(logits).asarray(ids[1:])
            for b, k in enumerate(chunk):
                n = lengths[k] - 1
                out[k] = cross_entropy(logits[:n, b], targets[:n, b])[0]
    finally:
        model.train(was_training)
    return out
