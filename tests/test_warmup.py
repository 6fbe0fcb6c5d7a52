"""The first run's second process compiles exactly the kernels the run then loads."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import typeof

import rnnfast as rf
from rnnfast.warmup import _cell

LAYERS = {"rnn": rf.RNN, "lstm": rf.LSTM, "gru": rf.GRU}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backward_probe_is_typed_as_a_real_backward_pass(cell, dtype):
    """The probe stands in for a real call: a layer's backward must compile (or load) the very
    specialisation the probe names, or the second process would compile something no run uses."""
    layer = LAYERS[cell](3, 4, num_layers=2, dtype=dtype, seed=0)
    y, _ = layer(np.zeros((5, 2, 3), dtype))
    layer.backward(np.ones_like(y))
    rows, args = _cell(cell).backward_probe(np.dtype(dtype))
    assert tuple(typeof(a) for a in args) in rows.overloads
    rows(*args)  # T = 0: runs no step, needs no GEMM


_FIRST = """
from rnnfast.warmup import backward_compiled, compile_backward
assert not backward_compiled("lstm", "float32")
compile_backward("lstm", "float32", "Adam", "int32")
"""

_RUN = """
import numpy as np, rnnfast as rf
from rnnfast.kernels.cpu import cross_entropy, embedding, lstm, optim
from rnnfast.warmup import backward_compiled
assert backward_compiled("lstm", "float32")
text = "the quick brown fox jumps over the lazy dog " * 20
vocab = rf.Vocab.from_text(text)
model = rf.models.CharRNN(len(vocab), hidden_size=8, num_layers=2, seed=0)
trainer = rf.Trainer(model, rf.optim.Adam(lr=1e-3), rf.StreamBatcher(vocab.encode(text), 4, 16), clip=5.0)
trainer.run(steps=2)
kernels = (lstm._backward_rows, cross_entropy.cross_entropy_rows, embedding._scatter_add_rows, optim.adam_step,
           optim.sum_of_squares)
print(sum(sum(k.stats.cache_misses.values()) for k in kernels), min(len(k.overloads) for k in kernels))
"""


def test_the_second_process_fills_the_cache_for_a_real_training_step(tmp_path):
    """With an empty cache, compile_backward (what 'rnnfast train' starts in a second process)
    compiles what a CharRNN step then needs after its forward pass: a later run loads every one of
    those kernels from the cache and compiles none of them."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", _FIRST], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", _RUN], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    misses, fewest = map(int, run.stdout.split())
    assert misses == 0 and fewest >= 1  # each one ran, and none was compiled
