"""GRU on the CPU: Numba kernels, forward directly above backward.

Gate order r, z, n (PyTorch's)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)     z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  h' = (1 - z) * n + z * h

``W_hn h + b_hn`` sits inside the reset gate, so the input and recurrent halves have different
gate gradients, which differ only in n (by the factor r): backward keeps one (T, B, 3H) array and
turns the one into the other in place between their GEMMs.
Steps at or past a sequence's length carry the state unchanged and output zeros.

With layer norm (``layer_norm=(gain_ih, bias_ih, gain_hh, bias_hh)``) W_ih x and W_hh h are each
normalised over their 3H entries before b_ih and b_hh: n = tanh(LN_ih(W_ih x)_n + b_in + r *
(LN_hh(W_hh h)_n + b_hn)). LN_ih runs on the whole projection before the loop, LN_hh on each
step's product in its scratch; backward takes each gradient back through them.

The specification is kernels/cpu/reference.py (gru_step, gru_step_backward);
tests/test_reference.py holds these kernels to it. They follow the contract in kernels/README.md.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cells import cell_options, layer_norm_arrays, layer_norm_grads, state_grads
from rnnfast.kernels.cpu.activations import sigmoid, tanh
from rnnfast.kernels.cpu.common import (bias_grads, contiguous, copy_row, grad_scratch, input_grads, norm_args,
    norm_input_backward, norm_input_forward, norm_recurrent_param_grads, normalise_recurrent, options_forward,
    options_probe, prepare, projected_input, recurrent_gemm_backward, recurrent_grads, run_rows, weight_grads,
    zone_args, zoneout_add, zoneout_grads)
from rnnfast.kernels.cpu.gemm import gemm, gemm_packed_serial, panel_width


@njit(inline="always", fastmath=True, error_model="numpy")
def forward_point(g_row, hw_row, b_hh, hn_row, h_prev_row, h_row, one):
    """One sequence, one step, the cell's equations: g_row (3H) holds W_ih x + b_ih on entry and the
    gates r, z, n on exit; hw_row: (3H,) W_hh h; b_hh: (3H,); writes hn_row = W_hn h + b_hn and
    h_row (H,), which may be h_prev_row. Training and the generation loop both step through it.
    Gate views and short loops indexed from 0, so LLVM vectorises them (see lstm.forward_point)."""
    H = h_row.shape[0]
    bh_r, bh_z, bh_n = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    g_r, g_z, g_n = g_row[:H], g_row[H:2 * H], g_row[2 * H:]
    hw_r, hw_z, hw_n = hw_row[:H], hw_row[H:2 * H], hw_row[2 * H:]
    for j in range(H):
        g_r[j] = sigmoid(g_r[j] + hw_r[j] + bh_r[j])
    for j in range(H):
        g_z[j] = sigmoid(g_z[j] + hw_z[j] + bh_z[j])
    for j in range(H):
        hn_row[j] = hw_n[j] + bh_n[j]
    for j in range(H):
        g_n[j] = tanh(g_n[j] + g_r[j] * hn_row[j])
    for j in range(H):
        h_row[j] = (one - g_z[j]) * g_n[j] + g_z[j] * h_prev_row[j]


@njit(inline="always", fastmath=True, error_model="numpy")
def _forward_step(gates_t, hn_t, hw, b_hh, h_prev, h_next, y_t, t, lengths, one, zero):
    B = h_prev.shape[0]
    for b in range(B):
        if t < lengths[b]:
            forward_point(gates_t[b], hw[b], b_hh, hn_t[b], h_prev[b], h_next[b], one)
            copy_row(y_t[b], h_next[b])
        else:
            copy_row(h_next[b], h_prev[b])
            y_t[b] = zero
            gates_t[b] = zero
            hn_t[b] = zero


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _forward_rows(b0, b1, core, w_hh_t, b_hh, lengths, y, h, gates, hn, hw, a, mask, zones, saved, norm_hh):
    """The recurrence for batch rows b0:b1, all T steps: rows never read each other.
    w_hh_t: W_hh^T packed; gates: (T, B, 3H) hold W_i x + b_i on entry; hw: (B, 3H) scratch for
    W_hh h of the current step; a, mask, zones, saved: the cell options (cells.cell_options;
    zones and saved None without zoneout: common.zone_args);
    norm_hh: (gain_hh, bias_hh, hat_h, rstd_h, consts), layer norm's (None without it)."""
    one = h[0, 0, 0] * 0 + 1
    zero = one - one
    for t in range(gates.shape[0]):
        gemm_packed_serial(a[t, b0:b1], w_hh_t, hw[b0:b1], False, core)
        if norm_hh is not None:
            normalise_recurrent(hw[b0:b1], t, b0, norm_hh)
        _forward_step(gates[t, b0:b1], hn[t, b0:b1], hw[b0:b1], b_hh, h[t, b0:b1], h[t + 1, b0:b1], y[t, b0:b1],
                      t, lengths[b0:b1], one, zero)
        options_forward(t, b0, b1, lengths, y, (h,), a, mask, zones, saved, one)


def gru_forward(x, state, weights, lengths=None, h_mask=None, zone=None, layer_norm=None, projected=False):
    """One GRU layer, one direction, over a whole sequence (the kernel contract, kernels/README.md).

    x: (T, B, I); state: (h0,) with h0 (B, H); weights: (w_ih (3H, I), w_hh (3H, H), b_ih (3H,),
    b_hh (3H,)); lengths: (B,) ints in 1..T or None; h_mask: (B, H) recurrent-dropout mask or None;
    zone: None or (zone_h,), (T, B, H) or None (zoneout); layer_norm: None or (gain_ih, bias_ih,
    gain_hh, bias_hh), each (3H,). Returns y: (T, B, H), the final state (hT,) and the cache.
    projected: x is already x @ W_ih^T, (T, B, 3H), as a lookup in an embedding's projected
    table gives it (rnnfast.recurrent): no input GEMM runs, x is written over, and backward
    returns the gradient of that projection as dx and leaves dW_ih to the caller.
    """
    (h0,), (w_ih, w_hh, b_ih, b_hh) = state, weights
    x, lengths = prepare(x, lengths)
    h0, w_ih, w_hh, b_ih, b_hh = contiguous(h0, w_ih, w_hh, b_ih, b_hh)
    T, B, I = x.shape
    H = h0.shape[1]
    y = np.empty((T, B, H), dtype=x.dtype)
    h = np.empty((T + 1, B, H), dtype=x.dtype)
    projected_input(x, w_ih, projected)
    gates = x if projected else np.empty((T, B, 3 * H), dtype=x.dtype)  # r, z, n
    hn = np.empty((T, B, H), dtype=x.dtype)  # W_hn h + b_hn
    g2 = gates.reshape(T * B, 3 * H)
    if not projected:
        gemm(x.reshape(T * B, I), w_ih.T, g2, False)
    norms = params, hats, rstds, consts = layer_norm_arrays(layer_norm, T, B, 3, H, x.dtype, np)
    norm_input_forward(g2, params, hats, rstds, consts)
    g2 += b_ih
    h[0] = h0
    hw = np.empty((B, 3 * H), dtype=x.dtype)
    a, mask, zones, saved = cell_options(h, h_mask, zone, (False,), np)  # backward reads gates, not h'
    run_rows(_forward_rows, B, H, w_hh.T, b_hh, lengths, y, h, gates, hn, hw, a, mask, *zone_args(zones, saved),
             norm_args(hats, (params[2], params[3], hats[1], rstds[1], consts)))
    cache = (x, w_ih, w_hh, lengths, h, gates, hn, a, mask, zones, norms, projected)
    return y, (h[T].copy(),), cache


@njit(inline="always", fastmath=True, error_model="numpy")
def _backward_step(dgates_x_t, dgates_h_t, dy_t, dh, gates_t, hn_t, h_prev, t, lengths, one, zero):
    # Gate views and short loops (see _forward_step): through h' = (1 - z) * n + z * h first,
    # then through n's reset gate r.
    B, H = dh.shape
    for b in range(B):
        dgx_row, dgh_row = dgates_x_t[b], dgates_h_t[b]
        if t < lengths[b]:
            g_row = gates_t[b]
            g_r, g_z, g_n = g_row[:H], g_row[H:2 * H], g_row[2 * H:]
            dx_r, dx_z, dx_n = dgx_row[:H], dgx_row[H:2 * H], dgx_row[2 * H:]
            dh_r, dh_z, dh_n = dgh_row[:H], dgh_row[H:2 * H], dgh_row[2 * H:]
            dh_row, dy_row, h_prev_row, hn_row = dh[b], dy_t[b], h_prev[b], hn_t[b]
            for j in range(H):
                dh_row[j] += dy_row[j]
            for j in range(H):
                dx_n[j] = dh_row[j] * (one - g_z[j]) * (one - g_n[j] * g_n[j])
            for j in range(H):
                z = g_z[j]
                dx_z[j] = dh_row[j] * (h_prev_row[j] - g_n[j]) * z * (one - z)
            for j in range(H):
                dh_row[j] *= g_z[j]  # the direct path; the recurrent GEMM adds the rest
            for j in range(H):
                r = g_r[j]
                dx_r[j] = dx_n[j] * hn_row[j] * r * (one - r)
            for j in range(H):
                dh_r[j] = dx_r[j]
            for j in range(H):
                dh_z[j] = dx_z[j]
            for j in range(H):
                dh_n[j] = dx_n[j] * g_r[j]
        else:
            dgx_row[:] = zero
            dgh_row[:] = zero


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _backward_rows(b0, b1, core, w_hh_p, dy, dh, lengths, h, gates, hn, dgates, dgates_h, mask, zones, dy_step, keeps,
                   dgemm, norm_hh):
    """BPTT through batch rows b0:b1, all T steps. w_hh_p: W_hh packed; dh: (B, H) enters as dhT
    and leaves as dh0; fills dgates: (T, B, 3H) with the input side's gate gradients; dgates_h:
    (B, 3H) scratch for the recurrent side's of the current step; mask, zones, dy_step, keeps,
    dgemm: the cell options and their scratch (common.grad_scratch); norm_hh: (gain_hh, hat_h,
    rstd_h, dhw (T, B, 3H), consts), layer norm's (None without it)."""
    one = h[0, 0, 0] * 0 + 1
    zero = one - one
    for t in range(gates.shape[0] - 1, -1, -1):
        dy_t = zoneout_grads(t, b0, b1, lengths, dy, (dh,), zones, dy_step, keeps, one)
        _backward_step(dgates[t, b0:b1], dgates_h[b0:b1], dy_t, dh[b0:b1], gates[t, b0:b1], hn[t, b0:b1],
                       h[t, b0:b1], t, lengths[b0:b1], one, zero)
        # zero where a row has ended
        dhw_t = recurrent_grads(dgates_h[b0:b1], t, b0, norm_hh)
        recurrent_gemm_backward(dhw_t, w_hh_p, dh[b0:b1], mask[b0:b1], dgemm[b0:b1], core)
        zoneout_add(b0, b1, (dh,), zones, keeps)


def gru_backward(dy, dstate, cache, grads=None):
    """BPTT through :func:`gru_forward`.

    dy: (T, B, H); dstate: (dhT,) with dhT (B, H) or None; grads: None, or (dw_ih, dw_hh, db_ih,
    db_hh) to add into (db_* may be None), then under layer norm its four gradients. Returns dx:
    (T, B, I), (dh0,) and (dw_ih (3H, I), dw_hh (3H, H), db_ih, db_hh (3H,)), then under layer norm
    (dgain_ih, dbias_ih, dgain_hh, dbias_hh) (with ``grads``: those arrays, added into).
    """
    x, w_ih, w_hh, lengths, h, gates, hn, a, mask, zones, (params, hats, rstds, consts), projected = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    (dh,) = state_grads(dstate, (B, H), x.dtype, np)
    dgates = np.empty((T, B, 3 * H), dtype=x.dtype)
    dw_ih, dw_hh, accumulate = weight_grads(grads, w_ih, w_hh)
    dy_step, keeps, dgemm = grad_scratch(B, H, x.dtype, mask, zones)
    normed = hats[1].shape[0] > 0
    dhw = np.empty_like(dgates) if normed else hats[1]  # the gradients of a W_hh^T, kept for dW_hh
    run_rows(_backward_rows, B, H, w_hh, dy, dh, lengths, h, gates, hn, dgates, np.empty((B, 3 * H), x.dtype), mask,
             zones, dy_step, keeps, dgemm, norm_args(hats, (params[2], hats[1], rstds[1], dhw, consts)))
    # dx, dW_ih, db_ih from the input side's gate gradients; then dgates becomes the recurrent
    # side's in place (they differ only in n, by the factor r), so one (T, B, 3H) array serves both
    dg2 = dgates.reshape(T * B, 3 * H)
    dxw, dnorm_ih = norm_input_backward(dg2, params, hats, rstds, consts)
    dx = input_grads(dxw, x, w_ih, dw_ih, accumulate, projected)
    if projected and not normed:
        dx = dx.copy()  # a view of dg2, whose n part is rescaled in place below
    db_ih = dg2.sum(axis=0)
    dg2[:, 2 * H:] *= gates.reshape(T * B, 3 * H)[:, :H]  # dn -> dn * r
    gemm((dhw.reshape(T * B, 3 * H) if normed else dg2).T, a[:T].reshape(T * B, H), dw_hh, accumulate)
    dweights = (dw_ih, dw_hh, *bias_grads(grads, db_ih, dg2.sum(axis=0)))
    if not normed:
        return dx, (dh,), dweights
    return dx, (dh,), dweights + layer_norm_grads(grads, (*dnorm_ih, *norm_recurrent_param_grads(dg2, hats)))


def backward_probe(dtype):
    """(:func:`_backward_rows`, arguments typed as :func:`gru_backward` passes them) for T = 0: a
    call compiles the loop without running a step, so without the GEMM it calls."""
    a2, h = np.zeros((1, 1), dtype), np.zeros((1, 1, 1), dtype)
    g3, n3 = np.zeros((0, 1, 3), dtype), np.zeros((0, 1, 1), dtype)
    return _backward_rows, (0, 0, 0, np.zeros((1, 1, panel_width(dtype)), dtype), n3, a2, np.zeros(1, np.int64), h,
                            g3, n3, g3, np.zeros((1, 3), dtype), *options_probe(dtype, 1), None)

