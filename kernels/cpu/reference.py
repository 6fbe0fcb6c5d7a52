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


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Each ``*_step_backward`` takes the gradient of the step's new state and returns the gradients of
# the pre-activations that multiply W_ih (and give b_ih's) and W_hh (and b_hh's) -- the same for
# every cell but the GRU -- plus the part of the old state's gradient that bypasses W_hh.
# backward() does the products with the weights. Derivatives are written on the saved outputs.

def rnn_step(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """x_t: (B, I); h: (B, H). h' = act(W_ih x + b_ih + W_hh h + b_hh). Returns h': (B, H)."""
    pre = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)


def rnn_step_backward(dh_next, x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    h_next = rnn_step(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    dpre = dh_next * ((1 - h_next**2) if nonlinearity == "tanh" else (h_next > 0))
    return dpre, dpre, (0 * h,)


def lstm_gates(x_t, h, w_ih, w_hh, b_ih, b_hh):
    gates = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(gates, 4, axis=1)
    return sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)


def lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    """x_t: (B, I); h, c: (B, H). Gate order i, f, g, o; c' = f * c + i * g, h' = o * tanh(c').
    Returns h', c'."""
    i, f, g, o = lstm_gates(x_t, h, w_ih, w_hh, b_ih, b_hh)
    c_next = f * c + i * g
    return o * np.tanh(c_next), c_next


def lstm_step_backward(dh_next, dc_next, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = lstm_gates(x_t, h, w_ih, w_hh, b_ih, b_hh)
    tanh_c = np.tanh(f * c + i * g)
    dc = dc_next + dh_next * o * (1 - tanh_c**2)
    di, df, dg, do = dc * g, dc * c, dc * i, dh_next * tanh_c
    dgates = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)
    return dgates, dgates, (0 * h, dc * f)


def gru_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, mask=1):
    xr, xz, xn = np.split(x_t @ w_ih.T + b_ih, 3, axis=1)
    hr, hz, hn = np.split((h * mask) @ w_hh.T + b_hh, 3, axis=1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    return r, z, np.tanh(xn + r * hn), hn


def gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh, mask=1):
    """x_t: (B, I); h: (B, H). Gate order r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
    h' = (1 - z) * n + z * h. Returns h': (B, H). ``mask``: recurrent dropout's, on h where it
    meets W_hh (the other cells see only that use of h, so they are called with h * mask)."""
    r, z, n, _ = gru_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, mask)
    return (1 - z) * n + z * h


def gru_step_backward(dh_next, x_t, h, w_ih, w_hh, b_ih, b_hh, mask=1):
    r, z, n, hn = gru_gates(x_t, h, w_ih, w_hh, b_ih, b_hh, mask)
    dn = dh_next * (1 - z) * (1 - n**2)  # through tanh, to W_in x + b_in + r * hn
    dz = dh_next * (h - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dgates_x = np.concatenate([dr, dz, dn], axis=1)
    dgates_h = np.concatenate([dr, dz, dn * r], axis=1)  # W_hn h + b_hn sits inside the reset gate
    return dgates_x, dgates_h, (dh_next * z,)


STEPS = {  # cell name (kernels/cells.py) -> (step, step_backward)
    "rnn_tanh": (rnn_step, rnn_step_backward),
    "rnn_relu": (partial(rnn_step, nonlinearity="relu"), partial(rnn_step_backward, nonlinearity="relu")),
    "lstm": (lstm_step, lstm_step_backward),
    "gru": (gru_step, gru_step_backward),
}


def _step_inputs(cell, state, h_mask):
    """(state as the step reads it, its keyword arguments): recurrent dropout masks h where it
    meets W_hh, which for every cell but the GRU is the only place the step reads h."""
    if h_mask is None:
        return state, {}
    if cell == "gru":
        return state, {"mask": h_mask}
    return (state[0] * h_mask,) + tuple(state[1:]), {}


def forward(cell, x, state, weights, lengths=None, h_mask=None, zone=None):
    """One layer, one direction of ``cell`` over a sequence (the kernel contract).

    x: (T, B, I); state: (h0,) or (h0, c0), each (B, H); weights: (w_ih (G*H, I), w_hh (G*H, H),
    b_ih, b_hh (G*H,)); lengths: (B,) ints in 1..T or None. The cell options: h_mask: (B, H), the
    recurrent-dropout mask on h where it meets W_hh, or None; zone: None, or one (T, B, H) array
    (or None) per state part, the fraction of the old state each unit keeps at each step
    (zoneout: state' = zone * state + (1 - zone) * the cell's update). Returns y: (T, B, H), the
    final state (each sequence's state at its last valid step) and the cache: the inputs and every
    step's state.
    """
    step = STEPS[cell][0]
    T, B = x.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    zone = (None,) * len(state) if zone is None else tuple(zone)
    states, ys = [tuple(state)], []
    for t in range(T):
        read, kwargs = _step_inputs(cell, states[t], h_mask)
        new = step(x[t], *read, *weights, **kwargs)
        new = new if isinstance(new, tuple) else (new,)
        new = tuple(n if z is None else z[t] * s + (1 - z[t]) * n for n, s, z in zip(new, states[t], zone))
        valid = (t < lengths)[:, None]
        states.append(tuple(np.where(valid, n, s) for n, s in zip(new, states[t])))
        ys.append(np.where(valid, states[-1][0], 0))
    return np.stack(ys), states[T], (cell, x, states, tuple(weights), lengths, h_mask, zone)


def backward(dy, dstate, cache, grads=None):
    """BPTT through :func:`forward`, one step at a time from the last.

    dy: (T, B, H); dstate: (dhT,) or (dhT, dcT), entries (B, H) or None; grads: None, or
    (dw_ih, dw_hh, db_ih, db_hh) to add into (entries may be None). Returns dx: (T, B, I), dstate0
    and (dw_ih, dw_hh, db_ih, db_hh) (with ``grads``: those arrays, added into).
    """
    cell, x, states, (w_ih, w_hh, b_ih, b_hh), lengths, h_mask, zone = cache
    step_backward = STEPS[cell][1]
    mask = 1 if h_mask is None else h_mask
    dstate = tuple(np.zeros_like(s) if d is None else d for d, s in zip(dstate, states[-1]))
    dx = np.zeros_like(x)
    dw_ih, dw_hh, db_ih, db_hh = (np.zeros_like(w) for w in (w_ih, w_hh, b_ih, b_hh))
    for t in reversed(range(x.shape[0])):
        valid = (t < lengths)[:, None]  # a step past the length passes the state's gradient through
        d_next = (dstate[0] + dy[t],) + dstate[1:]
        kept = tuple(0 if z is None else z[t] * d for d, z in zip(d_next, zone))  # zoneout's path to the old state
        d_update = tuple(d if z is None else (1 - z[t]) * d for d, z in zip(d_next, zone))
        read, kwargs = _step_inputs(cell, states[t], h_mask)
        dgates_x, dgates_h, d_prev = step_backward(*d_update, x[t], *read, w_ih, w_hh, b_ih, b_hh, **kwargs)
        dgates_x, dgates_h = np.where(valid, dgates_x, 0), np.where(valid, dgates_h, 0)
        d_prev = (d_prev[0] + (dgates_h @ w_hh) * mask,) + d_prev[1:]
        d_prev = tuple(dp + k for dp, k in zip(d_prev, kept))
        dstate = tuple(np.where(valid, dp, ds) for dp, ds in zip(d_prev, dstate))
        dx[t] = dgates_x @ w_ih
        dw_ih += dgates_x.T @ x[t]
        dw_hh += dgates_h.T @ (states[t][0] * mask)
        db_ih += dgates_x.sum(axis=0)
        db_hh += dgates_h.sum(axis=0)
    dweights = (dw_ih, dw_hh, db_ih, db_hh)
    if grads is None:
        return dx, dstate, dweights
    for g, d in zip(grads, dweights):
        if g is not None:
            g += d
    return dx, dstate, tuple(grads)


KERNELS = {name: (partial(forward, name), backward) for name in STEPS}
