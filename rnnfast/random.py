"""A counter-based random generator that gives the same numbers on NumPy and CuPy.

Each value is a hash of ``(seed, stream, index)`` (SplitMix64's finaliser), computed with
unsigned 64-bit integer arithmetic that NumPy and CuPy evaluate identically. So a dropout mask for
a given seed and step is the same on the CPU and the GPU, and a run is reproducible across devices.

Each draw can also be a part of a larger one (``rows=(axis, start, total)``): the values of rows
``start..`` along ``axis`` of the draw whose ``axis`` is ``total`` long, equal bit for bit to slicing
that draw but computed without it. A process of a data-parallel run draws so for its share of the
global batch, and its masks are those one process would draw for the same rows.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z, xp):
    z = z ^ (z >> xp.uint64(30))
    z = z * _M1
    z = z ^ (z >> xp.uint64(27))
    z = z * _M2
    return z ^ (z >> xp.uint64(31))


# At or above this many values NumPy's draws go through the compiled pass (kernels/cpu/random.py),
# equal bit for bit, once it is compiled; below it the formula is cheaper than the call.
COMPILED_FROM = 4096
_READY = set()  # the compiled passes found compiled, here or in Numba's cache


def _compiled(name: str, out, key, *extra):
    """kernels/cpu/random.py's ``name`` when it is compiled in this process or in Numba's cache, else
    None, so that a first run draws with the formula instead of waiting ~0.4 s for a compile: the
    first run's background warm-up (rnnfast.warmup) compiles it into the cache meanwhile."""
    from rnnfast.kernels.cpu import random as compiled
    from rnnfast.kernels.cpu.common import is_compiled

    kernel = getattr(compiled, name)
    if name not in _READY:
        if not is_compiled(kernel, (out, key, *extra)):
            return None
        _READY.add(name)
    return kernel


def _key(seed: int, stream: int, xp):
    with np.errstate(over="ignore"):  # wrap-around is the point of the hash
        return _mix(xp.asarray(np.uint64(seed % 2**64)) * _GOLDEN + xp.uint64(stream % 2**64), xp)


def _layout(shape, rows) -> tuple[int, int, int, int]:
    """(n, block, stride, offset): the draw's n values are blocks of ``block`` consecutive indexes,
    ``stride`` apart, the first at ``offset`` (one block from 0 without ``rows``)."""
    n = int(np.prod(shape, dtype=np.int64))
    if rows is None:
        return n, n, n, 0
    axis, start, total = rows
    local = shape[axis]
    if not 0 <= start <= start + local <= total:
        raise ValueError(f"rows {start}..{start + local} of a draw over {total} along axis {axis} are out of range")
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return n, local * inner, total * inner, start * inner


def _bits(layout, seed: int, stream: int, xp):
    """The top 24 bits of each index's hash, as uint64."""
    n, block, stride, offset = layout
    index = xp.arange(block, dtype=xp.uint64) + xp.uint64(offset)
    if block != n:
        index = (xp.arange(n // block if block else 0, dtype=xp.uint64)[:, None] * xp.uint64(stride)
                 + index[None, :]).reshape(-1)
    with np.errstate(over="ignore"):
        return _mix(index * _GOLDEN + _key(seed, stream, xp), xp) >> xp.uint64(40)


def _compiled_args(layout):
    return tuple(np.int64(v) for v in layout[1:])


def uniform(shape, seed: int, stream: int, xp=np, dtype=np.float32, rows=None):
    """Uniform numbers in [0, 1) of ``shape``, a pure function of (seed, stream, element index);
    ``rows=(axis, start, total)``: rows ``start..`` along ``axis`` of the draw over ``total`` rows."""
    layout = _layout(shape, rows)
    if xp is np and layout[0] >= COMPILED_FROM and np.dtype(dtype) == np.float32:
        out, key = np.empty(layout[0], np.float32), np.uint64(_key(seed, stream, np))
        kernel = _compiled("uniform_into", out, key, *_compiled_args(layout))
        if kernel is not None:
            kernel(out, key, *_compiled_args(layout))
            return out.reshape(shape)
    # top 24 bits -> exactly representable float32 in [0, 1)
    u = _bits(layout, seed, stream, xp).astype(dtype) * dtype(1.0 / (1 << 24))
    return u.reshape(shape)


def below(shape, p: float, seed: int, stream: int, xp=np, dtype=np.float32, rows=None):
    """1 where ``uniform(shape, seed, stream, rows=rows)`` (float32) is below p, else 0, in ``dtype``:
    a unit that keeps its state with probability p (zoneout's draws)."""
    layout = _layout(shape, rows)
    if xp is np and layout[0] >= COMPILED_FROM:
        out, key = np.empty(layout[0], dtype), np.uint64(_key(seed, stream, np))
        kernel = _compiled("below_into", out, key, np.float32(p), *_compiled_args(layout))
        if kernel is not None:
            kernel(out, key, np.float32(p), *_compiled_args(layout))
            return out.reshape(shape)
    return (uniform(shape, seed, stream, xp, np.float32, rows) < np.float32(p)).astype(dtype)


def dropout_mask(shape, p: float, seed: int, stream: int, xp=np, dtype=np.float32, rows=None):
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p); ``rows`` as for :func:`uniform`."""
    keep = uniform(shape, seed, stream, xp, np.float32, rows) >= p
    return keep.astype(dtype) * np.dtype(dtype).type(1.0 / (1.0 - p))
