"""Helpers shared by the CPU kernels of every cell."""
import numpy as np


def prepare(x, lengths):
    """Contiguous x and int64 lengths (all T when None); the kernels assume both."""
    T, B = x.shape[0], x.shape[1]
    x = np.ascontiguousarray(x)
    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    else:
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    return x, lengths


def contiguous(*arrays):
    return tuple(np.ascontiguousarray(a) for a in arrays)
