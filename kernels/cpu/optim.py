"""Optimizer updates and the gradient norm as compiled passes, the CPU twin of torch's fused optimizers.

NumPy's formulas in :mod:`rnnfast.optim` make a temporary and a pass over memory for every
operator (``g + wd * p``, ``(1 - beta1) * g``, ``sqrt(v) / c + eps``, ...): Adam took 5.3 ms a step
for the 1.1M parameters of a 2x256 LSTM CharRNN on the 2-core machine, 16 ms for 2.2M. Here each
update is one loop over a parameter that reads p, g and the state once and writes them once: 1.9
and 4.7 ms (memory-bound; one call per parameter, as the Python overhead is ~10 us a call).

Every array is a 1-D contiguous view of one float dtype and every scalar is cast to that dtype by
the caller, so each function compiles once per dtype, and only for the dtypes a run uses. The
scalars in the array's dtype also mean a float32 update computes in float32 as torch's does; for
that reason no scalar is derived in here (``1 - beta1`` with an integer 1 would be float64), the
caller passes ``1 - beta1`` as well as ``beta1``.
Division by zero gives inf as in NumPy (``error_model="numpy"``), which lets the loops vectorise.
"""
import math

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def sgd_step(p, g, buf, lr, weight_decay, momentum, nesterov):
    """SGD, torch.optim.SGD with dampening 0. p, g, buf: (n,); buf is the momentum buffer, read
    and written only when momentum != 0 (zeros before the first step)."""
    for i in range(p.shape[0]):
        d = g[i]
        if weight_decay != 0:
            d += weight_decay * p[i]
        if momentum != 0:
            b = momentum * buf[i] + d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d


@njit(cache=True, error_model="numpy")
def adam_step(p, g, exp_avg, exp_avg_sq, lr_decay, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
              step_size, bias_correction2_sqrt, eps):
    """Adam (``weight_decay``: L2 added to the gradient) and AdamW (``lr_decay = 1 - lr * wd``
    multiplies p first; 1 for Adam). p, g, exp_avg, exp_avg_sq: (n,);
    ``step_size = lr / (1 - beta1**step)``, ``bias_correction2_sqrt = sqrt(1 - beta2**step)``."""
    for i in range(p.shape[0]):
        w = p[i]
        if lr_decay != 1:
            w *= lr_decay
        d = g[i]
        if weight_decay != 0:
            d += weight_decay * w
        m = beta1 * exp_avg[i] + one_minus_beta1 * d
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * d * d
        exp_avg[i], exp_avg_sq[i] = m, v
        p[i] = w - step_size * m / (math.sqrt(v) / bias_correction2_sqrt + eps)


@njit(cache=True, error_model="numpy")
def square_avg_step(p, g, square_avg, buf, lr, weight_decay, alpha, one_minus_alpha, eps, momentum):
    """RMSprop (``square_avg = alpha * square_avg + (1 - alpha) * g^2``) and Adagrad (alpha = 1
    keeps the sum exactly: ``square_avg + g^2``), then ``p -= lr * g / (sqrt(square_avg) + eps)``,
    through the momentum buffer buf when momentum != 0. p, g, square_avg, buf: (n,)."""
    for i in range(p.shape[0]):
        d = g[i]
        if weight_decay != 0:
            d += weight_decay * p[i]
        s = alpha * square_avg[i] + one_minus_alpha * d * d if alpha != 1 else square_avg[i] + d * d
        square_avg[i] = s
        scaled = d / (math.sqrt(s) + eps)
        if momentum != 0:
            scaled += momentum * buf[i]
            buf[i] = scaled
        p[i] -= lr * scaled


@njit(cache=True, fastmath={"reassoc", "contract"})
def sum_of_squares(x):
    """sum(x**2) of x: (n,) accumulated in float64. ``reassoc`` lets the sum run in vector lanes;
    its rounding differs from the serial sum by about n * 1e-16 relative, far inside float32's."""
    total = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total
