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


def weight_grads(grads, w_ih, w_hh):
    """(dw_ih, dw_hh, accumulate) for a backward kernel: the caller's gradient arrays to add into
    (``grads`` = (dw_ih, dw_hh, db_ih, db_hh)), or new ones to fill. Adding in place spares a
    temporary the size of the weights and a pass over it per layer and step."""
    if grads is None:
        return np.empty_like(w_ih), np.empty_like(w_hh), False
    for g, w, name in zip(grads[:2], (w_ih, w_hh), ("dw_ih", "dw_hh")):
        if g.shape != w.shape or g.dtype != w.dtype or not g.flags.c_contiguous:
            raise ValueError(f"grads: {name} must be a C-contiguous {w.dtype} array of shape {w.shape}")
    return grads[0], grads[1], True


def bias_grads(grads, db_ih, db_hh=None):
    """The bias gradients a backward kernel returns: new arrays, or the caller's after adding
    into them (an entry of None is skipped, as for a layer without biases). db_hh defaults to
    db_ih: every cell but the GRU has the same gradient for both biases."""
    if grads is None:
        return db_ih, (db_ih.copy() if db_hh is None else db_hh)
    for g, d in zip(grads[2:], (db_ih, db_ih if db_hh is None else db_hh)):
        if g is not None:
            g += d
    return grads[2], grads[3]
