"""Seq2Seq and its attention: float64 central differences for the whole model (attention on and off,
padding masks, bidirectional and stacked encoders, teacher forcing below 1), the attention layer on
its own, padding that never gets weight, beam 1 against greedy, batched against one-by-one decoding,
and a small task learned end to end."""
import numpy as np
import pytest

import rnnfast as rf
from rnnfast.models.seq2seq import EOS, Attention, PairSet, Seq2Seq
from rnnfast.testing import check_gradients


def pairs(rng, n, vocab, max_src=5, max_tgt=4):
    """Random padded pairs: sources of 1..max_src tokens, targets of 1..max_tgt - 1 tokens plus EOS;
    the first pair is of full length on both sides."""
    src_lengths = rng.integers(1, max_src + 1, n)
    tgt_lengths = rng.integers(2, max_tgt + 1, n)
    src_lengths[0], tgt_lengths[0] = max_src, max_tgt
    src, tgt = np.zeros((n, max_src), np.int64), np.zeros((n, max_tgt), np.int64)
    for i in range(n):
        src[i, :src_lengths[i]] = rng.integers(EOS + 1, vocab, src_lengths[i])
        tgt[i, :tgt_lengths[i] - 1] = rng.integers(EOS + 1, vocab, tgt_lengths[i] - 1)
        tgt[i, tgt_lengths[i] - 1] = EOS
    return src, src_lengths, tgt, tgt_lengths


def reversal(rng, n, vocab, lengths=(3, 7)):
    """The task of writing a string of 3-6 tokens backwards."""
    src_lengths = rng.integers(*lengths, n)
    src = np.zeros((n, lengths[1] - 1), np.int32)
    tgt = np.zeros((n, lengths[1]), np.int32)
    for i, n_i in enumerate(src_lengths):
        tokens = rng.integers(EOS + 1, vocab, n_i)
        src[i, :n_i], tgt[i, :n_i], tgt[i, n_i] = tokens, tokens[::-1], EOS
    return src, src_lengths.astype(np.int32), tgt, (src_lengths + 1).astype(np.int32)


def check_model_gradients(model, batch, entries=4):
    """The model's gradients of one train_step against central differences, its draws (dropout,
    teacher forcing) fixed by restoring its random state before every evaluation."""
    state = model.rng_state()
    model.zero_grad()
    model.train_step(batch)
    analytic = {name: g.copy() for name, g in model.grads.items()}

    def loss():
        model.set_rng_state(state)
        return model.train_step(batch)["loss"]

    check_gradients(loss, model.params, analytic, rtol=1e-5, atol=1e-8, entries=entries, eps=1e-5)


CASES = [dict(attention=a, cell=c) for a in ("bahdanau", "luong", "none") for c in ("rnn", "gru", "lstm")] + [
    dict(attention="bahdanau", cell="lstm", bidirectional=True, num_layers=2),
    dict(attention="luong", cell="gru", bidirectional=True, num_layers=2, decoder_cell="lstm"),
    dict(attention="none", cell="gru", bidirectional=True, num_layers=2),
    dict(attention="bahdanau", cell="gru", teacher_forcing=0.5, num_layers=2),
    dict(attention="luong", cell="lstm", teacher_forcing=0.5, bidirectional=True),
    dict(attention="none", cell="rnn", teacher_forcing=0.3),
    dict(attention="bahdanau", cell="lstm", dropout=0.3, num_layers=2),
    dict(attention="luong", cell="gru", layer_norm=True, zoneout=0.2, recurrent_dropout=0.2),
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gradients_match_central_differences(options):
    rng = np.random.default_rng(0)
    model = Seq2Seq(9, 8, hidden_size=5, embedding_dim=4, dtype=np.float64, seed=1, **options)
    check_model_gradients(model, pairs(rng, 3, 8))


@pytest.mark.parametrize("kind", ["bahdanau", "luong"])
def test_attention_layer_gradients(kind):
    """The attention alone: several queries over padded keys; the loss reads contexts and weights."""
    rng = np.random.default_rng(2)
    B, N, S, H, K = 3, 2, 5, 4, 6
    attention = Attention(kind, H, K, dtype=np.float64, seed=0)
    keys, q = rng.standard_normal((B, S, K)), rng.standard_normal((B, N, H))
    lengths = np.array([5, 2, 1])
    dcontext = rng.standard_normal((B, N, K))

    def loss():
        attention.prepare(keys, lengths)
        return float((attention.attend(q)[0] * dcontext).sum())

    attention.zero_grad()
    attention.prepare(keys, lengths)
    context, weights, cache = attention.attend(q)
    dq = attention.attend_backward(dcontext, cache)
    dkeys = attention.prepare_backward()
    np.testing.assert_allclose(weights.sum(axis=2), 1.0, rtol=1e-12)
    assert (weights[1, :, 2:] == 0).all() and (weights[2, :, 1:] == 0).all()  # padding gets no weight
    check_gradients(loss, {"q": q, "keys": keys, **attention.params},
                    {"q": dq, "keys": dkeys, **attention.grads}, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("attention", ["bahdanau", "luong", "none"])
def test_padding_changes_nothing(attention):
    """What sits in the padding of a source changes neither the loss nor the decodings (a target's
    padding is PAD, the id the loss ignores)."""
    rng = np.random.default_rng(3)
    model = Seq2Seq(9, 8, hidden_size=6, attention=attention, dtype=np.float64, seed=0, bidirectional=True)
    src, src_lengths, tgt, tgt_lengths = pairs(rng, 4, 8)
    noisy_src = src.copy()
    noisy_src[np.arange(5)[None] >= src_lengths[:, None]] = 5
    assert (noisy_src != src).any()
    assert model.evaluate((noisy_src, src_lengths, tgt, tgt_lengths))["loss"] == pytest.approx(
        model.evaluate((src, src_lengths, tgt, tgt_lengths))["loss"], rel=1e-12)
    assert model.translate(noisy_src, src_lengths) == model.translate(src, src_lengths)


@pytest.fixture(scope="module")
def trained():
    """A GRU model with attention trained on the reversal task: the end-to-end test, and a model
    whose decodings are not all alike for the decoding tests."""
    rng = np.random.default_rng(0)
    vocab = EOS + 1 + 8
    train, val = reversal(rng, 3000, vocab), reversal(rng, 200, vocab)
    model = Seq2Seq(vocab, vocab, hidden_size=64, attention="bahdanau", seed=0, max_target_len=8)
    result = rf.fit(model, rf.data.ArrayBatcher(train, 32, seed=0), PairSet(*val), lr=2e-3, clip=5.0, steps=400,
                    eval_every=400)
    return model, val, result


def test_learns_to_reverse_strings(trained):
    model, val, result = trained
    assert result["val"]["exact_match"] >= 0.9, result["val"]
    assert result["val"]["token_accuracy"] >= 0.97


def test_beam_one_is_greedy_and_batches_decode_as_one_by_one(trained):
    model, (src, src_lengths, _, _), _ = trained
    greedy = model.translate(src[:40], src_lengths[:40])
    assert model.translate(src[:40], src_lengths[:40], beam=1) == greedy
    assert [model.translate(src[i:i + 1], src_lengths[i:i + 1])[0] for i in range(40)] == greedy
    beam = model.translate(src[:40], src_lengths[:40], beam=4)
    assert [model.translate(src[i:i + 1], src_lengths[i:i + 1], beam=4)[0] for i in range(40)] == beam
    assert model.translate(src[:40], src_lengths[:40], batch_size=7, beam=4) == beam


def test_a_beam_as_wide_as_every_prefix_finds_the_most_likely_output():
    """With beam = V ** (max_len - 1) no prefix is ever pruned, so the search must return the output
    of highest total log-probability (length_penalty 0) among all of at most max_len tokens, which
    is found here by enumerating them on an untrained model."""
    rng = np.random.default_rng(5)
    V, max_len = 6, 3
    model = Seq2Seq(9, V, hidden_size=8, dtype=np.float64, seed=3, attention="luong")
    src, src_lengths, _, _ = pairs(rng, 4, 8)

    def log_prob(i, tokens):
        model.eval()
        tgt = np.array(tokens)[:, None]
        logits = model.forward(src[i:i + 1, :src_lengths[i]].T, src_lengths[i:i + 1], tgt)[:, 0]
        model.train()
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return logp[np.arange(len(tokens)), tokens].sum()

    outputs = [list(t) + [EOS] for n in range(max_len) for t in np.ndindex(*(V,) * n) if EOS not in t]
    outputs += [list(t) for t in np.ndindex(*(V,) * max_len) if EOS not in t]
    found = model.translate(src, src_lengths, beam=V ** (max_len - 1), length_penalty=0.0, max_len=max_len)
    for i, tokens in enumerate(found):
        best = max(log_prob(i, o) for o in outputs)
        written = tokens + [EOS] if len(tokens) < max_len else tokens
        assert log_prob(i, written) == pytest.approx(best, rel=1e-12)


def test_attention_weights_come_back_per_written_token(trained):
    model, (src, src_lengths, _, _), _ = trained
    for beam in (1, 3):
        found, weights = model.translate(src[:5], src_lengths[:5], beam=beam, return_attention=True)
        for tokens, w, n in zip(found, weights, src_lengths[:5]):
            assert w.shape == (len(tokens) + 1, n)  # a row per token and the EOS, a column per source token
            np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)


def test_teacher_forcing_draws_are_reproducible_and_saved():
    rng = np.random.default_rng(1)
    batch = pairs(rng, 4, 8)
    model = Seq2Seq(9, 8, hidden_size=6, teacher_forcing=0.5, seed=0)
    state = model.rng_state()
    first = model.train_step(batch)["loss"]
    assert model.train_step(batch)["loss"] != first  # the next step draws other tokens to feed back
    model.set_rng_state(state)
    assert model.train_step(batch)["loss"] == first
    assert model.rng_state()["teacher_forcing"]["calls"] == 1


def test_config_rebuilds_the_model_and_names_its_shapes():
    model = Seq2Seq(11, 7, hidden_size=6, num_layers=2, cell="lstm", decoder_cell="gru", bidirectional=True,
                    attention="luong", embedding_dim=5, seed=4)
    twin = rf.models.from_config(model.config())
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, twin.params[name])
    config = {k: v for k, v in model.config().items() if k != "class"}
    assert Seq2Seq.param_shapes(config) == {name: p.shape for name, p in model.params.items()}


@pytest.mark.parametrize("kwargs, message", [
    (dict(attention="dot"), "attention must be one of"),
    (dict(teacher_forcing=0.0), "teacher_forcing must be in (0, 1]"),
    (dict(teacher_forcing=1.5), "teacher_forcing must be in (0, 1]"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Seq2Seq(9, 8, **kwargs)


def test_bad_decoding_arguments():
    model = Seq2Seq(9, 8, hidden_size=4, seed=0)
    src, src_lengths = np.array([[3, 4]]), np.array([2])
    with pytest.raises(ValueError, match="beam must be a positive integer"):
        model.translate(src, src_lengths, beam=0)
    with pytest.raises(ValueError, match="src_lengths must be >= 1"):
        model.translate(src, np.array([0]))
    assert all(len(t) <= 3 for t in model.translate(src, src_lengths, max_len=3, beam=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_additive_scores_match_the_array_formulas(dtype, monkeypatch):
    """kernels/cpu/attention.py against the formulas it replaces (the GPU path), forward and backward."""
    from rnnfast.models import seq2seq

    rng = np.random.default_rng(4)
    B, N, S, H, K = 3, 2, 6, 5, 7
    keys, q = rng.standard_normal((B, S, K)).astype(dtype), rng.standard_normal((B, N, H)).astype(dtype)
    lengths, dcontext = np.array([6, 3, 1]), rng.standard_normal((B, N, K)).astype(dtype)
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(seq2seq, "_compiled", lambda backend, x, compiled=compiled: compiled)
        attention = Attention("bahdanau", H, K, dtype=dtype, seed=0)
        attention.prepare(keys, lengths)
        context, weights, cache = attention.attend(q)
        dq = attention.attend_backward(dcontext, cache)
        results.append([context, weights, dq, attention.prepare_backward(), *attention.grads.values()])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for ours, formula in zip(*results):
        np.testing.assert_allclose(ours, formula, rtol=tol, atol=tol)
