"""The translate model against its PyTorch twin (bench/torch_seq2seq.py), and the dates task
(bench/dates.py) the translate bench decodes.

The twin first holds itself to what the spec says (names and shapes, padding that changes
nothing, batched decoding equal to one sentence at a time, a beam wide enough to keep every
hypothesis finding the best one by brute force); then, in float64, rnnfast's Seq2Seq holds to it:
the training loss, every gradient and the greedy output, for each attention, cell, direction and
depth.
"""
import datetime
import itertools
import re
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the seq2seq twin is written in PyTorch (pip install rnnfast[test])")

from rnnfast.bench import dates  # noqa: E402
from rnnfast.bench.torch_reference import torch_grads  # noqa: E402
from rnnfast.bench.torch_seq2seq import TorchSeq2Seq, from_rnnfast, from_state_dict  # noqa: E402
from rnnfast.data.tokens import EOS, PAD  # noqa: E402
from rnnfast.testing import rel_err  # noqa: E402

ATTENTIONS = ("bahdanau", "luong", "none")
VS, VT = 11, 9  # vocabulary sizes of the small models (4 specials + 7 or 5 tokens)


# -- the dates task -------------------------------------------------------------------------------
def test_dates_targets_are_iso_and_sources_read_back_as_them():
    pairs = dates.make_pairs(3000, seed=1)
    for source, target in pairs:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", target)
        date = datetime.date.fromisoformat(target)
        assert dates.FIRST <= date <= dates.LAST
        assert dates.parse(source) == {date}, source    # exactly one reading, the target's
        assert "\t" not in source and "\n" not in source


def test_dates_cover_every_format_and_case_and_name_the_true_weekday():
    pairs = dates.make_pairs(3000, seed=2)
    sources = [s for s, _ in pairs]
    assert any(s.islower() and re.search("[a-z]", s) for s in sources)
    assert any(s.isupper() for s in sources)
    for fmt in dates.FORMATS:   # every format is drawn (rendered on its own date, read back)
        assert any(dates.parse(s) and _fits(fmt, s) for s in sources), fmt
    with_weekday = [(s, t) for s, t in pairs if re.match(r"[A-Za-z]{3}", s) and s[:3].lower() in
                    {w.lower() for w in dates.WEEKDAY_ABBRS}]
    assert len(with_weekday) > 300
    for source, target in with_weekday:
        named = [w.lower() for w in dates.WEEKDAY_ABBRS].index(source[:3].lower())
        assert named == datetime.date.fromisoformat(target).weekday(), source


def _fits(template, source):
    regex, _ = dates._pattern(template)
    return regex.fullmatch(source) is not None


def test_dates_fixed_by_the_seed_and_rarely_repeated(tmp_path):
    assert dates.make_pairs(500, seed=3) == dates.make_pairs(500, seed=3)
    assert dates.make_pairs(500, seed=3) != dates.make_pairs(500, seed=4)
    sources = Counter(s for s, _ in dates.make_pairs(5000, seed=0))
    assert sum(n - 1 for n in sources.values()) < 50      # under 1% (about 0.2% measured)
    out = tmp_path / "dates.tsv"
    dates.main(["--out", str(out), "--pairs", "20", "--seed", "0"])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "source\ttarget" and len(lines) == 21
    assert [tuple(line.split("\t")) for line in lines[1:]] == dates.make_pairs(20, seed=0)


def test_dates_examples_of_the_brief():
    march7 = {datetime.date(2024, 3, 7)}
    for source in ("7 March 2024", "March 7, 2024", "07/03/2024", "2024.03.07", "Thu 7 Mar 24",
                   "7th of march 2024", "MARCH 7 2024", "3/7/24", "thursday, 7.3.2024"):
        assert dates.parse(source) == march7, source
    assert dates.parse("Fri 7 Mar 24") == set()          # the wrong weekday is no date
    assert dates.parse("31/02/2024") == set()


# -- the twin on its own --------------------------------------------------------------------------
def spec_shapes(attention, cell, bidirectional, num_layers, H, E):
    """The spec's parameter table (SPEC.md, "Parameter names") for the small models."""
    G, D, L = {"gru": 3, "lstm": 4, "rnn": 1}[cell], 2 if bidirectional else 1, num_layers
    shapes = {"enc_embed.weight": (VS, E), "bridge.weight": (L * H, D * H), "bridge.bias": (L * H,),
              "dec_embed.weight": (VT, E), "head.weight": (VT, H), "head.bias": (VT,)}
    for layer, suffix in itertools.product(range(L), ("", "_reverse")[:D]):
        size = E if layer == 0 else D * H
        shapes.update({f"encoder.weight_ih_l{layer}{suffix}": (G * H, size),
                       f"encoder.weight_hh_l{layer}{suffix}": (G * H, H),
                       f"encoder.bias_ih_l{layer}{suffix}": (G * H,), f"encoder.bias_hh_l{layer}{suffix}": (G * H,)})
    for layer in range(L):
        size = (E + D * H if attention == "bahdanau" else E) if layer == 0 else H
        shapes.update({f"decoder.weight_ih_l{layer}": (G * H, size), f"decoder.weight_hh_l{layer}": (G * H, H),
                       f"decoder.bias_ih_l{layer}": (G * H,), f"decoder.bias_hh_l{layer}": (G * H,)})
    if attention == "bahdanau":
        shapes.update({"attention.query.weight": (H, H), "attention.key.weight": (H, D * H),
                       "attention.key.bias": (H,), "attention.score.weight": (1, H)})
    if attention == "luong":
        shapes.update({"attention.key.weight": (H, D * H), "combine.weight": (H, D * H + H)})
    return shapes


CASES = list(itertools.product(ATTENTIONS, ("gru", "lstm"), (False, True), (1, 2)))


def case_id(case):
    attention, cell, bidirectional, layers = case
    return f"{attention}-{cell}-{'bi' if bidirectional else 'uni'}-L{layers}"


def twin(attention, cell, bidirectional, num_layers, H=6, E=5, seed=0):
    torch.manual_seed(seed)
    model = TorchSeq2Seq(VS, VT, hidden_size=H, num_layers=num_layers, cell=cell, bidirectional=bidirectional,
                         attention=attention, embedding_dim=E).double()
    with torch.no_grad():   # wider than the default init, so that decoding depends more on the source
        for p in model.parameters():
            p.uniform_(-1.5, 1.5)
    return model.eval()


def varied_twin(case, src, src_len, max_len=8):
    """The twin of the first seed whose greedy outputs for ``src`` take at least three different
    values: a small random decoder often writes one token for every source, and a check of
    decoding against such a model would pass for any encoder (seeds up to 5 were needed here)."""
    for seed in range(50):
        model = twin(*case, seed=seed)
        if len({tuple(seq) for seq in model.greedy(src, src_len, max_len)}) >= 3:
            return model
    raise AssertionError(f"no seed below 50 gives {case_id(case)} source-dependent outputs")


def random_batch(B=4, S=7, T=6, seed=0):
    """(src (B, S), src_lengths (B,), tgt (B, T), tgt_lengths (B,)) int32 as the spec's data: lengths
    from 1 to the full width, targets ending in EOS, PAD after."""
    rng = np.random.default_rng(seed)
    src_len = np.concatenate([[S, 1], rng.integers(1, S + 1, size=B - 2)]).astype(np.int32)
    tgt_len = np.concatenate([[1, T], rng.integers(1, T + 1, size=B - 2)]).astype(np.int32)
    src = rng.integers(3, VS, size=(B, S)).astype(np.int32)
    tgt = rng.integers(3, VT, size=(B, T)).astype(np.int32)
    src[np.arange(S)[None, :] >= src_len[:, None]] = PAD
    tgt[np.arange(T)[None, :] == tgt_len[:, None] - 1] = EOS
    tgt[np.arange(T)[None, :] >= tgt_len[:, None]] = PAD
    return src, src_len, tgt, tgt_len


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_twin_has_the_spec_names_and_shapes(case):
    model = twin(*case)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == spec_shapes(*case, H=6, E=5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_twin_padding_changes_nothing(case):
    """Each sentence's loss and greedy output alone equal its row's in a padded batch: the packed
    encoder ends at each length and attention never reads padding."""
    model = twin(*case)
    src, src_len, tgt, tgt_len = random_batch()
    batched = model.greedy(src, src_len, max_len=8)
    logits = model(src, src_len, tgt)
    logp = torch.log_softmax(logits, -1).gather(-1, torch.as_tensor(tgt.T, dtype=torch.long)[..., None])[..., 0]
    for b in range(len(src)):
        n, m = src_len[b], tgt_len[b]
        alone = model(src[b:b + 1, :n], src_len[b:b + 1], tgt[b:b + 1, :m])
        alone_logp = torch.log_softmax(alone, -1)[torch.arange(m), 0, torch.as_tensor(tgt[b, :m], dtype=torch.long)]
        torch.testing.assert_close(alone_logp, logp[:m, b], rtol=1e-12, atol=1e-12)
        assert model.greedy(src[b:b + 1, :n], src_len[b:b + 1], max_len=8) == [batched[b]]
    expected = -(logp * torch.as_tensor(tgt.T != PAD)).sum() / (tgt != PAD).sum()
    torch.testing.assert_close(model.loss(src, src_len, tgt, tgt_len), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_twin_beam_of_one_is_greedy(attention):
    model = twin(attention, "gru", True, 2)
    src, src_len, _, _ = random_batch(B=6, seed=1)
    assert model.beam(src, src_len, k=1, max_len=8) == model.greedy(src, src_len, max_len=8)


def sequence_scores(model, src, src_len, max_len):
    """Every output a decoder can write in ``max_len`` steps (ids ending in EOS, or ``max_len``
    ids without one) -> its summed log-probability for the one sentence, by teacher forcing all
    of them as one batch."""
    seqs = [body + (last,) for n in range(1, max_len + 1)
            for body in itertools.product([v for v in range(VT) if v != EOS], repeat=n - 1)
            for last in ([EOS] if n < max_len else range(VT))]
    tgt = np.array([seq + (PAD,) * (max_len - len(seq)) for seq in seqs])
    with torch.no_grad():
        logits = model(np.repeat(src, len(seqs), axis=0), np.repeat(src_len, len(seqs)), tgt)   # (T, N, V)
    logp = torch.log_softmax(logits, -1).gather(-1, torch.as_tensor(tgt.T)[..., None])[..., 0]
    within = torch.as_tensor(np.arange(max_len)[:, None] < np.array([len(seq) for seq in seqs])[None, :])
    return dict(zip(seqs, (logp * within).sum(0).tolist()))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_twin_beam_wide_enough_for_everything_finds_the_best_output(length_penalty):
    """With k at least the number of outputs, no hypothesis is ever dropped: the beam's answer is
    the brute-force best ``score / length**length_penalty``."""
    model = twin("bahdanau", "lstm", False, 1, seed=3)
    src, src_len, _, _ = random_batch(B=3, seed=2)
    max_len = 3
    for b in range(len(src)):
        one, one_len = src[b:b + 1], src_len[b:b + 1]
        scores = sequence_scores(model, one, one_len, max_len)
        best = max(scores, key=lambda seq: scores[seq] / len(seq) ** length_penalty)
        got = model.beam(one, one_len, k=len(scores), max_len=max_len, length_penalty=length_penalty)
        assert got == [list(best[:-1] if best[-1] == EOS else best)]
    batched = model.beam(src, src_len, k=len(scores), max_len=max_len, length_penalty=length_penalty)
    assert batched == [model.beam(src[b:b + 1], src_len[b:b + 1], k=len(scores), max_len=max_len,
                                  length_penalty=length_penalty)[0] for b in range(len(src))]


def test_twin_loads_a_numpy_state_dict_one_to_one():
    model = twin("luong", "gru", True, 2)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    copy = from_state_dict(weights, src_vocab_size=VS, tgt_vocab_size=VT, hidden_size=6, num_layers=2, cell="gru",
                           bidirectional=True, attention="luong", embedding_dim=5)
    src, src_len, tgt, tgt_len = random_batch()
    assert next(copy.parameters()).dtype == torch.float64
    with torch.no_grad():
        assert float(copy.loss(src, src_len, tgt, tgt_len)) == float(model.loss(src, src_len, tgt, tgt_len))


# -- rnnfast's Seq2Seq against the twin -----------------------------------------------------------
def rnnfast_and_twin(case, weights_from=None):
    """Seq2Seq in float64 holding the weights of ``weights_from`` (a twin; default ``twin(*case)``),
    and the twin of that Seq2Seq (through its state dict, as a user would load it)."""
    seq2seq = pytest.importorskip("rnnfast.models.seq2seq", reason="rnnfast.models.seq2seq is not written yet")
    attention, cell, bidirectional, num_layers = case
    ours = seq2seq.Seq2Seq(VS, VT, hidden_size=6, num_layers=num_layers, cell=cell, bidirectional=bidirectional,
                           attention=attention, embedding_dim=5, dropout=0.0, teacher_forcing=1.0,
                           max_target_len=8, dtype=np.float64, seed=0)
    weights_from = weights_from or twin(*case)
    ours.load_state_dict({k: v.detach().numpy().copy() for k, v in weights_from.state_dict().items()})
    return ours, from_rnnfast(ours)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_loss_and_every_gradient_equal_torch(case):
    ours, ref = rnnfast_and_twin(case)
    batch = random_batch(B=5, seed=4)
    ours.train()
    ours.zero_grad()
    loss = ours.train_step(batch)["loss"]
    ref.zero_grad()
    ref_loss = ref.loss(*batch)
    ref_loss.backward()
    assert abs(float(loss) - ref_loss.item()) <= 1e-9 * abs(ref_loss.item())
    theirs = torch_grads(ref)
    assert set(ours.grads) == set(theirs)
    errors = {k: rel_err(ours.grads[k], theirs[k]) for k in theirs}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-9, f"{worst}: relative error {errors[worst]:.1e}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_greedy_output_equals_torch(case):
    src, src_len, _, _ = random_batch(B=6, seed=5)
    ours, ref = rnnfast_and_twin(case, varied_twin(case, src, src_len))
    ours.eval()
    assert ours.translate(src, src_len, beam=1, max_len=8) == ref.greedy(src, src_len, max_len=8)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_output_equals_torch(attention, length_penalty):
    case = (attention, "lstm", True, 2)
    src, src_len, _, _ = random_batch(B=6, seed=5)
    ours, ref = rnnfast_and_twin(case, varied_twin(case, src, src_len))
    ours.eval()
    expected = ref.beam(src, src_len, k=3, max_len=8, length_penalty=length_penalty)
    assert ours.translate(src, src_len, beam=3, max_len=8, length_penalty=length_penalty) == expected


def test_translate_bench_models_write_a_trained_models_length_in_both_libraries():
    pytest.importorskip("rnnfast.models.seq2seq", reason="rnnfast.models.seq2seq is not written yet")
    from rnnfast.bench import translate

    model, ref, src_vocab, _ = translate.build("gru", 1, 16, "bahdanau")
    src, src_len = src_vocab.encode_batch([s for s, _ in dates.make_pairs(8, seed=1)])
    ours = model.translate(src, src_len, beam=1, max_len=translate.MAX_LEN)
    assert [len(ids) for ids in ours] == [translate.MAX_LEN] * 8      # EOS never wins: no early stop
    assert ours == ref.greedy(src, src_len, translate.MAX_LEN)
    assert model.translate(src, src_len, beam=5, max_len=translate.MAX_LEN) == ref.beam(src, src_len, 5,
                                                                                        translate.MAX_LEN)
