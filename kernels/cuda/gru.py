"""GRU on the GPU: numba.cuda kernels plus cuBLAS GEMMs through CuPy, forward directly above
backward. The specification is ``kernels/cpu/reference.py``; the contract (arguments, state
tuples, ``grads``) is ``kernels/README.md``; names and steps follow ``kernels/cpu/gru.py``.

Gate order r, z, n (PyTorch's)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)     z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  h' = (1 - z) * n + z * h

``W_hn h + b_hn`` sits inside the reset gate, so the input and recurrent halves have different
gate gradients, which differ only in n (by the factor r). Backward keeps both as (T, B, 3H)
arrays, ``dgates_x`` and ``dgates_h``: the CPU's one array plus a per-step scratch would race
here, since another block may still read step t's ``dgates_h`` in its matmul while this block
writes step t-1's (only a block barrier lies between them). The time loop is one persistent
kernel per pass (``common``). Steps at or past a sequence's length carry the state unchanged and
output zeros.
"""
from numba import cuda

from rnnfast.kernels.cells import cell_options, layer_norm_arrays, layer_norm_grads, state_grads
from rnnfast.kernels.cuda.common import (add_into, array_module, backward_options, contiguous, gate_sum, int32_lengths, launch,
    make_plan, norm_arrays, norm_grad_arrays, norm_input_backward, norm_input_forward, norm_recurrent_param_grads,
    pack_backward_weights, pack_forward_weights, persistent_backward, persistent_forward, sigmoid, tanh)


@cuda.jit(device=True, inline=True)
def forward_point(g_row, hw, b_hh, hn_row, h_prev_row, h_row, j, one):
    """One sequence, one unit j, one step, the cell's equations: g_row (3H) holds W_ih x + b_ih on
    entry and the gates r, z, n on exit; hw: this unit's W_hh h (``gate_sum``); b_hh: (3H,); writes
    hn_row[j] = W_hn h + b_hn and h_row[j] (rows (H,)) and returns h_row[j]."""
    H = h_row.shape[0]
    r_idx, z_idx, n_idx = 0, H, 2 * H
    r = sigmoid(g_row[r_idx + j] + gate_sum(hw, 0) + b_hh[r_idx + j], one)
    z = sigmoid(g_row[z_idx + j] + gate_sum(hw, 1) + b_hh[z_idx + j], one)
    hn = gate_sum(hw, 2) + b_hh[n_idx + j]
    n = tanh(g_row[n_idx + j] + r * hn)
    g_row[r_idx + j] = r
    g_row[z_idx + j] = z
    g_row[n_idx + j] = n
    hn_row[j] = hn
    h = (one - z) * n + z * h_prev_row[j]
    h_row[j] = h
    return h


@cuda.jit(device=True, inline=True)
def _forward_step(y, h, cell, hw, t, b, j, valid, one):
    # cell: gates (T, B, 3H), W_ih x + b_ih on entry; hn (T, B, H); b_hh (3H,). b_ih rides on the
    # projection (added once for all T outside the sequential loop); b_hh is added here, as on the
    # CPU, because b_hn sits inside r * (W_hn h + b_hn) and cannot join the projection.
    gates, hn, b_hh = cell
    H = h.shape[2]
    if valid:
        y[t, b, j] = forward_point(gates[t, b], hw, b_hh, hn[t, b], h[t, b], h[t + 1, b], j, one)
    else:
        h[t + 1, b, j] = h[t, b, j]
        y[t, b, j] = 0
        for gate in range(3):
            gates[t, b, gate * H + j] = 0
        hn[t, b, j] = 0


_forward = persistent_forward(_forward_step)


def gru_forward(x, state, weights, lengths=None, h_mask=None, zone=None, layer_norm=None):
    """The GPU twin of :func:`rnnfast.kernels.cpu.gru.gru_forward`: the same arguments and results, on CuPy arrays."""
    (h0,), (w_ih, w_hh, b_ih, b_hh) = state, weights
    xp = array_module(x)
    x, h0, w_ih, w_hh, b_hh = contiguous(xp, x, h0, w_ih, w_hh, b_hh)
    T, B, I = x.shape
    H = h0.shape[1]
    y = xp.empty((T, B, H), dtype=x.dtype)
    h = xp.empty((T + 1, B, H), dtype=x.dtype)
    gates = x.reshape(T * B, I) @ w_ih.T  # r, z, n
    norms = layer_norm_arrays(layer_norm, T, B, 3, H, x.dtype, xp)
    norm_input_forward(gates, norms)
    gates = (gates + b_ih).reshape(T, B, 3 * H)
    hn = xp.empty((T, B, H), dtype=x.dtype)  # W_hn h + b_hn
    h[0] = h0
    lengths = int32_lengths(xp, lengths, T, B)
    a, mask, zones, saved = cell_options(h, h_mask, zone, (False,), xp)  # backward reads gates, not h'
    plan = make_plan(B, H, 3, H, x.dtype.itemsize)
    launch(_forward, plan, y, h, (gates, hn, b_hh), lengths, pack_forward_weights(xp, w_hh, 3, plan), x.dtype.type(1),
           (a, mask, (h,), zones, saved), norm_arrays(xp, norms, B, plan))
    cache = (x, w_ih, w_hh, lengths, h, gates, hn, a, mask, zones, norms)
    return y, (h[T].copy(),), cache


@cuda.jit(device=True, inline=True)
def _backward_step(dh, dgates_h, cell, dy, t, b, j, valid, one):
    # cell: dgates_x (T, B, 3H), filled; gates (T, B, 3H) = r, z, n; hn (T, B, H); h (T+1, B, H).
    # dx_r, dx_z, dx_n are the input side's pre-activation gate gradients, as on the CPU: through
    # h' = (1 - z) * n + z * h first, then through n's reset gate r.
    dgates_x, gates, hn, h = cell
    H = dh.shape[1]
    r_idx, z_idx, n_idx = 0, H, 2 * H
    if valid:
        r = gates[t, b, r_idx + j]
        z = gates[t, b, z_idx + j]
        n = gates[t, b, n_idx + j]
        dh_j = dh[b, j] + dy[t, b, j]
        dx_n = dh_j * (one - z) * (one - n * n)
        dx_z = dh_j * (h[t, b, j] - n) * z * (one - z)
        dh[b, j] = dh_j * z  # the direct path; the recurrent GEMM adds the rest
        dx_r = dx_n * hn[t, b, j] * r * (one - r)
        dgates_x[t, b, r_idx + j] = dx_r
        dgates_x[t, b, z_idx + j] = dx_z
        dgates_x[t, b, n_idx + j] = dx_n
        dgates_h[t, b, r_idx + j] = dx_r
        dgates_h[t, b, z_idx + j] = dx_z
        dgates_h[t, b, n_idx + j] = dx_n * r
    else:
        for gate in range(3):
            dgates_x[t, b, gate * H + j] = 0
            dgates_h[t, b, gate * H + j] = 0


_backward = persistent_backward(_backward_step)


def gru_backward(dy, dstate, cache, grads=None):
    """The GPU twin of :func:`rnnfast.kernels.cpu.gru.gru_backward`: the same arguments and results, on CuPy arrays."""
    x, w_ih, w_hh, lengths, h, gates, hn, a, mask, zones, norms = cache
    xp = array_module(x)
    T, B, I = x.shape
    H = h.shape[2]
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    (dh,) = state_grads(dstate, (B, H), x.dtype, xp)
    dgates_x = xp.empty((T, B, 3 * H), dtype=x.dtype)
    dgates_h = xp.empty((T, B, 3 * H), dtype=x.dtype)
    dy_step, opts = backward_options(xp, dy, mask, (dh,), zones)
    plan = make_plan(B, H, 1, 3 * H, x.dtype.itemsize)
    norm = norm_grad_arrays(xp, norms, B, H, plan)
    launch(_backward, plan, dh, dgates_h, (dgates_x, gates, hn, h), dy_step, lengths,
           pack_backward_weights(xp, w_hh, plan), x.dtype.type(1), opts, norm)
    # dx, dW_ih, db_ih from the input side's gate gradients, dW_hh, db_hh from the recurrent side's
    # (through the norms when they are on)
    dgx2 = dgates_x.reshape(T * B, 3 * H)
    dgh2 = dgates_h.reshape(T * B, 3 * H)
    dxw, dnorm_ih = norm_input_backward(dgx2, norms)
    normed = norms[1][1].shape[0] > 0
    dx = (dxw @ w_ih).reshape(T, B, I)
    dw_ih = dxw.T @ x.reshape(T * B, I)
    dw_hh = (norm[3].reshape(T * B, 3 * H) if normed else dgh2).T @ a[:T].reshape(T * B, H)
    dweights = add_into(grads, (dw_ih, dw_hh, dgx2.sum(axis=0), dgh2.sum(axis=0)))
    if not normed:
        return dx, (dh,), dweights
    return dx, (dh,), dweights + layer_norm_grads(grads, (*dnorm_ih, *norm_recurrent_param_grads(dgh2, norms)))
