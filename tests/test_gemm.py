"""The CPU matmul every non-recurrent GEMM goes through (one BLAS pool for the whole step)."""
import numpy as np
import pytest

from rnnfast.kernels.cpu.gemm import matmul


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["cc", "cf", "fc", "ff", "strided"])
def test_matmul_equals_numpy(dtype, layout):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((5, 3)).astype(dtype)
    if layout[0] == "f":
        a = np.asfortranarray(a)
    if layout[1:] == "f":
        b = np.asfortranarray(b)
    if layout == "strided":
        a = rng.standard_normal((7, 10)).astype(dtype)[:, ::2]
    out = matmul(a, b)
    assert out.dtype == dtype and out.shape == (7, 3)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_matmul_keeps_numpy_semantics_for_mixed_and_empty():
    a = np.ones((2, 3), np.float32)
    assert matmul(a, np.ones((3, 2), np.float64)).dtype == np.float64
    np.testing.assert_array_equal(matmul(np.ones((2, 0)), np.ones((0, 4))), np.zeros((2, 4)))
    assert matmul(np.ones((0, 3)), np.ones((3, 4))).shape == (0, 4)
