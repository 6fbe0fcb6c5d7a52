"""GRU on the CPU: Numba kernels, forward directly above backward.

Gate order r, z, n (PyTorch's)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)     z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  h' = (1 - z) * n + z * h

``W_hn h + b_hn`` sits inside the reset gate, so the input and recurrent halves have different
gate gradients, which differ only in n (by the factor r): backward keeps one (T, B, 3H) array and
turns the one into the other in place between their GEMMs.
Steps at or past a sequence's length carry the state unchanged and output zeros.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cpu.activations import sigmoid, tanh
from rnnfast.kernels.cpu.common import contiguous, prepare


@njit(cache=True, fastmath=True, error_model="numpy")
def _forward_step(gates_t, hn_t, hw, b_hh, h_prev, h_next, y_t, t, lengths, one, zero):
    # Passes over few arrays each: LLVM vectorises a loop only when a bounded number of runtime
    # checks proves its arrays do not overlap (see lstm._forward_step).
    B, H = h_prev.shape
    r_idx, z_idx, n_idx = 0, H, 2 * H
    for b in range(B):
        if t < lengths[b]:
            g_row = gates_t[b]
            hw_row = hw[b]
            for j in range(r_idx, n_idx):  # r and z
                g_row[j] = sigmoid(g_row[j] + hw_row[j] + b_hh[j])
            hn_row = hn_t[b]
            for j in range(H):
                hn = hw_row[n_idx + j] + b_hh[n_idx + j]
                hn_row[j] = hn
                g_row[n_idx + j] = tanh(g_row[n_idx + j] + g_row[r_idx + j] * hn)
            h_row = h_next[b]
            h_prev_row = h_prev[b]
            for j in range(H):
                z = g_row[z_idx + j]
                h_row[j] = (one - z) * g_row[n_idx + j] + z * h_prev_row[j]
            y_t[b] = h_row
        else:
            h_next[b] = h_prev[b]
            y_t[b] = zero
            gates_t[b] = zero
            hn_t[b] = zero


@njit(cache=True)
def _forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, h, gates, hn):
    """x: (T, B, I); h0: (B, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,); lengths: (B,).
    Writes y: (T, B, H), h: (T+1, B, H), gates: (T, B, 3H) = r, z, n and hn: (T, B, H) = W_hn h + b_hn."""
    T, B, I = x.shape
    H = h0.shape[1]
    one = h0[0, 0] * 0 + 1
    zero = one - one
    g2 = gates.reshape(T * B, 3 * H)
    np.dot(x.reshape(T * B, I), w_ih.T, g2)
    g2 += b_ih
    h[0] = h0
    hw = np.empty((B, 3 * H), dtype=x.dtype)
    for t in range(T):
        np.dot(h[t], w_hh.T, hw)
        _forward_step(gates[t], hn[t], hw, b_hh, h[t], h[t + 1], y[t], t, lengths, one, zero)


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """One GRU layer, one direction, over a whole sequence.

    x: (T, B, I); h0: (B, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,);
    lengths: (B,) ints in 1..T or None. Returns y: (T, B, H), hT: (B, H) and the cache.
    """
    x, lengths = prepare(x, lengths)
    h0, w_ih, w_hh, b_ih, b_hh = contiguous(h0, w_ih, w_hh, b_ih, b_hh)
    T, B, _ = x.shape
    H = h0.shape[1]
    y = np.empty((T, B, H), dtype=x.dtype)
    h = np.empty((T + 1, B, H), dtype=x.dtype)
    gates = np.empty((T, B, 3 * H), dtype=x.dtype)
    hn = np.empty((T, B, H), dtype=x.dtype)
    _forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, h, gates, hn)
    cache = (x, w_ih, w_hh, lengths, h, gates, hn)
    return y, h[T].copy(), cache


@njit(cache=True, fastmath=True, error_model="numpy")
def _backward_step(dgates_x_t, dgates_h_t, dy_t, dh, gates_t, hn_t, h_prev, t, lengths, one, zero):
    # Two passes over few arrays each (see _forward_step): through h' = (1 - z) * n + z * h
    # first, then through n's reset gate r.
    B, H = dh.shape
    r_idx, z_idx, n_idx = 0, H, 2 * H
    for b in range(B):
        dgx_row = dgates_x_t[b]
        dgh_row = dgates_h_t[b]
        if t < lengths[b]:
            g_row = gates_t[b]
            dh_row = dh[b]
            dy_row = dy_t[b]
            h_prev_row = h_prev[b]
            for j in range(H):
                z = g_row[z_idx + j]
                n = g_row[n_idx + j]
                dh_j = dh_row[j] + dy_row[j]
                dgx_row[n_idx + j] = dh_j * (one - z) * (one - n * n)
                dgx_row[z_idx + j] = dh_j * (h_prev_row[j] - n) * z * (one - z)
                dh_row[j] = dh_j * z  # the direct path; the recurrent GEMM adds the rest
            hn_row = hn_t[b]
            for j in range(H):
                r = g_row[r_idx + j]
                dn = dgx_row[n_idx + j]
                dr = dn * hn_row[j] * r * (one - r)
                dgx_row[r_idx + j] = dr
                dgh_row[r_idx + j] = dr
                dgh_row[z_idx + j] = dgx_row[z_idx + j]
                dgh_row[n_idx + j] = dn * r
        else:
            dgx_row[:] = zero
            dgh_row[:] = zero


@njit(cache=True)
def _backward(dy, dh, x, w_ih, w_hh, lengths, h, gates, hn, dgates, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Fills dgates: (T, B, 3H) step by step with the input side's gate gradients, then dx, dw_ih,
    db_ih with single GEMMs and reductions; then turns dgates into the recurrent side's (they differ
    only in n, by the factor r) in place for dw_hh and db_hh, so one (T, B, 3H) array serves both.
    dh: (B, H) enters as dhT and leaves as dh0."""
    T, B, I = x.shape
    H = dh.shape[1]
    one = h[0, 0, 0] * 0 + 1
    zero = one - one
    dgates_h_t = np.empty((B, 3 * H), dtype=x.dtype)
    dh_rec = np.empty((B, H), dtype=x.dtype)
    for t in range(T - 1, -1, -1):
        _backward_step(dgates[t], dgates_h_t, dy[t], dh, gates[t], hn[t], h[t], t, lengths, one, zero)
        np.dot(dgates_h_t, w_hh, dh_rec)
        dh += dh_rec  # rows past a length have zero gate gradients, so dh_rec is zero there
    dg2 = dgates.reshape(T * B, 3 * H)
    np.dot(dg2, w_ih, dx.reshape(T * B, I))
    np.dot(dg2.T, x.reshape(T * B, I), dw_ih)
    db_ih[:] = dg2.sum(axis=0)
    g2 = gates.reshape(T * B, 3 * H)
    for row in range(T * B):
        for j in range(H):
            dg2[row, 2 * H + j] *= g2[row, j]  # dn -> dn * r
    np.dot(dg2.T, h[:T].reshape(T * B, H), dw_hh)
    db_hh[:] = dg2.sum(axis=0)


def gru_backward(dy, dhT, cache):
    """BPTT through :func:`gru_forward`.

    dy: (T, B, H); dhT: (B, H) or None. Returns dx: (T, B, I), dh0: (B, H), dw_ih: (3H, I),
    dw_hh: (3H, H), db_ih, db_hh: (3H,).
    """
    x, w_ih, w_hh, lengths, h, gates, hn = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dh = np.zeros((B, H), x.dtype) if dhT is None else np.array(dhT, dtype=x.dtype)
    dgates = np.empty((T, B, 3 * H), dtype=x.dtype)
    dx = np.empty_like(x)
    dw_ih = np.empty_like(w_ih)
    dw_hh = np.empty_like(w_hh)
    db_ih = np.empty(3 * H, dtype=x.dtype)
    db_hh = np.empty(3 * H, dtype=x.dtype)
    _backward(dy, dh, x, w_ih, w_hh, lengths, h, gates, hn, dgates, dx, dw_ih, dw_hh, db_ih, db_hh)
    return dx, dh, dw_ih, dw_hh, db_ih, db_hh
