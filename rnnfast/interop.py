"""Weights to and from PyTorch and Keras, as NumPy arrays (neither framework is needed to convert).

PyTorch: rnnfast uses PyTorch's names, shapes and gate orders already (DESIGN.md, "Contracts"), so
:func:`from_torch_state_dict` and :func:`to_torch_state_dict` only change the array type.

Keras keeps one layer's weights as ``kernel (I, G*H)``, ``recurrent_kernel (H, G*H)`` and a bias,
transposed from PyTorch's ``weight_ih (G*H, I)`` and ``weight_hh (G*H, H)``:

- ``LSTM``: gates ``i, f, c, o`` (PyTorch's ``i, f, g, o``, the same order); one ``bias (4H,)``,
  which is ``bias_ih + bias_hh`` (coming back, all of it goes to ``bias_ih`` and ``bias_hh`` is 0).
- ``GRU`` with ``reset_after=True`` (the Keras 2+ default, the only variant with PyTorch's
  equations): gates ``z, r, h`` where PyTorch has ``r, z, n``; ``bias (2, 3H)`` holds the input
  bias row and the recurrent bias row.
- ``SimpleRNN``: ``kernel (I, H)``, ``recurrent_kernel (H, H)``, ``bias (H,)`` = ``bias_ih + bias_hh``.

    >>> import numpy as np
    >>> H, I = 3, 2
    >>> torch_like = {"weight_ih_l0": np.ones((4 * H, I)), "weight_hh_l0": np.ones((4 * H, H)),
    ...               "bias_ih_l0": np.ones(4 * H), "bias_hh_l0": np.ones(4 * H)}
    >>> keras = to_keras(torch_like, "lstm")
    >>> keras["kernel"].shape, keras["recurrent_kernel"].shape, float(keras["bias"][0])
    ((2, 12), (3, 12), 2.0)
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.kernels.cells import cell_named

# Keras's GRU gate block k is PyTorch's block _GRU_KERAS_ORDER[k] (z, r, h <- r, z, n). Swapping the
# first two is its own inverse, so the same order converts both ways.
_GRU_KERAS_ORDER = (1, 0, 2)


def _as_numpy(value) -> np.ndarray:
    """A NumPy copy of a NumPy/CuPy array or a torch tensor."""
    return np.array(to_numpy(value))


def from_torch_state_dict(state_dict) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` (tensors or arrays) as name -> NumPy array, same names, copied."""
    return {name: _as_numpy(value) for name, value in state_dict.items()}


def to_torch_state_dict(params, as_tensors: bool = False) -> dict:
    """rnnfast parameters as a PyTorch ``state_dict``: NumPy copies, or torch tensors with ``as_tensors``."""
    out = {name: np.asarray(_as_numpy(value), order="C") for name, value in params.items()}  # 0-d stays 0-d
    if not as_tensors:
        return out
    try:
        import torch
    except ImportError:
        raise ImportError("as_tensors=True needs PyTorch (pip install torch); "
                          "without it, pass as_tensors=False to get NumPy arrays") from None
    return {name: torch.from_numpy(value) for name, value in out.items()}


def _gates(cell: str) -> int:
    return cell_named(cell).num_gates


def _suffix(layer: int, direction: str) -> str:
    if direction not in ("", "reverse", "_reverse"):
        raise ValueError(f"direction must be '' (forward) or '_reverse', got {direction!r}")
    return f"_l{layer}" + ("_reverse" if direction else "")


def _reorder_gru(a: np.ndarray) -> np.ndarray:
    """Gate blocks along axis 0 of ``a`` ((3H, ...) or (3H,)) swapped between PyTorch and Keras order."""
    blocks = np.split(a, 3, axis=0)
    return np.concatenate([blocks[k] for k in _GRU_KERAS_ORDER], axis=0)


def to_keras(params, cell: str, layer: int = 0, direction: str = "") -> dict[str, np.ndarray]:
    """One layer and direction of PyTorch-named ``params`` as Keras weights (see the module docstring).

    params: ``weight_ih_l{layer}`` (G*H, I), ``weight_hh_l{layer}`` (G*H, H), and optionally
    ``bias_ih_l{layer}``, ``bias_hh_l{layer}`` (G*H,), with ``_reverse`` after them for
    ``direction="_reverse"`` -> ``{"kernel": (I, G*H), "recurrent_kernel": (H, G*H), "bias": ...}``
    (no ``"bias"`` for a layer without biases).
    """
    gru = _gates(cell) == 3
    suffix = _suffix(layer, direction)
    names = [f"{kind}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    missing = [n for n in names[:2] if n not in params]
    if missing:
        raise KeyError(f"params have no {missing}; they hold {sorted(params)}")
    w_ih, w_hh = (_as_numpy(params[n]) for n in names[:2])
    if gru:
        w_ih, w_hh = _reorder_gru(w_ih), _reorder_gru(w_hh)
    out = {"kernel": np.ascontiguousarray(w_ih.T), "recurrent_kernel": np.ascontiguousarray(w_hh.T)}
    if names[2] in params:
        b_ih, b_hh = _as_numpy(params[names[2]]), _as_numpy(params[names[3]])
        out["bias"] = np.stack([_reorder_gru(b_ih), _reorder_gru(b_hh)]) if gru else b_ih + b_hh
    return out


def from_keras(weights, cell: str, layer: int = 0, direction: str = "") -> dict[str, np.ndarray]:
    """Keras weights of one recurrent layer as PyTorch-named arrays (the inverse of :func:`to_keras`).

    weights: ``{"kernel", "recurrent_kernel", "bias"}`` or the list ``layer.get_weights()`` gives,
    ``[kernel (I, G*H), recurrent_kernel (H, G*H), bias]`` (bias optional) -> ``weight_ih_l{layer}``
    (G*H, I), ``weight_hh_l{layer}`` (G*H, H), ``bias_ih_l{layer}``, ``bias_hh_l{layer}`` (G*H,).
    """
    num_gates = _gates(cell)
    if isinstance(weights, dict):
        kernel, recurrent, bias = weights["kernel"], weights["recurrent_kernel"], weights.get("bias")
    else:
        kernel, recurrent, bias = (list(weights) + [None])[:3]
    kernel, recurrent = _as_numpy(kernel), _as_numpy(recurrent)
    hidden = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != num_gates * hidden or recurrent.shape != (hidden, num_gates * hidden):
        raise ValueError(f"Keras {cell} weights need kernel (I, {num_gates}H) and recurrent_kernel (H, {num_gates}H), "
                         f"got {kernel.shape} and {recurrent.shape}")
    gru = num_gates == 3
    w_ih, w_hh = kernel.T, recurrent.T
    if gru:
        w_ih, w_hh = _reorder_gru(w_ih), _reorder_gru(w_hh)
    suffix = _suffix(layer, direction)
    out = {f"weight_ih{suffix}": np.ascontiguousarray(w_ih), f"weight_hh{suffix}": np.ascontiguousarray(w_hh)}
    if bias is None:
        return out
    bias = _as_numpy(bias)
    if gru:
        if bias.shape != (2, 3 * hidden):
            raise ValueError(f"Keras GRU bias of shape {bias.shape} is from reset_after=False, whose equations "
                             "differ from PyTorch's; rebuild the Keras layer with reset_after=True and retrain")
        b_ih, b_hh = _reorder_gru(bias[0]), _reorder_gru(bias[1])
    else:
        if bias.shape != (num_gates * hidden,):
            raise ValueError(f"Keras {cell} bias must have shape ({num_gates * hidden},), got {bias.shape}")
        # Keras adds one bias; PyTorch adds two, so all of it goes in one and the other is zero.
        b_ih, b_hh = bias, np.zeros_like(bias)
    out[f"bias_ih{suffix}"], out[f"bias_hh{suffix}"] = np.ascontiguousarray(b_ih), b_hh
    return out
