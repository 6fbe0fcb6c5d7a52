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

import numpy as np


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
LAYER_NORM_EPS = 1e-5  # PyTorch's nn.LayerNorm default
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


# The cell options reach the time loops of every cell, on both backends, as arrays, empty
# (zero-length) for an option that is off, so one compiled loop serves every combination and a
# loop without options runs as it did before they existed (the CPU forward loops get zones and
# saved as None when no part is zoned, so that Numba prunes zoneout's code: common.zone_args):
#   a: (T+1, B, H), what enters the recurrent GEMM at each step: h itself, or h * h_mask
#      (recurrent dropout; backward multiplies the GEMM's dh by the same mask, and dW_hh is
#      dgates^T a);
#   mask: (B, H), h_mask, or empty;
#   zones: one (T, B, H) array per state part, the fraction of the previous state each unit keeps
#      at each step (zoneout: 0/1 draws in training, p in eval), or empty;
#   saved: one (T+1, B, H) array per state part, the cell's own new state before zoneout mixed it,
#      for the parts whose backward step reads it (the LSTM's c, the RNN's h), or empty.

def cell_options(h, h_mask, zone, saves, xp) -> tuple:
    """(a, mask, zones, saved) for a forward loop from the kernel's ``h_mask`` ((B, H) or None) and
    ``zone`` (None, or one (T, B, H) array or None per state part); h: (T+1, B, H) with h[0] set;
    saves: per state part, whether its backward step reads the new state (then a zoned part keeps
    a copy before mixing); ``xp`` is the backend's array module."""
    empty2, empty3 = xp.zeros((0, 0), h.dtype), xp.zeros((0, 0, 0), h.dtype)
    zone = (None,) * len(saves) if zone is None else tuple(zone)
    if len(zone) != len(saves):
        raise ValueError(f"zone needs one entry per state part ({len(saves)}), got {len(zone)}")
    zones = tuple(empty3 if z is None else xp.ascontiguousarray(z, dtype=h.dtype) for z in zone)
    saved = tuple(xp.empty_like(h) if z is not None and keep else empty3 for z, keep in zip(zone, saves))
    if h_mask is None:
        return h, empty2, zones, saved
    mask = xp.ascontiguousarray(h_mask, dtype=h.dtype)
    a = xp.empty_like(h)
    a[0] = h[0] * mask
    return a, mask, zones, saved


# Layer norm, the option ``layer_norm``: (gain_ih, bias_ih, gain_hh, bias_hh), each (G*H,), and for
# the LSTM (gain_c, bias_c), each (H,) (kernels/README.md). Both backends keep, per norm, the
# normalised values and 1/sqrt(var + eps) of every row for backward:
#   params: (gain_ih, bias_ih, gain_hh, bias_hh, gain_c, bias_c), empty (0,) where off;
#   hats: (hat_x, hat_h (T, B, G*H), hat_c (T, B, H)), empty (0, 0, 0) where off;
#   rstds: (rstd_x, rstd_h, rstd_c), each (T, B), empty (0, 0) where off;
#   consts: (eps, 1/(G*H), 1/H) in the dtype of x, so the compiled loops never promote to float64.

def layer_norm_arrays(layer_norm, T, B, G, H, dtype, xp) -> tuple:
    """(params, hats, rstds, consts) for a forward kernel from its ``layer_norm`` option (None, or
    the gains and biases: 4, or 6 for a cell with a cell state); ``xp`` is the backend's module."""
    empty1, empty2, empty3 = xp.zeros(0, dtype), xp.zeros((0, 0), dtype), xp.zeros((0, 0, 0), dtype)
    consts = xp.asarray(np.array([LAYER_NORM_EPS, 1 / (G * H), 1 / H], dtype))
    if layer_norm is None:
        return (empty1,) * 6, (empty3,) * 3, (empty2,) * 3, consts
    if len(layer_norm) not in (4, 6):
        raise ValueError(f"layer_norm needs 4 arrays (gain_ih, bias_ih, gain_hh, bias_hh) or 6 (and gain_c, bias_c), "
                         f"got {len(layer_norm)}")
    params = tuple(xp.ascontiguousarray(p, dtype=dtype) for p in layer_norm) + (empty1, empty1)[: 6 - len(layer_norm)]
    for p, n in zip(params, (G * H,) * 4 + (H,) * 2):
        if p.shape[0] and p.shape != (n,):
            raise ValueError(f"layer_norm: a gain or bias has shape {p.shape}, expected ({n},)")
    with_c = params[4].shape[0] > 0
    hats = (xp.empty((T, B, G * H), dtype), xp.empty((T, B, G * H), dtype),
            xp.empty((T, B, H), dtype) if with_c else empty3)
    rstds = (xp.empty((T, B), dtype), xp.empty((T, B), dtype), xp.empty((T, B), dtype) if with_c else empty2)
    return params, hats, rstds, consts


def layer_norm_grads(grads, computed) -> tuple:
    """The gradients of the layer-norm gains and biases a backward kernel returns after the four
    weight gradients: ``computed`` as they are, or added into ``grads``' entries past the fourth
    (when the caller passed them)."""
    extra = () if grads is None else tuple(grads[4:])
    if not extra:
        return tuple(computed)
    for g, d in zip(extra, computed):
        if g is not None:
            g += d
    return tuple(g if g is not None else d for g, d in zip(extra, computed))
