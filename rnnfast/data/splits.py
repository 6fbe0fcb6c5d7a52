"""Splits: data cut in time order into train, validation and test parts, and the check that a part
is long enough for the options chosen (:func:`require_length`).
"""
from __future__ import annotations

import numpy as np

from rnnfast.errors import DataError


def require_length(n_tokens: int, needed: int, what: str,
                   hint: str = "use more data, or a smaller --seq-len / --batch-size", unit: str = "tokens") -> None:
    """Raise DataError unless ``n_tokens >= needed``; ``what`` names the data ("the validation split")."""
    if n_tokens < needed:
        raise DataError(f"{what} is too short: {n_tokens} {unit}, but at least {needed} are needed; {hint}")


def split_points(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Where validation and test begin in ``n`` items: train ``[0, a)``, val ``[a, b)``, test ``[b, n)``."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac and test_frac must be >= 0 with a sum below 1, got {val_frac} and {test_frac}")
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    return n - n_val - n_test, n - n_test


def chronological_split(data, val_frac: float = 0.1, test_frac: float = 0.0):
    """Cut data in time order into (train, val, test): the past trains, the future validates and tests.

    ``data`` is a length ``n`` (gives three ``slice`` objects), an array (cut along axis 0, views), or
    a tuple of arrays of equal length such as ``(X, Y)`` (gives three tuples). Nothing is shuffled,
    so no future value leaks into training. Fit scalers on the train part only; for forecasting,
    :func:`forecast_windows` does that and keeps windows from straddling the cuts.
    """
    if isinstance(data, (int, np.integer)):
        a, b = split_points(int(data), val_frac, test_frac)
        return slice(0, a), slice(a, b), slice(b, int(data))
    if isinstance(data, (tuple, list)):
        lengths = {len(x) for x in data}
        if len(lengths) != 1:
            raise ValueError(f"arrays to split together must have the same length, got lengths {sorted(lengths)}")
        parts = chronological_split(lengths.pop(), val_frac, test_frac)
        return tuple(tuple(x[s] for x in data) for s in parts)
    return tuple(data[s] for s in chronological_split(len(data), val_frac, test_frac))


def split_ids(ids, val_frac: float = 0.1, test_frac: float = 0.0):
    """A token stream ``ids`` (N,) cut into contiguous (train, val, test) parts, in that order."""
    return chronological_split(ids, val_frac, test_frac)
