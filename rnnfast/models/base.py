"""What every model shares: the cell table, seeds, config, dropout streams, carried state, device moves.

:class:`Model` is the base of :class:`~rnnfast.models.CharRNN`, :class:`~rnnfast.models.SeqRegressor`
and :class:`~rnnfast.models.SeqClassifier`; :func:`recurrent_layer` builds their recurrent part and
:func:`child_seeds` fixes every part's seed from the model's one seed.
"""
from __future__ import annotations

import inspect

import numpy as np

from rnnfast.backend import to_device, to_numpy
from rnnfast.module import Module
from rnnfast.recurrent import GRU, LSTM, RNN, param_shapes

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


# the recurrent layer's regularisers a model passes through and records in its config, with their
# defaults (off); a config written before one existed builds the model without it
# (layer norm is not a regulariser, but it travels the same way: a layer option a model passes on,
# records, and a checkpoint from before it lacks)
REGULARISERS = {"weight_drop": 0.0, "recurrent_dropout": 0.0, "zoneout": 0.0, "layer_norm": False}


def regularisers(weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0, layer_norm=False) -> dict:
    """The regulariser settings as a model's config records them (zoneout a number or a list)."""
    zoneout = [float(p) for p in zoneout] if isinstance(zoneout, (tuple, list)) else float(zoneout)
    return {"weight_drop": float(weight_drop), "recurrent_dropout": float(recurrent_dropout), "zoneout": zoneout,
            "layer_norm": bool(layer_norm)}


def recurrent_layer(cell, input_size, hidden_size, num_layers, dropout, bidirectional, dtype, seed, batch_first,
                    **options):
    """The model's recurrent part: the ``cell`` layer of :data:`CELLS`, or a ValueError naming the
    cells; ``options``: the layer's regularisers (:data:`REGULARISERS`)."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, num_layers=num_layers, dropout=dropout,
                       bidirectional=bidirectional, dtype=dtype, seed=seed, batch_first=batch_first, **options)


def recurrent_shapes(cell, input_size, hidden_size, num_layers, bidirectional, layer_norm=False) -> dict[str, tuple]:
    """The shapes of :func:`recurrent_layer`'s parameters under a model's names (``rnn.weight_ih_l0``:
    (G*H, I), ``rnn.weight_hh_l0``: (G*H, H), the biases (G*H,), ``_reverse`` for the backward
    direction; PyTorch's layout; with ``layer_norm`` also ``rnn.layernorm_ih_l0.weight`` and the rest),
    from the sizes alone, so that a checkpoint's tensors can be checked against its config before
    anything is allocated."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    shapes = param_shapes(cell, input_size, hidden_size, num_layers, True, bidirectional, bool(layer_norm))
    return {f"rnn.{name}": shape for name, shape in shapes.items()}


def child_seeds(seed: int, n: int) -> list[int]:
    """Independent seeds for a model's n parts, all fixed by the model's one seed."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def resolve_seed(seed) -> int:
    """A concrete seed, so config() rebuilds the very same model even when none was given."""
    return int(np.random.default_rng().integers(2**63)) if seed is None else int(seed)


class Model(Module):
    """What every model shares: its config, its dropout streams, the carried state, device moves."""

    def __init__(self, **config):
        super().__init__()
        self._config = config
        self._state = None  # hidden state carried from one training batch to the next (CharRNN)

    def config(self) -> dict:
        """JSON-able ``{"class": name, **constructor arguments}``; :func:`from_config` rebuilds the model."""
        return {"class": type(self).__name__, **self._config}

    @classmethod
    def param_shapes(cls, config: dict) -> dict[str, tuple]:
        """The shape of every parameter of the model that ``config`` (:meth:`config` without its
        ``"class"``) describes, computed from its sizes without building it; a TypeError when
        ``config`` does not fit the constructor. Same names and shapes as ``params``."""
        args = inspect.signature(cls).bind(**config)
        args.apply_defaults()
        return cls._shapes(**args.arguments)

    @staticmethod
    def _shapes(**sizes) -> dict[str, tuple]:
        raise NotImplementedError

    def rng_state(self) -> dict:
        """The position of every dropout stream (JSON-able): all future masks follow from it."""
        return {name: child.rng_state() for name, child in self._children.items() if hasattr(child, "rng_state")}

    def set_rng_state(self, state: dict) -> None:
        for name, child_state in state.items():
            self._children[name].set_rng_state(child_state)

    # -- the state carried across training batches ------------------------------------------------
    def reset_state(self) -> None:
        """Forget the carried hidden state: the next training batch starts from zeros."""
        self._state = None

    def carried_state(self) -> dict:
        """The carried hidden state as NumPy arrays (``{"h": (L*D, B, H)}``, plus ``"c"`` for an LSTM);
        ``{}`` when there is none. A checkpoint stores it so that a resumed run continues exactly."""
        if self._state is None:
            return {}
        parts = self._state if isinstance(self._state, tuple) else (self._state,)
        return {name: np.array(to_numpy(p)) for name, p in zip(("h", "c"), parts)}

    def set_carried_state(self, tensors: dict) -> None:
        """Inverse of :meth:`carried_state`."""
        if not tensors:
            self._state = None
            return
        parts = tuple(to_device(tensors[name], self.device) for name in ("h", "c") if name in tensors)
        self._state = parts if self.rnn.has_cell_state else parts[0]

    def _on_move(self, device: str) -> None:
        if self._state is not None:
            parts = self._state if isinstance(self._state, tuple) else (self._state,)
            moved = tuple(to_device(p, device) for p in parts)
            self._state = moved if isinstance(self._state, tuple) else moved[0]

    def _to_model(self, a, dtype=None):
        """``a`` (NumPy, CuPy or a list) on this model's device, cast to ``dtype`` when given."""
        a = to_device(a if hasattr(a, "shape") else np.asarray(a), self.device)
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"
