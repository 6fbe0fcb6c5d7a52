"""Sampling from a character model on the CPU: the whole generation loop in one Numba call.

Step by step, a stacked unidirectional RNN/LSTM/GRU reads one id per sequence, the output layer
gives logits and one id is drawn per sequence by the rule of ``rnnfast.models.sample_from_logits``
(its specification, followed exactly):

1. ``top_k``: keep the logits >= the k-th largest (ties at the boundary stay);
2. ``top_p``: with ``e = exp(logit - max)`` over the kept ids, visit them by descending ``e`` (ties
   by ascending id), keeping each while the mass visited before it is ``< top_p * sum(e)``;
3. ``temperature``: weights ``w = exp((logit - max) / temperature)`` on the kept ids (0: greedy,
   the first largest logit);
4. inverse CDF: the first id, in id order, whose running sum of ``w`` exceeds ``u * sum(w)``.

Sampling is float64 as in the specification. Per step there is no Python, no allocation and no
BLAS call: at the small batches of generation a hand-written matrix-vector product is cheaper than
a call into the BLAS, and layer 0's input projection is a row lookup in ``embedding @ w_ih^T``,
computed once per call.
"""
import numpy as np
from numba import njit

from rnnfast.kernels.cells import ACTIVATIONS, KINDS, cell_named
from rnnfast.kernels.cpu import gru, lstm, rnn
from rnnfast.kernels.cpu.common import compile_detached, copy_row, is_compiled
from rnnfast.kernels.cpu.gemm import matmul

# the loop takes the cell as its kind's index in the cell table's KINDS (an int compiles once)
RNN, LSTM, GRU = (KINDS.index(kind) for kind in ("rnn", "lstm", "gru"))


@njit(cache=True, fastmath=True, error_model="numpy")
def _matvec_add(w, v, bias, out):
    """out: (R,) = w: (R, K) @ v: (K,) + bias: (R,)."""
    R, K = w.shape
    for r in range(R):
        acc = bias[r]
        for k in range(K):
            acc += w[r, k] * v[k]
        out[r] = acc


@njit(cache=True, fastmath=True, error_model="numpy")
def _cell_update(kind, act, xg, hg, h, c, zeros, hn):
    """One cell step in place, through the training kernels' own ``forward_point``. xg: (G*H,) input
    part with b_ih (and b_hh but for the GRU's); hg: (G*H,) recurrent part (the GRU's with b_hh);
    h, c: (H,) (c read only by the LSTM); zeros: (G*H,) zeros, the biases already added; hn: (H,)
    scratch for the GRU's W_hn h + b_hn."""
    if kind == GRU:
        gru.forward_point(xg, hg, zeros, hn, h, h, zeros[0] + 1)
        return
    for j in range(xg.shape[0]):
        xg[j] += hg[j]
    if kind == LSTM:
        lstm.forward_point(xg, zeros, c, c, h)
    else:
        rnn.forward_point(xg, zeros, h, act, zeros[0])


@njit(cache=True, inline="always")
def _before(e, a, b):
    """Whether id a comes before id b in descending e, ties by ascending id: a total order."""
    return e[a] > e[b] or (e[a] == e[b] and a < b)


@njit(cache=True)
def _order_by_mass(e, order):
    """order: (V,) = the ids sorted by :func:`_before` (Shell sort: a few lines here instead of
    NumPy's sorts, whose compiled code cost 10 s of the first ``rnnfast generate``)."""
    V = e.shape[0]
    for v in range(V):
        order[v] = v
    gap = 1
    while gap < V // 3:
        gap = 3 * gap + 1
    while gap > 0:
        for i in range(gap, V):
            item = order[i]
            j = i
            while j >= gap and _before(e, item, order[j - gap]):
                order[j] = order[j - gap]
                j -= gap
            order[j] = item
        gap //= 3


@njit(cache=True)
def _sample(logits, u, temperature, top_k, top_p, keep, e, order):
    """One id from logits: (V,) float64 by the module docstring's rule; keep, e, order: (V,) scratch."""
    V = logits.shape[0]
    top = logits.max()
    kth = -np.inf
    if 0 < top_k < V:
        for v in range(V):
            e[v] = logits[v]
        _order_by_mass(e, order)
        kth = logits[order[top_k - 1]]  # the k-th largest
    total = 0.0
    for v in range(V):
        keep[v] = logits[v] >= kth
        e[v] = np.exp(logits[v] - top) if keep[v] else 0.0
        total += e[v]
    if top_p < 1.0:
        _order_by_mass(e, order)
        before = 0.0
        for v in order:
            if keep[v]:
                keep[v] = before < top_p * total
                before += e[v]
    if temperature == 0:
        best = -1
        for v in range(V):
            if keep[v] and (best < 0 or logits[v] > logits[best]):
                best = v
        return best
    total = 0.0
    for v in range(V):
        e[v] = np.exp((logits[v] - top) / temperature) if keep[v] else 0.0
        total += e[v]
    target = u * total
    running = 0.0
    last = 0
    for v in range(V):
        if keep[v]:
            running += e[v]
            last = v
            if running > target:
                return v
    return last


@njit(cache=True, error_model="numpy")
def _zone(row, old, p, one):
    """Zoneout's eval mixing, row = p * old + (1 - p) * row (as the training kernels' _zone_row)."""
    for j in range(row.shape[0]):
        row[j] = p * old[j] + (one - p) * row[j]


@njit(cache=True)
def _generate(kind, act, emb_proj, w_ih, w_hh, b_ih, b_hh, w_out, b_out, h, c, prime, uniforms,
              temperature, top_k, top_p, zone, ids):
    """emb_proj: (V, G*H) = embedding @ w_ih0^T + b_ih0 (+ b_hh0 unless GRU); w_ih: (L-1, G*H, H);
    w_hh: (L, G*H, H); b_ih: (L, G*H) (layers above 0 use it); b_hh: (L, G*H) (0 where already in
    emb_proj/b_ih, i.e. all but GRU's); w_out: (V, H); b_out: (V,); h, c: (L, B, H) updated in place;
    prime: (B, P); uniforms: (B, N); zone: (2,) zoneout's fractions of h and c (0: none), mixed in
    as in eval mode. Writes ids: (B, N)."""
    L, B, H = h.shape
    V = w_out.shape[0]
    P = prime.shape[1]
    N = uniforms.shape[1]
    GH = w_hh.shape[1]
    xg = np.empty(GH, dtype=h.dtype)
    hg = np.empty(GH, dtype=h.dtype)
    zeros = np.zeros(GH, dtype=h.dtype)
    hn = np.empty(H, dtype=h.dtype)
    logits = np.empty(V, dtype=np.float64)
    logits32 = np.empty(V, dtype=h.dtype)
    keep = np.empty(V, dtype=np.bool_)
    e = np.empty(V, dtype=np.float64)
    order = np.empty(V, dtype=np.int64)
    h_old, c_old = np.empty(H, dtype=h.dtype), np.empty(H, dtype=h.dtype)
    one = zeros[0] + 1
    zone_h, zone_c = zone[0], zone[1]
    for b in range(B):
        token = prime[b, 0]
        for step in range(P - 1 + N):
            for layer in range(L):
                if layer == 0:
                    copy_row(xg, emb_proj[token])
                else:
                    _matvec_add(w_ih[layer - 1], h[layer - 1, b], b_ih[layer], xg)
                _matvec_add(w_hh[layer], h[layer, b], b_hh[layer], hg)
                if zone_h > 0 or zone_c > 0:
                    copy_row(h_old, h[layer, b])
                    copy_row(c_old, c[layer, b])
                _cell_update(kind, act, xg, hg, h[layer, b], c[layer, b], zeros, hn)
                if zone_h > 0:
                    _zone(h[layer, b], h_old, zone_h, one)
                if zone_c > 0:
                    _zone(c[layer, b], c_old, zone_c, one)
            if step + 1 < P:
                token = prime[b, step + 1]
                continue
            _matvec_add(w_out, h[L - 1, b], b_out, logits32)
            for v in range(V):
                logits[v] = logits32[v]
            n = step + 1 - P
            token = _sample(logits, uniforms[b, n], temperature, top_k, top_p, keep, e, order)
            ids[b, n] = token


def generate(cell, weights, embedding, w_out, b_out, state, prime, uniforms, temperature=1.0, top_k=None,
             top_p=None, zoneout=(0.0, 0.0)):
    """Sample N ids per sequence from a stacked unidirectional recurrent character model.

    cell: "rnn_tanh" | "rnn_relu" | "lstm" | "gru"; weights: per layer (w_ih: (G*H, I_l),
    w_hh: (G*H, H), b_ih, b_hh: (G*H,)) with I_0 = E and I_l = H above; embedding: (V, E);
    w_out: (V, H); b_out: (V,); state: tuple of (L, B, H) ((h, c) for the LSTM); prime: (B, P) ids,
    P >= 1, read first: the first id drawn follows the last prime id; uniforms: (B, N) in [0, 1),
    one per id drawn. temperature >= 0 (0 is greedy); top_k: int >= 1 or None; top_p: in (0, 1] or None;
    zoneout: the layers' fractions (p_h,) or (p_h, p_c), mixed in at each step as the layers do in eval.

    Returns ids: (B, N) int64 and the final state (same form as ``state``).
    """
    spec = cell_named(cell)
    dtype = embedding.dtype
    w_ih0, _, b_ih0, b_hh0 = weights[0]
    GH, H = weights[0][1].shape
    # Folding b_hh into the input side is exact for all but the GRU, where b_hn sits inside r * (.)
    fold = spec.kind != "gru"
    emb_proj = (matmul(embedding, w_ih0.T) + b_ih0 + (b_hh0 if fold else 0)).astype(dtype)
    w_ih = np.stack([w[0] for w in weights[1:]]).astype(dtype) if len(weights) > 1 else np.zeros((0, GH, H), dtype)
    w_hh = np.stack([w[1] for w in weights]).astype(dtype)
    b_ih = np.stack([w[2] + (w[3] if fold else 0) for w in weights]).astype(dtype)
    b_hh = np.stack([np.zeros_like(w[3]) if fold else w[3] for w in weights]).astype(dtype)
    h = np.array(state[0], dtype=dtype)
    c = np.array(state[1], dtype=dtype) if spec.has_cell_state else np.zeros_like(h)  # unread but by the LSTM
    prime = np.ascontiguousarray(prime, dtype=np.int64)
    uniforms = np.ascontiguousarray(uniforms, dtype=np.float64)
    ids = np.empty(uniforms.shape, dtype=np.int64)
    w_out, b_out = np.ascontiguousarray(w_out, dtype), np.ascontiguousarray(b_out, dtype)
    _generate(KINDS.index(spec.kind), ACTIVATIONS.index(spec.activation), emb_proj, w_ih, w_hh, b_ih, b_hh, w_out, b_out, h, c, prime, uniforms, float(temperature),
              0 if top_k is None else int(top_k), 1.0 if top_p is None else float(top_p),
              np.array((tuple(zoneout) + (0.0,))[:2], dtype), ids)
    return ids, ((h, c) if spec.has_cell_state else (h,))


# -- compiling the loop only when it pays -----------------------------------------------------------
# Compiling _generate takes 6-8 s of CPU time once per dtype (then it is cached); the step-by-step
# path that CharRNN.sample falls back to costs about 0.65 ms a character against 0.1 here (2-layer
# LSTM, H=128, one core of the 2-core AVX2 machine), so compiling pays from about 12,000 characters.
COMPILE_PAYS_AT = 12_000


def _tiny_args(dtype):
    """Arguments typed as every call of generate() passes them to _generate (the one specialisation
    per dtype), for a loop that draws nothing: one layer, one unit, one prime id, no uniforms."""
    one = np.zeros((1, 1), dtype)
    return (RNN, 0, one, np.zeros((0, 1, 1), dtype), np.zeros((1, 1, 1), dtype), one, one, one,
            np.zeros(1, dtype), np.zeros((1, 1, 1), dtype), np.zeros((1, 1, 1), dtype), np.zeros((1, 1), np.int64),
            np.zeros((1, 0)), 1.0, 0, 1.0, np.zeros(2, dtype), np.zeros((1, 0), np.int64))


def compiled_for(dtype) -> bool:
    """Whether the sampling loop for ``dtype`` is compiled in this process or in Numba's cache, so that
    the next call costs no compile."""
    return is_compiled(_generate, _tiny_args(np.dtype(dtype)))


def compile_now(dtype) -> None:
    """Compile (or load) the sampling loop for ``dtype`` and write it to Numba's cache."""
    _generate(*_tiny_args(np.dtype(dtype)))


def compile_in_background(dtype) -> None:
    """Compile the sampling loop for ``dtype`` into Numba's cache in a detached process, for the
    processes that come after this one; nothing waits for it."""
    compile_detached(f"from rnnfast.kernels.cpu.generate import compile_now; compile_now({np.dtype(dtype).name!r})")
