"""The numba.cuda kernels on a real GPU beyond the shared kernel check, and the layers on CuPy arrays.

Every cell x dtype x lengths x shape against the reference, all outputs and gradients, runs in
tests/test_reference.py (its ``gpu`` device). Skipped without CuPy or a usable GPU (see
conftest.py); ``python -m rnnfast.bench.gpu_check`` runs the same checks and times the kernels
against cuDNN.
"""
import numpy as np
import pytest

from rnnfast import testing
from rnnfast.bench.gpu_check import layers_end_to_end

pytestmark = pytest.mark.gpu


def test_weights_in_global_memory_and_batch_chunks(monkeypatch):
    """float64 LSTM at H=1024 keeps W_hh out of shared memory; ROWS forces batch chunks."""
    from rnnfast.kernels.cuda import common

    monkeypatch.setattr(common, "ROWS", 3)
    testing.check_kernel(testing.device("gpu"), testing.make_case("lstm", (3, 7, 5, 1024), np.float64, lengths=True))


def test_layers_run_on_cupy():
    import cupy as cp

    for row in layers_end_to_end(cp):
        assert row["ok"], row
