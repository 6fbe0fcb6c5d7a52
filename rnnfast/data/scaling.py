"""Scalers: :class:`MinMaxScaler` and :class:`StandardScaler`, fitted on the training part and stored
in checkpoints' metadata (``to_dict``/``Scaler.from_dict``) so new data is scaled the same way.
"""
from __future__ import annotations

import numpy as np

from rnnfast.errors import CheckpointError, DataError


class Scaler:
    """Base of the scalers: statistics over axis 0 from ``fit``, an affine map and its inverse.

    Fit on the training part only (see :func:`forecast_windows`), then transform every part.
    """

    kind = ""
    _registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Scaler._registry[cls.kind] = cls

    def __init__(self):
        self.offset = self.scale = None  # transform(x) = (x - offset) / scale

    def fit(self, x) -> "Scaler":
        raise NotImplementedError

    def _check_fitted(self):
        if self.scale is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train_values) first")

    def transform(self, x) -> np.ndarray:
        self._check_fitted()
        return (np.asarray(x, dtype=np.float64) - self.offset) / self.scale

    def inverse_transform(self, x) -> np.ndarray:
        self._check_fitted()
        return np.asarray(x, dtype=np.float64) * self.scale + self.offset

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)

    def select(self, index) -> "Scaler":
        """A scaler of the same kind for some of the fitted columns: ``index`` into the statistics'
        last axis (an int for one column, whose statistics are then scalars; a slice for several)."""
        self._check_fitted()
        out = type(self)()
        out.offset, out.scale = np.asarray(self.offset)[..., index], np.asarray(self.scale)[..., index]
        return out

    def to_dict(self) -> dict:
        """A JSON-able description (kind, offset, scale), stored in checkpoints' metadata."""
        self._check_fitted()
        return {"kind": self.kind, "offset": np.asarray(self.offset).tolist(), "scale": np.asarray(self.scale).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        """Inverse of :meth:`to_dict`; ``Scaler.from_dict`` gives whichever kind was saved."""
        target = Scaler._registry.get(d.get("kind")) if isinstance(d, dict) else None
        if target is None or not issubclass(target, cls):
            raise CheckpointError(f"the checkpoint's scaler is malformed ({d!r}); use a checkpoint written by rnnfast")
        out = target()
        out.offset, out.scale = np.asarray(d["offset"], np.float64), np.asarray(d["scale"], np.float64)
        return out


def _fit_values(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
        raise DataError("cannot fit a scaler on no values; use a longer training part")
    return x


class MinMaxScaler(Scaler):
    """Maps the fitted minimum and maximum to 0 and 1 (a constant series maps to 0)."""

    kind = "minmax"

    def fit(self, x) -> "MinMaxScaler":
        """``x``: (N, ...) values; statistics per trailing element, over axis 0."""
        x = _fit_values(x)
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.offset, self.scale = lo, np.where(hi > lo, hi - lo, 1.0)
        return self


class StandardScaler(Scaler):
    """Zero mean and unit standard deviation over the fitted values (a constant series maps to 0)."""

    kind = "standard"

    def fit(self, x) -> "StandardScaler":
        """``x``: (N, ...) values; statistics per trailing element, over axis 0."""
        x = _fit_values(x)
        std = x.std(axis=0)
        self.offset, self.scale = x.mean(axis=0), np.where(std > 0, std, 1.0)
        return self
