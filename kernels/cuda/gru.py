"""GRU on the GPU: numba.cuda kernels plus cuBLAS GEMMs through CuPy, forward above backward.

Gate order r, z, n (PyTorch's)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)     z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  h' = (1 - z) * n + z * h

``W_hn h + b_hn`` sits inside the reset gate, so ``b_hh`` stays apart from the input projection
and goes to the kernel, and backward keeps both gate gradients (``dgates_x`` and ``dgates_h``),
which differ only in n. The time loop is one persistent kernel per pass (see ``common``).
Steps at or past a sequence's length carry the state unchanged and output zeros.
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
def _forward_point(gates_t, hn_t, hw_r, hw_z, hw_n, b_hh, h_prev, h_next, y_t, b, j, valid, one):
    H = h_prev.shape[1]
    r_idx, z_idx, n_idx = 0, H, 2 * H
    if valid:
        r = sigmoid(gates_t[b, r_idx + j] + hw_r + b_hh[r_idx + j], one)
        z = sigmoid(gates_t[b, z_idx + j] + hw_z + b_hh[z_idx + j], one)
        hn = hw_n + b_hh[n_idx + j]
        n = tanh(gates_t[b, n_idx + j] + r * hn)
        gates_t[b, r_idx + j] = r
        gates_t[b, z_idx + j] = z
        gates_t[b, n_idx + j] = n
        hn_t[b, j] = hn
        h = (one - z) * n + z * h_prev[b, j]
        h_next[b, j] = h
        y_t[b, j] = h
    else:
        h_next[b, j] = h_prev[b, j]
        y_t[b, j] = 0
        gates_t[b, r_idx + j] = 0
        gates_t[b, z_idx + j] = 0
        gates_t[b, n_idx + j] = 0
        hn_t[b, j] = 0


@cuda.jit
def _forward(gates, hn, w, b_hh, h, y, lengths, units, n, rows, kc, ks, w_in_smem, one):
    """gates: (T, B, 3H) input projection plus b_ih in, r, z, n out; hn: (T, B, H) gets
    W_hn h + b_hn; w: packed W_hh (see ``pack_forward_weights``); b_hh: (3H,);
    h: (T+1, B, H) with h[0] set; y: (T, B, H); lengths: (B,) int32."""
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
                    hw_r = partial_sum(smem, bb, u, rows_now, H, n, kc, ks, w_in_smem)
                    hw_z = partial_sum(smem, bb, units + u, rows_now, H, n, kc, ks, w_in_smem)
                    hw_n = partial_sum(smem, bb, 2 * units + u, rows_now, H, n, kc, ks, w_in_smem)
                    _forward_point(gates[t], hn[t], hw_r, hw_z, hw_n, b_hh, h[t], h[t + 1], y[t],
                                   b, j, t < lengths[b], one)
        grid.sync()


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """One GRU layer, one direction, over a whole sequence.

    x: (T, B, I); h0: (B, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,);
    lengths: (B,) ints in 1..T or None. Returns y: (T, B, H), hT: (B, H) and the cache.
    """
    xp = array_module(x)
    x, h0, w_ih, w_hh, b_hh = contiguous(xp, x, h0, w_ih, w_hh, b_hh)
    T, B, I = x.shape
    H = h0.shape[1]
    gates = (x.reshape(T * B, I) @ w_ih.T + b_ih).reshape(T, B, 3 * H)
    hn = xp.empty((T, B, H), dtype=x.dtype)
    h = xp.empty((T + 1, B, H), dtype=x.dtype)
    h[0] = h0
    y = xp.empty((T, B, H), dtype=x.dtype)
    lengths = int32_lengths(xp, lengths, T, B)
    plan = make_plan(B, H, 3, H, x.dtype.itemsize)
    w = pack_forward_weights(xp, w_hh, 3, plan)
    launch(_forward, plan, gates, hn, w, b_hh, h, y, lengths,
           plan.units, plan.n, plan.rows, plan.kc, plan.ks, plan.w_in_smem, x.dtype.type(1))
    cache = (x, w_ih, w_hh, lengths, h, gates, hn)
    return y, h[T].copy(), cache


@cuda.jit(device=True, inline=True)
def _backward_point(dgates_x_t, dgates_h_t, dy_t, dh, gates_t, hn_t, h_prev, b, j, valid, one):
    H = dh.shape[1]
    r_idx, z_idx, n_idx = 0, H, 2 * H
    if valid:
        r = gates_t[b, r_idx + j]
        z = gates_t[b, z_idx + j]
        n = gates_t[b, n_idx + j]
        dh_j = dh[b, j] + dy_t[b, j]
        dn = dh_j * (one - z) * (one - n * n)
        dz = dh_j * (h_prev[b, j] - n) * z * (one - z)
        dr = dn * hn_t[b, j] * r * (one - r)
        dgates_x_t[b, r_idx + j] = dr
        dgates_x_t[b, z_idx + j] = dz
        dgates_x_t[b, n_idx + j] = dn
        dgates_h_t[b, r_idx + j] = dr
        dgates_h_t[b, z_idx + j] = dz
        dgates_h_t[b, n_idx + j] = dn * r
        dh[b, j] = dh_j * z  # the direct path; the recurrent matmul adds the rest
    else:
        dgates_x_t[b, r_idx + j] = 0
        dgates_x_t[b, z_idx + j] = 0
        dgates_x_t[b, n_idx + j] = 0
        dgates_h_t[b, r_idx + j] = 0
        dgates_h_t[b, z_idx + j] = 0
        dgates_h_t[b, n_idx + j] = 0


@cuda.jit
def _backward(dy, dh, gates, hn, h, w, lengths, dgates_x, dgates_h, units, n, rows, kc, ks, w_in_smem, one):
    """Fills dgates_x, dgates_h: (T, B, 3H) step by step. dy: (T, B, H); dh: (B, H) enters as dhT
    and leaves as dh0; gates: (T, B, 3H) = r, z, n; hn: (T, B, H); h: (T+1, B, H); w: packed W_hh
    (see ``pack_backward_weights``); lengths: (B,) int32."""
    smem = cuda.shared.array(0, dh.dtype)
    T, B, H = dy.shape
    load_weights(smem, w, 3 * H * n, w_in_smem)
    grid = cuda.cg.this_grid()
    u0 = cuda.blockIdx.x * units
    for t in range(T - 1, -1, -1):
        for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
            b = idx // units
            j = u0 + idx - b * units
            if j < H:
                _backward_point(dgates_x[t], dgates_h[t], dy[t], dh, gates[t], hn[t], h[t], b, j,
                                t < lengths[b], one)
        grid.sync()
        for b0 in range(0, B, rows):
            rows_now = min(rows, B - b0)
            block_matmul(dgates_h[t], b0, rows_now, 3 * H, w, n, smem, kc, ks, w_in_smem)
            for idx in range(cuda.threadIdx.x, rows_now * units, cuda.blockDim.x):
                bb = idx // units
                u = idx - bb * units
                j = u0 + u
                if j < H:
                    # Rows past a length have zero gate gradients, so their sum is zero.
                    dh[b0 + bb, j] += partial_sum(smem, bb, u, rows_now, 3 * H, n, kc, ks, w_in_smem)
        # The next step's pointwise threads read dh written above by other threads of the block.
        cuda.syncthreads()


def gru_backward(dy, dhT, cache, grads=None):
    """BPTT through :func:`gru_forward`.

    dy: (T, B, H); dhT: (B, H) or None; grads: None, or
    (dw_ih, dw_hh, db_ih, db_hh) to add into, as on the CPU. Returns dx: (T, B, I), dh0: (B, H), dw_ih: (3H, I),
    dw_hh: (3H, H), db_ih, db_hh: (3H,).
    """
    x, w_ih, w_hh, lengths, h, gates, hn = cache
    xp = array_module(x)
    T, B, I = x.shape
    H = h.shape[2]
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    dh = xp.zeros((B, H), x.dtype) if dhT is None else xp.array(dhT, dtype=x.dtype)
    dgates_x = xp.empty((T, B, 3 * H), dtype=x.dtype)
    dgates_h = xp.empty((T, B, 3 * H), dtype=x.dtype)
    plan = make_plan(B, H, 1, 3 * H, x.dtype.itemsize)
    w = pack_backward_weights(xp, w_hh, plan)
    launch(_backward, plan, dy, dh, gates, hn, h, w, lengths, dgates_x, dgates_h,
           plan.units, plan.n, plan.rows, plan.kc, plan.ks, plan.w_in_smem, x.dtype.type(1))
    dgx2 = dgates_x.reshape(T * B, 3 * H)
    dgh2 = dgates_h.reshape(T * B, 3 * H)
    dx = (dgx2 @ w_ih).reshape(T, B, I)
    dw_ih = dgx2.T @ x.reshape(T * B, I)
    dw_hh = dgh2.T @ h[:T].reshape(T * B, H)
    return (dx, dh, *add_into(grads, (dw_ih, dw_hh, dgx2.sum(axis=0), dgh2.sum(axis=0))))
