"""The first run after installing compiles on both cores.

With an empty kernel cache the first ``rnnfast train`` spent most of its time compiling, on one
core: first what the forward pass runs (the GEMM, the cell's forward loop), then what the backward
pass and the update run. :func:`compile_backward_in_background` hands the second group to another
process, which compiles it into Numba's cache while this one compiles the first; when the run
reaches its first backward pass, it loads those kernels from the cache. If the other process has
failed or is not done yet, the run compiles what it still needs itself, as it would without it.
(Splitting the other way, with the run waiting for a forward loop compiled elsewhere, measured
slower: 12.3 against 11.1 s.)

    >>> from rnnfast.warmup import backward_compiled
    >>> backward_compiled("lstm", "float32")  # doctest: +SKIP
    True
"""
from __future__ import annotations

import importlib
import subprocess

import numpy as np

from rnnfast.kernels.cpu.common import compile_detached, is_compiled


def _cell(cell: str):
    """The CPU kernel module of a character model's cell: "rnn" (tanh), "lstm" or "gru"."""
    return importlib.import_module(f"rnnfast.kernels.cpu.{cell}")


def backward_compiled(cell: str, dtype) -> bool:
    """Whether the CPU backward loop of ``cell`` ("rnn" with tanh, "lstm", "gru") for ``dtype`` is
    compiled in this process or in Numba's cache."""
    return is_compiled(*_cell(cell).backward_probe(np.dtype(dtype)))


def compile_backward(cell: str, dtype, optimizer: str, ids_dtype) -> None:
    """Compile into Numba's cache what a character model's training step runs after its forward
    pass: the cell's backward loop (called with no steps, so it needs no GEMM), the embedding's
    backward, the cross-entropy, the gradient norm and ``optimizer``'s update, each through one tiny
    call typed as a run's (ids of ``ids_dtype``, as the batcher yields them); and the compiled draws
    of the dropout masks, which the run takes up once they are in the cache (rnnfast.random)."""
    from rnnfast import layers, losses, optim
    from rnnfast.kernels.cpu.random import below_into, uniform_into

    dtype = np.dtype(dtype)
    whole = (np.int64(1), np.int64(1), np.int64(0))  # block, stride, offset of a whole draw of one value
    uniform_into(np.zeros(1, np.float32), np.uint64(0), *whole)  # the dropout masks' draws (rnnfast.random)
    below_into(np.zeros(1, dtype), np.uint64(0), np.float32(0.5), *whole)  # zoneout's
    rows, args = _cell(cell).backward_probe(dtype)
    rows(*args)
    ids = np.zeros((1, 1), np.dtype(ids_dtype))
    embed = layers.Embedding(2, 1, dtype=dtype, seed=0)
    embed(ids)
    embed.backward(np.zeros((1, 1, 1), dtype))
    losses.cross_entropy(np.zeros((1, 1, 2), dtype), ids)
    params = {"w": np.zeros((2, 1), dtype), "b": np.zeros(2, dtype)}
    grads = {"w": np.ones((2, 1), dtype), "b": np.ones(2, dtype)}
    optim.clip_grad_norm(grads, 1.0)
    getattr(optim, optimizer)(lr=1e-3).step(params, grads)


def compile_backward_in_background(cell: str, dtype, optimizer: str, ids_dtype) -> subprocess.Popen:
    """Start :func:`compile_backward` in a detached process and return it; nothing waits for it."""
    code = (f"from rnnfast.warmup import compile_backward; compile_backward("
            f"{cell!r}, {np.dtype(dtype).name!r}, {optimizer!r}, {np.dtype(ids_dtype).name!r})")
    return compile_detached(code)
