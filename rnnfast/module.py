"""The module contract every layer and model follows (see DESIGN.md, "Contracts").

    y = module(x, ...)            # forward; keeps what backward needs
    dx = module.backward(dy)      # adds parameter gradients into module.grads
    module.params, module.grads   # dicts name -> array (PyTorch's names)

A container registers children with :meth:`add` and exposes their parameters under dotted names
(``"rnn.weight_ih_l0"``), as PyTorch's ``state_dict`` does.
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_array_module, is_gpu_array, to_device, to_numpy


class Module:
    """Base class: parameters, gradients, children, train/eval mode and device moves."""

    def __init__(self):
        self._params: dict[str, object] = {}
        self._grads: dict[str, object] = {}
        self._children: dict[str, Module] = {}
        self.training = True
        self.batch_rows = None  # (start, total) of a data-parallel process's rows in the global batch

    # -- registration -------------------------------------------------------------------------
    def add_param(self, name: str, value) -> None:
        """Register a parameter and its zero gradient."""
        self._params[name] = value
        self._grads[name] = get_array_module(value).zeros_like(value)

    def add(self, name: str, child: "Module") -> "Module":
        """Register a child module; its parameters appear as ``name.param``."""
        self._children[name] = child
        setattr(self, name, child)
        return child

    # -- parameters and gradients -------------------------------------------------------------
    def _tree(self, own: str) -> dict:
        """This module's ``own`` dict ("_params" or "_grads") and its children's, with dotted names."""
        out = dict(getattr(self, own))
        for cname, child in self._children.items():
            out.update({f"{cname}.{k}": v for k, v in child._tree(own).items()})
        return out

    @property
    def params(self) -> dict:
        """All parameters, dotted names for children's (a fresh dict; the arrays are shared)."""
        return self._tree("_params")

    @property
    def grads(self) -> dict:
        """Gradients with the same names as :attr:`params`."""
        return self._tree("_grads")

    def zero_grad(self) -> None:
        for g in self._grads.values():
            g[...] = 0
        for child in self._children.values():
            child.zero_grad()

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    # -- state dicts --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Parameters as NumPy arrays under PyTorch's names (copies, safe to keep or save)."""
        return {k: np.array(to_device(v, "cpu")) for k, v in self.params.items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays (NumPy, CuPy or torch tensors) into the parameters, checking names and shapes."""
        own = self.params
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match this module: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            if name not in own:
                continue
            target = own[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = to_numpy(value)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"state_dict[{name!r}] has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            xp = get_array_module(target)
            target[...] = xp.asarray(to_device(value, "gpu" if is_gpu_array(target) else "cpu"), dtype=target.dtype)

    # -- modes and devices --------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def set_batch_rows(self, rows: tuple[int, int] | None) -> "Module":
        """Data-parallel training: this process's batches are rows ``start..`` of a global batch of
        ``total`` rows (``rows=(start, total)``; None: the whole batch), so the masks it draws are
        those one process draws for the same rows. Returns self."""
        self.batch_rows = None if rows is None else (int(rows[0]), int(rows[1]))
        for child in self._children.values():
            child.set_batch_rows(rows)
        return self

    def draw_rows(self, batch_axis: int):
        """``rows`` for rnnfast.random's draws whose ``batch_axis`` runs over the batch (None when the
        batch is whole)."""
        return None if self.batch_rows is None else (batch_axis, *self.batch_rows)

    @property
    def device(self) -> str:
        for v in self._params.values():
            return "gpu" if is_gpu_array(v) else "cpu"
        for child in self._children.values():
            return child.device
        return "cpu"

    def to(self, device: str) -> "Module":
        """Move parameters and gradients to "cpu" or "gpu" (in place; returns self)."""
        device = "gpu" if device == "cuda" else device
        for d in (self._params, self._grads):
            for k in d:
                d[k] = to_device(d[k], device)
        for child in self._children.values():
            child.to(device)
        self._on_move(device)
        return self

    def _on_move(self, device: str) -> None:
        """Hook for modules that keep attribute references to their parameters."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)
