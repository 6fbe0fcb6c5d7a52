"""The compiled generation loop equals the plain step-by-step path on the same uniforms.

The plain path is the reference cells (``kernels/cpu/reference.py``) one step at a time, the
output layer in NumPy and ``rnnfast.models.sample_from_logits`` (the sampling specification).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast as rf
from rnnfast.kernels.cpu import reference
from rnnfast.kernels.cells import cell_named
from rnnfast.kernels.cpu.generate import generate
from rnnfast.models import sample_from_logits

V, E, H, L, B, P, N = 11, 6, 8, 2, 3, 4, 40
SETTINGS = [dict(temperature=1.0), dict(temperature=0.7, top_k=4), dict(temperature=1.3, top_p=0.8),
            dict(temperature=1.0, top_k=5, top_p=0.6), dict(temperature=0.0), dict(temperature=0.5, top_k=1)]


def _model(cell, dtype, seed=0):
    rng = np.random.default_rng(seed)
    G = cell_named(cell).num_gates
    weights = [tuple(rng.uniform(-0.6, 0.6, shape).astype(dtype)
                     for shape in ((G * H, E if layer == 0 else H), (G * H, H), (G * H,), (G * H,)))
               for layer in range(L)]
    embedding = rng.standard_normal((V, E)).astype(dtype)
    w_out = rng.uniform(-1, 1, (V, H)).astype(dtype)
    b_out = rng.uniform(-1, 1, V).astype(dtype)
    state = tuple(rng.uniform(-0.5, 0.5, (L, B, H)).astype(dtype) for _ in range(2 if cell == "lstm" else 1))
    return weights, embedding, w_out, b_out, state


def _plain(cell, weights, embedding, w_out, b_out, state, prime, uniforms, **sampling):
    state = [tuple(s[layer] for s in state) for layer in range(L)]
    ids = np.empty(uniforms.shape, np.int64)
    token = prime[:, 0]
    for step in range(prime.shape[1] - 1 + uniforms.shape[1]):
        x = embedding[token]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            if cell == "lstm":
                new = reference.lstm_step(x, *state[layer], w_ih, w_hh, b_ih, b_hh)
            elif cell == "gru":
                new = (reference.gru_step(x, *state[layer], w_ih, w_hh, b_ih, b_hh),)
            else:
                new = (reference.rnn_step(x, *state[layer], w_ih, w_hh, b_ih, b_hh, cell.split("_")[1]),)
            state[layer] = new
            x = new[0]
        if step + 1 < prime.shape[1]:
            token = prime[:, step + 1]
            continue
        n = step + 1 - prime.shape[1]
        token = sample_from_logits(x @ w_out.T + b_out, uniforms[:, n], **sampling).astype(np.int64)
        ids[:, n] = token
    final = tuple(np.stack([s[k] for s in state]) for k in range(len(state[0])))
    return ids, final


@pytest.mark.parametrize("sampling", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_generate_equals_plain_path(cell, sampling):
    model = _model(cell, np.float64)
    rng = np.random.default_rng(1)
    prime = rng.integers(0, V, (B, P))
    uniforms = rng.random((B, N))
    ids, final = generate(cell, *model, prime, uniforms, **sampling)
    want_ids, want_final = _plain(cell, *model, prime, uniforms, **sampling)
    assert ids.dtype == np.int64 and ids.shape == (B, N)
    np.testing.assert_array_equal(ids, want_ids)
    for got, want in zip(final, want_final):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generate_float32_and_prime_of_one(cell):
    model = _model(cell, np.float32)
    rng = np.random.default_rng(2)
    prime = rng.integers(0, V, (B, 1))
    uniforms = rng.random((B, N))
    ids, final = generate(cell, *model, prime, uniforms, temperature=0.9, top_k=6)
    want_ids, want_final = _plain(cell, *model, prime, uniforms, temperature=0.9, top_k=6)
    np.testing.assert_array_equal(ids, want_ids)
    for got, want in zip(final, want_final):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("stream", [False, True])
def test_charrnn_sample_compiled_equals_stepwise(cell, stream):
    """CharRNN.sample on the CPU runs the compiled loop (in chunks when streaming); the step-by-step
    path it replaces, which the GPU still runs, is its specification."""
    model = rf.models.CharRNN(vocab_size=V, hidden_size=H, num_layers=L, cell=cell, embedding_dim=E, seed=3)
    prime = np.array([1, 4, 2])
    pieces = []
    got = model.sample(prime, 40, temperature=0.8, top_p=0.9, seed=5, num_samples=2,
                       stream=pieces.append if stream else None, compiled=True)
    uniforms = rf.random.uniform((2, 40), 5, stream=0, dtype=np.float64)
    want = np.empty((2, len(prime) + 40), np.int32)
    want[:, :len(prime)] = prime
    model._sample_stepwise(prime, uniforms, 0.8, None, 0.9, want, lambda ids: None)
    np.testing.assert_array_equal(got, want)
    if stream:
        np.testing.assert_array_equal(np.concatenate(pieces, axis=1), want)


@pytest.mark.parametrize("cell,zoneout", [("lstm", 0.2), ("lstm", (0.0, 0.4)), ("gru", 0.3), ("rnn", 0.5)])
def test_charrnn_sample_with_zoneout_compiled_equals_stepwise(cell, zoneout):
    """The compiled loop mixes zoneout's expectation into each step as the layers do in eval mode."""
    model = rf.models.CharRNN(vocab_size=V, hidden_size=H, num_layers=L, cell=cell, embedding_dim=E, seed=3,
                              zoneout=zoneout, dtype=np.float64)
    prime = np.array([1, 4, 2])
    got = model.sample(prime, 60, temperature=0.8, seed=5, num_samples=2, compiled=True)
    uniforms = rf.random.uniform((2, 60), 5, stream=0, dtype=np.float64)
    want = np.empty((2, len(prime) + 60), np.int32)
    want[:, :len(prime)] = prime
    model.eval()  # as sample() runs it: zoneout's expectation, not its training draws
    model._sample_stepwise(prime, uniforms, 0.8, None, None, want, lambda ids: None)
    np.testing.assert_array_equal(got, want)
    # and the mixing is really there: the loop's final state differs from the same loop without it
    rnn = model.rnn
    args = ([rnn.direction_weights(layer) for layer in range(L)], model.embed.params["weight"],
            model.head.params["weight"], model.head.params["bias"])
    feed, u = np.repeat(prime[None], 2, axis=0), rf.random.uniform((2, 10), 5, stream=0, dtype=np.float64)
    _, zoned = generate(rnn.spec.name, *args, rnn.zero_state(2), feed, u, zoneout=rnn.zoneout)
    _, plain = generate(rnn.spec.name, *args, rnn.zero_state(2), feed, u)
    assert not np.allclose(zoned[-1], plain[-1])


_READY = """
import numpy as np
from rnnfast.kernels.cpu.generate import compile_now, compiled_for
print(compiled_for(np.float32), compiled_for(np.float64))
if {compile}:
    compile_now(np.float32)
    print(compiled_for(np.float32), compiled_for(np.float64))
"""


def test_the_sampling_loop_is_ready_once_compiled_and_cached(tmp_path):
    """compiled_for tells an empty cache from a filled one, per dtype; CharRNN.sample and
    'rnnfast generate' decide on it whether to compile. A fresh process with the cache filled by an
    earlier one finds the loop ready."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = lambda compile: subprocess.run([sys.executable, "-c", _READY.format(compile=compile)], env=env,  # noqa: E731
                                         capture_output=True, text=True, timeout=600)
    first = run(True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.split() == ["False", "False", "True", "False"]
    again = run(False)
    assert again.stdout.split() == ["True", "False"]


def test_sample_picks_the_compiled_loop_only_when_it_is_ready_or_pays():
    model = rf.models.CharRNN(vocab_size=V, hidden_size=H, num_layers=L, cell="gru", embedding_dim=E, seed=3)
    kernels = rf.get_backend(model.head.params["weight"]).kernels
    assert model._compiled_sampler(False, 10**9) is None
    assert model._compiled_sampler(True, 1) is kernels.generate
    assert model._compiled_sampler(None, kernels.GENERATE_COMPILE_PAYS_AT) is kernels.generate
    assert (model._compiled_sampler(None, 1) is kernels.generate) == model.sampling_compiled
    a = model.sample(np.array([1, 2]), 30, seed=4, compiled=False)
    np.testing.assert_array_equal(a, model.sample(np.array([1, 2]), 30, seed=4, compiled=True))
