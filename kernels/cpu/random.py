"""The counter-based generator of ``rnnfast.random`` as one compiled pass on the CPU: the same
SplitMix64 hash of (key, index), the same 24-bit floats and the same comparison, so the values
equal the NumPy formula's bit for bit (tests/test_random.py), without its ten temporary uint64
arrays. Zoneout draws a (T, B, H) array per state part, layer and direction at every step, where the
formula took 3.2 ms per 262,144 values on the 2-core machine.

The indexes are blocks of ``block`` consecutive ones, ``stride`` apart, the first at ``offset``: one
block from 0 for a whole draw, a process's rows of a global batch's draw in a data-parallel run."""
import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
SCALE = np.float32(1.0 / (1 << 24))


@njit(inline="always")
def mix(z):
    z = z ^ (z >> np.uint64(30))
    z = z * M1
    z = z ^ (z >> np.uint64(27))
    z = z * M2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def uniform_at(i, key):
    return np.float32(mix(np.uint64(i) * GOLDEN + key) >> np.uint64(40)) * SCALE


@njit(cache=True, error_model="numpy")
def uniform_into(out, key, block, stride, offset):
    """out (1-D, blocks of ``block``): the uniform floats in [0, 1) of its indexes for ``key`` (the
    mixed seed and stream)."""
    for b in range(out.shape[0] // block if block else 0):
        first = b * stride + offset
        for j in range(block):
            out[b * block + j] = uniform_at(first + j, key)


@njit(cache=True, error_model="numpy")
def below_into(out, key, p, block, stride, offset):
    """out (1-D, blocks of ``block``): 1 where the uniform float of that index is below ``p`` (a
    float32), else 0."""
    one, zero = out.dtype.type(1), out.dtype.type(0)
    for b in range(out.shape[0] // block if block else 0):
        first = b * stride + offset
        for j in range(block):
            out[b * block + j] = one if uniform_at(first + j, key) < p else zero
