"""Helpers shared by the CPU kernels of every cell."""
import subprocess
import sys

import numpy as np
from numba import njit, typeof

from rnnfast.kernels.cpu.gemm import core_address, gemm, gemm_packed_serial, pack_weights
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


def projected_input(x, w_ih, projected):
    """Checks a forward kernel's ``projected`` input: x (T, B, G*H) must already be x @ W_ih^T."""
    if projected and x.shape[2] != w_ih.shape[0]:
        raise ValueError(f"a projected input must be (T, B, {w_ih.shape[0]}) = x @ W_ih^T, got {x.shape}")


def input_grads(dxw, x, w_ih, dw_ih, accumulate, projected):
    """dx from the input side's gate gradients dxw (T*B, G*H), with dW_ih = dxw^T x added into (or
    written to) dw_ih. Under ``projected`` the forward's input was x @ W_ih^T itself: dx is then
    dxw as (T, B, G*H), a view of it, and dW_ih is the caller's to form, since only it knows what
    was projected (rnnfast.recurrent: rows of an embedding); a new dw_ih is zeroed."""
    T, B = x.shape[:2]
    if projected:
        if not accumulate:
            dw_ih[...] = 0
        return dxw.reshape(T, B, -1)
    dx = np.empty_like(x)  # allocated after the recurrence: its scratch is gone by now
    gemm(dxw, w_ih, dx.reshape(T * B, -1), False)
    gemm(dxw.T, x.reshape(T * B, -1), dw_ih, accumulate)
    return dx


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


# -- cell options: recurrent dropout and zoneout (kernels/cells.py's cell_options) --------------
def grad_scratch(B, H, dtype, mask, zones):
    """(dy_step, keeps, dgemm) for a backward loop: (B, H) scratch for what zoneout passes on, one
    per zoned part, and for the masked recurrent GEMM; empty where the option is off."""
    empty = np.zeros((0, 0), dtype)
    keeps = tuple(np.empty((B, H), dtype) if z.shape[0] else empty for z in zones)
    dy_step = np.empty((B, H), dtype) if zones[0].shape[0] else empty
    return dy_step, keeps, (np.empty((B, H), dtype) if mask.shape[0] else empty)


@njit(cache=True, error_model="numpy")
def _zone_row(z_row, prev, new, one):
    """new = z * prev + (1 - z) * new for one row: without fastmath, so that a unit that zones out
    (z = 1) keeps its old state exactly; fastmath's reassociation would round it."""
    for j in range(new.shape[0]):
        new[j] = z_row[j] * prev[j] + (one - z_row[j]) * new[j]


def zone_args(zones, saved):
    """(zones, saved) for a forward loop when a state part is zoned, else (None, None): a loop typed
    with None has zoneout's code pruned by Numba at compile time, as :func:`norm_args` does for
    layer norm. The recurrent-dropout mask stays an array, empty when off, so that the default
    character model (recurrent dropout in training, none in evaluation) compiles one loop."""
    return (zones, saved) if any(z.shape[0] for z in zones) else (None, None)


@njit(cache=True, fastmath=True, error_model="numpy")
def options_forward(t, b0, b1, lengths, y, states, a, mask, zones, saved, one):
    """After step t's cell update of rows b0:b1: zoneout mixes each zoned state part with its value
    before the step (rows inside their length; y follows h), then the masked h enters ``a``.
    zones, saved: None without zoneout (:func:`zone_args`)."""
    if zones is not None:  # indexed, not unpacked: see lstm._forward_step
        for k in range(len(states)):
            if zones[k].shape[0] > 0:
                for b in range(b0, b1):
                    if t < lengths[b]:
                        if saved[k].shape[0] > 0:
                            copy_row(saved[k][t + 1, b], states[k][t + 1, b])
                        _zone_row(zones[k][t, b], states[k][t, b], states[k][t + 1, b], one)
                        if k == 0:
                            copy_row(y[t, b], states[k][t + 1, b])
    if mask.shape[0] > 0:
        h = states[0]
        for b in range(b0, b1):
            a_row, h_row, m_row = a[t + 1, b], h[t + 1, b], mask[b]
            for j in range(h_row.shape[0]):
                a_row[j] = h_row[j] * m_row[j]


@njit(cache=True, fastmath=True, error_model="numpy")
def zoneout_grads(t, b0, b1, lengths, dy, dstates, zones, dy_step, keeps, one):
    """Before step t's backward, rows b0:b1: the gradient G reaching a zoned part (for h, dh + dy)
    splits into z*G, kept for the state before the step, and (1-z)*G for the cell's update, which
    the cell's step reads (h's through dy_step, with dh zeroed). Returns the dy the step reads."""
    for k in range(len(dstates)):
        if zones[k].shape[0] > 0:
            d, z, keep = dstates[k], zones[k], keeps[k]
            for b in range(b0, b1):
                d_row, keep_row, z_row = d[b], keep[b], z[t, b]
                if t < lengths[b]:
                    if k == 0:
                        dy_row, step_row = dy[t, b], dy_step[b]
                        for j in range(d_row.shape[0]):
                            g = d_row[j] + dy_row[j]
                            keep_row[j] = z_row[j] * g
                            step_row[j] = (one - z_row[j]) * g
                            d_row[j] = 0
                    else:
                        for j in range(d_row.shape[0]):
                            keep_row[j] = z_row[j] * d_row[j]
                            d_row[j] = (one - z_row[j]) * d_row[j]
                else:
                    for j in range(d_row.shape[0]):
                        keep_row[j] = 0
                    if k == 0:
                        copy_row(dy_step[b], dy[t, b])
    return dy_step[b0:b1] if zones[0].shape[0] > 0 else dy[t, b0:b1]


@njit(cache=True, fastmath=True, error_model="numpy")
def zoneout_add(b0, b1, dstates, zones, keeps):
    """After step t's backward: each zoned part's gradient gets back what zoneout kept for it."""
    for k in range(len(dstates)):
        if zones[k].shape[0] > 0:
            d, keep = dstates[k], keeps[k]
            for b in range(b0, b1):
                d_row, keep_row = d[b], keep[b]
                for j in range(d_row.shape[0]):
                    d_row[j] += keep_row[j]


@njit(cache=True, fastmath=True, error_model="numpy")
def recurrent_gemm_backward(dgates_t, w_hh_p, dh, mask, dgemm, core):
    """dh += dgates_t @ W_hh for rows of one block, times the recurrent-dropout mask when it is on."""
    if mask.shape[0] == 0:
        gemm_packed_serial(dgates_t, w_hh_p, dh, True, core)
        return
    gemm_packed_serial(dgates_t, w_hh_p, dgemm, False, core)
    for b in range(dh.shape[0]):
        d_row, g_row, m_row = dh[b], dgemm[b], mask[b]
        for j in range(d_row.shape[0]):
            d_row[j] += g_row[j] * m_row[j]


def options_probe(dtype, parts):
    """The cell-option arguments of a backward loop (mask, zones, dy_step, keeps, dgemm), all off,
    typed as the backward kernels pass them: the warm-up probes compile the loop with these."""
    empty2, empty3 = np.zeros((0, 0), dtype), np.zeros((0, 0, 0), dtype)
    return empty2, (empty3,) * parts, empty2, (empty2,) * parts, empty2


# -- layer norm (kernels/cells.py's layer_norm_arrays) -------------------------------------------
@njit(cache=True, fastmath=True, error_model="numpy")
def normalise_row(v, gain, bias, out, hat, eps, inv_n):
    """hat (N,) = (v - mean(v)) / sqrt(var(v) + eps) over v's N entries, out = gain * hat + bias
    (out may be v); inv_n: 1/N. Returns 1/sqrt(var + eps), what backward needs besides hat."""
    mean = v[0] * 0
    for j in range(v.shape[0]):
        mean += v[j]
    mean *= inv_n
    var = mean * 0
    for j in range(v.shape[0]):
        d = v[j] - mean
        var += d * d
    rstd = (eps * 0 + 1) / np.sqrt(var * inv_n + eps)
    for j in range(v.shape[0]):
        hat[j] = (v[j] - mean) * rstd
    for j in range(v.shape[0]):
        out[j] = gain[j] * hat[j] + bias[j]
    return rstd


@njit(cache=True, fastmath=True, error_model="numpy")
def normalise_row_backward(dout, hat, rstd, gain, dv, inv_n):
    """dv (N,): the gradient of v through :func:`normalise_row` given dout, that of its out (dv
    may be dout): rstd * (gain*dout - mean(gain*dout) - hat * mean(gain*dout*hat))."""
    s1 = dout[0] * 0
    s2 = s1
    for j in range(dout.shape[0]):
        g = gain[j] * dout[j]
        s1 += g
        s2 += g * hat[j]
    s1 *= inv_n
    s2 *= inv_n
    for j in range(dout.shape[0]):
        dv[j] = rstd * (gain[j] * dout[j] - s1 - hat[j] * s2)


@njit(cache=True, fastmath=True, error_model="numpy")
def normalise_rows(v, gain, bias, hat, rstd, consts):
    """Every row of v (M, N) through :func:`normalise_row` in place; hat: (M, N), rstd: (M,).
    The input side's norm, on the whole projection at once outside the time loop."""
    for r in range(v.shape[0]):
        rstd[r] = normalise_row(v[r], gain, bias, v[r], hat[r], consts[0], consts[1])


@njit(cache=True, fastmath=True, error_model="numpy")
def normalise_rows_backward(dout, hat, rstd, gain, dv, consts):
    """Every row of dout (M, N) back through :func:`normalise_rows` into dv (M, N)."""
    for r in range(dout.shape[0]):
        normalise_row_backward(dout[r], hat[r], rstd[r], gain, dv[r], consts[1])


@njit(cache=True, fastmath=True, error_model="numpy")
def normalise_recurrent(hw, t, b0, norm_hh):
    """Rows b0:b0+len(hw) of step t's a W_hh^T (hw, in place) through the recurrent side's norm.
    norm_hh: (gain_hh, bias_hh, hat_h, rstd_h, consts)."""
    gain, bias, hat, rstd, consts = norm_hh
    for r in range(hw.shape[0]):
        rstd[t, b0 + r] = normalise_row(hw[r], gain, bias, hw[r], hat[t, b0 + r], consts[0], consts[1])


@njit(cache=True, fastmath=True, error_model="numpy")
def recurrent_gemm_forward(a_t, w_hh_t, out_t, hw, t, b0, norm_hh, core):
    """out_t += a_t @ W_hh^T for the rows of one block, through the recurrent side's layer norm
    when it is on (norm_hh's hat_h is not empty): then the product goes to the (rows, G*H)
    scratch hw, is normalised there and added."""
    if norm_hh is None:  # None, not empty arrays, so that Numba leaves the norm's code out
        gemm_packed_serial(a_t, w_hh_t, out_t, True, core)
        return
    gemm_packed_serial(a_t, w_hh_t, hw, False, core)
    normalise_recurrent(hw, t, b0, norm_hh)
    for r in range(hw.shape[0]):
        out_row, hw_row = out_t[r], hw[r]
        for j in range(out_row.shape[0]):
            out_row[j] += hw_row[j]


@njit(cache=True, fastmath=True, error_model="numpy")
def recurrent_grads(dgates_t, t, b0, norm_hh_grads):
    """The gradient of step t's a W_hh^T for rows b0:b0+len(dgates_t): the recurrent side's gate
    gradients dgates_t themselves, or with layer norm those taken back through it into dhw[t],
    which then keeps them for dW_hh. norm_hh_grads: (gain_hh, hat_h, rstd_h, dhw, consts)."""
    if norm_hh_grads is None:
        return dgates_t
    gain, hat, rstd, dhw, consts = norm_hh_grads
    for r in range(dgates_t.shape[0]):
        normalise_row_backward(dgates_t[r], hat[t, b0 + r], rstd[t, b0 + r], gain, dhw[t, b0 + r], consts[1])
    return dhw[t, b0:b0 + dgates_t.shape[0]]


def norm_args(hats, arrays):
    """``arrays`` for a loop when layer norm is on (``hats`` from cells.layer_norm_arrays not empty),
    else None: a loop typed with None has its norm's code pruned by Numba at compile time, which
    kept the first run's compile of a plain loop from growing by seconds."""
    return arrays if hats[1].shape[0] else None


def norm_scratch(hats, B, GH, dtype):
    """(B, G*H) scratch for the recurrent product a forward loop normalises, or empty without layer norm."""
    return np.empty((B, GH), dtype) if hats[1].shape[0] else np.zeros((0, 0), dtype)


def norm_input_forward(g2, params, hats, rstds, consts):
    """The input side's norm on the whole projection g2: (T*B, G*H), in place (when it is on)."""
    if hats[0].shape[0]:
        T, B = hats[0].shape[:2]
        normalise_rows(g2, params[0], params[1], hats[0].reshape(T * B, -1), rstds[0].reshape(T * B), consts)


def norm_input_backward(dg2, params, hats, rstds, consts):
    """(the gradient of x W_ih^T for all steps from the input side's gate gradients dg2: (T*B, G*H),
    dgain_ih, dbias_ih): dg2 itself and nothing without layer norm."""
    if not hats[0].shape[0]:
        return dg2, ()
    T, B = hats[0].shape[:2]
    hat = hats[0].reshape(T * B, -1)
    dxw = np.empty_like(dg2)
    normalise_rows_backward(dg2, hat, rstds[0].reshape(T * B), params[0], dxw, consts)
    return dxw, (np.einsum("ij,ij->j", dg2, hat), dg2.sum(axis=0))


def norm_recurrent_param_grads(dgh2, hats):
    """(dgain_hh, dbias_hh) from the recurrent side's gate gradients of all steps, dgh2: (T*B, G*H)."""
    T, B = hats[1].shape[:2]
    return np.einsum("ij,ij->j", dgh2, hats[1].reshape(T * B, -1)), dgh2.sum(axis=0)



