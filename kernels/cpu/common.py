"""Helpers shared by the CPU kernels of every cell."""
import numpy as np
from numba import config, njit

THREADS = config.NUMBA_NUM_THREADS


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


@njit(cache=True)
def row_blocks(B, H):
    """How many blocks of batch rows to run a recurrence in, one per core. Rows of a batch never
    read each other, so each core can run its rows through all T steps with no synchronisation;
    a block needs a few rows to keep the GEMM tile busy, and the layer enough work to pay for a
    second core."""
    if B * H < 2048:
        return 1
    return max(1, min(THREADS, B // 4))


def contiguous(*arrays):
    return tuple(np.ascontiguousarray(a) for a in arrays)
