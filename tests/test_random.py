"""The counter-based generator behind dropout and sampling: a pure function of (seed, stream,
index), so masks and samples repeat across runs, resumes and devices."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnfast import random
from rnnfast.random import dropout_mask, uniform


def test_values_are_pinned():
    # Changing the hash would silently change every seeded run and break resuming old checkpoints.
    want = [[0.8986164927482605, 0.39221644401550293, 0.08471143245697021],
            [0.8422104716300964, 0.5571653842926025, 0.9526735544204712]]
    np.testing.assert_array_equal(uniform((2, 3), seed=1, stream=2), np.array(want, np.float32))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), stream=st.integers(0, 2**40), n=st.integers(1, 300), extra=st.integers(1, 50))
def test_uniform_is_a_function_of_seed_stream_and_index(seed, stream, n, extra):
    u = uniform((n,), seed, stream)
    assert u.dtype == np.float32 and np.all((u >= 0) & (u < 1))
    np.testing.assert_array_equal(uniform((n + extra,), seed, stream)[:n], u)  # index-based, not sequential
    np.testing.assert_array_equal(uniform((n,), seed, stream, dtype=np.float64), u.astype(np.float64))
    if n >= 8:
        assert not np.array_equal(uniform((n,), seed, stream + 1), u)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_rate_and_scale(p):
    mask = dropout_mask((200, 500), p, seed=7, stream=3, dtype=np.float64)
    assert set(np.unique(mask)) <= {0.0, 1.0 / (1.0 - p)}
    assert abs((mask == 0).mean() - p) < 0.01
    assert abs(mask.mean() - 1.0) < 4 * np.sqrt(p / (1 - p) / mask.size)  # 4 standard deviations


@pytest.mark.gpu
def test_same_numbers_on_cupy():
    import cupy as cp

    np.testing.assert_array_equal(cp.asnumpy(uniform((5, 7), 11, 4, xp=cp)), uniform((5, 7), 11, 4))
    np.testing.assert_array_equal(cp.asnumpy(dropout_mask((5, 7), 0.3, 11, 4, xp=cp)), dropout_mask((5, 7), 0.3, 11, 4))
    # zoneout's draws, at a size the CPU takes through its compiled pass
    np.testing.assert_array_equal(cp.asnumpy(random.below((64, 32, 128), 0.1, 11, 4, xp=cp)),
                                  random.below((64, 32, 128), 0.1, 11, 4))


# -- the compiled pass (kernels/cpu/random.py) --------------------------------------------------
def _compile_the_passes():
    """Compiled, so the big shapes take them."""
    from rnnfast.kernels.cpu.random import below_into, uniform_into

    whole = (np.int64(1), np.int64(1), np.int64(0))
    uniform_into(np.zeros(1, np.float32), np.uint64(0), *whole)
    below_into(np.zeros(1, np.float64), np.uint64(0), np.float32(0.5), *whole)
    below_into(np.zeros(1, np.float32), np.uint64(0), np.float32(0.5), *whole)


def formula_uniform(shape, seed, stream):
    n = int(np.prod(shape))
    return (random._bits((n, n, n, 0), seed, stream, np).astype(np.float32) * np.float32(1 / (1 << 24))).reshape(shape)


@pytest.mark.parametrize("shape", [(3,), (4095,), (4096,), (64, 32, 128), (7, 3, 300)])
@pytest.mark.parametrize("seed,stream", [(0, 0), (2**63 + 5, 17), (123, 2**40)])
def test_the_compiled_draws_equal_the_formula_bit_for_bit(shape, seed, stream):
    from rnnfast.kernels.cpu.random import below_into, uniform_into

    _compile_the_passes()
    expected = formula_uniform(shape, seed, stream)
    assert np.array_equal(uniform(shape, seed, stream), expected)
    for p in (0.1, 0.25, 1 / 3, 0.9):
        for dtype in (np.float32, np.float64):
            drawn = random.below(shape, p, seed, stream, dtype=dtype)
            assert drawn.dtype == dtype and np.array_equal(drawn, (expected < np.float32(p)).astype(dtype))
    if int(np.prod(shape)) >= random.COMPILED_FROM:
        assert {"uniform_into", "below_into"} <= random._READY


# -- a part of a draw (a data-parallel rank's rows) ----------------------------------------------
ROW_CASES = [((6, 2, 5), 1, 1, 3), ((64, 8, 128), 1, 4, 16), ((64, 8, 128), 1, 0, 8), ((8, 600), 0, 8, 24),
             ((5, 3, 1000), 2, 1000, 3000), ((1, 1, 1), 1, 31, 32), ((4096,), 0, 4096, 8192), ((0, 4, 3), 1, 4, 8)]


@pytest.mark.parametrize("compiled", [False, True], ids=["formula", "compiled"])
@pytest.mark.parametrize("shape,axis,start,total", ROW_CASES)
def test_rows_of_a_draw_equal_the_slice_of_the_whole_draw_bit_for_bit(shape, axis, start, total, compiled,
                                                                      monkeypatch):
    if compiled:
        _compile_the_passes()
    else:
        monkeypatch.setattr(random, "COMPILED_FROM", 2**62)
    whole_shape = shape[:axis] + (total,) + shape[axis + 1:]
    cut = (slice(None),) * axis + (slice(start, start + shape[axis]),)
    rows = (axis, start, total)
    for seed, stream in ((0, 0), (2**63 + 5, 17)):
        whole = uniform(whole_shape, seed, stream)
        assert np.array_equal(uniform(shape, seed, stream, rows=rows), whole[cut])
        for dtype in (np.float32, np.float64):
            assert np.array_equal(random.below(shape, 0.3, seed, stream, dtype=dtype, rows=rows),
                                  random.below(whole_shape, 0.3, seed, stream, dtype=dtype)[cut])
            assert np.array_equal(dropout_mask(shape, 0.4, seed, stream, dtype=dtype, rows=rows),
                                  dropout_mask(whole_shape, 0.4, seed, stream, dtype=dtype)[cut])


def test_rows_past_the_draw_are_an_error():
    with pytest.raises(ValueError, match="rows 6..10 of a draw over 8 along axis 1 are out of range"):
        uniform((3, 4), 0, 0, rows=(1, 6, 8))


def test_until_the_pass_is_compiled_the_formula_draws_the_same_numbers(monkeypatch):
    monkeypatch.setattr(random, "_READY", set())
    monkeypatch.setattr("rnnfast.kernels.cpu.common.is_compiled", lambda kernel, args: False)
    assert np.array_equal(uniform((8, 1000), 3, 4), formula_uniform((8, 1000), 3, 4))
    assert np.array_equal(random.below((8, 1000), 0.3, 3, 4), (formula_uniform((8, 1000), 3, 4) < 0.3) * 1.0)
    assert random._READY == set()
