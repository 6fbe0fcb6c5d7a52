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


def uniform(shape, seed: int, stream: int, xp=np, dtype=np.float32):
    """Uniform numbers in [0, 1) of ``shape``, a pure function of (seed, stream, element index)."""
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):  # wrap-around is the point of the hash
        key = _mix(xp.asarray(np.uint64(seed % 2**64)) * _GOLDEN + xp.uint64(stream % 2**64), xp)
        z = _mix(xp.arange(n, dtype=xp.uint64) * _GOLDEN + key, xp)
    # top 24 bits -> exactly representable float32 in [0, 1)
    u = (z >> xp.uint64(40)).astype(dtype) * dtype(1.0 / (1 << 24))
    return u.reshape(shape)


def dropout_mask(shape, p: float, seed: int, stream: int, xp=np, dtype=np.float32):
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p)."""
    keep = uniform(shape, seed, stream, xp, np.float32) >= p
    return keep.astype(dtype) * np.dtype(dtype).type(1.0 / (1.0 - p))
