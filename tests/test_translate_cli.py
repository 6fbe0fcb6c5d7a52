"""rnnfast train/eval/predict --task translate (issue 16) end to end through Click's runner, on a
generated file of pairs: strings of 3-6 letters and the same strings reversed (a task a small
attention model learns in a few hundred steps), and the same pairs with the letters as words.

What predict prints is held to the model run by hand (the checkpoint's vocabularies, then
``Seq2Seq.translate``), line for line. Every bad input is one line on stderr, leaves no run
directory or output file behind, and leaves the checkpoints byte for byte as they were. Models are
tiny, so that the file runs in well under a minute once Numba's cache is warm.
"""
import json
import shutil
import sys

import numpy as np
import pytest

from rnnfast.checkpoint import load_checkpoint, load_model, save_checkpoint
from rnnfast.data import TokenVocab
from test_cli import digests, run

TINY = ["--cell", "gru", "--hidden", "32", "--layers", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]
CPU = ("--device", "cpu")
LETTERS = "abcdefgh"
LONGEST = 6  # letters in the longest training source


def reversal_pairs(n: int, seed: int, sep: str = "") -> list[tuple[str, str]]:
    """n pairs (a string of 3-6 letters, the string reversed), the letters joined by ``sep``."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list(LETTERS), size=rng.integers(3, LONGEST + 1))) for _ in range(n)]
    return [(sep.join(w), sep.join(w[::-1])) for w in words]


def write_pairs(path, pairs, header=("source", "target")):
    path.write_text("\t".join(header) + "\n" + "".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pairs_tsv(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.tsv", reversal_pairs(300, seed=0))


@pytest.fixture(scope="module")
def word_pairs_tsv(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "words.tsv", reversal_pairs(300, seed=0, sep=" "))


@pytest.fixture(scope="module")
def translator(pairs_tsv, tmp_path_factory):
    """The file's one trained translator (bahdanau attention, characters): its run directory and output."""
    out = tmp_path_factory.mktemp("runs") / "reverse"
    result = run("train", pairs_tsv, "--task", "translate", *TINY, "--lr", "0.005", "--steps", 300,
                 "--eval-every", 100, "--out", out)
    return out, result


@pytest.fixture(scope="module")
def unattending(pairs_tsv, tmp_path_factory):
    """A translator with --attention none (two steps: only its options matter)."""
    out = tmp_path_factory.mktemp("runs") / "none"
    run("train", pairs_tsv, "--task", "translate", "--attention", "none", *TINY, "--steps", 2, "--out", out)
    return out / "latest.safetensors"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A model of another task, for the translate-only options given to it."""
    rng = np.random.default_rng(1)
    rows = [f"{' '.join(rng.choice(['good', 'bad', 'day'], size=3))}\t{rng.choice(['pos', 'neg'])}" for _ in range(40)]
    data = tmp_path_factory.mktemp("data") / "labels.tsv"
    data.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("runs") / "classify"
    run("train", data, "--task", "classify", *TINY, "--seq-len", 16, "--steps", 1, "--out", out)
    return out / "latest.safetensors"


def translate_by_hand(checkpoint, texts, beam=1) -> list[str]:
    """The checkpoint's translations of ``texts``: its source vocabulary, Seq2Seq.translate, its target vocabulary."""
    model, meta = load_model(checkpoint)
    source, target = TokenVocab.from_dict(meta["source_vocab"]), TokenVocab.from_dict(meta["target_vocab"])
    encoded = [source.encode(t) for t in texts]
    lengths = np.array([len(e) for e in encoded], dtype=np.int32)
    src = np.zeros((len(texts), lengths.max()), dtype=np.int32)
    for row, e in zip(src, encoded):
        row[: len(e)] = e
    return [target.decode(ids) for ids in model.translate(src, lengths, beam=beam)]


def eval_lines(stdout: str) -> dict:
    """The metric lines of `rnnfast eval`: name -> value."""
    return {line.split()[0]: float(line.split()[1]) for line in stdout.splitlines()
            if len(line.split()) == 2 and not line.startswith(("checkpoint", "data"))}


# -- train --------------------------------------------------------------------------------------

def test_train_reports_loss_exact_match_bleu_and_chrf(translator):
    out, result = translator
    assert "gru 1x32 translate model with bahdanau attention on char tokens" in result.stderr
    reports = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in reports] == ["step 100", "step 200", "step 300"]
    for line in reports:
        assert all(part in line for part in ("nats/token (perplexity ", "), exact match ", "%, BLEU ", ", chrF ")), line
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert all({"val_exact_match", "val_bleu", "val_chrf", "val_token_accuracy"} <= set(e) for e in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # it learns
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("task", "attention", "beam", "teacher_forcing", "tokens", "min_count",
                                   "source_column", "target_column")} == {
        "task": "translate", "attention": "bahdanau", "beam": 1, "teacher_forcing": 1.0, "tokens": "char",
        "min_count": 1, "source_column": "source", "target_column": "target"}
    _, meta = load_checkpoint(out / "best.safetensors")
    assert meta["cli"]["options"]["attention"] == "bahdanau" and meta["model"]["attention"] == "bahdanau"


def test_resume_keeps_the_translators_options_and_continues_exactly(word_pairs_tsv, tmp_path):
    options = ["--task", "translate", "--tokens", "word", "--min-count", 2, "--attention", "luong",
               "--teacher-forcing", 0.5, "--beam", 2, "--bidirectional", "--dropout", 0.1, *TINY, "--eval-every", 2]
    run("train", word_pairs_tsv, *options, "--steps", 4, "--out", tmp_path / "straight")
    run("train", word_pairs_tsv, *options, "--steps", 2, "--out", tmp_path / "split")
    ckpt = tmp_path / "split" / "latest.safetensors"
    before = digests(tmp_path / "split")
    for flag, value, saved in (("--attention", "bahdanau", "luong"), ("--tokens", "char", "word"),
                               ("--beam", 1, 2), ("--teacher-forcing", 1.0, 0.5), ("--min-count", 1, 2)):
        result = run("train", "--resume", ckpt, flag, value, "--steps", 4, ok=False)
        assert f"{flag} {value} differs from the resumed run's {saved}" in result.stderr
    assert digests(tmp_path / "split") == before

    result = run("train", "--resume", ckpt, "--steps", 4, "--no-progress", *CPU)
    assert "resuming" in result.stderr and "with luong attention on word tokens" in result.stderr
    straight, _ = load_checkpoint(tmp_path / "straight" / "latest.safetensors")
    resumed, meta = load_checkpoint(ckpt)
    assert meta["trainer"]["step"] == 4 and straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    assert TokenVocab.from_dict(meta["source_vocab"]).unit == "word"


def test_init_from_a_translator_needs_its_vocabularies_and_attention(translator, pairs_tsv, tmp_path):
    ckpt = translator[0] / "best.safetensors"
    args = ["--task", "translate", *TINY, "--init-from", ckpt, "--steps", 1]
    result = run("train", pairs_tsv, *args, "--out", tmp_path / "same")
    assert "training from the weights of" in result.stderr
    other = write_pairs(tmp_path / "other.tsv", [("xyz", "zyx"), ("zzy", "yzz")] * 10)
    result = run("train", other, *args, "--out", tmp_path / "other", ok=False)
    assert "the source tokens of" in result.stderr and "are not those of --init-from" in result.stderr
    result = run("train", pairs_tsv, *args, "--attention", "luong", "--out", tmp_path / "luong", ok=False)
    assert "--attention luong differs from the --init-from checkpoint's bahdanau" in result.stderr
    assert not (tmp_path / "other").exists() and not (tmp_path / "luong").exists()


def test_a_checkpoint_from_before_the_translate_options_resumes_evaluates_and_predicts(classifier, tmp_path):
    copy = shutil.copytree(classifier.parent, tmp_path / "run") / "latest.safetensors"
    tensors, meta = load_checkpoint(copy)
    for name in ("tokens", "source_column", "target_column", "min_count", "attention", "teacher_forcing", "beam"):
        del meta["cli"]["options"][name]  # as written before the options
    save_checkpoint(copy, tensors, meta)
    assert "accuracy" in eval_lines(run("eval", copy, *CPU).stdout)
    texts = tmp_path / "texts.txt"
    texts.write_text("good day\nbad day\n")
    assert run("predict", copy, texts, *CPU).stdout.startswith("line,text,label,probability\n")
    assert "stopped at step 2" in run("train", "--resume", copy, "--steps", 2, "--no-progress", *CPU).stdout


# -- eval ---------------------------------------------------------------------------------------

def test_eval_scores_the_held_out_pairs_and_a_file(translator, tmp_path):
    ckpt = translator[0] / "best.safetensors"
    result = run("eval", ckpt, *CPU)
    assert "held-out part of" in result.stdout and "translated greedily" in result.stdout
    metrics = eval_lines(result.stdout)
    assert {"loss", "exact_match", "token_accuracy", "bleu", "chrf"} <= set(metrics)
    assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["bleu"] <= 100 and 0 < metrics["chrf"] <= 100
    best = min(json.loads(line)["val_loss"] for line in (translator[0] / "metrics.jsonl").read_text().splitlines()
               if '"event": "eval"' in line)
    assert metrics["loss"] == pytest.approx(best, abs=1e-4)  # the split that training held out

    new = write_pairs(tmp_path / "new.tsv", reversal_pairs(30, seed=5))
    report = json.loads(run("eval", ckpt, new, "--beam", 3, "--json", *CPU).stdout)
    assert report["task"] == "translate" and "new.tsv (30 pairs); translated with a beam of 3" in report["data"]
    assert set(report["metrics"]) == {"loss", "exact_match", "token_accuracy", "bleu", "chrf"}


# -- predict ------------------------------------------------------------------------------------

def test_predict_translates_each_line_in_order(translator, tmp_path):
    ckpt = translator[0] / "best.safetensors"
    texts = [s for s, _ in reversal_pairs(12, seed=9)]
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = run("predict", ckpt, inputs, *CPU)
    want = translate_by_hand(ckpt, texts)
    assert result.stdout == "".join(t + "\n" for t in want) and result.stderr == ""
    assert sum(a == b[::-1] for a, b in zip(want, texts)) >= 3  # it has learnt to reverse some

    out = tmp_path / "out.txt"
    assert run("predict", ckpt, inputs, "--beam", 3, "--out", out, *CPU).stdout == f"wrote {out} (12 translations)\n"
    assert out.read_text(encoding="utf-8") == "".join(t + "\n" for t in translate_by_hand(ckpt, texts, beam=3))

    records = [json.loads(line) for line in run("predict", ckpt, inputs, "--json", *CPU).stdout.splitlines()]
    assert records == [{"line": n, "text": t, "translation": w} for n, (t, w) in enumerate(zip(texts, want), 1)]
    table = write_pairs(tmp_path / "table.tsv", [(t, "") for t in texts[:4]])  # a table's source column
    assert run("predict", ckpt, table, *CPU).stdout.splitlines() == want[:4]


def test_a_source_longer_than_any_training_one_is_translated_with_one_warning(translator, tmp_path):
    ckpt = translator[0] / "best.safetensors"
    long = LETTERS * 2
    inputs = tmp_path / "inputs.txt"
    inputs.write_text(f"abc\n{long}\n{long}\ncab\n")
    result = run("predict", ckpt, inputs, *CPU)
    assert len(result.stdout.splitlines()) == 4
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: 2 inputs, the first")
    assert f"line 2 ({len(long)} tokens)" in warning and f"any training source ({LONGEST} tokens)" in warning
    _, meta = load_checkpoint(ckpt)
    assert f"capped at {meta['model']['max_target_len']} tokens" in warning


def test_attention_plot(translator, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    ckpt = translator[0] / "best.safetensors"
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("abcd\nhgf\n")
    png = tmp_path / "attention.png"
    result = run("predict", ckpt, inputs, "--attention-plot", png, *CPU)
    assert result.stdout.splitlines() == translate_by_hand(ckpt, ["abcd", "hgf"])  # the note is on stderr
    assert result.stderr == f"wrote {png}\n" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without matplotlib: one line, and neither --out nor the plot written
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = run("predict", ckpt, inputs, "--attention-plot", tmp_path / "again.png", "--out", tmp_path / "o.txt",
                 *CPU, ok=False)
    assert "--attention-plot needs matplotlib: pip install 'rnnfast[plot]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.png", "inputs.txt"]


# -- bad input: one line, non-zero exit, nothing written -----------------------------------------

@pytest.mark.parametrize("args, message", [
    (["{labels}", "--task", "translate"], "no column 'source'"),
    (["{pairs}", "--task", "translate", "--source-column", "de"], "no column 'de'"),
    (["{pairs}", "--task", "translate", "--target-column", "en"], "(--target-column)"),
    (["{empty_source}", "--task", "translate"], "line 3 has an empty source"),
    (["{empty_target}", "--task", "translate"], "line 2 has an empty target"),
    (["--task", "translate"], "--task translate needs a CSV or TSV file"),
    (["{pairs}", "--task", "translate", "--teacher-forcing", "0"], "'--teacher-forcing'"),
    (["{pairs}", "--task", "translate", "--beam", "0"], "'--beam'"),
    (["{pairs}", "--task", "translate", "--attention", "dot"], "'--attention'"),
    (["{pairs}", "--task", "translate", "--tokens", "bpe"], "'--tokens'"),
    (["{pairs}", "--task", "translate", "--min-count", "0"], "'--min-count'"),
    (["{pairs}", "--task", "forecast", "--column", "0", "--tokens", "word"], "a forecast model reads numbers"),
    (["{labels}", "--task", "classify", "--min-count", "2"], "--min-count is for --tokens word here"),
    (["{labels}", "--task", "classify", "--attention", "luong"], "--attention is for --task translate"),
    (["{labels}", "--task", "classify", "--beam", "4"], "--beam is for --task translate"),
    (["--teacher-forcing", "0.5"], "--teacher-forcing is for --task translate"),
])
def test_train_bad_input(args, message, pairs_tsv, tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("text\tlabel\nabc\tx\nbcd\ty\n")
    empty_source = write_pairs(tmp_path / "es.tsv", [("abc", "cba"), ("", "ab")])
    empty_target = write_pairs(tmp_path / "et.tsv", [("abc", ""), ("ab", "ba")])
    names = {"pairs": pairs_tsv, "labels": labels, "empty_source": empty_source, "empty_target": empty_target}
    result = run("train", *(a.format(**names) for a in args), *TINY, "--steps", 1, "--out", tmp_path / "run", ok=False)
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_without_sacrebleu_train_and_eval_say_what_to_install(translator, pairs_tsv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    hint = "pip install 'rnnfast[translate]'"
    result = run("train", pairs_tsv, "--task", "translate", *TINY, "--steps", 1, "--out", tmp_path / "run", ok=False)
    assert hint in result.stderr and not (tmp_path / "run").exists()
    assert hint in run("eval", translator[0] / "best.safetensors", *CPU, ok=False).stderr


@pytest.fixture
def untouched(translator, unattending, classifier):
    """The checkpoints; after the test each must hold the bytes it held before."""
    paths = {"translator": translator[0] / "best.safetensors", "none": unattending, "classifier": classifier}
    before = {name: p.read_bytes() for name, p in paths.items()}
    yield paths
    assert {name: p.read_bytes() for name, p in paths.items()} == before


BAD = {
    "--beam for a classifier (eval)": ("eval", "classifier", ["--beam", "2"], "--beam is for a translation model"),
    "--beam for a classifier": ("predict", "classifier", ["{inputs}", "--beam", "2"],
                                "--beam is for a translation model"),
    "--attention-plot for a classifier": ("predict", "classifier", ["{inputs}", "--attention-plot", "{tmp}/a.png"],
                                          "--attention-plot is for a translation model"),
    "--attention-plot without attention": ("predict", "none", ["{inputs}", "--attention-plot", "{tmp}/a.png"],
                                           "was trained with --attention none"),
    "--attention-plot the checkpoint": ("predict", "translator", ["{inputs}", "--attention-plot", "{checkpoint}"],
                                        "is the checkpoint"),
    "--out the inputs": ("predict", "translator", ["{inputs}", "--out", "{inputs}"], "is DATA"),
    "no DATA": ("predict", "translator", [], "pass DATA, the texts to translate"),
    "a blank line": ("predict", "translator", ["{blank}"], "line 2"),
    "a table without the source column": ("predict", "translator", ["{labels}"], "no column 'source'"),
    "--beam 0": ("predict", "translator", ["{inputs}", "--beam", "0"], "'--beam'"),
    "an eval file without the target column": ("eval", "translator", ["{labels}"], "no column"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_touches_nothing(name, untouched, tmp_path):
    command, which, args, message = BAD[name]
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("abc\nfed\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("abc\n\nfed\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text("text\tlabel\nabc\tx\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = dict(inputs=inputs, blank=blank, labels=labels, tmp=tmp_path, checkpoint=untouched[which])
    result = run(command, untouched[which], *(a.format(**fill) for a in args), *CPU, ok=False)
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
