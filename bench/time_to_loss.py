"""Time to loss: the best validation loss each library reaches in the same wall-clock budget.

Both train the same character model from the same initial weights (rnnfast's, copied into PyTorch)
on the same corpus, vocabulary and split (``rf.data.split_ids``, the last 10% held out), reading
the same batches (an ``rf.StreamBatcher`` each over the training part) with Adam(LR) and clipping
at CLIP, no dropout (``bench/train_step.py`` builds both). rnnfast runs :class:`rnnfast.Trainer`
(``run(time_budget=...)``); PyTorch runs ``TorchTrainer.run`` (``bench/torch_reference.py``), the
same loop. Both validate every ``eval_every`` steps and once at the end, on the same validation
batches (``EVAL_B`` streams of ``EVAL_T``, the state carried, as ``CharRNN.evaluate``); before
training, both evaluations of the same initial weights must agree within ``TOLERANCE``. Each
side's budget includes its own validations. The two run one after the other, never at the same
time.

The corpus is tinyshakespeare, looked for in ``shared/data`` beside the checkout (where the tests
find it), or the scenario's ``data`` (``rnnfast bench --data PATH``). It is read in place.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import rnnfast as rf
from rnnfast.bench.harness import SETTLE_S, TOLERANCE
from rnnfast.bench.scenarios import Scenario
from rnnfast.bench.train_step import build_pair
from rnnfast.testing import rel_err

# CharRNN.evaluate's defaults, what `rnnfast train` validates with.
EVAL_B, EVAL_T = 32, 128
VAL_FRAC = 0.1
CORPUS_NAME = "tinyshakespeare.txt"


def corpus_path(s: Scenario) -> Path:
    """``s.data``, or tinyshakespeare in ``shared/data`` beside the checkout; a clear error if missing."""
    path = Path(s.data) if s.data else Path(__file__).resolve().parents[2] / "shared" / "data" / CORPUS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found at {path}; pass the path of {CORPUS_NAME} (or any text) "
                                "with --data PATH")
    return path


def bench_time_to_loss(s: Scenario, with_torch: bool) -> dict:
    """Best validation loss (nats/char) and steps done in ``s.seconds`` of training, per library;
    ``loss_diff`` = PyTorch's best - rnnfast's (above 0: rnnfast got further); ``steps_ratio`` =
    rnnfast's steps / PyTorch's."""
    path = corpus_path(s)
    text = rf.data.read_text(path)
    vocab = rf.data.Vocab.from_text(text)
    train, val, _ = rf.data.split_ids(vocab.encode(text), VAL_FRAC)
    s = replace(s, vocab=len(vocab))
    val_batcher = rf.StreamBatcher(val, EVAL_B, EVAL_T)
    trainer, reference = build_pair(s, train, with_torch, val_data=val_batcher, eval_every=s.eval_every)
    result = {"corpus": str(path), "corpus_chars": len(text)}
    if with_torch:
        val_copy = rf.StreamBatcher(val, EVAL_B, EVAL_T)
        val_batches = [val_copy.next_batch() for _ in range(val_copy.batches_per_epoch)]
        ours, theirs = trainer.model.evaluate(val_batcher)["loss"], reference.evaluate(val_batches)
        result["eval_rel_err"] = rel_err(ours, theirs)
        if result["eval_rel_err"] > TOLERANCE[s.dtype]:
            raise AssertionError(f"rnnfast and PyTorch evaluate the same weights differently: validation loss "
                                 f"{ours:.6f} against {theirs:.6f}")
    ran = trainer.run(time_budget=s.seconds)
    result.update(best_val=ran["best_val"], steps=ran["step"], elapsed_s=ran["elapsed"])
    if with_torch:
        time.sleep(SETTLE_S)  # rnnfast's worker threads stop spinning before PyTorch starts
        theirs = reference.run(val_batches, s.seconds, s.eval_every)
        result.update(torch_best_val=theirs["best_val"], torch_steps=theirs["step"], torch_elapsed_s=theirs["elapsed"],
                      loss_diff=theirs["best_val"] - ran["best_val"], steps_ratio=ran["step"] / theirs["step"])
    return result
