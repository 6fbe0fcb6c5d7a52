"""Softmax cross-entropy and its gradient in one compiled pass over the logits.

The array formulas (:func:`rnnfast.losses.cross_entropy` on CuPy) make the shifted logits, their
exponentials, the probabilities and a mask, each an (N, V) temporary and a pass over memory. Here
each row is read once into L1 and its gradient written once: max, exponentials written straight
into dlogits and summed, then scaled in place, all while the row is in cache.

Measured on the 2-core machine (float32, V = 65): 3.0 ms against NumPy's 4.1 ms for N = 6400
rows, about even (1.0 ms) for N = 2048, where NumPy's temporaries fit in L2. What is left is the
exponentials: Numba has no SVML here, so each is a scalar ``expf`` call (~6 ns) where NumPy's are
vectorised; a vectorisable float32 exp would take this pass to a few tenths of a millisecond.
"""
import math

from numba import njit


@njit(cache=True, error_model="numpy")
def cross_entropy_rows(logits, targets, ignore_index, scale, dlogits):
    """Sum over the rows not ignored of ``log(sum(exp(logits[n]))) - logits[n, targets[n]]``, and
    ``dlogits = scale * (softmax(logits) - onehot(targets))`` (zero on ignored rows).

    logits: (N, V); targets: (N,) in [0, V) or ``ignore_index``; scale: the reduction's factor (a
    float); dlogits: (N, V), written. Returns the sum in float64.
    """
    total = 0.0
    num_classes = logits.shape[1]
    for n in range(logits.shape[0]):
        t = targets[n]
        if t == ignore_index:
            for j in range(num_classes):
                dlogits[n, j] = 0
            continue
        row_max = logits[n, 0]
        for j in range(1, num_classes):
            if logits[n, j] > row_max:
                row_max = logits[n, j]
        s = 0.0
        for j in range(num_classes):
            e = math.exp(logits[n, j] - row_max)
            dlogits[n, j] = e
            s += e
        inv = scale / s
        for j in range(num_classes):
            dlogits[n, j] *= inv
        dlogits[n, t] -= scale
        total += math.log(s) - (logits[n, t] - row_max)
    return total
