"""The translate task's data (rnnfast.tasks): pairs files read, encoded and split; new pairs and new sources
read with a checkpoint's vocabularies; the model, loss text and every error a user can cause."""
import json
import math

import numpy as np
import pytest

from rnnfast.data import BOS, EOS, PAD, UNK, TokenVocab, load_text_pairs
from rnnfast.errors import CheckpointError, DataError
from rnnfast.tasks import (TASKS, build_model, check_same_data, describe_loss, encode_sources, read_classify,
                           read_translate, translate_eval_data)

PAIRS = [("hello world", "bonjour le monde"), ("good morning", "bonjour"), ("thank you", "merci"),
         ("see you soon", "à bientôt"), ("yes", "oui"), ("no", "non"), ("good night", "bonne nuit"),
         ("the cat", "le chat"), ("the dog", "le chien"), ("a red car", "une voiture rouge")]


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    return p


def pairs_file(tmp_path, pairs=PAIRS, name="pairs.tsv", header=("source", "target")):
    sep = "\t" if name.endswith(".tsv") else ","
    quote = (lambda t: t) if sep == "\t" else (lambda t: f'"{t}"')
    rows = [sep.join(header)] + [sep.join(map(quote, pair)) for pair in pairs]
    return write(tmp_path, name, "\n".join(rows) + "\n")


def rows_of(td_part, meta):
    """The (source, target) texts of a split, decoded back from its arrays."""
    src, src_len, tgt, tgt_len = td_part
    sv, tv = TokenVocab.from_dict(meta["source_vocab"]), TokenVocab.from_dict(meta["target_vocab"])
    return [(sv.decode(s[:n]), tv.decode(t[:m])) for s, n, t, m in zip(src, src_len, tgt, tgt_len)]


# -- reading ----------------------------------------------------------------------------------

def test_load_text_pairs_csv_and_tsv(tmp_path):
    lines, sources, targets = load_text_pairs(write(tmp_path, "p.csv", 'en,fr\n"Hi, you",Salut\n\n cat , chat \n'),
                                              "en", "fr")
    assert lines == [2, 4] and sources == ["Hi, you", "cat"] and targets == ["Salut", "chat"]
    lines, sources, targets = load_text_pairs(write(tmp_path, "p.tsv", "source\ttarget\na, b\tc; d\n"))
    assert sources == ["a, b"] and targets == ["c; d"]


@pytest.mark.parametrize("name", ["pairs.tsv", "pairs.csv"])
@pytest.mark.parametrize("tokens", ["char", "word"])
def test_read_translate_arrays(tmp_path, name, tokens):
    td = read_translate(pairs_file(tmp_path, name=name), val_frac=0.2, seed=3, tokens=tokens)
    assert len(td.train) == len(td.val) == 4 and len(td.train[0]) == 8 and len(td.val[0]) == 2
    sv, tv = TokenVocab.from_dict(td.meta["source_vocab"]), TokenVocab.from_dict(td.meta["target_vocab"])
    assert sv.unit == tv.unit == tokens
    for part in (td.train, td.val):
        src, src_len, tgt, tgt_len = part
        assert all(a.dtype == np.int32 for a in part) and src.ndim == tgt.ndim == 2
        for s, n, t, m in zip(src, src_len, tgt, tgt_len):
            assert n >= 1 and (s[:n] != PAD).all() and (s[n:] == PAD).all()
            assert not np.isin(s[:n], [BOS, EOS]).any()                 # a source has no BOS/EOS
            assert t[m - 1] == EOS and (t[:m - 1] > EOS).all() and (t[m:] == PAD).all()
    # every pair comes back once, train and val together, as the file had it (all tokens known here)
    rows = rows_of(td.train, td.meta) + rows_of(td.val, td.meta)
    unknown = [row for row in rows if "<unk>" in "".join(row)]
    known = sorted(row for row in rows if row not in unknown)
    assert set(known) <= set(PAIRS) and len(rows) == len(PAIRS)
    longest_src = max(len(sv.tokenize(s)) for s, _ in PAIRS)
    longest_tgt = max(len(tv.tokenize(t)) for _, t in PAIRS)
    assert td.meta["max_source_len"] == longest_src and td.meta["max_target_len"] == longest_tgt
    assert isinstance(td.meta["max_source_len"], int) and json.dumps(td.meta)
    assert td.baseline_name == "token frequencies" and "10 pairs" in td.description and "2 held out" in td.description


def test_word_ids_of_known_pairs(tmp_path):
    pairs = [("a b", "x y z"), ("b a", "z"), ("b", "y"), ("a", "x")] * 2   # every word in training whatever the split
    td = read_translate(pairs_file(tmp_path, pairs), val_frac=0.25, tokens="word")
    assert td.meta["source_vocab"]["tokens"] == ["a", "b"] and td.meta["target_vocab"]["tokens"] == ["x", "y", "z"]
    expected = {(4, 5): [4, 5, 6, EOS], (5, 4): [6, EOS], (5,): [5, EOS], (4,): [4, EOS]}
    assert td.meta["max_source_len"] == 2 and td.meta["max_target_len"] == 3
    for src, src_len, tgt, tgt_len in (td.train, td.val):
        assert src.shape[1] == 2 and tgt.shape[1] == 4                   # padded to the file's longest
        for s, n, t, m in zip(src, src_len, tgt, tgt_len):
            assert t[:m].tolist() == expected[tuple(s[:n].tolist())]


def test_split_is_seeded_reproducible_and_disjoint(tmp_path):
    path = pairs_file(tmp_path)
    a, b = read_translate(path, seed=7, val_frac=0.3), read_translate(path, seed=7, val_frac=0.3)
    for x, y in zip(a.train + a.val, b.train + b.val):
        assert np.array_equal(x, y)
    assert a.meta == b.meta and a.baseline == b.baseline
    train, val = rows_of(a.train, a.meta), rows_of(a.val, a.meta)
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    other = read_translate(path, seed=8, val_frac=0.3)
    assert rows_of(other.val, other.meta) != val                     # another seed holds out other pairs


def test_vocabularies_come_from_the_training_pairs_only(tmp_path):
    # the only "zebra"/"zèbre" pair, wherever the shuffle puts it
    pairs = [(f"cat {i}", f"chat {i}") for i in range(9)] + [("zebra", "zèbre")]
    path = pairs_file(tmp_path, pairs)
    for seed in range(6):
        td = read_translate(path, seed=seed, val_frac=0.2, tokens="word")
        sv, tv = TokenVocab.from_dict(td.meta["source_vocab"]), TokenVocab.from_dict(td.meta["target_vocab"])
        train_words = {w for s, _ in rows_of(td.train, td.meta) for w in s.split()}
        held_out = "zebra" not in train_words
        assert ("zebra" in sv.tokens) != held_out and ("zèbre" in tv.tokens) != held_out
        digits = {str(i) for i in range(9)}
        assert set(sv.tokens) - {"cat", "zebra"} == set(tv.tokens) - {"chat", "zèbre"} <= digits
        if held_out:
            src, src_len, tgt, tgt_len = td.val
            row = [i for i, n in enumerate(src_len) if n == 1 and src[i, 0] == UNK]
            assert len(row) == 1 and tgt[row[0], :2].tolist() == [UNK, EOS]


def test_min_count_sends_rare_tokens_to_unk(tmp_path):
    pairs = [("a a", "x x"), ("a b", "x y"), ("a c", "x z"), ("a", "x")] * 3
    td = read_translate(pairs_file(tmp_path, pairs), tokens="word", min_count=5, val_frac=0.25)
    assert TokenVocab.from_dict(td.meta["source_vocab"]).tokens == ("a",)
    assert TokenVocab.from_dict(td.meta["target_vocab"]).tokens == ("x",)
    assert td.meta["source_vocab"]["min_count"] == 5
    assert (td.train[0] == UNK).any() and (td.train[2] == UNK).any()


def test_baseline_is_the_target_token_frequencies_with_eos(tmp_path):
    td = read_translate(pairs_file(tmp_path), tokens="char", seed=1, val_frac=0.2)
    v = len(TokenVocab.from_dict(td.meta["target_vocab"]))
    train_ids = td.train[2][td.train[2] != PAD]
    counts = np.bincount(train_ids, minlength=v) + 1.0
    val_ids = td.val[2][td.val[2] != PAD]
    assert (val_ids == EOS).sum() == 2                                # one EOS per held-out target
    assert td.baseline == pytest.approx(-np.mean(np.log(counts[val_ids] / counts.sum())))
    assert 0 < td.baseline < math.log(v)


def test_classify_split_unchanged_by_the_shared_helper(tmp_path):
    path = write(tmp_path, "c.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))
    td = read_classify(path, seq_len=8, val_frac=0.3, seed=5)
    order = np.random.default_rng(5).permutation(10)
    assert sorted(td.val[2].tolist()) == sorted([i % 2 for i in order[-3:]]) and len(td.train[0]) == 7


def test_reading_again_gives_the_same_meta(tmp_path):
    path = pairs_file(tmp_path)
    td = read_translate(path, tokens="word")
    check_same_data(json.loads(json.dumps(td.meta)), read_translate(path, tokens="word"), "ckpt")
    with pytest.raises(DataError, match="the file changed since that run"):
        check_same_data(td.meta, read_translate(path, tokens="char"), "ckpt")


# -- errors -----------------------------------------------------------------------------------

def test_missing_columns_name_the_columns_there(tmp_path):
    path = pairs_file(tmp_path, header=("en", "fr"))
    with pytest.raises(DataError, match=r"has no column 'source'; its columns are 0: 'en', 1: 'fr'; "
                                        r"pass one of them \(--source-column\)"):
        read_translate(path)
    with pytest.raises(DataError, match=r"has no column 'target'; its columns are 0: 'en', 1: 'fr'; "
                                        r"pass one of them \(--target-column\)"):
        read_translate(path, source_column="en")
    assert len(read_translate(path, source_column="en", target_column="fr").train[0]) == 9


@pytest.mark.parametrize("content, message", [
    ("source\ttarget\nhi\tsalut\n\tvide\n", r"line 3 has an empty source \(column 'source'\); fill it in or remove"),
    ("source\ttarget\nhi\tsalut\nempty\t  \n", r"line 3 has an empty target \(column 'target'\); fill it in or remove"),
    ("source\ttarget\nhi\tsalut\nshort\n", r"line 3 has 1 fields, so no column 'target'; fix or remove that line"),
    ("source\ttarget\n", r"has a header but no data rows; pass a file with source and target texts in it"),
    ("\n  \n", r"is empty \(only whitespace\); pass a file with text in it"),
])
def test_bad_files_are_one_line_errors_that_say_what_to_do(tmp_path, content, message):
    with pytest.raises(DataError, match=message) as exc:
        read_translate(write(tmp_path, "bad.tsv", content))
    assert "\n" not in str(exc.value)


def test_too_few_pairs_to_hold_out(tmp_path):
    path = pairs_file(tmp_path, PAIRS[:3])
    with pytest.raises(DataError, match=r"has 3 pairs, too few to hold out 10% for validation and train on the rest; "
                                        r"use more pairs or another --val-frac"):
        read_translate(path)
    with pytest.raises(DataError, match="too few to hold out 90%"):
        read_translate(path, val_frac=0.9)
    assert len(read_translate(path, val_frac=0.34).val[0]) == 1


def test_min_count_leaving_no_token(tmp_path):
    with pytest.raises(DataError, match=r"no source word of .* occurs 50 times \(--min-count\) in the training pairs; "
                                        r"use a smaller --min-count"):
        read_translate(pairs_file(tmp_path), tokens="word", min_count=50)


def test_a_bad_token_unit_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown token unit 'byte'; use one of char, word"):
        read_translate(pairs_file(tmp_path), tokens="byte")


# -- a checkpoint's vocabularies on new data --------------------------------------------------

def test_translate_eval_data_uses_the_checkpoint_vocabularies(tmp_path):
    td = read_translate(pairs_file(tmp_path), tokens="word", val_frac=0.2)
    meta = json.loads(json.dumps(td.meta))
    new = write(tmp_path, "new.csv", "en,fr\nthe cat,le chat\nthe zebra,le zèbre\n")
    src, src_len, tgt, tgt_len = translate_eval_data(meta, new, source_column="en", target_column="fr")
    sv, tv = TokenVocab.from_dict(meta["source_vocab"]), TokenVocab.from_dict(meta["target_vocab"])
    assert src_len.tolist() == [2, 2] and tgt_len.tolist() == [3, 3]
    assert src[0].tolist() == sv.encode("the cat").tolist() and src[1, 1] == UNK
    assert tgt[1, 1:].tolist() == [UNK, EOS] and all(a.dtype == np.int32 for a in (src, src_len, tgt, tgt_len))
    with pytest.raises(DataError, match=r"has no column 'source'.*\(--source-column\)"):
        translate_eval_data(meta, new)
    with pytest.raises(CheckpointError, match="has no source_vocab in its metadata"):
        translate_eval_data({}, new, source_column="en", target_column="fr")


def test_encode_sources(tmp_path):
    td = read_translate(pairs_file(tmp_path), tokens="char")
    sv = TokenVocab.from_dict(td.meta["source_vocab"])
    src, src_len = encode_sources(td.meta, ["hello\n", "  no \n", "yes?"])
    assert src_len.tolist() == [5, 2, 4] and src.shape == (3, 5) and src.dtype == np.int32
    assert src[1, :2].tolist() == sv.encode("no").tolist() and src[2, 3] == UNK and (src[1, 2:] == PAD).all()
    with pytest.raises(DataError, match=r"in\.txt line 2 is empty; give one text to translate on each line, "
                                        r"or remove that line"):
        encode_sources(td.meta, ["hello", "   \n", "yes"], path="in.txt")
    with pytest.raises(DataError, match=r"in\.tsv line 7 is empty"):       # a table's texts name their own lines
        encode_sources(td.meta, ["hello", ""], "in.tsv", [2, 7])
    with pytest.raises(CheckpointError, match="malformed"):
        encode_sources({"source_vocab": {"kind": "char"}}, ["hi"])


# -- the task in the task table ---------------------------------------------------------------

def test_translate_is_the_last_task_and_its_loss_reads_per_token():
    assert TASKS[-1] == "translate" and TASKS[:3] == ("charlm", "forecast", "classify")
    assert describe_loss("translate", 1.5) == "1.5000 nats/token (perplexity 4.48)"


def test_build_model_gives_a_seq2seq_for_the_data(tmp_path):
    models = pytest.importorskip("rnnfast.models.seq2seq")
    td = read_translate(pairs_file(tmp_path), tokens="word", val_frac=0.2)
    model = build_model("translate", td, hidden_size=8, num_layers=1, cell="gru", seed=0, bidirectional=True,
                        attention="luong", teacher_forcing=0.5)
    assert isinstance(model, models.Seq2Seq)
    config = model.config()
    assert config["src_vocab_size"] == len(td.meta["source_vocab"]["tokens"]) + 4
    assert config["tgt_vocab_size"] == len(td.meta["target_vocab"]["tokens"]) + 4
    assert (config["attention"], config["teacher_forcing"], config["bidirectional"]) == ("luong", 0.5, True)
    assert config["max_target_len"] == td.meta["max_target_len"]
    assert config["max_source_len"] == td.meta["max_source_len"]
    out = model.train_step(td.train)
    assert np.isfinite(out["loss"]) and out["tokens"] == int(td.train[3].sum())
    assert np.isfinite(model.evaluate(td.val)["loss"])
    same = build_model("translate", td, hidden_size=8, num_layers=1, cell="gru", seed=0)
    assert same.config()["attention"] == "bahdanau" and same.config()["teacher_forcing"] == 1.0
