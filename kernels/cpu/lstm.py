"""LSTM on the CPU: Numba kernels, forward directly above backward.

Gate order i, f, g, o (PyTorch's)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     f = sigmoid(W_if x + ... )
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)        o = sigmoid(W_io x + ... )
    c' = f * c + i * g                             h' = o * tanh(c')

With layer norm (``layer_norm=(gain_ih, bias_ih, gain_hh, bias_hh, gain_c, bias_c)``) the two
projections are normalised separately before the biases, LN_ih(W_ih x) + LN_hh(W_hh h) + b, and
h' = o * tanh(LN_c(c')); c stays c'. LN_ih runs on the whole projection before the loop, LN_hh in
each step after its GEMM, LN_c in the pointwise step; backward mirrors each.

The input projection for all T steps is one GEMM before the loop; inside the loop each step is a
recurrent GEMM (``h @ W_hh^T``) plus one fused pointwise pass. Backward mirrors it: a fused
pointwise pass and one recurrent GEMM per step, then ``dx``, ``dw_ih``, ``dw_hh`` as single GEMMs.
Steps at or past a sequence's length carry the state unchanged and output zeros.

The specification is kernels/cpu/reference.py (lstm_step, lstm_step_backward);
tests/test_reference.py holds these kernels to it. They follow the contract in kernels/README.md.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cells import cell_options, layer_norm_arrays, layer_norm_grads, state_grads
from rnnfast.kernels.cpu.activations import sigmoid, tanh
from rnnfast.kernels.cpu.common import (bias_grads, contiguous, copy_row, grad_scratch, input_grads, norm_args,
    norm_input_backward, norm_input_forward, norm_recurrent_param_grads, norm_scratch, normalise_row,
    normalise_row_backward, options_forward, options_probe, prepare, projected_input, recurrent_gemm_backward,
    recurrent_gemm_forward, recurrent_grads, run_rows, weight_grads, zone_args, zoneout_add, zoneout_grads)
from rnnfast.kernels.cpu.gemm import gemm, gemm_packed_serial, panel_width


@njit(inline="always", fastmath=True, error_model="numpy")
def forward_point(g_row, bias, c_prev_row, c_row, h_row):
    """One sequence, one step, the cell's equations: g_row (4H) holds W_ih x + W_hh h on entry and
    the gates i, f, g, o on exit; bias: (4H,) b_ih + b_hh; writes c_row and h_row (H,). c_row may
    be c_prev_row. Training and the generation loop both step through this function.

    Each gate is its own 1-D view and each loop touches few arrays, all indexed from 0: LLVM
    vectorises a loop only when it can rule out negative indices and overlapping arrays with
    few runtime checks. Written with offsets into the row (g_row[2 * H + j]) the same loops
    stayed scalar: 4.7 ns per unit at B=32, H=512 against 1.0 ns like this."""
    cell_point(g_row, bias, c_prev_row, c_row)
    g_o = g_row[3 * h_row.shape[0]:]
    for j in range(h_row.shape[0]):
        h_row[j] = g_o[j] * tanh(c_row[j])


@njit(inline="always", fastmath=True, error_model="numpy")
def cell_point(g_row, bias, c_prev_row, c_row):
    """:func:`forward_point` up to c': the gates and c_row, not h."""
    H = c_row.shape[0]
    b_i, b_f, b_g, b_o = bias[:H], bias[H:2 * H], bias[2 * H:3 * H], bias[3 * H:]
    g_i, g_f, g_g, g_o = g_row[:H], g_row[H:2 * H], g_row[2 * H:3 * H], g_row[3 * H:]
    for j in range(H):
        g_i[j] = sigmoid(g_i[j] + b_i[j])
    for j in range(H):
        g_f[j] = sigmoid(g_f[j] + b_f[j])
    for j in range(H):
        g_g[j] = tanh(g_g[j] + b_g[j])
    for j in range(H):
        g_o[j] = sigmoid(g_o[j] + b_o[j])
    for j in range(H):
        c_row[j] = g_f[j] * c_prev_row[j] + g_i[j] * g_g[j]


@njit(inline="always", fastmath=True, error_model="numpy")
def _forward_step(gates_t, bias, c_prev, h_prev, c_next, h_next, y_t, t, b0, lengths, norm_c, zero):
    # norm_c: (gain_c, bias_c, hat_c, rstd_c, consts), None without layer norm; then
    # h' = o * tanh(LN_c(c')), LN_c(c') going through h_row on its way.
    B, H = c_prev.shape
    for b in range(B):
        if t < lengths[b]:
            # forward_point's equations, with tanh reading LN_c(c') (parked in h's row) under layer
            # norm: written once, since each inlined copy of the cell costs seconds of compiling
            cell_point(gates_t[b], bias, c_prev[b], c_next[b])
            h_row, g_o, src = h_next[b], gates_t[b, 3 * H:], c_next[b]
            if norm_c is not None:  # (gain_c, bias_c, hat_c, rstd_c, consts), indexed: names unpacked
                # here lost the rstd write once Numba pruned the branch
                norm_c[3][t, b0 + b] = normalise_row(c_next[b], norm_c[0], norm_c[1], h_row, norm_c[2][t, b0 + b],
                                                     norm_c[4][0], norm_c[4][2])
                src = h_row
            for j in range(H):
                h_row[j] = g_o[j] * tanh(src[j])
            copy_row(y_t[b], h_next[b])
        else:
            copy_row(c_next[b], c_prev[b])
            copy_row(h_next[b], h_prev[b])
            y_t[b] = zero
            gates_t[b] = zero


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _forward_rows(b0, b1, core, w_hh_t, bias, lengths, y, h, c, gates, a, mask, zones, saved, hw, norm_hh, norm_c):
    """The recurrence for batch rows b0:b1, all T steps: rows never read each other.
    w_hh_t: W_hh^T packed; gates: (T, B, 4H) hold the input projection on entry; a, mask, zones,
    saved: the cell options (cells.cell_options; zones and saved None without zoneout:
    common.zone_args); hw: (B, 4H) scratch, norm_hh: (gain_hh, bias_hh,
    hat_h, rstd_h, consts) and norm_c: (gain_c, bias_c, hat_c, rstd_c, consts), layer norm's
    (cells.layer_norm_arrays; None without it: common.norm_args)."""
    zero = h[0, 0, 0] * 0
    for t in range(gates.shape[0]):
        recurrent_gemm_forward(a[t, b0:b1], w_hh_t, gates[t, b0:b1], hw[b0:b1], t, b0, norm_hh, core)
        _forward_step(gates[t, b0:b1], bias, c[t, b0:b1], h[t, b0:b1], c[t + 1, b0:b1], h[t + 1, b0:b1],
                      y[t, b0:b1], t, b0, lengths[b0:b1], norm_c, zero)
        options_forward(t, b0, b1, lengths, y, (h, c), a, mask, zones, saved, zero + 1)


def lstm_forward(x, state, weights, lengths=None, h_mask=None, zone=None, layer_norm=None, projected=False):
    """One LSTM layer, one direction, over a whole sequence (the kernel contract, kernels/README.md).

    x: (T, B, I); state: (h0, c0), each (B, H); weights: (w_ih (4H, I), w_hh (4H, H), b_ih (4H,),
    b_hh (4H,)); lengths: (B,) ints in 1..T or None; h_mask: (B, H) recurrent-dropout mask or
    None; zone: None or (zone_h, zone_c), each (T, B, H) or None (zoneout); layer_norm: None or
    (gain_ih, bias_ih, gain_hh, bias_hh (4H,), gain_c, bias_c (H,)). Returns y: (T, B, H), the
    final state (hT, cT) and the cache.
    projected: x is already x @ W_ih^T, (T, B, 4H), as a lookup in an embedding's projected
    table gives it (rnnfast.recurrent): no input GEMM runs, x is written over, and backward
    returns the gradient of that projection as dx and leaves dW_ih to the caller.
    """
    (h0, c0), (w_ih, w_hh, b_ih, b_hh) = state, weights
    x, lengths = prepare(x, lengths)
    h0, c0, w_ih, w_hh = contiguous(h0, c0, w_ih, w_hh)
    T, B, I = x.shape
    H = h0.shape[1]
    y = np.empty((T, B, H), dtype=x.dtype)
    h = np.empty((T + 1, B, H), dtype=x.dtype)
    c = np.empty((T + 1, B, H), dtype=x.dtype)
    projected_input(x, w_ih, projected)
    if projected:
        gates = x  # post-activation i, f, g, o
    else:
        gates = np.empty((T, B, 4 * H), dtype=x.dtype)
        gemm(x.reshape(T * B, I), w_ih.T, gates.reshape(T * B, 4 * H), False)
    norms = params, hats, rstds, consts = layer_norm_arrays(layer_norm, T, B, 4, H, x.dtype, np)
    norm_input_forward(gates.reshape(T * B, 4 * H), params, hats, rstds, consts)
    h[0] = h0
    c[0] = c0
    a, mask, zones, saved = cell_options(h, h_mask, zone, (False, True), np)
    run_rows(_forward_rows, B, H, w_hh.T, b_ih + b_hh, lengths, y, h, c, gates, a, mask, *zone_args(zones, saved),
             norm_scratch(hats, B, 4 * H, x.dtype), norm_args(hats, (params[2], params[3], hats[1], rstds[1], consts)),
             norm_args(hats, (params[4], params[5], hats[2], rstds[2], consts)))
    cache = (x, w_ih, w_hh, lengths, h, c, gates, a, mask, zones, saved[1] if saved[1].shape[0] else c, norms,
             projected)
    return y, (h[T].copy(), c[T].copy()), cache


@njit(cache=True, fastmath=True, error_model="numpy")
def _norm_c_backward(dh_row, dy_row, dc_row, g_o, d_i, d_o, hat_row, rstd, gain, bias_c, dgain_row, dbias_row, inv_n,
                     one):
    """_backward_step's first pass under layer norm, for one row: through h' = o * tanh(LN_c(c'))
    into dc and the norm's gains, the gradient parked in d_i until dc is complete. A compiled
    function of its own rather than inlined: a second inlined copy of the tanh pass doubled the
    loop's compile time."""
    for j in range(dh_row.shape[0]):
        o = g_o[j]
        dh_j = dh_row[j] + dy_row[j]
        tanh_c = tanh(gain[j] * hat_row[j] + bias_c[j])
        d_i[j] = dh_j * o * (one - tanh_c * tanh_c)
        d_o[j] = dh_j * tanh_c * o * (one - o)
    for j in range(dh_row.shape[0]):
        dgain_row[j] += d_i[j] * hat_row[j]
        dbias_row[j] += d_i[j]
    normalise_row_backward(d_i, hat_row, rstd, gain, d_i, inv_n)
    for j in range(dh_row.shape[0]):
        dc_row[j] += d_i[j]


@njit(inline="always", fastmath=True, error_model="numpy")
def _backward_step(dgates_t, dy_t, dh, dc, gates_t, c_prev, c_next, t, b0, lengths, norm_c, one, zero):
    # Gate views and short loops, as in _forward_step: the first pass takes the gradient through
    # h' = o * tanh(c') into dc, the others through c' = f * c + i * g. With layer norm (norm_c:
    # gain_c, bias_c, hat_c, rstd_c, dgain_c and dbias_c per row (B, H), consts) tanh reads
    # LN_c(c') and its gradient goes back through the norm, parked in d_i until dc is complete.
    gain, bias_c, hat, rstd, dgain, dbias, consts = norm_c
    B, H = dh.shape
    for b in range(B):
        dg_row = dgates_t[b]
        if t < lengths[b]:
            g_row = gates_t[b]
            g_i, g_f, g_g, g_o = g_row[:H], g_row[H:2 * H], g_row[2 * H:3 * H], g_row[3 * H:]
            d_i, d_f, d_g, d_o = dg_row[:H], dg_row[H:2 * H], dg_row[2 * H:3 * H], dg_row[3 * H:]
            dc_row, dh_row, dy_row, c_next_row, c_prev_row = dc[b], dh[b], dy_t[b], c_next[b], c_prev[b]
            if hat.shape[0] == 0:
                for j in range(H):
                    o = g_o[j]
                    dh_j = dh_row[j] + dy_row[j]
                    tanh_c = tanh(c_next_row[j])
                    dc_row[j] += dh_j * o * (one - tanh_c * tanh_c)
                    d_o[j] = dh_j * tanh_c * o * (one - o)
            else:
                _norm_c_backward(dh_row, dy_row, dc_row, g_o, d_i, d_o, hat[t, b0 + b], rstd[t, b0 + b], gain, bias_c,
                                 dgain[b0 + b], dbias[b0 + b], consts[2], one)
            dh_row[:] = zero  # used up; the recurrent GEMM adds the gradient for the step before
            for j in range(H):
                i = g_i[j]
                d_i[j] = dc_row[j] * g_g[j] * i * (one - i)
            for j in range(H):
                f = g_f[j]
                d_f[j] = dc_row[j] * c_prev_row[j] * f * (one - f)
            for j in range(H):
                g = g_g[j]
                d_g[j] = dc_row[j] * g_i[j] * (one - g * g)
            for j in range(H):
                dc_row[j] *= g_f[j]
        else:
            dg_row[:] = zero


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _backward_rows(b0, b1, core, w_hh_p, dy, dh, dc, lengths, c, c_new, gates, dgates, mask, zones, dy_step, keeps,
                   dgemm, norm_hh, norm_c):
    """BPTT through batch rows b0:b1, all T steps. w_hh_p: W_hh packed; dh, dc: (B, H) enter as
    dhT, dcT and leave as dh0, dc0; fills dgates: (T, B, 4H), the pre-activation gate gradients.
    c_new: c, or under zoneout the cell's own c' before the mixing; mask, zones, dy_step, keeps,
    dgemm: the cell options and their scratch (common.grad_scratch); norm_hh: (gain_hh, hat_h,
    rstd_h, dhw (T, B, 4H), consts), None without layer norm, and norm_c (see _backward_step),
    empty arrays without it."""
    one = c[0, 0, 0] * 0 + 1
    zero = one - one
    for t in range(gates.shape[0] - 1, -1, -1):
        dy_t = zoneout_grads(t, b0, b1, lengths, dy, (dh, dc), zones, dy_step, keeps, one)
        _backward_step(dgates[t, b0:b1], dy_t, dh[b0:b1], dc[b0:b1], gates[t, b0:b1], c[t, b0:b1],
                       c_new[t + 1, b0:b1], t, b0, lengths[b0:b1], norm_c, one, zero)
        # rows past a length add zeros
        dhw_t = recurrent_grads(dgates[t, b0:b1], t, b0, norm_hh)
        recurrent_gemm_backward(dhw_t, w_hh_p, dh[b0:b1], mask[b0:b1], dgemm[b0:b1], core)
        zoneout_add(b0, b1, (dh, dc), zones, keeps)


def lstm_backward(dy, dstate, cache, grads=None):
    """BPTT through :func:`lstm_forward`.

    dy: (T, B, H); dstate: (dhT, dcT), each (B, H) or None; grads: None, or (dw_ih, dw_hh, db_ih,
    db_hh) to add into (db_* may be None), then under layer norm its six gradients. Returns dx:
    (T, B, I), (dh0, dc0) and (dw_ih (4H, I), dw_hh (4H, H), db_ih, db_hh (4H,)), then under layer
    norm (dgain_ih, dbias_ih, dgain_hh, dbias_hh, dgain_c, dbias_c) (with ``grads``: those arrays,
    added into).
    """
    x, w_ih, w_hh, lengths, h, c, gates, a, mask, zones, c_new, (params, hats, rstds, consts), projected = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dh, dc = state_grads(dstate, (B, H), x.dtype, np)
    dgates = np.empty((T, B, 4 * H), dtype=x.dtype)
    dw_ih, dw_hh, accumulate = weight_grads(grads, w_ih, w_hh)
    dy_step, keeps, dgemm = grad_scratch(B, H, x.dtype, mask, zones)
    normed = hats[1].shape[0] > 0
    dhw = np.empty_like(dgates) if normed else hats[1]
    dnorm_c = tuple(np.zeros((B, H), x.dtype) if hats[2].shape[0] else rstds[2] for _ in range(2))
    run_rows(_backward_rows, B, H, w_hh, dy, dh, dc, lengths, c, c_new, gates, dgates, mask, zones, dy_step, keeps,
             dgemm, norm_args(hats, (params[2], hats[1], rstds[1], dhw, consts)),
             (params[4], params[5], hats[2], rstds[2], *dnorm_c, consts))
    # then dx, dW_ih, dW_hh as single GEMMs over all steps (through the input side's norm first)
    dg2 = dgates.reshape(T * B, 4 * H)
    dxw, dnorm_ih = norm_input_backward(dg2, params, hats, rstds, consts)
    dx = input_grads(dxw, x, w_ih, dw_ih, accumulate, projected)
    gemm((dhw if normed else dgates).reshape(T * B, 4 * H).T, a[:T].reshape(T * B, H), dw_hh, accumulate)
    dweights = (dw_ih, dw_hh, *bias_grads(grads, dg2.sum(axis=0)))
    if not normed:
        return dx, (dh, dc), dweights
    dnorm = (*dnorm_ih, *norm_recurrent_param_grads(dg2, hats), *(d.sum(axis=0) for d in dnorm_c if d.shape[0]))
    return dx, (dh, dc), dweights + layer_norm_grads(grads, dnorm)


def backward_probe(dtype):
    """(:func:`_backward_rows`, arguments typed as :func:`lstm_backward` passes them) for T = 0: a
    call compiles the loop without running a step, so without the GEMM it calls."""
    a2, a3, c = np.zeros((1, 1), dtype), np.zeros((0, 1, 4), dtype), np.zeros((1, 1, 1), dtype)
    gain, rstd = np.zeros(0, dtype), np.zeros((0, 0), dtype)  # the c norm's arguments, off (backward runs
    # in the warm-up's process, so its norm code is not pruned as the forward's is)
    return _backward_rows, (0, 0, 0, np.zeros((1, 1, panel_width(dtype)), dtype), np.zeros((0, 1, 1), dtype), a2, a2,
                            np.zeros(1, np.int64), c, c, a3, a3, *options_probe(dtype, 2), None,
                            (gain, gain, np.zeros((0, 0, 0), dtype), rstd, rstd, rstd, np.zeros(3, dtype)))

