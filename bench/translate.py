"""Decode speed of the translate model: sentences per second, greedy and beam 5, rnnfast's Seq2Seq
(CPU, float32) against its PyTorch twin (``bench/torch_seq2seq.py``) holding the same weights, on
date sources from ``bench/dates.py`` (character vocabularies, as ``rnnfast train --task translate``
builds them for this data).

Rows: a GRU 1x128 and an LSTM 1x128 model with Bahdanau attention, each decoding ``--sentences``
sources in one batch (rnnfast's ``translate(batch_size=...)``, the twin's batched ``greedy`` /
``beam``) and a few sources one at a time (batch 1, what an interactive user waits for).

The weights are random, with the head's EOS bias set to -1e4 so that no sentence ends early: every
decoding writes ``MAX_LEN`` = 11 tokens, the steps a trained model takes on this task (the ten
characters of ``YYYY-MM-DD`` and EOS), so both libraries do a trained model's work while their
outputs stay comparable id for id. ``agree`` is the share of sentences whose outputs are the same
in both (float32: an id within rounding of a tie may differ).

Timing as ``bench/harness.py`` does it: warm-up, then alternating rounds (the order flips each
round, a pause before each sample), medians; ``ratio`` is PyTorch time / rnnfast time (above 1:
rnnfast is faster), the median of each round's ratio. ``python -m rnnfast.bench.translate`` runs
it (about a minute on a 2-core machine); run nothing else that times at once.

Then the whole training step of the same models on a batch of 64 dates pairs (forward, loss,
backward, clipping, Adam), against the twin trained the usual PyTorch way (autograd,
``clip_grad_norm_``, ``torch.optim.Adam``), from the same weights, checked to give the same first
loss before it is timed.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from rnnfast.bench.dates import make_pairs
from rnnfast.bench.harness import machine_info, paired_ratio, time_alternating
from rnnfast.bench.torch_seq2seq import from_rnnfast
from rnnfast.data import EOS, TokenVocab
from rnnfast.models.seq2seq import Seq2Seq

MAX_LEN = 11                     # len("2024-03-07") + EOS
MODELS = (("gru", 1, 128, "bahdanau"), ("lstm", 1, 128, "bahdanau"))
DECODES = (("greedy", 1), ("beam 5", 5))
SENTENCES, ONE_AT_A_TIME = 256, 16
TRAIN_BATCH = 64                 # pairs per training step
VOCAB_PAIRS = 5000               # the pairs the vocabularies are built from (seed 0; sources use seed 1)


def build(cell: str, num_layers: int, hidden_size: int, attention: str, seed: int = 0):
    """Seq2Seq (float32) over the dates' character vocabularies, its EOS suppressed (see the
    module), the twin holding the same weights, and the source and target vocabularies."""
    pairs = make_pairs(VOCAB_PAIRS, seed=0)
    src_vocab = TokenVocab.build([s for s, _ in pairs], unit="char")
    tgt_vocab = TokenVocab.build([t for _, t in pairs], unit="char")
    model = Seq2Seq(len(src_vocab), len(tgt_vocab), hidden_size=hidden_size, num_layers=num_layers, cell=cell,
                    attention=attention, max_target_len=MAX_LEN, dtype=np.float32, seed=seed)
    weights = model.state_dict()
    weights["head.bias"] = weights["head.bias"].copy()
    weights["head.bias"][EOS] = -1e4
    model.load_state_dict(weights)
    return model.eval(), from_rnnfast(model), src_vocab, tgt_vocab


def bench_model(cell, num_layers, hidden_size, attention, sentences: int, repeats: int) -> list[dict]:
    """One row per decode of DECODES, batched and one at a time: sentences/s of each library, their
    paired ratio and the share of outputs that agree."""
    model, twin, src_vocab, _ = build(cell, num_layers, hidden_size, attention)
    sources = [s for s, _ in make_pairs(sentences, seed=1)]
    src, src_len = src_vocab.encode_batch(sources)
    rows = []
    for name, k in DECODES:
        for batch in (sentences, 1):
            n = sentences if batch > 1 else min(ONE_AT_A_TIME, sentences)
            # the same chunks for both, each as wide as its longest source (a batch of one: no padding)
            chunks = [(src[i:i + batch, :src_len[i:i + batch].max()], src_len[i:i + batch]) for i in range(0, n, batch)]
            chunks_t = [(torch.from_numpy(a).long(), torch.from_numpy(lengths).long()) for a, lengths in chunks]

            def ours():
                return [ids for a, lengths in chunks
                        for ids in model.translate(a, lengths, beam=k, max_len=MAX_LEN, batch_size=batch)]

            def theirs():
                return [ids for a, lengths in chunks_t
                        for ids in (twin.greedy(a, lengths, MAX_LEN) if k == 1 else twin.beam(a, lengths, k, MAX_LEN))]

            agree = float(np.mean([a == b for a, b in zip(ours(), theirs())]))
            load_before = os.getloadavg()[0]
            samples = time_alternating({"rnnfast": ours, "torch": theirs}, repeats)
            times = {lib: float(np.median(v)) for lib, v in samples.items()}
            rows.append({"model": f"{cell} {num_layers}x{hidden_size} {attention}", "decode": name, "batch": batch,
                         "sentences": n, "sent_per_s": n / times["rnnfast"], "torch_sent_per_s": n / times["torch"],
                         "ratio": paired_ratio(samples, "torch", "rnnfast"), "agree": agree,
                         "load_before": load_before, "load_after": os.getloadavg()[0]})
    return rows


def bench_training(cell, num_layers, hidden_size, attention, batch: int, repeats: int) -> dict:
    """The whole training step on a batch of dates pairs (forward, loss, backward, clipping to 5,
    Adam), rnnfast's against the twin's written the usual PyTorch way, from the same weights; the
    first step's losses must agree before anything is timed."""
    import rnnfast as rf

    model, twin, src_vocab, tgt_vocab = build(cell, num_layers, hidden_size, attention)
    model.params["head.bias"][EOS] = 0  # a trained model's EOS, not the decode rows' suppressed one
    with torch.no_grad():
        twin.head.bias[EOS] = 0
    model.train()
    twin.train()
    chosen = make_pairs(batch, seed=2)
    src, src_len = src_vocab.encode_batch([s for s, _ in chosen])
    tgt, tgt_len = tgt_vocab.encode_batch([t for _, t in chosen], eos=True)
    data = (src, src_len, tgt, tgt_len)
    data_t = tuple(torch.from_numpy(a).long() for a in data)
    optimizer, optimizer_t = rf.optim.Adam(lr=1e-3), torch.optim.Adam(twin.parameters(), lr=1e-3)

    def ours():
        model.zero_grad()
        loss = model.train_step(data)["loss"]
        rf.optim.clip_grad_norm(model.grads, 5.0)
        optimizer.step(model.params, model.grads)
        return loss

    def theirs():
        optimizer_t.zero_grad()
        loss = twin.loss(*data_t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 5.0)
        optimizer_t.step()
        return float(loss.detach())

    first, first_t = ours(), theirs()
    if not abs(first - first_t) <= 1e-4 * abs(first_t):
        raise AssertionError(f"the first training step's losses differ: rnnfast {first}, torch {first_t}")
    load_before = os.getloadavg()[0]
    samples = time_alternating({"rnnfast": ours, "torch": theirs}, repeats)
    times = {lib: float(np.median(v)) for lib, v in samples.items()}
    return {"model": f"{cell} {num_layers}x{hidden_size} {attention}", "batch": batch,
            "ms": times["rnnfast"] * 1e3, "torch_ms": times["torch"] * 1e3,
            "ratio": paired_ratio(samples, "torch", "rnnfast"), "loss": first, "torch_loss": first_t,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


COLUMNS = ("model", "decode", "batch", "sentences", "rnnfast sent/s", "torch sent/s", "ratio", "agree", "load")


def format_table(info: dict, rows: list[dict]) -> str:
    """Markdown: the machine line, then one line per row."""
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores; numba {info['numba']}, numpy {info['numpy']}, "
             f"torch {info['torch']} ({info['torch_threads']} threads); max_len {MAX_LEN}", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 3) + "---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['decode']} | {r['batch']} | {r['sentences']} | {r['sent_per_s']:,.0f} | "
                     f"{r['torch_sent_per_s']:,.0f} | {r['ratio']:.2f} | {r['agree']:.0%} | "
                     f"{r['load_before']:.1f}-{r['load_after']:.1f} |")
    return "\n".join(lines)


def format_training(rows: list[dict]) -> str:
    lines = ["| model | batch | rnnfast ms/step | torch ms/step | ratio | first loss (rnnfast, torch) | load |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{r['loss']:.5f}, {r['torch_loss']:.5f} | {r['load_before']:.1f}-{r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rnnfast.bench.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", choices=("gru", "lstm"), default=["gru", "lstm"], help="models to time")
    parser.add_argument("--sentences", type=int, default=SENTENCES, help=f"sources per batch (default {SENTENCES})")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row (median reported; default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    args = parser.parse_args(argv)
    if args.sentences < 2:
        parser.error(f"--sentences must be at least 2 (a batch, and the one-at-a-time rows), got {args.sentences}")
    info = machine_info()
    rows = [row for spec in MODELS if spec[0] in args.cells
            for row in bench_model(*spec, sentences=args.sentences, repeats=args.repeats)]
    print(format_table(info, rows))
    training = [bench_training(*spec, batch=TRAIN_BATCH, repeats=args.repeats)
                for spec in MODELS if spec[0] in args.cells]
    print("\nThe whole training step (forward, loss, backward, clip, Adam):\n")
    print(format_training(training))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "training": training}, f, indent=2)


if __name__ == "__main__":
    main()
