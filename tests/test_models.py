"""CharRNN, SeqRegressor and SeqClassifier: end-to-end gradients against central differences (float64),
truncated BPTT, sampling, configs and dropout streams."""
import json

import numpy as np
import pytest

import rnnfast as rf
from rnnfast import testing
from rnnfast.models import CharRNN, SeqClassifier, SeqRegressor, from_config, sample_from_logits

V = 7  # vocabulary size of the small models


def check_gradients(model, loss):
    """Hold every parameter's analytic gradient to central differences on three entries: the two
    largest in magnitude and one at random. ``loss()`` zeroes the gradients, runs one
    ``train_step`` and returns its loss."""
    loss()
    analytic = {name: g.copy() for name, g in model.grads.items()}
    testing.check_gradients(loss, model.params, analytic, rtol=1e-5, atol=1e-8, entries=3)


def char_batch(T=5, B=3, seed=0):
    ids = np.random.default_rng(seed).integers(0, V, size=(T + 1, B)).astype(np.int32)
    return ids[:-1], ids[1:]


def fresh_loss(model, batch):
    """A loss closure that replays the same dropout masks and starts from a zero state every call."""
    rng = model.rng_state()

    def loss():
        model.set_rng_state(rng)
        model.reset_state()
        model.zero_grad()
        return model.train_step(batch)["loss"]

    return loss


# -- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T, folded", [(5, True), (2, False)])
def test_charrnn_gradients_match_central_differences(cell, T, folded):
    """Both ways in: with more positions (T*B) than characters (V) the lookup is folded into layer
    0's input projection (a lookup in weight @ W_ih^T); with fewer it is a plain lookup."""
    model = CharRNN(V, hidden_size=6, num_layers=2, cell=cell, dropout=0.25, embedding_dim=4, dtype=np.float64, seed=1)
    check_gradients(model, fresh_loss(model, char_batch(T=T)))
    assert model._embedded is folded


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("options", [{}, {"layer_norm": True, "zoneout": 0.2, "weight_drop": 0.3,
                                          "recurrent_dropout": 0.2}])
def test_folded_embedding_gives_the_plain_lookups_losses_and_gradients(cell, options):
    """CharRNN's folded first layer against the same children called the plain way (Embedding,
    then the recurrent layer on its rows), with the regularisers on: same logits, same gradient
    of every parameter, repeated ids included (V = 7 < T*B = 24)."""
    model = CharRNN(V, hidden_size=5, num_layers=2, cell=cell, dropout=0.2, embedding_dim=3, dtype=np.float64,
                    seed=4, **options)
    x, y = char_batch(T=8)
    rng = model.rng_state()
    model.zero_grad()
    folded = model.train_step((x, y))["loss"]
    assert model._embedded
    grads = {name: g.copy() for name, g in model.grads.items()}
    model.set_rng_state(rng)
    model.reset_state()
    model.zero_grad()
    out, _ = model.rnn(model.embed(x))
    logits = model.head(model.drop(out))
    plain, dlogits = rf.losses.cross_entropy(logits, y)
    dx, _ = model.rnn.backward(model.drop.backward(model.head.backward(dlogits)))
    model.embed.backward(dx)
    assert plain == pytest.approx(folded, rel=1e-12)
    for name, g in model.grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell, bidirectional, many_to_many, with_lengths", [
    ("lstm", False, False, False),
    ("lstm", True, False, True),
    ("gru", True, True, True),
    ("rnn", False, True, False),
])
def test_seq_regressor_gradients_match_central_differences(cell, bidirectional, many_to_many, with_lengths):
    rng = np.random.default_rng(2)
    B, T, I, O = 4, 5, 3, 2
    model = SeqRegressor(I, hidden_size=5, output_size=O, num_layers=2, cell=cell, bidirectional=bidirectional,
                         dropout=0.2, many_to_many=many_to_many, dtype=np.float64, seed=3)
    x = rng.standard_normal((B, T, I))
    y = rng.standard_normal((B, T, O) if many_to_many else (B, O))
    batch = (x, np.array([5, 2, 1, 4]), y) if with_lengths else (x, y)
    check_gradients(model, fresh_loss(model, batch))


@pytest.mark.parametrize("ids_in", [True, False])
def test_seq_classifier_gradients_match_central_differences(ids_in):
    rng = np.random.default_rng(4)
    B, T = 5, 6
    if ids_in:
        model = SeqClassifier(V, 3, hidden_size=5, bidirectional=True, dropout=0.2, embedding_dim=4,
                              dtype=np.float64, seed=5)
        x = rng.integers(0, V, size=(B, T))
    else:
        model = SeqClassifier(None, 3, hidden_size=5, num_layers=2, cell="gru", input_size=3, dtype=np.float64, seed=5)
        x = rng.standard_normal((B, T, 3))
    batch = (x, np.array([6, 1, 3, 2, 5]), np.array([0, 2, 1, 1, 0]))
    check_gradients(model, fresh_loss(model, batch))


# -- truncated BPTT -------------------------------------------------------------------------------
def test_truncated_bptt_starts_each_batch_from_the_last_final_state():
    model = CharRNN(V, hidden_size=6, num_layers=2, dtype=np.float64, seed=0)
    first, second = char_batch(seed=1), char_batch(seed=2)
    model.train_step(first)
    _, (h1, c1) = model(first[0])
    carried = model.carried_state()
    np.testing.assert_array_equal(carried["h"], h1)
    np.testing.assert_array_equal(carried["c"], c1)

    model.zero_grad()
    loss = model.train_step(second)["loss"]
    grads = {k: g.copy() for k, g in model.grads.items()}
    # the same batch run by hand from the first batch's final state, with no gradient into that state
    model.zero_grad()
    logits, _ = model(second[0], (h1, c1))
    expected, dlogits = rf.losses.cross_entropy(logits, second[1])
    model.backward(dlogits)
    assert loss == expected
    for name, g in grads.items():
        np.testing.assert_array_equal(g, model.grads[name])

    model.reset_state()
    assert model.carried_state() == {}
    assert model.train_step(second)["loss"] != loss  # from zeros again


def test_rng_state_replays_dropout_masks():
    model = CharRNN(V, hidden_size=6, num_layers=2, dropout=0.5, seed=0)
    batch = char_batch()
    saved = model.rng_state()
    first = model.train_step(batch)["loss"]
    model.reset_state()
    assert model.train_step(batch)["loss"] != first  # the streams moved on: new masks
    model.set_rng_state(json.loads(json.dumps(saved)))  # survives JSON, as in a checkpoint
    model.reset_state()
    assert model.train_step(batch)["loss"] == first


# -- evaluation -----------------------------------------------------------------------------------
def test_charrnn_evaluate_is_mean_nll_and_leaves_training_state_alone():
    model = CharRNN(V, hidden_size=6, num_layers=1, dropout=0.3, dtype=np.float64, seed=0)
    ids = np.random.default_rng(1).integers(0, V, size=41).astype(np.int32)
    model.train_step(char_batch())
    carried, rng = model.carried_state(), model.rng_state()

    result = model.evaluate(ids, batch_size=1, seq_len=40)  # one stream, one chunk: the whole text
    model.eval()
    logits, _ = model(ids[:-1, None])
    model.train()
    loss = rf.losses.cross_entropy(logits, ids[1:, None])[0]
    assert result["loss"] == pytest.approx(loss, rel=1e-12)
    assert result["bpc"] == pytest.approx(loss / np.log(2))
    assert result["perplexity"] == pytest.approx(np.exp(loss))
    assert model.training and model.rng_state() == rng
    np.testing.assert_array_equal(model.carried_state()["h"], carried["h"])

    batcher = rf.data.StreamBatcher(ids, 2, 4)
    batcher.next_batch()
    position = batcher.state_dict()
    assert np.isfinite(model.evaluate(batcher)["loss"])
    assert batcher.state_dict() == position


def test_many_to_one_reads_the_last_valid_step_and_ignores_padding():
    rng = np.random.default_rng(0)
    model = SeqRegressor(2, hidden_size=5, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((3, 6, 2))
    lengths = np.array([6, 3, 1])
    padded = x.copy()
    padded[1, 3:] = 99.0
    padded[2, 1:] = -99.0
    np.testing.assert_allclose(model.predict(padded, lengths), model.predict(x, lengths), rtol=0, atol=1e-14)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(model.predict(x[b : b + 1, :n]), model.predict(x, lengths)[b : b + 1], atol=1e-14)


def test_regressor_evaluate_and_shapes():
    rng = np.random.default_rng(0)
    model = SeqRegressor(1, hidden_size=4, output_size=1, seed=0)
    x, y = rng.standard_normal((10, 8)), rng.standard_normal(10)  # (B, T) and (B,) with one feature/output
    pred = model.predict(x, batch_size=3)
    assert pred.shape == (10, 1) and pred.dtype == np.float32
    result = model.evaluate((x, y), batch_size=4)
    err = pred[:, 0] - y
    assert result["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert result["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-5)
    assert result["loss"] == pytest.approx(result["rmse"] ** 2, rel=1e-5)
    seq = SeqRegressor(1, hidden_size=4, many_to_many=True, seed=0)
    assert seq.predict(x).shape == (10, 8, 1)
    with pytest.raises(ValueError, match="targets have shape"):
        model.train_step((x, rng.standard_normal((10, 3))))


def test_classifier_predict_and_evaluate():
    rng = np.random.default_rng(0)
    model = SeqClassifier(V, 3, hidden_size=6, seed=0)
    ids, lengths, labels = rng.integers(0, V, (9, 5)), rng.integers(1, 6, 9), rng.integers(0, 3, 9)
    pred = model.predict(ids, lengths, batch_size=4)
    assert pred.shape == (9,)
    result = model.evaluate((ids, lengths, labels))
    assert result["accuracy"] == pytest.approx((pred == labels).mean())
    assert set(result) == {"loss", "accuracy", "precision", "recall", "f1"}
    with pytest.raises(ValueError, match="exactly one"):
        SeqClassifier(V, 3, input_size=4)


# -- sampling -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    text = "the quick brown fox jumps over the lazy dog. " * 20
    vocab = rf.data.Vocab.from_text(text)
    model = CharRNN(len(vocab), hidden_size=16, num_layers=1, seed=0)
    optimizer = rf.optim.Adam(lr=1e-2)
    batcher = rf.data.StreamBatcher(vocab.encode(text), 4, 16)
    for _ in range(30):  # a little training so the distribution is far from uniform
        model.zero_grad()
        model.train_step(next(batcher))
        optimizer.step(model.params, model.grads)
    return model, vocab


def greedy(model, prime_ids, length):
    """Argmax decoding, step by step: the reference for temperature 0 and top_k=1."""
    model.eval()
    logits, state = model(np.array(prime_ids)[:, None])
    out = list(prime_ids)
    for _ in range(length):
        out.append(int(logits[-1, 0].argmax()))
        logits, state = model(np.array([[out[-1]]]), state)
    model.train()
    return out


def test_sample_same_seed_same_text(lm):
    model, vocab = lm
    a = model.sample("the ", 40, seed=3, vocab=vocab)
    assert a == model.sample("the ", 40, seed=3, vocab=vocab)
    assert a != model.sample("the ", 40, seed=4, vocab=vocab)
    assert a.startswith("the ") and len(a) == 44
    assert model.training  # sampling runs in eval mode and restores the mode


def test_sample_greedy_limits(lm):
    model, vocab = lm
    prime = vocab.encode("the q")
    expected = vocab.decode(greedy(model, list(prime), 30))
    assert model.sample("the q", 30, temperature=0, vocab=vocab) == expected
    assert model.sample("the q", 30, temperature=1e-6, seed=1, vocab=vocab) == expected
    assert model.sample("the q", 30, top_k=1, seed=2, vocab=vocab) == expected
    np.testing.assert_array_equal(model.sample(prime, 30, temperature=0), vocab.encode(expected))


def test_sample_many_samples_and_stream(lm):
    model, vocab = lm
    pieces = []
    texts = model.sample("fox", 25, seed=5, num_samples=3, vocab=vocab, stream=pieces.append)
    assert isinstance(texts, list) and len(texts) == 3 and all(len(t) == 28 for t in texts)
    assert len(set(texts)) > 1  # each sample draws its own uniforms
    assert ["".join(p[i] for p in pieces) for i in range(3)] == texts
    # each row of a batch is the same draw as a single sample with that row's uniforms
    single = model.sample("fox", 25, seed=5, vocab=vocab)
    assert texts[0] == single
    ids = model.sample(vocab.encode("fox"), 25, seed=5, num_samples=3)
    assert ids.shape == (3, 28) and ids.dtype == np.int32
    streamed = []
    model.sample("fox", 10, seed=5, vocab=vocab, stream=streamed.append)
    assert "".join(streamed) == model.sample("fox", 10, seed=5, vocab=vocab)


def test_sample_unknown_prime_character_is_a_data_error(lm):
    model, vocab = lm
    with pytest.raises(rf.DataError, match="not in the model's vocabulary"):
        model.sample("the Zebra", 5, vocab=vocab)
    with pytest.raises(ValueError, match="vocab"):
        model.sample("the", 5)
    with pytest.raises(ValueError, match="empty"):
        model.sample("", 5, vocab=vocab)


def test_sample_from_logits_rule_by_hand():
    logits = np.log([[0.2, 0.3, 0.5]] * 3)
    u = np.array([0.1, 0.25, 0.6])  # cumulative 0.2, 0.5, 1.0
    np.testing.assert_array_equal(sample_from_logits(logits, u), [0, 1, 2])
    np.testing.assert_array_equal(sample_from_logits(logits, u, top_k=2), [1, 1, 2])  # 0.3, 0.5 -> 0.375, 1.0
    np.testing.assert_array_equal(sample_from_logits(logits, u, top_p=0.5), [2, 2, 2])  # 0.5 alone reaches 0.5
    np.testing.assert_array_equal(sample_from_logits(logits, u, top_p=0.6), [1, 1, 2])  # 0.5 + 0.3
    np.testing.assert_array_equal(sample_from_logits(logits, u, temperature=0), [2, 2, 2])
    # temperature 0.5 squares the odds: 0.04, 0.09, 0.25 of 0.38
    np.testing.assert_array_equal(sample_from_logits(logits, np.array([0.1, 0.2, 0.35]), temperature=0.5), [0, 1, 2])


# -- configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [
    CharRNN(V, hidden_size=8, num_layers=2, cell="gru", dropout=0.1, seed=3),
    SeqRegressor(2, hidden_size=4, output_size=3, cell="rnn", bidirectional=True, many_to_many=True, dtype=np.float64),
    SeqClassifier(V, 4, hidden_size=5, embedding_dim=3, bidirectional=True, seed=1),
    SeqClassifier(None, 2, input_size=3, hidden_size=5),
], ids=["charrnn", "regressor", "classifier-ids", "classifier-features"])
def test_config_rebuilds_the_same_model(model):
    config = json.loads(json.dumps(model.config()))  # JSON-able, as checkpoints store it
    clone = from_config(config)
    assert type(clone) is type(model) and clone.config() == model.config()
    for name, p in model.params.items():
        np.testing.assert_array_equal(clone.params[name], p)
        assert clone.params[name].dtype == p.dtype


def test_bad_model_options_are_clear():
    with pytest.raises(ValueError, match="cell must be one of"):
        CharRNN(V, cell="transformer")
    with pytest.raises(ValueError, match="dropout"):
        CharRNN(V, dropout=1.0)
    with pytest.raises(ValueError, match="unknown model class"):
        from_config({"class": "Nope"})


# -- GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_models_match_cpu():
    import cupy

    cpu = CharRNN(V, hidden_size=8, num_layers=2, dropout=0.2, dtype=np.float64, seed=0)
    gpu = from_config(cpu.config()).to("gpu")
    batch = char_batch(T=6, B=4)
    for _ in range(2):  # the second step runs from the carried state
        cpu.zero_grad()
        gpu.zero_grad()
        assert gpu.train_step(batch)["loss"] == pytest.approx(cpu.train_step(batch)["loss"], rel=1e-10)
    for name, g in cpu.grads.items():
        np.testing.assert_allclose(cupy.asnumpy(gpu.grads[name]), g, rtol=1e-8, atol=1e-12)
    assert gpu.sample([1, 2, 3], 40, seed=7) .tolist() == cpu.sample([1, 2, 3], 40, seed=7).tolist()

    reg = SeqRegressor(3, hidden_size=5, bidirectional=True, dtype=np.float64, seed=1)
    reg_gpu = from_config(reg.config()).to("gpu")
    x, lengths = np.random.default_rng(0).standard_normal((4, 6, 3)), np.array([6, 2, 1, 5])
    np.testing.assert_allclose(cupy.asnumpy(reg_gpu.predict(x, lengths)), reg.predict(x, lengths), rtol=1e-10)
    clf = SeqClassifier(V, 3, hidden_size=5, bidirectional=True, dtype=np.float64, seed=2)
    clf_gpu = from_config(clf.config()).to("gpu")
    ids = np.random.default_rng(1).integers(0, V, (4, 6))
    data = (ids, lengths, np.array([0, 1, 2, 1]))
    assert clf_gpu.evaluate(data)["loss"] == pytest.approx(clf.evaluate(data)["loss"], rel=1e-10)
