"""Elman RNN on the GPU: numba.cuda kernels plus cuBLAS GEMMs through CuPy, forward directly above
backward. The specification is ``kernels/cpu/reference.py``; the contract (arguments, state
tuples, ``grads``) is ``kernels/README.md``; names and steps follow ``kernels/cpu/rnn.py``.

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or act

The input projection for all T steps is one GEMM before the loop, into ``h[1:]`` as on the CPU;
the loop is one persistent kernel per pass (``common``). Steps at or past a sequence's length
carry the state unchanged and output zeros.
"""
from numba import cuda

from rnnfast.kernels.cells import ACTIVATIONS, cell_options, layer_norm_arrays, layer_norm_grads, state_grads
from rnnfast.kernels.cuda.common import (add_into, array_module, backward_options, contiguous, gate_sum, int32_lengths, launch,
    make_plan, norm_arrays, norm_grad_arrays, norm_input_backward, norm_input_forward, norm_recurrent_param_grads,
    pack_backward_weights, pack_forward_weights, persistent_backward, persistent_forward, tanh)

TANH, RELU = ACTIVATIONS.index("tanh"), ACTIVATIONS.index("relu")


@cuda.jit(device=True, inline=True)
def forward_point(pre_row, hw, h_row, j, act, zero):
    """One sequence, one unit j, one step, the cell's equation: h_row[j] = act(pre_row[j] + W_hh h),
    pre_row (H,) holding W_ih x + b_ih + b_hh (it may be h_row itself), hw this unit's W_hh h
    (``gate_sum``); act is act or tanh. Returns h_row[j]."""
    a = pre_row[j] + gate_sum(hw, 0)
    h = max(a, zero) if act == RELU else tanh(a)
    h_row[j] = h
    return h


@cuda.jit(device=True, inline=True)
def _forward_step(y, h, cell, hw, t, b, j, valid, one):
    # cell: (act,). h[t + 1] holds the input projection plus both biases on entry and the state on
    # exit. The bias rides on the projection (added once for all T outside the sequential loop, so
    # the kernel reads no bias); the CPU adds it here instead, where its GEMM leaves h[t + 1].
    (act,) = cell
    if valid:
        y[t, b, j] = forward_point(h[t + 1, b], hw, h[t + 1, b], j, act, one - one)
    else:
        h[t + 1, b, j] = h[t, b, j]
        y[t, b, j] = 0


_forward = persistent_forward(_forward_step)


def rnn_forward(x, state, weights, lengths=None, act=TANH, h_mask=None, zone=None, layer_norm=None):
    """The GPU twin of :func:`rnnfast.kernels.cpu.rnn.rnn_forward`: the same arguments and results, on CuPy arrays."""
    (h0,), (w_ih, w_hh, b_ih, b_hh) = state, weights
    xp = array_module(x)
    x, h0, w_ih, w_hh = contiguous(xp, x, h0, w_ih, w_hh)
    act = int(act)
    T, B, I = x.shape
    H = h0.shape[1]
    y = xp.empty((T, B, H), dtype=x.dtype)
    h = xp.empty((T + 1, B, H), dtype=x.dtype)
    xp.matmul(x.reshape(T * B, I), w_ih.T, out=h[1:].reshape(T * B, H))
    norms = layer_norm_arrays(layer_norm, T, B, 1, H, x.dtype, xp)
    norm_input_forward(h[1:].reshape(T * B, H), norms)
    h[1:] += b_ih + b_hh
    h[0] = h0
    lengths = int32_lengths(xp, lengths, T, B)
    a, mask, zones, saved = cell_options(h, h_mask, zone, (True,), xp)
    plan = make_plan(B, H, 1, H, x.dtype.itemsize)
    launch(_forward, plan, y, h, (act,), lengths, pack_forward_weights(xp, w_hh, 1, plan), x.dtype.type(1),
           (a, mask, (h,), zones, saved), norm_arrays(xp, norms, B, plan))
    cache = (x, w_ih, w_hh, lengths, h, act, a, mask, zones, saved[0] if saved[0].shape[0] else h, norms)
    return y, (h[T].copy(),), cache


@cuda.jit(device=True, inline=True)
def _backward_step(dh, dpre, cell, dy, t, b, j, valid, one):
    # cell: (h_new (T+1, B, H), act): h_new is h, or under zoneout the cell's own h' before the
    # mixing. Fills dpre[t], the pre-activation gradients, as on the CPU.
    h_new, act = cell
    zero = one - one
    if valid:
        dh_j = dh[b, j] + dy[t, b, j]
        h_j = h_new[t + 1, b, j]
        if act == RELU:
            dpre[t, b, j] = dh_j if h_j > zero else zero
        else:
            dpre[t, b, j] = dh_j * (one - h_j * h_j)
        dh[b, j] = 0  # used up; the recurrent GEMM adds the gradient for the step before
    else:
        dpre[t, b, j] = 0


_backward = persistent_backward(_backward_step)


def rnn_backward(dy, dstate, cache, grads=None):
    """The GPU twin of :func:`rnnfast.kernels.cpu.rnn.rnn_backward`: the same arguments and results, on CuPy arrays."""
    x, w_ih, w_hh, lengths, h, act, a, mask, zones, h_new, norms = cache
    xp = array_module(x)
    T, B, I = x.shape
    H = h.shape[2]
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    (dh,) = state_grads(dstate, (B, H), x.dtype, xp)
    dpre = xp.empty((T, B, H), dtype=x.dtype)
    dy_step, opts = backward_options(xp, dy, mask, (dh,), zones)
    plan = make_plan(B, H, 1, H, x.dtype.itemsize)
    norm = norm_grad_arrays(xp, norms, B, H, plan)
    launch(_backward, plan, dh, dpre, (h_new, act), dy_step, lengths, pack_backward_weights(xp, w_hh, plan),
           x.dtype.type(1), opts, norm)
    # then dx, dW_ih, dW_hh as single GEMMs over all steps (through the input side's norm first)
    dp2 = dpre.reshape(T * B, H)
    dxw, dnorm_ih = norm_input_backward(dp2, norms)
    normed = norms[1][1].shape[0] > 0
    dx = (dxw @ w_ih).reshape(T, B, I)
    dw_ih = dxw.T @ x.reshape(T * B, I)
    dw_hh = (norm[3] if normed else dpre).reshape(T * B, H).T @ a[:T].reshape(T * B, H)
    db = dp2.sum(axis=0)
    dweights = add_into(grads, (dw_ih, dw_hh, db, db.copy()))
    if not normed:
        return dx, (dh,), dweights
    return dx, (dh,), dweights + layer_norm_grads(grads, (*dnorm_ih, *norm_recurrent_param_grads(dp2, norms)))
