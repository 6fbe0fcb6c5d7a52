"""A counter-based random generator that gives the same numbers on NumPy and CuPy.

Each value is a hash of ``(seed, stream, index)`` (SplitMix64's finaliser), computed with
unsigned 64-bit integer arithmetic that NumPy and CuPy evaluate identically. So a dropout mask for
a given seed and step is the same on the CPU and the GPU, and a run is reproducible across devices.
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


def _bits(n: int, seed: int, stream: int, xp):
    """The top 24 bits of each index's hash, as uint64."""
    with np.errstate(over="ignore"):
        return _mix(xp.arange(n, dtype=xp.uint64) * _GOLDEN + _key(seed, stream, xp), xp) >> xp.uint64(40)


def uniform(shape, seed: int, stream: int, xp=np, dtype=np.float32):
    """Uniform numbers in [0, 1) of ``shape``, a pure function of (seed, stream, element index)."""
    n = int(np.prod(shape, dtype=np.int64))
    if xp is np and n >= COMPILED_FROM and np.dtype(dtype) == np.float32:
        out, key = np.empty(n, np.float32), np.uint64(_key(seed, stream, np))
        kernel = _compiled("uniform_into", out, key)
        if kernel is not None:
            kernel(out, key)
            return out.reshape(shape)
    # top 24 bits -> exactly representable float32 in [0, 1)
    u = _bits(n, seed, stream, xp).astype(dtype) * dtype(1.0 / (1 << 24))
    return u.reshape(shape)


def below(shape, p: float, seed: int, stream: int, xp=np, dtype=np.float32):
    """1 where ``uniform(shape, seed, stream)`` (float32) is below p, else 0, in ``dtype``: a unit
    that keeps its state with probability p (zoneout's draws)."""
    n = int(np.prod(shape, dtype=np.int64))
    if xp is np and n >= COMPILED_FROM:
        out, key = np.empty(n, dtype), np.uint64(_key(seed, stream, np))
        kernel = _compiled("below_into", out, key, np.float32(p))
        if kernel is not None:
            kernel(out, key, np.float32(p))
            return out.reshape(shape)
    return (uniform(shape, seed, stream, xp, np.float32) < np.float32(p)).astype(dtype)


def dropout_mask(shape, p: float, seed: int, stream: int, xp=np, dtype=np.float32):
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p)."""
    keep = uniform(shape, seed, stream, xp, np.float32) >= p
    return keep.astype(dtype) * np.dtype(dtype).type(1.0 / (1.0 - p))
