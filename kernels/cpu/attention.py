"""Additive (Bahdanau) attention's scores and their gradient, each one compiled pass.

The array formulas (:class:`rnnfast.models.seq2seq.Attention` on CuPy, and the specification) make
the (B, N, S, H) sum ``projected + W_q q``, its tanh, the product with w, and in backward four more
temporaries of that size, for every decoder step. Here each (b, n, s) row of H values is made,
used and written once, padded positions are skipped, and the float32 tanh is the vectorised
rational one of activations.py.
"""
from numba import njit

from rnnfast.kernels.cpu.activations import tanh


@njit(cache=True, fastmath=True, error_model="numpy")
def additive_scores(projected, query, w, lengths, pre, scores):
    """``pre[b, n, s] = tanh(projected[b, s] + query[b, n])`` and ``scores[b, n, s] = w . pre[b, n, s]``
    for s < lengths[b]; the other positions of scores are left as they are.

    projected: (B, S, H) the keys' projection (bias included); query: (B, N, H) the queries'
    projection; w: (H,); lengths: (B,); pre: (B, N, S, H), written; scores: (B, N, S), written."""
    B, N, H = query.shape
    for b in range(B):
        for n in range(N):
            for s in range(lengths[b]):
                acc = 0.0
                for h in range(H):
                    t = tanh(projected[b, s, h] + query[b, n, h])
                    pre[b, n, s, h] = t
                    acc += w[h] * t
                scores[b, n, s] = acc


@njit(cache=True, fastmath=True, error_model="numpy")
def additive_scores_backward(pre, w, dscores, lengths, dprojected, dquery, dw):
    """The gradient of :func:`additive_scores` for ``dscores`` (B, N, S): adds into dprojected
    (B, S, H) and dw (H,), writes dquery (B, N, H)."""
    B, N, S, H = pre.shape
    for b in range(B):
        for n in range(N):
            for h in range(H):
                dquery[b, n, h] = 0
            for s in range(lengths[b]):
                ds = dscores[b, n, s]
                for h in range(H):
                    t = pre[b, n, s, h]
                    dw[h] += ds * t
                    dz = ds * w[h] * (1 - t * t)
                    dprojected[b, s, h] += dz
                    dquery[b, n, h] += dz
