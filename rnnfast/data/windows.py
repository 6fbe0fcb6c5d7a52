"""Windows for forecasting: every ``window`` values and the ``horizon`` after them
(:func:`sliding_windows`), split in time order without leakage (:func:`forecast_windows`). A series
is (N,) values, or (N, F) rows whose column 0 is the target and the others inputs beside it.
"""
from __future__ import annotations

import numpy as np

from rnnfast.data.scaling import Scaler
from rnnfast.data.splits import require_length, split_points


def sliding_windows(series, window: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every ``window`` consecutive values and the ``horizon`` values that follow them.

    series: (N,) -> X: (N - window - horizon + 1, window), Y: (N - window - horizon + 1, horizon),
    with ``X[k] = series[k : k+window]`` and ``Y[k] = series[k+window : k+window+horizon]``.
    series: (N, F) -> X: (n, window, F) every column, Y: (n, horizon) of column 0, the target.
    """
    if window < 1 or horizon < 1:
        raise ValueError(f"window and horizon must be at least 1, got {window} and {horizon}")
    series = np.asarray(series)
    if series.ndim not in (1, 2):
        raise ValueError(f"series must be (N,) values or (N, F) rows, got shape {series.shape}")
    require_length(len(series), window + horizon, "the series",
                   f"one window needs window + horizon = {window + horizon} values; "
                   "use a longer series or a smaller --window / --horizon", unit="values")
    both = np.lib.stride_tricks.sliding_window_view(series, window + horizon, axis=0)  # (n, [F,] window+horizon)
    if series.ndim == 1:
        return np.ascontiguousarray(both[:, :window]), np.ascontiguousarray(both[:, window:])
    return np.ascontiguousarray(both[:, :, :window].transpose(0, 2, 1)), np.ascontiguousarray(both[:, 0, window:])


def forecast_windows(series, window: int, horizon: int = 1, val_frac: float = 0.1, test_frac: float = 0.0,
                     scaler: Scaler | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Windows for training, validating and testing a forecaster, without leakage.

    The series is cut in time order; a window belongs to the part where its targets lie, and
    windows whose targets would straddle a cut are left out, so no value is a training target
    and a validation target both. Validation and test windows take their inputs from just before
    the cut, as a forecaster in use would. ``scaler``, when given, is fitted on the training part
    only (each column on its own) and applied to all parts.

    series: (N,) -> {"train": (X, Y), "val": (X, Y), "test": (X, Y)}, X (n, window), Y (n, horizon);
    (N, F) -> X (n, window, F), Y (n, horizon) of column 0.
    """
    series = np.asarray(series, dtype=np.float64)
    a, b = split_points(len(series), val_frac, test_frac)
    require_length(a, window + horizon, "the training part of the series",
                   f"one window needs window + horizon = {window + horizon} values; "
                   "use a longer series, or a smaller --window / --horizon / --val-frac", unit="values")
    if scaler is not None:
        series = scaler.fit(series[:a]).transform(series)
    empty = (np.empty((0, window, *series.shape[1:])), np.empty((0, horizon)))
    out = {"train": sliding_windows(series[:a], window, horizon)}
    for name, start, end in (("val", a, b), ("test", b, len(series))):
        if end == start:
            out[name] = empty
            continue
        require_length(end - start, horizon, f"the {name} part of the series",
                       f"it needs at least horizon = {horizon} values; use a larger --{name}-frac or a longer series",
                       unit="values")
        # start >= window (the training part holds at least one window), so the context exists.
        out[name] = sliding_windows(series[start - window : end], window, horizon)
    return out
