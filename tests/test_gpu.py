"""The numba.cuda kernels on a real GPU against the CPU kernels: every cell x dtype x lengths, all
outputs and gradients (float64 to 1e-9, float32 to 1e-4, relative), and the layers on CuPy arrays.

Skipped without CuPy or a usable GPU (see conftest.py); ``python -m rnnfast.bench.gpu_check`` runs
the same checks and times the kernels against cuDNN.
"""
import numpy as np
import pytest

cp = pytest.importorskip("cupy")

from rnnfast.bench.gpu_check import PARITY_SHAPES, TOLERANCE, layers_end_to_end, parity  # noqa: E402

pytestmark = pytest.mark.gpu

CASES = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("lstm", "tanh")]


@pytest.fixture(scope="module")
def kernels():
    from rnnfast.backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from rnnfast.kernels import cuda

    return cuda


@pytest.mark.parametrize("shape", PARITY_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,nonlinearity", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_kernels_match_cpu(kernels, cell, nonlinearity, dtype, lengths, shape):
    err, worst = parity(kernels, cp.asarray, cp.asnumpy, cell, dtype, lengths, shape, nonlinearity)
    assert err <= TOLERANCE[dtype], f"{worst}: relative error {err:.2e}"


def test_weights_in_global_memory_and_batch_chunks(kernels, monkeypatch):
    """float64 LSTM at H=1024 keeps W_hh out of shared memory; ROWS forces batch chunks."""
    from rnnfast.kernels.cuda import common

    monkeypatch.setattr(common, "ROWS", 3)
    err, worst = parity(kernels, cp.asarray, cp.asnumpy, "lstm", np.float64, True, (3, 7, 5, 1024))
    assert err <= 1e-9, f"{worst}: relative error {err:.2e}"


def test_layers_run_on_cupy(kernels):
    for row in layers_end_to_end(cp):
        assert row["ok"], row
