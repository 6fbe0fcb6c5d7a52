"""LSTM on the GPU: numba.cuda kernels plus cuBLAS GEMMs through CuPy, forward directly above
backward. The specification is ``kernels/cpu/reference.py``; the contract (arguments, state
tuples, ``grads``) is ``kernels/README.md``; names and steps follow ``kernels/cpu/lstm.py``.

Gate order i, f, g, o (PyTorch's)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     f = sigmoid(W_if x + ... )
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)        o = sigmoid(W_io x + ... )
    c' = f * c + i * g                             h' = o * tanh(c')

The input projection for all T steps is one GEMM before the loop; the loop is one persistent
kernel (``common.persistent_forward``): per step each block multiplies ``h`` by its slice of
``W_hh`` and applies :func:`_forward_step` to its units. Backward mirrors it, then ``dx``,
``dw_ih``, ``dw_hh`` are single GEMMs. Steps at or past a sequence's length carry the state
unchanged and output zeros.
"""
from numba import cuda

from rnnfast.kernels.cells import cell_options, layer_norm_arrays, layer_norm_grads, state_grads
from rnnfast.kernels.cuda.common import (add_into, array_module, backward_options, contiguous, gate_sum, int32_lengths, launch,
    make_plan, norm_arrays, norm_grad_arrays, norm_input_backward, norm_input_forward, norm_recurrent_param_grads,
    pack_backward_weights, pack_forward_weights, persistent_backward, persistent_forward, sigmoid, tanh)


@cuda.jit(device=True, inline=True)
def forward_point(g_row, hw, c_prev_row, c_row, h_row, j, one):
    """One sequence, one unit j, one step, the cell's equations: g_row (4H) holds W_ih x + b_ih + b_hh
    on entry and the gates i, f, g, o on exit; hw: this unit's W_hh h (``gate_sum``); writes c_row[j]
    and h_row[j] (rows (H,)) and returns h_row[j]."""
    c, o = cell_point(g_row, hw, c_prev_row, c_row, j, one)
    h = o * tanh(c)
    h_row[j] = h
    return h


@cuda.jit(device=True, inline=True)
def cell_point(g_row, hw, c_prev_row, c_row, j, one):
    """:func:`forward_point` up to c': the gates and c_row[j]; returns (c', o)."""
    H = c_row.shape[0]
    i_idx, f_idx, g_idx, o_idx = 0, H, 2 * H, 3 * H
    i = sigmoid(g_row[i_idx + j] + gate_sum(hw, 0), one)
    f = sigmoid(g_row[f_idx + j] + gate_sum(hw, 1), one)
    g = tanh(g_row[g_idx + j] + gate_sum(hw, 2))
    o = sigmoid(g_row[o_idx + j] + gate_sum(hw, 3), one)
    g_row[i_idx + j] = i
    g_row[f_idx + j] = f
    g_row[g_idx + j] = g
    g_row[o_idx + j] = o
    c = f * c_prev_row[j] + i * g
    c_row[j] = c
    return c, o


@cuda.jit(device=True, inline=True)
def _forward_step(y, h, cell, hw, t, b, j, valid, one):
    # cell: c (T+1, B, H) with c[0] set; gates (T, B, 4H), the input projection plus both biases on
    # entry (the bias rides on the projection, added once for all T outside the sequential loop,
    # so the kernel reads no bias; the CPU adds it here instead, where its GEMM leaves the gates).
    # Under layer norm (hat_c not empty) c' waits in hat_c[t] for its row's statistics and
    # _forward_finish writes h.
    c, gates, hat_c, rstd_c, gain_c, bias_c = cell
    H = h.shape[2]
    if valid:
        if hat_c.shape[0] > 0:
            hat_c[t, b, j] = cell_point(gates[t, b], hw, c[t, b], c[t + 1, b], j, one)[0]
        else:
            y[t, b, j] = forward_point(gates[t, b], hw, c[t, b], c[t + 1, b], h[t + 1, b], j, one)
    else:
        c[t + 1, b, j] = c[t, b, j]
        h[t + 1, b, j] = h[t, b, j]
        y[t, b, j] = 0
        for gate in range(4):
            gates[t, b, gate * H + j] = 0
        if hat_c.shape[0] > 0:
            hat_c[t, b, j] = c[t, b, j]  # finite, for the row sums; never read back


@cuda.jit(device=True, inline=True)
def _forward_finish(y, h, cell, t, b, j, valid, mean, rstd, one):
    # h' = o * tanh(LN_c(c')), once the kernel has c' rows' mean and rstd
    c, gates, hat_c, rstd_c, gain_c, bias_c = cell
    H = h.shape[2]
    if valid:
        x = (hat_c[t, b, j] - mean) * rstd
        hat_c[t, b, j] = x
        if j == 0:
            rstd_c[t, b] = rstd
        h_j = gates[t, b, 3 * H + j] * tanh(gain_c[j] * x + bias_c[j])
        h[t + 1, b, j] = h_j
        y[t, b, j] = h_j


_forward = persistent_forward(_forward_step, _forward_finish)


def lstm_forward(x, state, weights, lengths=None, h_mask=None, zone=None, layer_norm=None):
    """The GPU twin of :func:`rnnfast.kernels.cpu.lstm.lstm_forward`: the same arguments and results, on CuPy arrays."""
    (h0, c0), (w_ih, w_hh, b_ih, b_hh) = state, weights
    xp = array_module(x)
    x, h0, c0, w_ih, w_hh = contiguous(xp, x, h0, c0, w_ih, w_hh)
    T, B, I = x.shape
    H = h0.shape[1]
    y = xp.empty((T, B, H), dtype=x.dtype)
    h = xp.empty((T + 1, B, H), dtype=x.dtype)
    c = xp.empty((T + 1, B, H), dtype=x.dtype)
    gates = x.reshape(T * B, I) @ w_ih.T  # post-activation i, f, g, o
    norms = params, hats, rstds, consts = layer_norm_arrays(layer_norm, T, B, 4, H, x.dtype, xp)
    norm_input_forward(gates, norms)
    gates = (gates + (b_ih + b_hh)).reshape(T, B, 4 * H)
    h[0] = h0
    c[0] = c0
    lengths = int32_lengths(xp, lengths, T, B)
    a, mask, zones, saved = cell_options(h, h_mask, zone, (False, True), xp)
    plan = make_plan(B, H, 4, H, x.dtype.itemsize)
    launch(_forward, plan, y, h, (c, gates, hats[2], rstds[2], params[4], params[5]), lengths,
           pack_forward_weights(xp, w_hh, 4, plan), x.dtype.type(1), (a, mask, (h, c), zones, saved),
           norm_arrays(xp, norms, B, plan))
    cache = (x, w_ih, w_hh, lengths, h, c, gates, a, mask, zones, saved[1] if saved[1].shape[0] else c, norms)
    return y, (h[T].copy(), c[T].copy()), cache


@cuda.jit(device=True, inline=True)
def _backward_step(dh, dgates, cell, dy, t, b, j, valid, one):
    # cell: dc (B, H), entering as dcT and leaving as dc0; gates (T, B, 4H) post-activation; c (T+1,
    # B, H); c_new: c, or under zoneout the cell's own c' before the mixing. Fills dgates[t] with the
    # pre-activation gate gradients d_i, d_f, d_g, d_o (the same meaning as on the CPU): first
    # through h' = o * tanh(c') into dc, then through c' = f * c + i * g.
    # Under layer norm (hat_c not empty) tanh reads LN_c(c'); _backward_pre_step has left the
    # gradient of its output in dcn and the kernel the row's two means in row_stats.
    dc, gates, c, c_new, hat_c, rstd_c, gain_c, bias_c, dcn, dgain_c, dbias_c, row_stats = cell
    H = dh.shape[1]
    i_idx, f_idx, g_idx, o_idx = 0, H, 2 * H, 3 * H
    if valid:
        i = gates[t, b, i_idx + j]
        f = gates[t, b, f_idx + j]
        g = gates[t, b, g_idx + j]
        o = gates[t, b, o_idx + j]
        dh_j = dh[b, j] + dy[t, b, j]
        if hat_c.shape[0] > 0:
            x = hat_c[t, b, j]
            tanh_c = tanh(gain_c[j] * x + bias_c[j])
            d_norm = dcn[b, j]
            dgain_c[b, j] += d_norm * x
            dbias_c[b, j] += d_norm
            dc_j = dc[b, j] + rstd_c[t, b] * (gain_c[j] * d_norm - row_stats[b, 0] - x * row_stats[b, 1])
        else:
            tanh_c = tanh(c_new[t + 1, b, j])
            dc_j = dc[b, j] + dh_j * o * (one - tanh_c * tanh_c)
        dgates[t, b, o_idx + j] = dh_j * tanh_c * o * (one - o)
        dh[b, j] = 0  # used up; the recurrent GEMM adds the gradient for the step before
        dgates[t, b, i_idx + j] = dc_j * g * i * (one - i)
        dgates[t, b, f_idx + j] = dc_j * c[t, b, j] * f * (one - f)
        dgates[t, b, g_idx + j] = dc_j * i * (one - g * g)
        dc[b, j] = dc_j * f
    else:
        for gate in range(4):
            dgates[t, b, gate * H + j] = 0


@cuda.jit(device=True, inline=True)
def _backward_pre_step(dh, cell, dy, t, b, j, valid, dh_scale, one):
    # the gradient of LN_c(c') where tanh reads it, from the dh that zoneout will leave
    dc, gates, c, c_new, hat_c, rstd_c, gain_c, bias_c, dcn, dgain_c, dbias_c, row_stats = cell
    H = dh.shape[1]
    if valid:
        o = gates[t, b, 3 * H + j]
        tanh_c = tanh(gain_c[j] * hat_c[t, b, j] + bias_c[j])
        dcn[b, j] = (dh[b, j] * dh_scale + dy[t, b, j]) * o * (one - tanh_c * tanh_c)
    else:
        dcn[b, j] = 0


_backward = persistent_backward(_backward_step, _backward_pre_step)


def lstm_backward(dy, dstate, cache, grads=None):
    """The GPU twin of :func:`rnnfast.kernels.cpu.lstm.lstm_backward`: same arguments and results, on CuPy arrays."""
    x, w_ih, w_hh, lengths, h, c, gates, a, mask, zones, c_new, norms = cache
    params, hats, rstds, consts = norms
    xp = array_module(x)
    T, B, I = x.shape
    H = h.shape[2]
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    dh, dc = state_grads(dstate, (B, H), x.dtype, xp)
    dgates = xp.empty((T, B, 4 * H), dtype=x.dtype)
    dy_step, opts = backward_options(xp, dy, mask, (dh, dc), zones)
    plan = make_plan(B, H, 1, 4 * H, x.dtype.itemsize)
    norm = norm_grad_arrays(xp, norms, B, H, plan)
    dnorm_c = tuple(xp.zeros((B, H), x.dtype) if hats[2].shape[0] else rstds[2] for _ in range(2))
    launch(_backward, plan, dh, dgates, (dc, gates, c, c_new, hats[2], rstds[2], params[4], params[5], norm[9],
                                         *dnorm_c, norm[5]),
           dy_step, lengths, pack_backward_weights(xp, w_hh, plan), x.dtype.type(1), opts, norm)
    # then dx, dW_ih, dW_hh as single GEMMs over all steps (through the input side's norm first)
    dg2 = dgates.reshape(T * B, 4 * H)
    dxw, dnorm_ih = norm_input_backward(dg2, norms)
    normed = hats[1].shape[0] > 0
    dx = (dxw @ w_ih).reshape(T, B, I)
    dw_ih = dxw.T @ x.reshape(T * B, I)
    dw_hh = (norm[3] if normed else dgates).reshape(T * B, 4 * H).T @ a[:T].reshape(T * B, H)
    db = dg2.sum(axis=0)
    dweights = add_into(grads, (dw_ih, dw_hh, db, db.copy()))
    if not normed:
        return dx, (dh, dc), dweights
    dnorm = (*dnorm_ih, *norm_recurrent_param_grads(dg2, norms), *(d.sum(axis=0) for d in dnorm_c))
    return dx, (dh, dc), dweights + layer_norm_grads(grads, dnorm)
