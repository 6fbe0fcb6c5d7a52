"""The cell table: what every layer, kernel, converter, bench and test knows about a cell.

A cell is named as PyTorch's RNN modes are (``rnn_tanh``, ``rnn_relu``, ``lstm``, ``gru``). Its
entry gives the kernel module that runs it on each backend (``rnnfast.kernels.<backend>.<kernel>``),
its gates in the order their rows sit in ``weight_ih``/``weight_hh`` (PyTorch's), the parts of
its recurrent state and the activation of its candidate (the RNN's nonlinearity). Nothing else in
the package spells out a gate count or a per-cell branch for these facts.

    >>> from rnnfast.kernels.cells import cell_named
    >>> lstm = cell_named("lstm")
    >>> lstm.num_gates, lstm.state, cell_named("rnn", "relu").name
    (4, ('h', 'c'), 'rnn_relu')
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    name: str                  # "rnn_tanh", "rnn_relu", "lstm", "gru"
    kind: str                  # the layer/kernel family: "rnn", "lstm" or "gru"
    gates: tuple[str, ...]     # gate names in weight-row order
    state: tuple[str, ...]     # recurrent state parts: ("h",) or ("h", "c")
    activation: str            # the candidate's activation: "tanh" or "relu"

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def has_cell_state(self) -> bool:
        return len(self.state) == 2


CELLS = {c.name: c for c in (
    Cell("rnn_tanh", "rnn", ("h",), ("h",), "tanh"),
    Cell("rnn_relu", "rnn", ("h",), ("h",), "relu"),
    Cell("lstm", "lstm", ("i", "f", "g", "o"), ("h", "c"), "tanh"),
    Cell("gru", "gru", ("r", "z", "n"), ("h",), "tanh"),
)}

KINDS = ("rnn", "lstm", "gru")
ACTIVATIONS = ("tanh", "relu")  # the RNN kernels take their activation as its index here


def state_grads(dstate, shape, dtype, xp) -> tuple:
    """The state gradients a backward kernel starts from, one writable (B, H) array per part of
    ``dstate`` (the contract's tuple): a copy of the given array, or zeros for None. ``xp`` is the
    backend's array module."""
    return tuple(xp.zeros(shape, dtype) if d is None else xp.array(d, dtype=dtype) for d in dstate)


def cell_named(name: str, nonlinearity: str = "tanh") -> Cell:
    """The table entry for ``name``: a cell name, or a kind ("rnn" takes ``nonlinearity``); any case."""
    key = name.lower()
    if key == "rnn":
        key = f"rnn_{nonlinearity}"
    try:
        return CELLS[key]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; use one of {', '.join(KINDS + tuple(CELLS))}") from None
