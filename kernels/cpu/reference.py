"""Plain NumPy reference cells: the readable specification the fast kernels are tested against.

Each ``*_step`` is one time step of one cell; :func:`run` loops a step over a sequence with
variable lengths the way every kernel must: steps at or past a sequence's length keep the state
and output zeros. Nothing here is fast and nothing here is clever.
"""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def rnn_step(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """x_t: (B, I); h: (B, H). Returns h': (B, H)."""
    pre = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)


def lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    """x_t: (B, I); h, c: (B, H). Gate order i, f, g, o. Returns h', c'."""
    gates = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(gates, 4, axis=1)
    c_next = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c_next), c_next


def gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh):
    """x_t: (B, I); h: (B, H). Gate order r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    xr, xz, xn = np.split(x_t @ w_ih.T + b_ih, 3, axis=1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def run(step, x, state, lengths=None, **weights):
    """Loop ``step`` over x: (T, B, I) from ``state`` (a tuple of (B, H) arrays).

    Returns y: (T, B, H) and the final state tuple (each sequence's state at its last valid step).
    """
    T, B = x.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    ys = []
    for t in range(T):
        new = step(x[t], *state, **weights)
        new = new if isinstance(new, tuple) else (new,)
        valid = (t < lengths)[:, None]
        state = tuple(np.where(valid, n, s) for n, s in zip(new, state))
        ys.append(np.where(valid, state[0], 0))
    return np.stack(ys), state
