"""Elman RNN on the CPU: Numba kernels, forward directly above backward.

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu

Steps at or past a sequence's length carry the state unchanged and output zeros.
"""
import numpy as np
from numba import njit, prange

from rnnfast.kernels.cpu.activations import tanh
from rnnfast.kernels.cpu.common import bias_grads, contiguous, prepare, row_blocks, weight_grads
from rnnfast.kernels.cpu.gemm import gemm, gemm_packed_serial, pack_weights

NONLINEARITIES = {"tanh": 0, "relu": 1}


@njit(cache=True, fastmath=True, error_model="numpy")
def _forward_step(bias, h_prev, h_next, y_t, t, lengths, relu, zero):
    """h_next: (B, H) holds W_ih x + W_hh h on entry and the new state on exit."""
    B, H = h_prev.shape
    for b in range(B):
        h_row, y_row = h_next[b], y_t[b]
        if t < lengths[b]:
            for j in range(H):
                a = h_row[j] + bias[j]
                h_row[j] = max(a, zero) if relu else tanh(a)
            y_t[b] = h_row
        else:
            h_next[b] = h_prev[b]
            y_t[b] = zero


@njit(cache=True)
def _forward_rows(b0, b1, w_hh_t, bias, lengths, relu, y, h):
    """The recurrence for batch rows b0:b1, all T steps: rows never read each other."""
    zero = h[0, 0, 0] * 0
    for t in range(y.shape[0]):
        gemm_packed_serial(h[t, b0:b1], w_hh_t, h[t + 1, b0:b1], True)
        _forward_step(bias, h[t, b0:b1], h[t + 1, b0:b1], y[t, b0:b1], t, lengths[b0:b1], relu, zero)


@njit(cache=True, parallel=True)
def _forward_recurrence(blocks, w_hh_t, bias, lengths, relu, y, h):
    B = h.shape[1]
    per = (B + blocks - 1) // blocks
    for k in prange(blocks):
        _forward_rows(k * per, min(B, (k + 1) * per), w_hh_t, bias, lengths, relu, y, h)


@njit(cache=True)
def _forward(x, h0, w_ih, w_hh, bias, lengths, relu, y, h):
    """x: (T, B, I); h0: (B, H); w_ih: (H, I); w_hh: (H, H); bias: (H,) = b_ih + b_hh.
    Writes y: (T, B, H), h: (T+1, B, H). The input projection goes straight into h[1:], each step
    adds W_hh h to it and then overwrites it with the state: no (T, B, H) scratch."""
    T, B, I = x.shape
    H = h0.shape[1]
    gemm(x.reshape(T * B, I), w_ih.T, h.reshape((T + 1) * B, H)[B:], False)
    h[0] = h0
    w_hh_t = pack_weights(w_hh.T)
    blocks = row_blocks(B, H)
    if blocks > 1:
        _forward_recurrence(blocks, w_hh_t, bias, lengths, relu, y, h)
    else:  # one core: starting the parallel region's threads would cost more than it saves
        _forward_rows(0, B, w_hh_t, bias, lengths, relu, y, h)


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None, nonlinearity="tanh"):
    """One RNN layer, one direction, over a whole sequence.

    x: (T, B, I); h0: (B, H); w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,);
    lengths: (B,) ints in 1..T or None. Returns y: (T, B, H), hT: (B, H) and the cache.
    """
    x, lengths = prepare(x, lengths)
    h0, w_ih, w_hh = contiguous(h0, w_ih, w_hh)
    relu = NONLINEARITIES[nonlinearity] == 1
    T, B, _ = x.shape
    H = h0.shape[1]
    y = np.empty((T, B, H), dtype=x.dtype)
    h = np.empty((T + 1, B, H), dtype=x.dtype)
    _forward(x, h0, w_ih, w_hh, b_ih + b_hh, lengths, relu, y, h)
    cache = (x, w_ih, w_hh, lengths, h, relu)
    return y, h[T].copy(), cache


@njit(cache=True, fastmath=True, error_model="numpy")
def _backward_step(dpre_t, dy_t, dh, h_next, t, lengths, relu, one, zero):
    B, H = dh.shape
    for b in range(B):
        dp_row = dpre_t[b]
        if t < lengths[b]:
            dh_row, dy_row, h_row = dh[b], dy_t[b], h_next[b]
            for j in range(H):
                dh_j = dh_row[j] + dy_row[j]
                h = h_row[j]
                if relu:
                    dp_row[j] = dh_j if h > zero else zero
                else:
                    dp_row[j] = dh_j * (one - h * h)
            dh_row[:] = zero  # used up; the recurrent GEMM adds the gradient for the step before
        else:
            dp_row[:] = zero


@njit(cache=True)
def _backward_rows(b0, b1, w_hh_p, dy, dh, lengths, h, relu, dpre):
    """BPTT through batch rows b0:b1, all T steps."""
    one = h[0, 0, 0] * 0 + 1
    zero = one - one
    for t in range(dpre.shape[0] - 1, -1, -1):
        _backward_step(dpre[t, b0:b1], dy[t, b0:b1], dh[b0:b1], h[t + 1, b0:b1], t, lengths[b0:b1], relu, one, zero)
        gemm_packed_serial(dpre[t, b0:b1], w_hh_p, dh[b0:b1], True)  # rows past a length add zeros


@njit(cache=True, parallel=True)
def _backward_recurrence(blocks, w_hh_p, dy, dh, lengths, h, relu, dpre):
    B = dh.shape[0]
    per = (B + blocks - 1) // blocks
    for k in prange(blocks):
        _backward_rows(k * per, min(B, (k + 1) * per), w_hh_p, dy, dh, lengths, h, relu, dpre)


@njit(cache=True)
def _backward(dy, dh, x, w_ih, w_hh, lengths, h, relu, dpre, dw_ih, dw_hh, db, accumulate):
    """Fills dpre: (T, B, H) step by step, then returns dx and fills dw_ih, dw_hh (added into
    when ``accumulate``), db with single GEMMs. dh: (B, H) enters as dhT and leaves as dh0."""
    T, B, I = x.shape
    H = dh.shape[1]
    w_hh_p = pack_weights(w_hh)
    blocks = row_blocks(B, H)
    if blocks > 1:
        _backward_recurrence(blocks, w_hh_p, dy, dh, lengths, h, relu, dpre)
    else:  # one core: starting the parallel region's threads would cost more than it saves
        _backward_rows(0, B, w_hh_p, dy, dh, lengths, h, relu, dpre)
    dp2 = dpre.reshape(T * B, H)
    dx = np.empty_like(x)  # allocated after the recurrence: its scratch is gone by now
    gemm(dp2, w_ih, dx.reshape(T * B, I), False)
    gemm(dp2.T, x.reshape(T * B, I), dw_ih, accumulate)
    gemm(dp2.T, h[:T].reshape(T * B, H), dw_hh, accumulate)
    db[:] = dp2.sum(axis=0)
    return dx


def rnn_backward(dy, dhT, cache, grads=None):
    """BPTT through :func:`rnn_forward`.

    dy: (T, B, H); dhT: (B, H) or None; grads: None, or (dw_ih, dw_hh, db_ih, db_hh) to add into
    (db_* may be None). Returns dx: (T, B, I), dh0: (B, H), dw_ih: (H, I), dw_hh: (H, H),
    db_ih, db_hh: (H,) (with ``grads``: those arrays, added into).
    """
    x, w_ih, w_hh, lengths, h, relu = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dh = np.zeros((B, H), x.dtype) if dhT is None else np.array(dhT, dtype=x.dtype)
    dpre = np.empty((T, B, H), dtype=x.dtype)
    dw_ih, dw_hh, accumulate = weight_grads(grads, w_ih, w_hh)
    db = np.empty(H, dtype=x.dtype)
    dx = _backward(dy, dh, x, w_ih, w_hh, lengths, h, relu, dpre, dw_ih, dw_hh, db, accumulate)
    return (dx, dh, dw_ih, dw_hh, *bias_grads(grads, db))
