"""Helpers shared by the CPU kernels of every cell."""
import numpy as np
from numba import njit


def prepare(x, lengths):
    """Contiguous x and int64 lengths (all T when None); the kernels assume both."""
    T, B = x.shape[0], x.shape[1]
    x = np.ascontiguousarray(x)
    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    else:
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    return x, lengths


@njit(cache=True)
def take_valid_rows(dh, dh_rec, t, lengths):
    """dh[b] = dh_rec[b] for the sequences still running at step t; the others carry dh unchanged."""
    for b in range(dh.shape[0]):
        if t < lengths[b]:
            dh[b] = dh_rec[b]


def contiguous(*arrays):
    return tuple(np.ascontiguousarray(a) for a in arrays)
