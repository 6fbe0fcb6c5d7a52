"""Activations for the fused pointwise loops, chosen by dtype when Numba compiles.

Numba on this class of machine has no SVML, so ``np.tanh``/``np.exp`` inside ``@njit`` are scalar
library calls (~20 ns each) and they dominate an LSTM step. For float32 we use a rational
approximation of tanh (odd degree-13 / even degree-6 polynomials on a clamped input, as in
Eigen's fast tanh): pure multiply-add and one divide, which LLVM vectorises. Its error against
float64 tanh is below 4e-7 absolute over the whole real line, within float32 rounding of the
recurrences. float64 keeps the exact library functions, so gradient checks stay exact.

    sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

_CLAMP = np.float32(7.90531110763549805)
_A13, _A11, _A9, _A7, _A5, _A3, _A1 = (np.float32(v) for v in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_B6, _B4, _B2, _B0 = (np.float32(v) for v in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))


def tanh(x):
    """tanh of a scalar; fast rational form for float32, exact for float64."""
    return np.tanh(x)


def sigmoid(x):
    """Logistic sigmoid of a scalar; fast form for float32, exact for float64."""
    return 1.0 / (1.0 + np.exp(-x))


@njit(inline="always", fastmath=True, error_model="numpy")
def _tanh32(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
    return p / q


@overload(tanh, inline="always")
def _ov_tanh(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid, inline="always")
def _ov_sigmoid(x):
    if x == types.float32:
        return lambda x: np.float32(0.5) * _tanh32(np.float32(0.5) * x) + np.float32(0.5)
    return lambda x: 1.0 / (1.0 + np.exp(-x))
