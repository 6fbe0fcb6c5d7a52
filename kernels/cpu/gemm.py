"""Matrix products for the rest of the library on the CPU, through the BLAS the kernels use.

NumPy and SciPy each bundle their own OpenBLAS, and each keeps a pool of threads that spin for a
while after a call. Numba's ``np.dot`` calls SciPy's. If the output layer's GEMMs ran on NumPy's
pool between the recurrent kernels' GEMMs on SciPy's, the two pools would take turns spinning on
the same two cores: a 2x128 LSTM language-model step measured 90 ms that way against 34 ms with
every GEMM on one pool. So every CPU GEMM of a training step goes through here.
"""
import numpy as np
from numba import njit


@njit(cache=True)
def dot_into(a, b, out):
    """out = a @ b through Numba's BLAS (2-D, one float dtype, contiguous)."""
    np.dot(a, b, out)


def _blas_ready(a):
    return a.dtype.type in (np.float32, np.float64) and (a.flags.c_contiguous or a.flags.f_contiguous)


def matmul(a, b):
    """a: (M, K) @ b: (K, N) -> (M, N). Float32/float64 pairs of one dtype go through Numba's BLAS;
    anything else (mixed or integer dtypes) is NumPy's ``@`` with its usual promotion."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.type not in (np.float32, np.float64):
        return a @ b
    a = a if _blas_ready(a) else np.ascontiguousarray(a)
    b = b if _blas_ready(b) else np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    if a.shape[1] == 0:
        out[...] = 0
    elif out.size:
        dot_into(a, b, out)
    return out
