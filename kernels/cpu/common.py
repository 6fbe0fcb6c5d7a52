"""Helpers shared by the CPU kernels of every cell."""
import subprocess
import sys

import numpy as np
from numba import njit, typeof

from rnnfast.kernels.cpu.gemm import core_address, pack_weights
from rnnfast.kernels.cpu.threads import THREADS, run_shared


def prepare(x, lengths):
    """Contiguous x and int64 lengths (all T when None); the kernels assume both."""
    T, B = x.shape[0], x.shape[1]
    x = np.ascontiguousarray(x)
    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    else:
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    return x, lengths


def row_blocks(B, H):
    """How many blocks of batch rows to run a recurrence in, one per core. Rows of a batch never
    read each other, so each core can run its rows through all T steps with no synchronisation;
    a block needs a few rows to keep the GEMM tile busy, and the layer enough work to pay for a
    second core."""
    if B * H < 2048:
        return 1
    return max(1, min(THREADS, B // 4))


def run_rows(rows, B, H, w, *args):
    """The recurrence ``rows(b0, b1, core, w_packed, *args)`` over all B batch rows, in one block of
    rows per core (:func:`row_blocks`). w: the recurrent weight as the GEMM's B operand (K, N), packed
    here once for every step; core: the compiled GEMM's address for the step products."""
    core, w_packed = core_address(w.dtype), pack_weights(w)
    blocks = row_blocks(B, H)
    per = (B + blocks - 1) // blocks
    run_shared(lambda k: rows(k * per, min(B, (k + 1) * per), core, w_packed, *args), blocks)


@njit(cache=True, inline="always")
def copy_row(dst, src):
    """dst[:] = src for two 1-D arrays of one length, in a loop: the slice assignment's shape
    check formats its error message with compiled string code, 4 s of the first run's compile."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


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


def is_compiled(dispatcher, args) -> bool:
    """Whether ``dispatcher`` has code for arguments typed as ``args``, compiled in this process or
    in Numba's cache (then loaded, as its first call would), without compiling anything."""
    sig = tuple(typeof(a) for a in args)
    if sig in dispatcher.overloads:
        return True
    try:  # what Dispatcher.compile does before compiling: load from the cache and keep what it found
        found = dispatcher._cache.load_overload(sig, dispatcher.targetctx)
        if found is not None:
            dispatcher.targetctx.insert_user_function(found.entry_point, found.fndesc, [found.library])
            dispatcher.add_overload(found)
        return found is not None
    except Exception:  # Numba's cache internals moved: report ready, so callers compile as before
        return True


def compile_detached(code: str) -> subprocess.Popen:
    """Run ``code`` (Python that calls kernels, compiling them into Numba's cache) in a detached
    process of this interpreter and return it; nothing has to wait for it."""
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
