"""LSTM on the GPU: numba.cuda kernels plus cuBLAS GEMMs through CuPy, forward above backward.

Gate order i, f, g, o (PyTorch's)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     f = sigmoid(W_if x + ... )
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)        o = sigmoid(W_io x + ... )
    c' = f * c + i * g                             h' = o * tanh(c')

The input projection for all T steps is one GEMM before the loop; the loop is one persistent
kernel (see ``common``): per step each block multiplies ``h`` by its slice of ``W_hh`` and applies
the fused pointwise math to its units. Backward mirrors it, then ``dx``, ``dw_ih``, ``dw_hh`` are
single GEMMs. Steps at or past a sequence's length carry the state unchanged and output zeros.
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
    sigmoid,
    tanh,
)


@cuda.jit(device=True, inline=True)
def _forward_point(gates_t, hw_i, hw_f, hw_g, hw_o, c_prev, h_prev, c_next, h_next, y_t, b, j, valid, one):
    H = c_prev.shape[1]
    i_idx, f_idx, g_idx, o_idx = 0, H, 2 * H, 3 * H
    if valid:
        i = sigmoid(gates_t[b, i_idx + j] + hw_i, one)
        f = sigmoid(gates_t[b, f_idx + j] + hw_f, one)
        g = tanh(gates_t[b, g_idx + j] + hw_g)
        o = sigmoid(gates_t[b, o_idx + j] + hw_o, one)
        gates_t[b, i_idx + j] = i
        gates_t[b, f_idx + j] = f
        gates_t[b, g_idx + j] = g
        gates_t[b, o_idx + j] = o
        c = f * c_prev[b, j] + i * g
        c_next[b, j] = c
        h = o * tanh(c)
        h_next[b, j] = h
        y_t[b, j] = h
    else:
        c_next[b, j] = c_prev[b, j]
        h_next[b, j] = h_prev[b, j]
        y_t[b, j] = 0
        gates_t[b, i_idx + j] = 0
        gates_t[b, f_idx + j] = 0
        gates_t[b, g_idx + j] = 0
        gates_t[b, o_idx + j] = 0


@cuda.jit
def _forward(gates, w, h, c, y, lengths, units, n, rows, kc, ks, w_in_smem, one):
    """gates: (T, B, 4H) input projection plus both biases in, post-activation gates out;
    w: packed W_hh (see ``pack_forward_weights``); h, c: (T+1, B, H) with h[0], c[0] set;
    y: (T, B, H); lengths: (B,) int32."""
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
                    hw_i = partial_sum(smem, bb, u, rows_now, H, n, kc, ks, w_in_smem)
                    hw_f = partial_sum(smem, bb, units + u, rows_now, H, n, kc, ks, w_in_smem)
                    hw_g = partial_sum(smem, bb, 2 * units + u, rows_now, H, n, kc, ks, w_in_smem)
                    hw_o = partial_sum(smem, bb, 3 * units + u, rows_now, H, n, kc, ks, w_in_smem)
                    _forward_point(gates[t], hw_i, hw_f, hw_g, hw_o, c[t], h[t], c[t + 1], h[t + 1], y[t],
                                   b, j, t < lengths[b], one)
        grid.sync()


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """One LSTM layer, one direction, over a whole sequence.

    x: (T, B, I); h0, c0: (B, H); w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,);
    lengths: (B,) ints in 1..T or None. Returns y: (T, B, H), hT, cT: (B, H) and the cache.
    """
    xp = array_module(x)
    x, h0, c0, w_ih, w_hh = contiguous(xp, x, h0, c0, w_ih, w_hh)
    T, B, I = x.shape
    H = h0.shape[1]
    gates = (x.reshape(T * B, I) @ w_ih.T + (b_ih + b_hh)).reshape(T, B, 4 * H)
    h = xp.empty((T + 1, B, H), dtype=x.dtype)
    c = xp.empty((T + 1, B, H), dtype=x.dtype)
    h[0] = h0
    c[0] = c0
    y = xp.empty((T, B, H), dtype=x.dtype)
    lengths = int32_lengths(xp, lengths, T, B)
    plan = make_plan(B, H, 4, H, x.dtype.itemsize)
    w = pack_forward_weights(xp, w_hh, 4, plan)
    launch(_forward, plan, gates, w, h, c, y, lengths,
           plan.units, plan.n, plan.rows, plan.kc, plan.ks, plan.w_in_smem, x.dtype.type(1))
    cache = (x, w_ih, w_hh, lengths, h, c, gates)
    return y, h[T].copy(), c[T].copy(), cache


@cuda.jit(device=True, inline=True)
def _backward_point(dgates_t, dy_t, dh, dc, gates_t, c_prev, c_next, b, j, valid, one):
    H = dh.shape[1]
    i_idx, f_idx, g_idx, o_idx = 0, H, 2 * H, 3 * H
    if valid:
        i = gates_t[b, i_idx + j]
        f = gates_t[b, f_idx + j]
        g = gates_t[b, g_idx + j]
        o = gates_t[b, o_idx + j]
        dh_j = dh[b, j] + dy_t[b, j]
        tanh_c = tanh(c_next[b, j])
        dc_j = dc[b, j] + dh_j * o * (one - tanh_c * tanh_c)
        di = dc_j * g
        df = dc_j * c_prev[b, j]
        dg = dc_j * i
        do = dh_j * tanh_c
        dc[b, j] = dc_j * f
        dgates_t[b, i_idx + j] = di * i * (one - i)
        dgates_t[b, f_idx + j] = df * f * (one - f)
        dgates_t[b, g_idx + j] = dg * (one - g * g)
        dgates_t[b, o_idx + j] = do * o * (one - o)
    else:
        dgates_t[b, i_idx + j] = 0
        dgates_t[b, f_idx + j] = 0
        dgates_t[b, g_idx + j] = 0
        dgates_t[b, o_idx + j] = 0


@cuda.jit
def _backward(dy, dh, dc, gates, c, w, lengths, dgates, units, n, rows, kc, ks, w_in_smem, one):
    """Fills dgates: (T, B, 4H) step by step. dy: (T, B, H); dh, dc: (B, H) enter as dhT, dcT and
    leave as dh0, dc0; gates: (T, B, 4H) post-activation; c: (T+1, B, H); w: packed W_hh (see
    ``pack_backward_weights``); lengths: (B,) int32."""
    smem = cuda.shared.array(0, dh.dtype)
    T, B, H = dy.shape
    load_weights(smem, w, 4 * H * n, w_in_smem)
    grid = cuda.cg.this_grid()
    u0 = cuda.blockIdx.x * units
    for t in range(T - 1, -1, -1):
        for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
            b = idx // units
            j = u0 + idx - b * units
            if j < H:
                _backward_point(dgates[t], dy[t], dh, dc, gates[t], c[t], c[t + 1], b, j, t < lengths[b], one)
        grid.sync()
        for b0 in range(0, B, rows):
            rows_now = min(rows, B - b0)
            block_matmul(dgates[t], b0, rows_now, 4 * H, w, n, smem, kc, ks, w_in_smem)
            for idx in range(cuda.threadIdx.x, rows_now * units, cuda.blockDim.x):
                bb = idx // units
                u = idx - bb * units
                j = u0 + u
                b = b0 + bb
                if j < H and t < lengths[b]:
                    dh[b, j] = partial_sum(smem, bb, u, rows_now, 4 * H, n, kc, ks, w_in_smem)
        # The next step's pointwise threads read dh written above by other threads of the block.
        cuda.syncthreads()


def lstm_backward(dy, dhT, dcT, cache, grads=None):
    """BPTT through :func:`lstm_forward`.

    dy: (T, B, H); dhT, dcT: (B, H) or None; grads: None, or
    (dw_ih, dw_hh, db_ih, db_hh) to add into, as on the CPU. Returns dx: (T, B, I), dh0, dc0: (B, H),
    dw_ih: (4H, I), dw_hh: (4H, H), db_ih, db_hh: (4H,).
    """
    x, w_ih, w_hh, lengths, h, c, gates = cache
    xp = array_module(x)
    T, B, I = x.shape
    H = h.shape[2]
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    dh = xp.zeros((B, H), x.dtype) if dhT is None else xp.array(dhT, dtype=x.dtype)
    dc = xp.zeros((B, H), x.dtype) if dcT is None else xp.array(dcT, dtype=x.dtype)
    dgates = xp.empty((T, B, 4 * H), dtype=x.dtype)
    plan = make_plan(B, H, 1, 4 * H, x.dtype.itemsize)
    w = pack_backward_weights(xp, w_hh, plan)
    launch(_backward, plan, dy, dh, dc, gates, c, w, lengths, dgates,
           plan.units, plan.n, plan.rows, plan.kc, plan.ks, plan.w_in_smem, x.dtype.type(1))
    dg2 = dgates.reshape(T * B, 4 * H)
    dx = (dg2 @ w_ih).reshape(T, B, I)
    dw_ih = dg2.T @ x.reshape(T * B, I)
    dw_hh = dg2.T @ h[:T].reshape(T * B, H)
    db = dg2.sum(axis=0)
    return (dx, dh, dc, *add_into(grads, (dw_ih, dw_hh, db, db.copy())))
