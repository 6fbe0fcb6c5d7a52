"""`rnnfast bench --device gpu` turns the GPU timing table into the CPU harness's rows, so one
formatter prints both. The timings themselves need a GPU; here they are stand-ins."""
import sys
import types

import pytest

pytest.importorskip("torch")
from rnnfast.bench import gpu_check  # noqa: E402
from rnnfast.bench.harness import format_table  # noqa: E402


def test_gpu_rows_use_the_harness_format(monkeypatch):
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceProperties=lambda i: {"name": b"Fake H100"})))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(gpu_check, "_cublas_sgemm_gflops", lambda cp, torch: 50_000.0)
    seen = {}

    def fake_table(kernels, cp, torch, reps, shapes, cells, log):
        seen.update(shapes=shapes, cells=cells, reps=reps)
        return [dict(shape=shape, cell=cell, agree=1e-6, ours_fwd=2.0, ours_fb=5.0, cudnn_fwd=1.0, cudnn_fb=4.0)
                for shape in shapes for cell in cells]

    monkeypatch.setattr(gpu_check, "_timing_table", fake_table)
    rows = gpu_check.run_gpu_bench(full=False, cells=["lstm", "rnn_tanh"], repeats=3)
    assert seen == {"shapes": [gpu_check.SHAPES[0], gpu_check.SHAPES[-1]], "cells": ("lstm", "rnn"), "reps": 3}
    machine, *layers = rows
    assert machine["kind"] == "machine" and "Fake H100" in machine["cpu"]
    assert len(layers) == 4
    first = layers[0]
    assert first["ratio"] == pytest.approx(4.0 / 5.0) and first["fwd_ratio"] == pytest.approx(0.5)
    T, B, I, H = gpu_check.SHAPES[0]
    assert first["gflops"] == pytest.approx(3 * 2 * T * B * 4 * H * (I + H) / 5e-3 / 1e9)
    table = format_table(rows)
    assert "Fake H100" in table and "| fwd+bwd lstm (100, 32, 128, 256) | 2.00 | 1.00 | 0.50 | 5.00 | 4.00 | 0.80 |" in table
