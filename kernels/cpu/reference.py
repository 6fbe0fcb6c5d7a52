"""Plain NumPy reference cells: the readable specification every tuned kernel is tested against.

Each cell is two functions of one time step: ``<cell>_step`` (the equations of kernels/cells.py's
cell, PyTorch's gate order) and ``<cell>_step_backward``, its pointwise gradient. :func:`forward`
and :func:`backward` loop them over a sequence with the kernel contract (kernels/cpu/__init__.py),
the way every kernel must treat lengths: steps at or past a sequence's length carry the state and
output zeros. Nothing here is fast and nothing here is clever; ``KERNELS`` has the shape of the
CPU and CUDA tables, so a test calls the reference exactly as it calls a kernel.

    >>> import numpy as np
    >>> forward, backward = KERNELS["gru"]
    >>> x, h0 = np.ones((2, 1, 3)), np.zeros((1, 4))
    >>> weights = (np.full((12, 3), 0.1), np.full((12, 4), 0.1), np.zeros(12), np.zeros(12))
    >>> y, (hT,), cache = forward(x, (h0,), weights, lengths=[1])
    >>> bool((y[1] == 0).all() and (hT == y[0]).all())
    True
"""
from functools import partial

import numpy as np

from rnnfast.kernels.cells import LAYER_NORM_EPS


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Layer norm (Ba et al. 2016, as haste's LayerNormLSTM/LayerNormGRU apply it): the option
# ``layer_norm`` is (gain_ih, bias_ih, gain_hh, bias_hh), plus (gain_c, bias_c) for the LSTM.
# The input pre-activations x W_ih^T and the recurrent ones h W_hh^T are each normalised over
# their G*H entries per row, with their own gain and bias, before b_ih and b_hh are added; the
# LSTM also normalises c' (over H) where it enters the output tanh, c itself staying c'.

def layer_norm(v, gain, bias):
    """v: (B, N) normalised over N, times gain plus bias (N,)."""
    centred = v - v.mean(axis=1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + LAYER_NORM_EPS) * gain + bias


def layer_norm_backward(dout, v, gain):
    """Gradients of :func:`layer_norm` at v given dout (B, N): (dv, dgain, dbias)."""
    centred = v - v.mean(axis=1, keepdims=True)
    rstd = 1 / np.sqrt((centred**2).mean(axis=1, keepdims=True) + LAYER_NORM_EPS)
    hat = centred * rstd
    dhat = dout * gain
    dv = rstd * (dhat - dhat.mean(axis=1, keepdims=True) - hat * (dhat * hat).mean(axis=1, keepdims=True))
    return dv, (dout * hat).sum(axis=0), dout.sum(axis=0)


def projections(x_t, h, w_ih, w_hh, ln=None):
    """(x W_ih^T, h W_hh^T), each layer-normalised when ``ln`` is given."""
    xw, hw = x_t @ w_ih.T, h @ w_hh.T
    if ln is None:
        return xw, hw
    return layer_norm(xw, *ln[0:2]), layer_norm(hw, *ln[2:4])


# Each ``*_step_backward`` takes the gradient of the step's new state and returns the gradients of
# the pre-activations that multiply W_ih (and give b_ih's) and W_hh (and b_hh's) -- the same for
# every cell but the GRU -- plus the part of the old state's gradient that bypasses W_hh.
# backward() does the products with the weights. Derivatives are written on the saved outputs.
# ``ln``: the layer-norm parameters or None; the pre-activation gradients are then those of the
# normalised projections (backward() takes them through the norms), and the last item returned
# is the LSTM's (dgain_c, dbias_c) (empty for the other cells, and without layer norm).

def rnn_step(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh", ln=None):
    """x_t: (B, I); h: (B, H). h' = act(W_ih x + b_ih + W_hh h + b_hh). Returns h': (B, H)."""
    xw, hw = projections(x_t, h, w_ih, w_hh, ln)
    pre = xw + b_ih + hw + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)


def rnn_step_backward(dh_next, x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh", ln=None):
    h_next = rnn_step(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, ln)
    dpre = dh_next * ((1 - h_next**2) if nonlinearity == "tanh" else (h_next > 0))
    return dpre, dpre, (0 * h,), ()


def lstm_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, ln=None):
    xw, hw = projections(x_t, h, w_ih, w_hh, ln)
    i, f, g, o = np.split(xw + b_ih + hw + b_hh, 4, axis=1)
    return sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)


def lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, ln=None):
    """x_t: (B, I); h, c: (B, H). Gate order i, f, g, o; c' = f * c + i * g, h' = o * tanh(c')
    (with layer norm h' = o * tanh(LN_c(c'))). Returns h', c'."""
    i, f, g, o = lstm_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, ln)
    c_next = f * c + i * g
    return o * np.tanh(c_next if ln is None else layer_norm(c_next, *ln[4:6])), c_next


def lstm_step_backward(dh_next, dc_next, x_t, h, c, w_ih, w_hh, b_ih, b_hh, ln=None):
    i, f, g, o = lstm_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, ln)
    c_next = f * c + i * g
    tanh_c = np.tanh(c_next if ln is None else layer_norm(c_next, *ln[4:6]))
    dc_out = dh_next * o * (1 - tanh_c**2)  # the gradient of tanh's argument
    dnorm_c = ()
    if ln is not None:
        dc_out, *dnorm_c = layer_norm_backward(dc_out, c_next, ln[4])
    dc = dc_next + dc_out
    di, df, dg, do = dc * g, dc * c, dc * i, dh_next * tanh_c
    dgates = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)
    return dgates, dgates, (0 * h, dc * f), tuple(dnorm_c)


def gru_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, mask=1, ln=None):
    xw, hw = projections(x_t, h * mask, w_ih, w_hh, ln)
    xr, xz, xn = np.split(xw + b_ih, 3, axis=1)
    hr, hz, hn = np.split(hw + b_hh, 3, axis=1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    return r, z, np.tanh(xn + r * hn), hn


def gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh, mask=1, ln=None):
    """x_t: (B, I); h: (B, H). Gate order r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
    h' = (1 - z) * n + z * h. Returns h': (B, H). ``mask``: recurrent dropout's, on h where it
    meets W_hh (the other cells see only that use of h, so they are called with h * mask)."""
    r, z, n, _ = gru_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, mask, ln)
    return (1 - z) * n + z * h


def gru_step_backward(dh_next, x_t, h, w_ih, w_hh, b_ih, b_hh, mask=1, ln=None):
    r, z, n, hn = gru_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, mask, ln)
    dn = dh_next * (1 - z) * (1 - n**2)  # through tanh, to W_in x + b_in + r * hn
    dz = dh_next * (h - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dgates_x = np.concatenate([dr, dz, dn], axis=1)
    dgates_h = np.concatenate([dr, dz, dn * r], axis=1)  # W_hn h + b_hn sits inside the reset gate
    return dgates_x, dgates_h, (dh_next * z,), ()


STEPS = {  # cell name (kernels/cells.py) -> (step, step_backward)
    "rnn_tanh": (rnn_step, rnn_step_backward),
    "rnn_relu": (partial(rnn_step, nonlinearity="relu"), partial(rnn_step_backward, nonlinearity="relu")),
    "lstm": (lstm_step, lstm_step_backward),
    "gru": (gru_step, gru_step_backward),
}


def _step_inputs(cell, state, h_mask, ln):
    """(state as the step reads it, its keyword arguments): recurrent dropout masks h where it
    meets W_hh, which for every cell but the GRU is the only place the step reads h."""
    kwargs = {} if ln is None else {"ln": ln}
    if h_mask is None:
        return state, kwargs
    if cell == "gru":
        return state, {"mask": h_mask, **kwargs}
    return (state[0] * h_mask,) + tuple(state[1:]), kwargs


def forward(cell, x, state, weights, lengths=None, h_mask=None, zone=None, layer_norm=None):
    """One layer, one direction of ``cell`` over a sequence (the kernel contract).

    x: (T, B, I); state: (h0,) or (h0, c0), each (B, H); weights: (w_ih (G*H, I), w_hh (G*H, H),
    b_ih, b_hh (G*H,)); lengths: (B,) ints in 1..T or None. The cell options: h_mask: (B, H), the
    recurrent-dropout mask on h where it meets W_hh, or None; zone: None, or one (T, B, H) array
    (or None) per state part, the fraction of the old state each unit keeps at each step
    (zoneout: state' = zone * state + (1 - zone) * the cell's update); layer_norm: None, or the
    gains and biases (gain_ih, bias_ih, gain_hh, bias_hh (G*H,)[, gain_c, bias_c (H,)] for the
    LSTM). Returns y: (T, B, H), the
    final state (each sequence's state at its last valid step) and the cache: the inputs and every
    step's state.
    """
    step = STEPS[cell][0]
    T, B = x.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    zone = (None,) * len(state) if zone is None else tuple(zone)
    ln = None if layer_norm is None else tuple(layer_norm)
    states, ys = [tuple(state)], []
    for t in range(T):
        read, kwargs = _step_inputs(cell, states[t], h_mask, ln)
        new = step(x[t], *read, *weights, **kwargs)
        new = new if isinstance(new, tuple) else (new,)
        new = tuple(n if z is None else z[t] * s + (1 - z[t]) * n for n, s, z in zip(new, states[t], zone))
        valid = (t < lengths)[:, None]
        states.append(tuple(np.where(valid, n, s) for n, s in zip(new, states[t])))
        ys.append(np.where(valid, states[-1][0], 0))
    return np.stack(ys), states[T], (cell, x, states, tuple(weights), lengths, h_mask, zone, ln)


def backward(dy, dstate, cache, grads=None):
    """BPTT through :func:`forward`, one step at a time from the last.

    dy: (T, B, H); dstate: (dhT,) or (dhT, dcT), entries (B, H) or None; grads: None, or
    (dw_ih, dw_hh, db_ih, db_hh) to add into (entries may be None). Returns dx: (T, B, I), dstate0
    and (dw_ih, dw_hh, db_ih, db_hh) (with ``grads``: those arrays, added into); under layer norm
    the gradients of its gains and biases follow, in the order of the option (and ``grads`` may
    have them too).
    """
    cell, x, states, (w_ih, w_hh, b_ih, b_hh), lengths, h_mask, zone, ln = cache
    step_backward = STEPS[cell][1]
    mask = 1 if h_mask is None else h_mask
    dstate = tuple(np.zeros_like(s) if d is None else d for d, s in zip(dstate, states[-1]))
    dx = np.zeros_like(x)
    dw_ih, dw_hh, db_ih, db_hh = (np.zeros_like(w) for w in (w_ih, w_hh, b_ih, b_hh))
    dln = [] if ln is None else [np.zeros_like(p) for p in ln]
    for t in reversed(range(x.shape[0])):
        valid = (t < lengths)[:, None]  # a step past the length passes the state's gradient through
        d_next = (dstate[0] + dy[t],) + dstate[1:]
        kept = tuple(0 if z is None else z[t] * d for d, z in zip(d_next, zone))  # zoneout's path to the old state
        # rows past their length give the step nothing (the LSTM's c norm sums its gradients over rows)
        d_update = tuple(np.where(valid, d if z is None else (1 - z[t]) * d, 0) for d, z in zip(d_next, zone))
        read, kwargs = _step_inputs(cell, states[t], h_mask, ln)
        dgates_x, dgates_h, d_prev, dnorm_c = step_backward(*d_update, x[t], *read, w_ih, w_hh, b_ih, b_hh, **kwargs)
        dgates_x, dgates_h = np.where(valid, dgates_x, 0), np.where(valid, dgates_h, 0)
        a_t = states[t][0] * mask  # what meets W_hh
        dxw, dhw = dgates_x, dgates_h  # the gradients of x W_ih^T and a W_hh^T
        if ln is not None:
            dxw, *dnorm_ih = layer_norm_backward(dgates_x, x[t] @ w_ih.T, ln[0])
            dhw, *dnorm_hh = layer_norm_backward(dgates_h, a_t @ w_hh.T, ln[2])
            for acc, d in zip(dln, (*dnorm_ih, *dnorm_hh, *dnorm_c)):
                acc += d
        d_prev = (d_prev[0] + (dhw @ w_hh) * mask,) + d_prev[1:]
        d_prev = tuple(dp + k for dp, k in zip(d_prev, kept))
        dstate = tuple(np.where(valid, dp, ds) for dp, ds in zip(d_prev, dstate))
        dx[t] = dxw @ w_ih
        dw_ih += dxw.T @ x[t]
        dw_hh += dhw.T @ a_t
        db_ih += dgates_x.sum(axis=0)
        db_hh += dgates_h.sum(axis=0)
    dweights = (dw_ih, dw_hh, db_ih, db_hh, *dln)
    if grads is None:
        return dx, dstate, dweights
    for g, d in zip(grads, dweights):
        if g is not None:
            g += d
    return dx, dstate, tuple(grads)


KERNELS = {name: (partial(forward, name), backward) for name in STEPS}
