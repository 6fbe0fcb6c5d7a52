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


# --- the register-tiled GEMM itself -------------------------------------------------------------

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from rnnfast.kernels.cpu import gemm as G


def _operands(rng, m, k, n, dtype, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return (a.T if trans_a else a), (b.T if trans_b else b)


def _check(out, expected, dtype, scale):
    tol = 2e-6 if dtype == np.float32 else 1e-13
    assert np.abs(out - expected).max() <= tol * max(1.0, scale)


# Shapes around the tile (MR rows by NR columns), the row blocks (MC) and the depth passes (KC):
# remainders of every kind, a single row (generation), and one recurrent step's shape.
# (2, 40, 300): rows 1-3 take four panels per call, then single panels, then the partial one.
EDGE_SHAPES = [(1, 1, 1), (5, 7, 3), (13, 300, 33), (1, 256, 1024), (32, 256, 1024), (250, 513, 70), (3, 600, 17),
               (2, 40, 300)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,k,n", EDGE_SHAPES)
def test_gemm_matches_float64_reference(dtype, trans_a, trans_b, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, b = _operands(rng, m, k, n, dtype, trans_a, trans_b)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.sqrt(k) * 4
    out = np.full((m, n), np.nan, dtype)
    G.gemm(a, b, out, False)  # overwrite: the NaNs must all go
    _check(out, expected, dtype, scale)
    start = rng.standard_normal((m, n)).astype(dtype)
    acc = start.copy()
    G.gemm(a, b, acc, True)
    _check(acc, expected + start, dtype, scale)


def _tuned_products(dtype):
    """The three entry points, each as product(a, b, c, accumulate) on an unpacked b."""
    core = G.core_address(dtype)
    return {"gemm": G.gemm,
            "gemm_packed": lambda a, b, c, acc: G.gemm_packed(a, G.pack_weights(b), c, acc),
            "gemm_packed_serial": lambda a, b, c, acc: G.gemm_packed_serial(a, G.pack_weights(b), c, acc, core)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("m,k,n", EDGE_SHAPES + [(4, 0, 3)])
def test_tuned_gemms_match_the_plain_reference(dtype, trans_a, trans_b, accumulate, m, k, n):
    """gemm, gemm_packed and gemm_packed_serial against reference_gemm, the module's specification,
    which is itself checked against a float64 product first."""
    rng = np.random.default_rng(m * 1000 + k + n + 1)
    a, b = _operands(rng, m, k, n, dtype, trans_a, trans_b)
    start = rng.standard_normal((m, n)).astype(dtype) if accumulate else np.full((m, n), np.nan, dtype)
    scale = np.sqrt(k) * 4
    ref = start.copy()
    G.reference_gemm(a, b, ref, accumulate)
    _check(ref, a.astype(np.float64) @ b.astype(np.float64) + (start if accumulate else 0), dtype, scale)
    for name, product in _tuned_products(dtype).items():
        out = start.copy()
        product(a, b, out, accumulate)
        assert not np.isnan(out).any(), name
        _check(out, ref, dtype, 2 * scale)  # both round in dtype, in different orders


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_weights_serve_many_products_serial_or_parallel(dtype):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 40)).astype(dtype)  # (N, K): a weight used as w.T, like W_hh
    packed = G.pack_weights(w.T)
    assert packed.shape == (-(-96 // G.panel_width(dtype)), 40, G.panel_width(dtype))
    for m in (1, 7, 32, 300):
        x = rng.standard_normal((m, 40)).astype(dtype)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        out_p, out_s = np.empty((m, 96), dtype), np.empty((m, 96), dtype)
        G.gemm_packed(x, packed, out_p, False)
        G.gemm_packed_serial(x, packed, out_s, False, G.core_address(dtype))
        _check(out_p, ref, dtype, 30)
        np.testing.assert_array_equal(out_p, out_s)  # same tiles, same order of sums


def test_gemm_writes_only_inside_c_and_handles_empty_depth():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((13, 9)).astype(np.float32)
    b = rng.standard_normal((9, 35)).astype(np.float32)
    big = np.full((15, 40), 7.0, np.float32)
    G.gemm(a, b, big[1:14, 2:37], False)  # a view with row stride 40: the guard band stays 7
    np.testing.assert_allclose(big[1:14, 2:37], a @ b, rtol=1e-5, atol=1e-5)
    guard = big.copy()
    guard[1:14, 2:37] = 7.0
    assert (guard == 7.0).all()
    out = np.ones((4, 3), np.float32)
    G.gemm(np.ones((4, 0), np.float32), np.ones((0, 3), np.float32), out, True)
    assert (out == 1).all()
    G.gemm(np.ones((4, 0), np.float32), np.ones((0, 3), np.float32), out, False)
    assert (out == 0).all()


def test_products_shared_across_cores_do_every_item_once_even_from_several_callers():
    """Large products hand their items out through an atomic counter of their own (gemm._core).
    Items done twice would accumulate twice, items skipped would keep the start: with accumulate
    on a known start both show. Four caller threads at once must not share a counter."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(5)
    shapes = [(2048, 256, 260), (1030, 700, 96), (250, 1300, 70)]  # partial row blocks and panels
    cases = []
    for m, k, n in shapes:
        a, b = _operands(rng, m, k, n, np.float32, True, False)  # A transposed: the packed path
        assert m * k * n >= G.SERIAL_BELOW
        start = rng.standard_normal((m, n)).astype(np.float32)
        cases.append((a, b, start, a.astype(np.float64) @ b.astype(np.float64) + start))

    def run(case):
        a, b, start, expected = case
        out = start.copy()
        G.gemm(a, b, out, True)
        return np.abs(out - expected).max() / np.sqrt(a.shape[1])

    with ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(run, cases * 4))
    assert max(errors) < 2e-6 * 4


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 300), n=st.integers(1, 70), trans_a=st.booleans(),
       trans_b=st.booleans(), accumulate=st.booleans())
def test_gemm_any_shape(m, k, n, trans_a, trans_b, accumulate):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a, b = _operands(rng, m, k, n, np.float32, trans_a, trans_b)
    out = rng.standard_normal((m, n)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64) + (out if accumulate else 0)
    G.gemm(a, b, out, accumulate)
    _check(out, expected, np.float32, np.sqrt(k) * 4)


_OTHER_WIDTH = """
import numpy as np
from rnnfast.kernels.cpu import gemm as G
assert G.VECTOR_BITS == {bits}, G.VECTOR_BITS
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for m, k, n in ((1, 5, 3), (13, 300, 33), (40, 70, 100)):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((n, k)).astype(dtype).T
        out = np.empty((m, n), dtype)
        G.gemm(a, b, out, False)
        err = np.abs(out - a.astype(np.float64) @ b.astype(np.float64)).max()
        assert err < 1e-4, (dtype, m, k, n, err)
print("ok", G.MR, G.panel_width(np.float32))
"""


@pytest.mark.parametrize("cpu,features,bits", [("generic", "", 128), ("haswell", "+avx,+avx2,+fma,+sse4.2", 256)])
def test_gemm_tiles_for_narrower_vectors(tmp_path, cpu, features, bits):
    """The tile chosen for AVX2 and for 128-bit vectors (SSE, NEON), compiled for those CPUs here."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _OTHER_WIDTH.format(bits=bits)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok 6 ")


def test_reuse_packing_packs_each_weight_once_while_it_holds(monkeypatch):
    """Under reuse_packing a weight is packed at its first product and that copy serves the next
    ones (the same results); outside it every call packs again, so a weight changed between calls
    is read as it is now."""
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((24, 40)).astype(np.float32), rng.standard_normal((5, 40)).astype(np.float32)
    packs = []
    real = G.pack_b
    monkeypatch.setattr(G, "pack_b", lambda b, nr: packs.append(b.shape) or real(b, nr))
    plain = G.matmul(x, w.T)
    with G.reuse_packing():
        first, again = G.matmul(x, w.T), G.matmul(x, w.T)
        other = G.matmul(x[:, :24], w[:, :24].T)  # another view of the same weight: its own packing
        with G.reuse_packing():  # nested: the same store
            inner = G.matmul(x, w.T)
    assert len(packs) == 3  # plain, the first under reuse, the other view
    for out in (first, again, inner):
        np.testing.assert_array_equal(out, plain)
    np.testing.assert_allclose(other, x[:, :24] @ w[:, :24].T, rtol=1e-5)
    w *= 2  # outside reuse_packing nothing is kept
    np.testing.assert_allclose(G.matmul(x, w.T), 2 * plain, rtol=1e-6)
    assert len(packs) == 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,n", [(1, 1), (7, 5), (300, 33), (40, 64), (3, 70)])
@pytest.mark.parametrize("layout", ["c", "f", "strided"])
def test_pack_b_lays_out_k_major_panels_zero_padded(dtype, k, n, layout):
    """pack_b against its definition in NumPy: panel jp holds columns jp*NR:(jp+1)*NR of b, row
    p of the panel is row p of b, and the columns past N are zeros (the tile reads them)."""
    rng = np.random.default_rng(k * 100 + n)
    b = rng.standard_normal((k, n)).astype(dtype)
    if layout == "f":
        b = np.asfortranarray(b)
    elif layout == "strided":
        b = rng.standard_normal((k, 2 * n)).astype(dtype)[:, ::2]
    nr = G.panel_width(dtype)
    npanels = -(-n // nr)
    padded = np.zeros((k, npanels * nr), dtype)
    padded[:, :n] = b
    expected = padded.reshape(k, npanels, nr).transpose(1, 0, 2)
    np.testing.assert_array_equal(G.pack_b(b, nr), expected)
