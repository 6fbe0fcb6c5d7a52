"""Elman RNN on the CPU: Numba kernels, forward directly above backward.

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or act

With layer norm (``layer_norm=(gain_ih, bias_ih, gain_hh, bias_hh)``, each (H,)) the two
products are normalised separately before the biases, as for the LSTM and GRU.

Steps at or past a sequence's length carry the state unchanged and output zeros.

The specification is kernels/cpu/reference.py (rnn_step, rnn_step_backward);
tests/test_reference.py holds these kernels to it. They follow the contract in kernels/README.md.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cells import ACTIVATIONS, cell_options, layer_norm_arrays, layer_norm_grads, state_grads
from rnnfast.kernels.cpu.activations import tanh
from rnnfast.kernels.cpu.common import (bias_grads, contiguous, copy_row, grad_scratch, input_grads, norm_args,
    norm_input_backward, norm_input_forward, norm_recurrent_param_grads, norm_scratch, options_forward,
    options_probe, prepare, projected_input, recurrent_gemm_backward, recurrent_gemm_forward, recurrent_grads, run_rows,
    weight_grads, zone_args, zoneout_add, zoneout_grads)
from rnnfast.kernels.cpu.gemm import gemm, gemm_packed_serial, panel_width

TANH, RELU = ACTIVATIONS.index("tanh"), ACTIVATIONS.index("relu")


@njit(inline="always", fastmath=True, error_model="numpy")
def forward_point(pre_row, bias, h_row, act, zero):
    """One sequence, one step, the cell's equation: h_row (H,) = act(pre_row + bias), pre_row holding
    W_ih x + W_hh h (it may be h_row itself); act is act or tanh. Training and the generation loop
    both step through this function."""
    for j in range(h_row.shape[0]):
        a = pre_row[j] + bias[j]
        h_row[j] = max(a, zero) if act == RELU else tanh(a)


@njit(inline="always", fastmath=True, error_model="numpy")
def _forward_step(bias, h_prev, h_next, y_t, t, lengths, act, zero):
    """h_next: (B, H) holds W_ih x + W_hh h on entry and the new state on exit."""
    B = h_prev.shape[0]
    for b in range(B):
        if t < lengths[b]:
            forward_point(h_next[b], bias, h_next[b], act, zero)
            copy_row(y_t[b], h_next[b])
        else:
            copy_row(h_next[b], h_prev[b])
            y_t[b] = zero


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _forward_rows(b0, b1, core, w_hh_t, bias, lengths, act, y, h, a, mask, zones, saved, hw, norm_hh):
    """The recurrence for batch rows b0:b1, all T steps: rows never read each other. w_hh_t: W_hh^T
    packed; h[1:] holds the input projection on entry: each step adds W_hh h to it and then
    overwrites it with the state, so there is no (T, B, H) scratch. a, mask, zones, saved: the cell
    options (cells.cell_options; zones and saved None without zoneout: common.zone_args); hw: (B, H) scratch and norm_hh: (gain_hh, bias_hh, hat_h, rstd_h,
    consts), layer norm's (None without it)."""
    zero = h[0, 0, 0] * 0
    for t in range(y.shape[0]):
        recurrent_gemm_forward(a[t, b0:b1], w_hh_t, h[t + 1, b0:b1], hw[b0:b1], t, b0, norm_hh, core)
        _forward_step(bias, h[t, b0:b1], h[t + 1, b0:b1], y[t, b0:b1], t, lengths[b0:b1], act, zero)
        options_forward(t, b0, b1, lengths, y, (h,), a, mask, zones, saved, zero + 1)


def rnn_forward(x, state, weights, lengths=None, act=TANH, h_mask=None, zone=None, layer_norm=None, projected=False):
    """One RNN layer, one direction, over a whole sequence (the kernel contract, kernels/README.md).

    x: (T, B, I); state: (h0,) with h0 (B, H); weights: (w_ih (H, I), w_hh (H, H), b_ih (H,),
    b_hh (H,)); lengths: (B,) ints in 1..T or None; act: the ``rnn_act`` cell, else ``rnn_tanh``;
    h_mask: (B, H) recurrent-dropout mask or None; zone: None or (zone_h,), (T, B, H) or None
    (zoneout); layer_norm: None or (gain_ih, bias_ih, gain_hh, bias_hh), each (H,). Returns y:
    (T, B, H), the final state (hT,) and the cache.
    projected: x is already x @ W_ih^T, (T, B, H), as a lookup in an embedding's projected
    table gives it (rnnfast.recurrent): no input GEMM runs, x is written over, and backward
    returns the gradient of that projection as dx and leaves dW_ih to the caller.
    """
    (h0,), (w_ih, w_hh, b_ih, b_hh) = state, weights
    x, lengths = prepare(x, lengths)
    h0, w_ih, w_hh = contiguous(h0, w_ih, w_hh)
    act = int(act)
    T, B, I = x.shape
    H = h0.shape[1]
    y = np.empty((T, B, H), dtype=x.dtype)
    h = np.empty((T + 1, B, H), dtype=x.dtype)
    projected_input(x, w_ih, projected)
    if projected:
        h[1:] = x
    else:
        gemm(x.reshape(T * B, I), w_ih.T, h[1:].reshape(T * B, H), False)
    norms = params, hats, rstds, consts = layer_norm_arrays(layer_norm, T, B, 1, H, x.dtype, np)
    norm_input_forward(h[1:].reshape(T * B, H), params, hats, rstds, consts)
    h[0] = h0
    a, mask, zones, saved = cell_options(h, h_mask, zone, (True,), np)
    run_rows(_forward_rows, B, H, w_hh.T, b_ih + b_hh, lengths, act, y, h, a, mask, *zone_args(zones, saved),
             norm_scratch(hats, B, H, x.dtype), norm_args(hats, (params[2], params[3], hats[1], rstds[1], consts)))
    cache = (x, w_ih, w_hh, lengths, h, act, a, mask, zones, saved[0] if saved[0].shape[0] else h, norms, projected)
    return y, (h[T].copy(),), cache


@njit(inline="always", fastmath=True, error_model="numpy")
def _backward_step(dpre_t, dy_t, dh, h_next, t, lengths, act, one, zero):
    B, H = dh.shape
    for b in range(B):
        dp_row = dpre_t[b]
        if t < lengths[b]:
            dh_row, dy_row, h_row = dh[b], dy_t[b], h_next[b]
            for j in range(H):
                dh_j = dh_row[j] + dy_row[j]
                h = h_row[j]
                if act == RELU:
                    dp_row[j] = dh_j if h > zero else zero
                else:
                    dp_row[j] = dh_j * (one - h * h)
            dh_row[:] = zero  # used up; the recurrent GEMM adds the gradient for the step before
        else:
            dp_row[:] = zero


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _backward_rows(b0, b1, core, w_hh_p, dy, dh, lengths, h_new, act, dpre, mask, zones, dy_step, keeps, dgemm,
                   norm_hh):
    """BPTT through batch rows b0:b1, all T steps. w_hh_p: W_hh packed; dh: (B, H) enters as dhT
    and leaves as dh0; fills dpre: (T, B, H), the pre-activation gradients. h_new: h, or under
    zoneout the cell's own h' before the mixing; mask, zones, dy_step, keeps, dgemm: the cell
    options and their scratch (common.grad_scratch); norm_hh: (gain_hh, hat_h, rstd_h, dhw (T, B,
    H), consts), layer norm's (None without it)."""
    one = h_new[0, 0, 0] * 0 + 1
    zero = one - one
    for t in range(dpre.shape[0] - 1, -1, -1):
        dy_t = zoneout_grads(t, b0, b1, lengths, dy, (dh,), zones, dy_step, keeps, one)
        _backward_step(dpre[t, b0:b1], dy_t, dh[b0:b1], h_new[t + 1, b0:b1], t, lengths[b0:b1], act, one, zero)
        # rows past a length add zeros
        dhw_t = recurrent_grads(dpre[t, b0:b1], t, b0, norm_hh)
        recurrent_gemm_backward(dhw_t, w_hh_p, dh[b0:b1], mask[b0:b1], dgemm[b0:b1], core)
        zoneout_add(b0, b1, (dh,), zones, keeps)


def rnn_backward(dy, dstate, cache, grads=None):
    """BPTT through :func:`rnn_forward`.

    dy: (T, B, H); dstate: (dhT,) with dhT (B, H) or None; grads: None, or (dw_ih, dw_hh, db_ih,
    db_hh) to add into (db_* may be None), then under layer norm its four gradients. Returns dx:
    (T, B, I), (dh0,) and (dw_ih (H, I), dw_hh (H, H), db_ih, db_hh (H,)), then under layer norm
    (dgain_ih, dbias_ih, dgain_hh, dbias_hh) (with ``grads``: those arrays, added into).
    """
    x, w_ih, w_hh, lengths, h, act, a, mask, zones, h_new, (params, hats, rstds, consts), projected = cache
    T, B, I = x.shape
    H = h.shape[2]
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    (dh,) = state_grads(dstate, (B, H), x.dtype, np)
    dpre = np.empty((T, B, H), dtype=x.dtype)
    dw_ih, dw_hh, accumulate = weight_grads(grads, w_ih, w_hh)
    dy_step, keeps, dgemm = grad_scratch(B, H, x.dtype, mask, zones)
    normed = hats[1].shape[0] > 0
    dhw = np.empty_like(dpre) if normed else hats[1]
    run_rows(_backward_rows, B, H, w_hh, dy, dh, lengths, h_new, act, dpre, mask, zones, dy_step, keeps, dgemm,
             norm_args(hats, (params[2], hats[1], rstds[1], dhw, consts)))
    # then dx, dW_ih, dW_hh as single GEMMs over all steps (through the input side's norm first)
    dp2 = dpre.reshape(T * B, H)
    dxw, dnorm_ih = norm_input_backward(dp2, params, hats, rstds, consts)
    dx = input_grads(dxw, x, w_ih, dw_ih, accumulate, projected)
    gemm((dhw if normed else dpre).reshape(T * B, H).T, a[:T].reshape(T * B, H), dw_hh, accumulate)
    dweights = (dw_ih, dw_hh, *bias_grads(grads, dp2.sum(axis=0)))
    if not normed:
        return dx, (dh,), dweights
    return dx, (dh,), dweights + layer_norm_grads(grads, (*dnorm_ih, *norm_recurrent_param_grads(dp2, hats)))


def backward_probe(dtype, act=TANH):
    """(:func:`_backward_rows`, arguments typed as :func:`rnn_backward` passes them) for T = 0: a
    call compiles the loop without running a step, so without the GEMM it calls."""
    n3 = np.zeros((0, 1, 1), dtype)
    return _backward_rows, (0, 0, 0, np.zeros((1, 1, panel_width(dtype)), dtype), n3, np.zeros((1, 1), dtype),
                            np.zeros(1, np.int64), np.zeros((1, 1, 1), dtype), int(act), n3, *options_probe(dtype, 1),
                            None)

