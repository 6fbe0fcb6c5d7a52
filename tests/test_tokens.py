"""Token vocabularies (rnnfast.data.tokens): the word split, specials, min_count and <unk>, round trips,
checkpoint dicts, padded batches."""
import doctest
import json
import time

import numpy as np
import pytest

from rnnfast.data import BOS, EOS, PAD, SPECIALS, UNK, TokenVocab, split_words
from rnnfast.errors import CheckpointError


# -- the word split ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("Hello, world!", ["Hello", ",", "world", "!"]),
    ("  spaced\tout \n", ["spaced", "out"]),
    ("", []),
    ("   ", []),
    ("don't", ["don", "'", "t"]),
    ("...?!", [".", ".", ".", "?", "!"]),                  # each mark its own token, never a run
    ("3.14 and 1,000", ["3", ".", "14", "and", "1", ",", "000"]),
    ("route66 is 2x", ["route66", "is", "2x"]),            # digits and letters are one word
    ("snake_case_name", ["snake_case_name"]),              # the underscore is a word character
    ("a+b=c", ["a", "+", "b", "=", "c"]),
    ("€5 (approx.)", ["€", "5", "(", "approx", ".", ")"]),
    ("Ça va? Öl, naïve, Straße", ["Ça", "va", "?", "Öl", ",", "naïve", ",", "Straße"]),
    ("Привет, мир", ["Привет", ",", "мир"]),
    ("٣ كتب", ["٣", "كتب"]),                               # Arabic-Indic digit, Arabic letters
    ("我爱你。", ["我爱你", "。"]),                          # no spaces: one run of letters
    ("smile 🙂!", ["smile", "🙂", "!"]),
])
def test_split_words(text, words):
    assert split_words(text) == words


# -- building, encoding, decoding -------------------------------------------------------------

def test_specials_come_first_then_the_sorted_tokens():
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3) and SPECIALS == ("<pad>", "<bos>", "<eos>", "<unk>")
    v = TokenVocab.build(["cab", "bad"], unit="char")
    assert v.tokens == ("a", "b", "c", "d") and len(v) == 8
    assert v.encode("dcba").tolist() == [7, 6, 5, 4] and v.encode("dcba").dtype == np.int32
    w = TokenVocab.build(["the cat, the dog"], unit="word")
    assert w.tokens == (",", "cat", "dog", "the") and w.encode("the dog").tolist() == [7, 6]


def test_char_unit_keeps_spaces_and_any_script():
    v = TokenVocab.build(["床前 明月光。"], unit="char")
    assert " " in v.tokens and v.decode(v.encode("明月 光")) == "明月 光"


def test_min_count_and_unk():
    texts = ["a a a b", "b c"]
    v = TokenVocab.build(texts, unit="word", min_count=2)
    assert v.tokens == ("a", "b") and v.min_count == 2
    assert v.encode("a c b zebra").tolist() == [4, UNK, 5, UNK]
    assert TokenVocab.build(texts, unit="word").tokens == ("a", "b", "c")
    assert TokenVocab.build(texts, unit="word", min_count=4).tokens == ()   # only the specials remain
    chars = TokenVocab.build(["aab"], unit="char", min_count=2)
    assert chars.tokens == ("a",) and chars.encode("abx").tolist() == [4, UNK, UNK]


def test_encode_adds_no_specials_and_empty_text_is_empty():
    v = TokenVocab.build(["ab"])
    assert v.encode("").shape == (0,) and v.encode("").dtype == np.int32
    assert v.encode("ab").tolist() == [4, 5]


@pytest.mark.parametrize("unit, text", [("char", "Hello, wörld!"), ("word", "hello , wörld !"),
                                        ("word", "один два три")])
def test_encode_decode_round_trip(unit, text):
    v = TokenVocab.build([text], unit=unit)
    assert v.decode(v.encode(text)) == text


def test_decode_skips_pad_and_bos_stops_at_eos_and_shows_unk():
    w = TokenVocab.build(["hello world ."], unit="word")     # . 4, hello 5, world 6
    assert w.decode([BOS, 5, UNK, 4, EOS, 6, 6, PAD]) == "hello <unk> ."
    assert w.decode(np.array([5, 6, PAD, PAD], dtype=np.int32)) == "hello world"
    assert w.decode([EOS, 5]) == "" and w.decode([]) == ""
    c = TokenVocab.build(["ab"], unit="char")
    assert c.decode([BOS, 4, UNK, 5, EOS, 4]) == "a<unk>b"
    assert c.decode(np.array([[4, 5], [PAD, PAD]])) == "ab"     # any shape reads as one sequence
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 6\)"):
        c.decode([4, 6])
    with pytest.raises(ValueError, match="ids must lie"):
        c.decode([-1])


def test_equality_is_the_mapping():
    a = TokenVocab.build(["x y"], unit="word")
    assert a == TokenVocab.build(["y x x"], unit="word")
    assert a == TokenVocab(("x", "y"), "word", min_count=3)     # min_count is only a record
    assert a != TokenVocab.build(["x y"], unit="char")           # also holds " "
    assert a != TokenVocab(("y", "x"), "word") and a != ("x", "y")


def test_bad_construction_is_a_clear_value_error():
    with pytest.raises(ValueError, match="unknown token unit 'byte'; use one of char, word"):
        TokenVocab.build(["x"], unit="byte")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="min_count must be a whole number of at least 1"):
            TokenVocab.build(["x"], min_count=bad)
    with pytest.raises(ValueError, match="distinct string tokens"):
        TokenVocab(["a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        TokenVocab(["ab"], "char")
    with pytest.raises(ValueError, match="split_words keeps whole"):
        TokenVocab(["two words"], "word")
    with pytest.raises(ValueError, match="split_words keeps whole"):
        TokenVocab(["<pad>"], "word")      # a special can never be a word: it splits as < pad >


# -- checkpoint dicts -------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["char", "word"])
def test_to_dict_round_trips_through_json(unit):
    v = TokenVocab.build(["Grüß Gott, 世界!", "zwei drei"], unit=unit, min_count=1)
    d = json.loads(json.dumps(v.to_dict()))
    assert d == {"kind": "tokens", "unit": unit, "tokens": list(v.tokens), "min_count": 1}
    back = TokenVocab.from_dict(d)
    assert back == v and back.min_count == 1 and back.encode("Gott!").tolist() == v.encode("Gott!").tolist()


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("tokens"),
    lambda d: d.pop("unit"),
    lambda d: d.pop("min_count"),
    lambda d: d.update(kind="char"),
    lambda d: d.update(unit="byte"),
    lambda d: d.update(tokens="abc"),
    lambda d: d.update(tokens=["a", "a"]),
    lambda d: d.update(tokens=["a", 7]),
    lambda d: d.update(tokens=["ab"]),
    lambda d: d.update(min_count=0),
    lambda d: d.update(min_count=None),
])
def test_malformed_dicts_are_checkpoint_errors(damage):
    d = TokenVocab.build(["abc"]).to_dict()
    damage(d)
    with pytest.raises(CheckpointError, match="vocabulary is malformed .*; use a checkpoint written by rnnfast"):
        TokenVocab.from_dict(d)


@pytest.mark.parametrize("d", [None, [], "tokens", {}])
def test_not_a_dict_is_a_checkpoint_error(d):
    with pytest.raises(CheckpointError, match="vocabulary is malformed"):
        TokenVocab.from_dict(d)


# -- batches and speed ------------------------------------------------------------------------

@pytest.mark.parametrize("unit, texts", [("char", ["abc", "b", "ca x"]), ("word", ["a b c", "b", "c , d e"])])
def test_encode_batch_is_encode_padded(unit, texts):
    v = TokenVocab.build(texts[:2], unit=unit)          # some tokens of the third are unknown
    for eos in (False, True):
        ids, lengths = v.encode_batch(texts, eos=eos)
        assert ids.dtype == lengths.dtype == np.int32 and ids.shape == (3, lengths.max())
        for row, n, text in zip(ids, lengths, texts):
            expected = v.encode(text).tolist() + [EOS] * eos
            assert n == len(expected) and row[:n].tolist() == expected and (row[n:] == PAD).all()


def test_encode_batch_edges():
    v = TokenVocab.build(["ab"])
    ids, lengths = v.encode_batch([])
    assert ids.shape == (0, 0) and lengths.shape == (0,)
    ids, lengths = v.encode_batch(["", "a"], eos=True)
    assert ids.tolist() == [[EOS, PAD], [4, EOS]] and lengths.tolist() == [1, 2]
    ids, lengths = v.encode_batch([""])
    assert ids.shape == (1, 0) and lengths.tolist() == [0]


def test_a_hundred_thousand_short_lines_take_seconds_not_minutes():
    picks = np.random.default_rng(0).integers(0, 5000, size=(100_000, 8))
    lines = [" ".join(f"w{k}" for k in row) + " ." for row in picks.tolist()]
    start = time.perf_counter()
    v = TokenVocab.build(lines, unit="word")
    ids, lengths = v.encode_batch(lines, eos=True)
    assert ids.shape == (100_000, 10) and (lengths == 10).all() and not (ids == UNK).any()
    # about 3 s on the 2-core development machine; the bound leaves room for a slow CI runner
    assert time.perf_counter() - start < 20


def test_the_documented_examples_hold():
    import rnnfast.data
    import rnnfast.data.tokens

    for module in (rnnfast.data.tokens, rnnfast.data):
        assert doctest.testmod(module).failed == 0, module.__name__
