"""--tokens word for charlm and classify (issue 16): the readers' word ids and vocabularies (the
training part's words seen --min-count times, the others <unk>, split by rnnfast.data.split_words),
sampling a word model (never an id no text holds, words joined by spaces), and the command line end
to end on generated word texts: train, generate (with and without --prime), eval, predict, resume,
--init-from (rows follow words, as they follow characters). Character runs stay as they were: their
checkpoint's vocabulary is the character Vocab, and a checkpoint from before --tokens still serves."""
import csv
import json
import shutil

import numpy as np
import pytest

from rnnfast.checkpoint import init_weights_from, load_checkpoint, load_model, save_checkpoint, vocab_tokens
from rnnfast.data import BOS, EOS, PAD, UNK, TokenVocab, Vocab, split_words, vocab_from_dict
from rnnfast.errors import DataError
from rnnfast.models import CharRNN
from rnnfast.models.sampling import default_prime
from rnnfast.tasks import (build_model, describe_loss, encode_texts, read_charlm, read_classify, shuffled_split,
                           text_vocab)
from test_cli import digests, run

TINY = ["--hidden", "16", "--layers", "1", "--seq-len", "8", "--batch-size", "4", "--device", "cpu", "--no-progress"]
CPU = ("--device", "cpu")
WORDS = ["the", "king", "queen", "sword", "crown", "speaks", "rides", "falls", "a", "land", "of", "night"]


def word_text(n_lines: int, seed: int, words=WORDS) -> str:
    """Lines of 4-8 seeded words, each line a sentence ending in a full stop or "!"."""
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(words, size=rng.integers(4, 9))) + rng.choice([".", "!"]) for _ in range(n_lines)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_text(word_text(300, seed=0), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """Labelled texts whose label is told by one word of each."""
    rng = np.random.default_rng(0)
    cue = {"pos": ["good", "great", "lovely"], "neg": ["bad", "awful", "poor"]}
    rows = []
    for _ in range(160):
        label = str(rng.choice(["pos", "neg"]))
        words = [*rng.choice(["the", "film", "was", "very", "and", "it"], size=4), rng.choice(cue[label])]
        rows.append(" ".join(rng.permutation(words)) + ".\t" + label)
    path = tmp_path_factory.mktemp("data") / "reviews.tsv"
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def word_lm(text_file, tmp_path_factory):
    """A word charlm run's directory and its train output."""
    out = tmp_path_factory.mktemp("runs") / "words"
    result = run("train", text_file, "--tokens", "word", "--min-count", 2, *TINY, "--steps", 6, "--eval-every", 3,
                 "--out", out)
    return out, result


@pytest.fixture(scope="module")
def word_classifier(reviews, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "classify-words"
    run("train", reviews, "--task", "classify", "--tokens", "word", "--seq-len", 8, "--hidden", 16, "--layers", 1,
        "--device", "cpu", "--no-progress", "--lr", 0.01, "--steps", 40, "--eval-every", 20, "--out", out)
    return out


@pytest.fixture(scope="module")
def char_lm(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "chars"
    run("train", text_file, *TINY, "--steps", 2, "--out", out)
    return out


def eval_lines(stdout: str) -> dict:
    """The metric lines of eval's plain output: ``name  value``."""
    pairs = (line.split() for line in stdout.splitlines())
    return {p[0]: float(p[1]) for p in pairs if len(p) == 2 and p[1].replace(".", "").replace("-", "").isdigit()}


# -- the readers --------------------------------------------------------------------------------

def test_read_charlm_words_ids_vocab_and_split(tmp_path):
    # "rare" and "!" once in training (below --min-count 2), "late" only in the held-out tenth
    line = "the king rides, the queen rides.\n"
    text = line * 10 + "rare king!\n" + line * 10 + "the late king rides.\n" * 2
    path = tmp_path / "t.txt"
    path.write_text(text)
    td = read_charlm(path, batch_size=2, seq_len=8, val_frac=0.1, tokens="word", min_count=2)
    vocab = vocab_from_dict(td.meta["vocab"])
    assert td.meta["vocab"]["kind"] == "tokens" and td.meta["vocab"]["unit"] == "word"
    assert vocab.tokens == (",", ".", "king", "queen", "rides", "the")  # sorted, after the four specials
    words = split_words(text)
    assert len(td.train) + len(td.val) == len(words) and len(td.val) == round(0.1 * len(words))
    np.testing.assert_array_equal(np.concatenate([td.train, td.val]), vocab.encode(text))
    assert [words[i] for i in np.flatnonzero(td.train == UNK)] == ["rare", "!"]
    assert vocab.decode(td.val[-5:]) == "the <unk> king rides ."  # "late" was never in training
    assert td.val.max() < len(vocab) and PAD not in td.train and EOS not in td.train
    assert "(173 words, 10 word ids (--min-count 2); 17 held out)" in td.description
    assert build_model("charlm", td, hidden_size=4, num_layers=1, seed=0).vocab_size == len(vocab) == 10


def test_read_charlm_words_errors(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one two three\n" * 40)
    with pytest.raises(DataError, match="use a smaller --min-count"):
        read_charlm(path, batch_size=2, seq_len=4, tokens="word", min_count=1000)
    path.write_text("again " * 400)
    with pytest.raises(DataError, match="only one distinct word"):
        read_charlm(path, batch_size=2, seq_len=4, tokens="word")
    path.write_text("one two three\n" * 4)
    with pytest.raises(DataError, match=r"11 words, but at least 90 are needed; .* = 90 words; use a longer text"):
        read_charlm(path, batch_size=10, seq_len=8, tokens="word")


def test_read_classify_words(reviews):
    td = read_classify(reviews, seq_len=4, seed=0, tokens="word", min_count=3)
    vocab = text_vocab(td.meta)
    assert isinstance(vocab, TokenVocab) and vocab.unit == "word" and vocab.min_count == 3
    ids, lengths, labels = td.train
    assert ids.shape[1] == lengths.max() == 4  # cut to --seq-len words
    # the vocabulary is of the training rows alone: rebuild it from them
    rows = list(csv.reader(reviews.read_text().splitlines()[1:], delimiter="\t"))
    tr, _ = shuffled_split(len(rows), 0.1, 0, reviews, "rows")
    assert vocab == TokenVocab.build([rows[i][0] for i in tr], "word", 3)
    np.testing.assert_array_equal(ids[0, :lengths[0]], vocab.encode(rows[tr[0]][0])[:4])
    assert "word ids (--min-count 3)" in td.description
    with pytest.raises(DataError, match="use a smaller --min-count"):
        read_classify(reviews, seq_len=4, tokens="word", min_count=10_000)


def test_encode_texts_cuts_words_and_reads_unknown_ones_as_unk():
    vocab = TokenVocab.build(["a cat sat on a mat."], "word")
    ids, lengths = encode_texts(vocab, ["a dog sat on the mat .", "a cat"], 4, "texts")
    assert lengths.tolist() == [4, 2]
    assert vocab.decode(ids[0]) == "a <unk> sat on" and vocab.decode(ids[1, :2]) == "a cat"
    with pytest.raises(DataError, match="data row 2 has an empty text"):
        encode_texts(vocab, ["a", ""], 4, "texts")


def test_one_helper_reads_either_vocabulary_and_describes_the_loss():
    chars, words = Vocab.from_text("ab\n"), TokenVocab.build(["a b ."], "word")
    assert vocab_from_dict(chars.to_dict()) == chars and vocab_from_dict(words.to_dict()) == words
    assert text_vocab({"vocab": words.to_dict()}) == words
    assert vocab_tokens(chars.to_dict()) == ["\n", "a", "b"]
    assert vocab_tokens(words.to_dict()) == ["<pad>", "<bos>", "<eos>", "<unk>", ".", "a", "b"]
    no_stop = TokenVocab(["x", "y"], "word")
    assert (default_prime(chars), default_prime(words), default_prime(no_stop)) == ("\n", ".", "x")
    assert describe_loss("charlm", 1.5, "word") == "1.5000 nats/token (perplexity 4.48)"
    assert describe_loss("charlm", 1.5) == describe_loss("charlm", 1.5, "char") == \
        "1.5000 nats/char (2.164 bpc, perplexity 4.48)"


@pytest.mark.parametrize("compiled", [False, True])
def test_a_word_sample_never_draws_an_id_no_text_holds(compiled):
    vocab = TokenVocab.build(["the king rides . the queen falls !"], "word")
    model = CharRNN(len(vocab), hidden_size=8, num_layers=1, seed=0)  # untrained: every id about as likely
    ids = model.sample(vocab.encode("the"), 400, seed=1, num_samples=3, compiled=compiled, vocab=None)
    ids_masked = model.sample("the", 400, seed=1, num_samples=3, compiled=compiled, vocab=vocab)
    assert set(np.unique(ids)) & {PAD, BOS, EOS}  # without the vocabulary nothing is left out
    words = [text.split(" ") for text in ids_masked]
    assert all(len(w) == 401 for w in words)  # one word per id: no "" from <pad>, no stop at <eos>
    assert {w for text in words for w in text} <= set(vocab.tokens) | {"<unk>"}
    pieces = []
    text = model.sample("the zebra", 40, seed=2, compiled=compiled, vocab=vocab, stream=pieces.append)
    assert "".join(pieces) == text and text.startswith("the <unk> ")


# -- the command line: charlm -------------------------------------------------------------------

def test_cli_trains_a_word_model(word_lm, text_file):
    out, result = word_lm
    assert "words, " in result.stderr and "(--min-count 2)" in result.stderr
    assert "step 3: validation loss" in result.stderr and "nats/token (perplexity" in result.stderr
    assert "nats/char" not in result.stderr + result.stdout and "nats/token" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["tokens"], config["min_count"]) == ("word", 2)
    model, meta = load_model(out / "best.safetensors")
    vocab = text_vocab(meta)
    assert meta["vocab"] == read_charlm(text_file, batch_size=4, seq_len=8, tokens="word", min_count=2).meta["vocab"]
    assert vocab.unit == "word" and model.vocab_size == len(vocab) == 4 + len(WORDS) + 2  # and "." "!"


def test_cli_generates_words(word_lm):
    ckpt = word_lm[0] / "best.safetensors"
    plain = run("generate", ckpt, "--length", 30, "--seed", 3).stdout
    assert plain.startswith(". ") and len(plain.split()) == 31  # the default prime, then 30 words
    assert set(plain.split()) <= set(WORDS) | {".", "!", "<unk>"}
    primed = run("generate", ckpt, "--prime", "the zebra king", "--length", 10, "--seed", 3).stdout
    assert primed.startswith("the <unk> king ") and len(primed.split()) == 13
    assert run("generate", ckpt, "--prime", "the zebra king", "--length", 10, "--seed", 3, "--stream").stdout == primed
    two = run("generate", ckpt, "--length", 5, "--seed", 3, "--num-samples", 2).stdout
    assert two.count("--- sample") == 2
    result = run("generate", ckpt, "--prime", "   ", ok=False)
    assert "holds no word to start from" in result.stderr


def test_cli_evaluates_a_word_model(word_lm, text_file, tmp_path):
    out = word_lm[0]
    result = run("eval", out / "best.safetensors", *CPU)
    metrics = eval_lines(result.stdout)
    assert set(metrics) == {"loss", "bits_per_token", "perplexity"}
    best = min(json.loads(line)["val_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
               if '"event": "eval"' in line)
    assert metrics["loss"] == pytest.approx(best, abs=1e-4)
    assert "unigram baseline: " in result.stdout and "nats/token" in result.stdout
    new = tmp_path / "new.txt"
    new.write_text(word_text(20, seed=9) + "zebras everywhere.\n")
    report = json.loads(run("eval", out / "best.safetensors", new, "--json", *CPU).stdout)
    assert report["data"].endswith("words)") and set(report["metrics"]) == {"loss", "bits_per_token", "perplexity"}


def test_cli_predict_scores_lines_per_word(word_lm, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("the king rides.\n\nzebras speak!\n")
    rows = [json.loads(r) for r in run("predict", word_lm[0] / "best.safetensors", lines, "--json", *CPU)
            .stdout.splitlines()]
    assert [(r["line"], r["tokens"]) for r in rows] == [(1, 4), (3, 3)]
    assert set(rows[0]) == {"line", "tokens", "nats_per_token", "bits_per_token", "perplexity", "text"}


def test_cli_resume_keeps_the_tokens(word_lm, tmp_path):
    run_dir = shutil.copytree(word_lm[0], tmp_path / "run")
    result = run("train", "--resume", run_dir / "latest.safetensors", "--steps", 8, "--no-progress", *CPU)
    assert "stopped at step 8" in result.stdout and "nats/token" in result.stdout
    _, meta = load_checkpoint(run_dir / "latest.safetensors")
    assert meta["cli"]["options"]["tokens"] == "word" and meta["vocab"]["kind"] == "tokens"
    before = digests(run_dir)
    result = run("train", "--resume", run_dir / "latest.safetensors", "--tokens", "char", "--steps", 9,
                 "--no-progress", *CPU, ok=False)
    assert "--tokens" in result.stderr and digests(run_dir) == before


# -- the command line: classify -----------------------------------------------------------------

def test_cli_classifies_words(word_classifier, reviews, tmp_path):
    ckpt = word_classifier / "best.safetensors"
    _, meta = load_checkpoint(ckpt)
    assert meta["vocab"]["unit"] == "word" and meta["labels"] == ["neg", "pos"]
    metrics = eval_lines(run("eval", ckpt, *CPU).stdout)
    assert {"loss", "accuracy", "f1"} <= set(metrics)
    assert "accuracy" in eval_lines(run("eval", ckpt, reviews, *CPU).stdout)
    texts = tmp_path / "texts.txt"
    texts.write_text("the film was great and lovely.\nawful , poor zebra film.\n")
    rows = [json.loads(r) for r in run("predict", ckpt, texts, "--json", *CPU).stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2] and all(set(r["probabilities"]) == {"neg", "pos"} for r in rows)
    model, _ = load_model(ckpt)
    vocab = text_vocab(meta)
    ids, lengths = encode_texts(vocab, [r["text"] for r in rows], 8, texts)
    np.testing.assert_allclose([r["probabilities"]["pos"] for r in rows], model.predict_proba(ids, lengths)[:, 1],
                               rtol=1e-6)


# -- --init-from --------------------------------------------------------------------------------

def test_cli_init_from_a_word_model_carries_rows_by_word(word_lm, tmp_path):
    new_data = tmp_path / "new.txt"
    new_data.write_text(word_text(300, seed=4, words=WORDS[2:] + ["horse", "storm"]))
    out = tmp_path / "fine"
    result = run("train", new_data, "--init-from", word_lm[0] / "best.safetensors", "--seq-len", 8, "--batch-size",
                 4, "--steps", 1, "--eval-every", 1, "--no-progress", *CPU, "--out", out)
    assert "nats/token" in result.stderr  # --tokens word came from the checkpoint
    assert json.loads((out / "config.json").read_text())["tokens"] == "word"
    base, base_meta = load_model(word_lm[0] / "best.safetensors")
    _, new_meta = load_checkpoint(out / "latest.safetensors")
    old_ids = {t: i for i, t in enumerate(vocab_tokens(base_meta["vocab"]))}
    new_tokens = vocab_tokens(new_meta["vocab"])
    assert "horse" in new_tokens and "the" not in new_tokens and "the" in old_ids
    # the first step's weights are the checkpoint's rows, moved to the words' new ids
    fresh = build_model("charlm", read_charlm(new_data, batch_size=4, seq_len=8, tokens="word"), hidden_size=16,
                        num_layers=1, seed=0)
    init_weights_from(fresh, word_lm[0] / "best.safetensors", chars=new_tokens)
    for new_id, token in enumerate(new_tokens):
        if token in old_ids:
            np.testing.assert_array_equal(fresh.params["embed.weight"][new_id],
                                          base.params["embed.weight"][old_ids[token]])


def test_cli_init_from_refuses_another_kind_of_tokens(word_lm, char_lm, text_file, tmp_path):
    args = [text_file, "--seq-len", 8, "--batch-size", 4, "--steps", 1, "--no-progress", *CPU]
    result = run("train", *args, "--init-from", char_lm / "best.safetensors", "--tokens", "word",
                 "--out", tmp_path / "a", ok=False)
    assert "--tokens word differs from the --init-from checkpoint's char" in result.stderr
    result = run("train", *args, "--init-from", word_lm[0] / "best.safetensors", "--tokens", "char",
                 "--out", tmp_path / "b", ok=False)
    assert "--tokens char differs from the --init-from checkpoint's word" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- character runs as they were ----------------------------------------------------------------

def test_a_character_run_keeps_its_character_vocabulary(char_lm, text_file):
    _, meta = load_checkpoint(char_lm / "latest.safetensors")
    assert meta["vocab"] == {"kind": "char", "chars": list(Vocab.from_text(text_file.read_text()).chars)}
    assert type(text_vocab(meta)) is Vocab
    assert (meta["cli"]["options"]["tokens"], meta["cli"]["options"]["min_count"]) == ("char", 1)
    assert "nats/char" in run("eval", char_lm / "latest.safetensors", *CPU).stdout


def test_a_checkpoint_from_before_tokens_still_serves(char_lm, tmp_path):
    copy = shutil.copytree(char_lm, tmp_path / "run") / "latest.safetensors"
    tensors, meta = load_checkpoint(copy)
    for name in ("tokens", "min_count"):
        del meta["cli"]["options"][name]  # as written before the options
    save_checkpoint(copy, tensors, meta)
    assert {"loss", "bpc", "perplexity"} == set(eval_lines(run("eval", copy, *CPU).stdout))
    assert run("generate", copy, "--length", 5, "--seed", 0).stdout.startswith("\n")
    assert "stopped at step 3" in run("train", "--resume", copy, "--steps", 3, "--no-progress", *CPU).stdout


@pytest.mark.parametrize("args, expect", [
    (["--min-count", 2], "--min-count is for --tokens word here"),
    (["--task", "forecast", "--column", "0", "--tokens", "word"], "a forecast model reads numbers"),
])
def test_cli_token_options_a_run_cannot_use(args, expect, text_file, tmp_path):
    result = run("train", text_file, *TINY, "--steps", 1, *args, "--out", tmp_path / "r", ok=False)
    assert expect in result.stderr and not (tmp_path / "r").exists()
