"""LSTM on the CPU: Numba kernels, forward directly above backward.

Gate order i, f, g, o (PyTorch's)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     f = sigmoid(W_if x + ... )
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)        o = sigmoid(W_io x + ... )
    c' = f * c + i * g                             h' = o * tanh(c')

The input projection for all T steps is one GEMM before the loop; inside the loop each step is a
recurrent GEMM (``h @ W_hh^T``) plus one fused pointwise pass. Backward mirrors it: a fused
pointwise pass and one recurrent GEMM per step, then ``dx``, ``dw_ih``, ``dw_hh`` as single GEMMs.
Steps at or past a sequence's length carry the state unchanged and output zeros.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cpu.activations import sigmoid, tanh
from rnnfast.kernels.cpu.common import contiguous, prepare, take_valid_rows


@njit(cache=True, fastmath=True, error_model="numpy")
def _forward_step(gates_t, hw, bias, c_prev, h_prev, c_next, h_next, y_t, t, lengths, zero):
    # Short loops over few arrays each: LLVM vectorises a loop only when it can prove, with a
    # bounded number of runtime checks, that its arrays do not overlap; one loop touching all ten
    # stayed scalar (98 us per step at B=32, H=256, against 41 us split like this).
    B, H = c_prev.shape
    i_idx, f_idx, g_idx, o_idx = 0, H, 2 * H, 3 * H
    for b in range(B):
        if t < lengths[b]:
            g_row = gates_t[b]
            hw_row = hw[b]
            for j in range(4 * H):
                g_row[j] += hw_row[j] + bias[j]
            for j in range(i_idx, g_idx):  # i and f
                g_row[j] = sigmoid(g_row[j])
            for j in range(g_idx, o_idx):
                g_row[j] = tanh(g_row[j])
            for j in range(o_idx, 4 * H):
                g_row[j] = sigmoid(g_row[j])
            c_row = c_next[b]
            c_prev_row = c_prev[b]
            for j in range(H):
                c_row[j] = g_row[f_idx + j] * c_prev_row[j] + g_row[i_idx + j] * g_row[g_idx + j]
            h_row = h_next[b]
            for j in range(H):
                h_row[j] = g_row[o_idx + j] * tanh(c_row[j])
            y_t[b] = h_row
        else:
            c_next[b] = c_prev[b]
            h_next[b] = h_prev[b]
            y_t[b] = zero
            gates_t[b] = zero


@njit(cache=True)
def _forward(x, h0, c0, w_ih, w_hh, bias, lengths, y, h, c, gates):
    """x: (T, B, I); h0, c0: (B, H); w_ih: (4H, I); w_hh: (4H, H); bias: (4H,) = b_ih + b_hh;
    lengths: (B,) int64. Writes y: (T, B, H), h, c: (T+1, B, H), gates: (T, B, 4H) post-activation."""
    T, B, I = x.shape
    H = h0.shape[1]
    zero = h0[0, 0] * 0
    np.dot(x.reshape(T * B, I), w_ih.T, gates.reshape(T * B, 4 * H))
    h[0] = h0
    c[0] = c0
    hw = np.empty((B, 4 * H), dtype=x.dtype)
    for t in range(T):
        np.dot(h[t], w_hh.T, hw)
        _forward_step(gates[t], hw, bias, c[t], h[t], c[t + 1], h[t + 1], y[t], t, lengths, zero)


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """One LSTM layer, one direction, over a whole sequence.

    x: (T, B, I); h0, c0: (B, H); w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,);
    lengths: (B,) ints in 1..T or None. Returns y: (T, B, H), hT, cT: (B, H) and the cache.
    """
    x, lengths = prepare(x, lengths)
    h0, c0, w_ih, w_hh = contiguous(h0, c0, w_ih, w_hh)
    T, B, _ = x.shape
    H = h0.shape[1]
    y = np.empty((T, B, H), dtype=x.dtype)
    h = np.empty((T + 1, B, H), dtype=x.dtype)
    c = np.empty((T + 1, B, H), dtype=x.dtype)
    gates = np.empty((T, B, 4 * H), dtype=x.dtype)
    _forward(x, h0, c0, w_ih, w_hh, b_ih + b_hh, lengths, y, h, c, gates)
    cache = (x, w_ih, w_hh, lengths, h, c, gates)
    return y, h[T].copy(), c[T].copy(), cache


@njit(cache=True, fastmath=True, error_model="numpy")
def _backward_step(dgates_t, dy_t, dh, dc, gates_t, c_prev, c_next, t, lengths, one, zero):
    # Two passes over few arrays each, for the same reason as _forward_step: the first takes the
    # gradient through h' = o * tanh(c') into dc, the second through c' = f * c + i * g.
    B, H = dh.shape
    i_idx, f_idx, g_idx, o_idx = 0, H, 2 * H, 3 * H
    for b in range(B):
        dg_row = dgates_t[b]
        if t < lengths[b]:
            g_row = gates_t[b]
            dc_row = dc[b]
            dh_row = dh[b]
            dy_row = dy_t[b]
            c_next_row = c_next[b]
            for j in range(H):
                o = g_row[o_idx + j]
                dh_j = dh_row[j] + dy_row[j]
                tanh_c = tanh(c_next_row[j])
                dc_row[j] += dh_j * o * (one - tanh_c * tanh_c)
                dg_row[o_idx + j] = dh_j * tanh_c * o * (one - o)
            c_prev_row = c_prev[b]
            for j in range(H):
                i = g_row[i_idx + j]
                f = g_row[f_idx + j]
                g = g_row[g_idx + j]
                dc_j = dc_row[j]
                dg_row[i_idx + j] = dc_j * g * i * (one - i)
                dg_row[f_idx + j] = dc_j * c_prev_row[j] * f * (one - f)
                dg_row[g_idx + j] = dc_j * i * (one - g * g)
                dc_row[j] = dc_j * f
        else:
            dg_row[:] = zero


@njit(cache=True)
def _backward(dy, dh, dc, x, w_ih, w_hh, lengths, h, c, gates, dgates, dx, dw_ih, dw_hh, db):
    """Fills dgates: (T, B, 4H) step by step, then dx, dw_ih, dw_hh, db with single GEMMs.
    dh, dc: (B, H) enter as dhT, dcT and leave as dh0, dc0."""
    T, B, I = x.shape
    H = dh.shape[1]
    one = h[0, 0, 0] * 0 + 1
    zero = one - one
    dh_rec = np.empty((B, H), dtype=x.dtype)
    for t in range(T - 1, -1, -1):
        _backward_step(dgates[t], dy[t], dh, dc, gates[t], c[t], c[t + 1], t, lengths, one, zero)
        np.dot(dgates[t], w_hh, dh_rec)
        take_valid_rows(dh, dh_rec, t, lengths)
    dg2 = dgates.reshape(T * B, 4 * H)
    np.dot(dg2, w_ih, dx.reshape(T * B, I))
    np.dot(dg2.T, x.reshape(T * B, I), dw_ih)
    np.dot(dg2.T, h[:T].reshape(T * B, H), dw_hh)
    db[:] = dg2.sum(axis=0)


def lstm_backward(dy, dhT, dcT, cache):
    """BPTT through :func:`lstm_forward`.

    dy: (T, B, H); dhT, dcT: (B, H) or None. Returns dx: (T, B, I), dh0, dc0: (B, H),
    dw_ih: (4H, I), dw_hh: (4H, H), db_ih, db_hh: (4H,).
    """
    x, w_ih, w_hh, lengths, h, c, gates = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dh = np.zeros((B, H), x.dtype) if dhT is None else np.array(dhT, dtype=x.dtype)
    dc = np.zeros((B, H), x.dtype) if dcT is None else np.array(dcT, dtype=x.dtype)
    dgates = np.empty((T, B, 4 * H), dtype=x.dtype)
    dx = np.empty_like(x)
    dw_ih = np.empty_like(w_ih)
    dw_hh = np.empty_like(w_hh)
    db = np.empty(4 * H, dtype=x.dtype)
    _backward(dy, dh, dc, x, w_ih, w_hh, lengths, h, c, gates, dgates, dx, dw_ih, dw_hh, db)
    return dx, dh, dc, dw_ih, dw_hh, db, db.copy()
