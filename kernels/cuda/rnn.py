"""Elman RNN on the GPU: numba.cuda kernels plus cuBLAS GEMMs through CuPy, forward above backward.

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu

The input projection for all T steps is one GEMM before the loop; the loop is one persistent
kernel per pass (see ``common``). Steps at or past a sequence's length carry the state unchanged
and output zeros.
"""
from numba import cuda

from rnnfast.kernels.cuda.common import (
    add_into,
    array_module,
    block_matmul,
    contiguous,
    int32_lengths,
    launch,
    load_weights,
    make_plan,
    pack_backward_weights,
    pack_forward_weights,
    partial_sum,
    tanh,
)

NONLINEARITIES = {"tanh": 0, "relu": 1}


@cuda.jit(device=True, inline=True)
def _forward_point(pre_t, hw, h_prev, h_next, y_t, b, j, valid, relu, zero):
    if valid:
        a = pre_t[b, j] + hw
        h = max(a, zero) if relu else tanh(a)
        h_next[b, j] = h
        y_t[b, j] = h
    else:
        h_next[b, j] = h_prev[b, j]
        y_t[b, j] = 0


@cuda.jit
def _forward(pre, w, h, y, lengths, relu, units, n, rows, kc, ks, w_in_smem, zero):
    """pre: (T, B, H) input projection plus both biases; w: packed W_hh (see
    ``pack_forward_weights``); h: (T+1, B, H) with h[0] set; y: (T, B, H); lengths: (B,) int32."""
    smem = cuda.shared.array(0, h.dtype)
    T, B, H = y.shape
    load_weights(smem, w, H * n, w_in_smem)
    grid = cuda.cg.this_grid()
    u0 = cuda.blockIdx.x * units
    for t in range(T):
        for b0 in range(0, B, rows):
            rows_now = min(rows, B - b0)
            block_matmul(h[t], b0, rows_now, H, w, n, smem, kc, ks, w_in_smem)
            for idx in range(cuda.threadIdx.x, rows_now * units, cuda.blockDim.x):
                bb = idx // units
                u = idx - bb * units
                j = u0 + u
                if j < H:
                    b = b0 + bb
                    hw = partial_sum(smem, bb, u, rows_now, H, n, kc, ks, w_in_smem)
                    _forward_point(pre[t], hw, h[t], h[t + 1], y[t], b, j, t < lengths[b], relu, zero)
        grid.sync()


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None, nonlinearity="tanh"):
    """One RNN layer, one direction, over a whole sequence.

    x: (T, B, I); h0: (B, H); w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,);
    lengths: (B,) ints in 1..T or None. Returns y: (T, B, H), hT: (B, H) and the cache.
    """
    xp = array_module(x)
    x, h0, w_ih, w_hh = contiguous(xp, x, h0, w_ih, w_hh)
    relu = NONLINEARITIES[nonlinearity]
    T, B, I = x.shape
    H = h0.shape[1]
    pre = (x.reshape(T * B, I) @ w_ih.T + (b_ih + b_hh)).reshape(T, B, H)
    h = xp.empty((T + 1, B, H), dtype=x.dtype)
    h[0] = h0
    y = xp.empty((T, B, H), dtype=x.dtype)
    lengths = int32_lengths(xp, lengths, T, B)
    plan = make_plan(B, H, 1, H, x.dtype.itemsize)
    w = pack_forward_weights(xp, w_hh, 1, plan)
    launch(_forward, plan, pre, w, h, y, lengths, relu,
           plan.units, plan.n, plan.rows, plan.kc, plan.ks, plan.w_in_smem, x.dtype.type(0))
    cache = (x, w_ih, w_hh, lengths, h, relu)
    return y, h[T].copy(), cache


@cuda.jit(device=True, inline=True)
def _backward_point(dpre_t, dy_t, dh, h_next, b, j, valid, relu, one, zero):
    if valid:
        dh_j = dh[b, j] + dy_t[b, j]
        h = h_next[b, j]
        if relu:
            dpre_t[b, j] = dh_j if h > zero else zero
        else:
            dpre_t[b, j] = dh_j * (one - h * h)
    else:
        dpre_t[b, j] = 0


@cuda.jit
def _backward(dy, dh, h, w, lengths, dpre, relu, units, n, rows, kc, ks, w_in_smem, one, zero):
    """Fills dpre: (T, B, H) step by step. dy: (T, B, H); dh: (B, H) enters as dhT and leaves as
    dh0; h: (T+1, B, H); w: packed W_hh (see ``pack_backward_weights``); lengths: (B,) int32."""
    smem = cuda.shared.array(0, dh.dtype)
    T, B, H = dy.shape
    load_weights(smem, w, H * n, w_in_smem)
    grid = cuda.cg.this_grid()
    u0 = cuda.blockIdx.x * units
    for t in range(T - 1, -1, -1):
        for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
            b = idx // units
            j = u0 + idx - b * units
            if j < H:
                _backward_point(dpre[t], dy[t], dh, h[t + 1], b, j, t < lengths[b], relu, one, zero)
        grid.sync()
        for b0 in range(0, B, rows):
            rows_now = min(rows, B - b0)
            block_matmul(dpre[t], b0, rows_now, H, w, n, smem, kc, ks, w_in_smem)
            for idx in range(cuda.threadIdx.x, rows_now * units, cuda.blockDim.x):
                bb = idx // units
                u = idx - bb * units
                j = u0 + u
                b = b0 + bb
                if j < H and t < lengths[b]:
                    dh[b, j] = partial_sum(smem, bb, u, rows_now, H, n, kc, ks, w_in_smem)
        # The next step's pointwise threads read dh written above by other threads of the block.
        cuda.syncthreads()


def rnn_backward(dy, dhT, cache, grads=None):
    """BPTT through :func:`rnn_forward`.

    dy: (T, B, H); dhT: (B, H) or None; grads: None, or
    (dw_ih, dw_hh, db_ih, db_hh) to add into, as on the CPU. Returns dx: (T, B, I), dh0: (B, H), dw_ih: (H, I),
    dw_hh: (H, H), db_ih, db_hh: (H,).
    """
    x, w_ih, w_hh, lengths, h, relu = cache
    xp = array_module(x)
    T, B, I = x.shape
    H = h.shape[2]
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    dh = xp.zeros((B, H), x.dtype) if dhT is None else xp.array(dhT, dtype=x.dtype)
    dpre = xp.empty((T, B, H), dtype=x.dtype)
    plan = make_plan(B, H, 1, H, x.dtype.itemsize)
    w = pack_backward_weights(xp, w_hh, plan)
    launch(_backward, plan, dy, dh, h, w, lengths, dpre, relu,
           plan.units, plan.n, plan.rows, plan.kc, plan.ks, plan.w_in_smem, x.dtype.type(1), x.dtype.type(0))
    dp2 = dpre.reshape(T * B, H)
    dx = (dp2 @ w_ih).reshape(T, B, I)
    dw_ih = dp2.T @ x.reshape(T * B, I)
    dw_hh = dp2.T @ h[:T].reshape(T * B, H)
    db = dp2.sum(axis=0)
    return (dx, dh, *add_into(grads, (dw_ih, dw_hh, db, db.copy())))
