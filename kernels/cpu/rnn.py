"""Elman RNN on the CPU: Numba kernels, forward directly above backward.

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu

Steps at or past a sequence's length carry the state unchanged and output zeros.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cpu.activations import tanh
from rnnfast.kernels.cpu.common import contiguous, prepare, take_valid_rows

NONLINEARITIES = {"tanh": 0, "relu": 1}


@njit(cache=True, fastmath=True, error_model="numpy")
def _forward_step(hw, bias, h_prev, h_next, y_t, t, lengths, relu, zero):
    """h_next: (B, H) holds the input projection on entry and the new state on exit."""
    B, H = h_prev.shape
    for b in range(B):
        if t < lengths[b]:
            for j in range(H):
                a = h_next[b, j] + hw[b, j] + bias[j]
                h = max(a, zero) if relu else tanh(a)
                h_next[b, j] = h
                y_t[b, j] = h
        else:
            for j in range(H):
                h_next[b, j] = h_prev[b, j]
                y_t[b, j] = zero


@njit(cache=True)
def _forward(x, h0, w_ih, w_hh, bias, lengths, relu, y, h):
    """x: (T, B, I); h0: (B, H); w_ih: (H, I); w_hh: (H, H); bias: (H,) = b_ih + b_hh.
    Writes y: (T, B, H), h: (T+1, B, H). The input projection goes straight into h[1:], which each
    step then overwrites with the state: no (T, B, H) scratch."""
    T, B, I = x.shape
    H = h0.shape[1]
    zero = h0[0, 0] * 0
    np.dot(x.reshape(T * B, I), w_ih.T, h.reshape((T + 1) * B, H)[B:])
    h[0] = h0
    hw = np.empty((B, H), dtype=x.dtype)
    for t in range(T):
        np.dot(h[t], w_hh.T, hw)
        _forward_step(hw, bias, h[t], h[t + 1], y[t], t, lengths, relu, zero)


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
        if t < lengths[b]:
            for j in range(H):
                dh_j = dh[b, j] + dy_t[b, j]
                h = h_next[b, j]
                if relu:
                    dpre_t[b, j] = dh_j if h > zero else zero
                else:
                    dpre_t[b, j] = dh_j * (one - h * h)
        else:
            dpre_t[b, :] = zero


@njit(cache=True)
def _backward(dy, dh, x, w_ih, w_hh, lengths, h, relu, dpre, dx, dw_ih, dw_hh, db):
    """Fills dpre: (T, B, H) step by step, then dx, dw_ih, dw_hh, db with single GEMMs.
    dh: (B, H) enters as dhT and leaves as dh0."""
    T, B, I = x.shape
    H = dh.shape[1]
    one = h[0, 0, 0] * 0 + 1
    zero = one - one
    dh_rec = np.empty((B, H), dtype=x.dtype)
    for t in range(T - 1, -1, -1):
        _backward_step(dpre[t], dy[t], dh, h[t + 1], t, lengths, relu, one, zero)
        np.dot(dpre[t], w_hh, dh_rec)
        take_valid_rows(dh, dh_rec, t, lengths)
    dp2 = dpre.reshape(T * B, H)
    np.dot(dp2, w_ih, dx.reshape(T * B, I))
    np.dot(dp2.T, x.reshape(T * B, I), dw_ih)
    np.dot(dp2.T, h[:T].reshape(T * B, H), dw_hh)
    db[:] = dp2.sum(axis=0)


def rnn_backward(dy, dhT, cache):
    """BPTT through :func:`rnn_forward`.

    dy: (T, B, H); dhT: (B, H) or None. Returns dx: (T, B, I), dh0: (B, H), dw_ih: (H, I),
    dw_hh: (H, H), db_ih, db_hh: (H,).
    """
    x, w_ih, w_hh, lengths, h, relu = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dh = np.zeros((B, H), x.dtype) if dhT is None else np.array(dhT, dtype=x.dtype)
    dpre = np.empty((T, B, H), dtype=x.dtype)
    dx = np.empty_like(x)
    dw_ih = np.empty_like(w_ih)
    dw_hh = np.empty_like(w_hh)
    db = np.empty(H, dtype=x.dtype)
    _backward(dy, dh, x, w_ih, w_hh, lengths, h, relu, dpre, dx, dw_ih, dw_hh, db)
    return dx, dh, dw_ih, dw_hh, db, db.copy()
