"""``rnnfast train``: train a model with live progress, validation, checkpoints, plots and exact resume."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource
from tqdm import tqdm

from rnnfast import parallel
from rnnfast.backend import to_numpy
from rnnfast.callbacks import Callback, JSONLLogger, ProgressBar, TensorBoardLogger, import_tensorboardx
from rnnfast.checkpoint import check_model_fits, init_weights_from, load_checkpoint, read_meta, vocab_tokens
from rnnfast.cli.common import Command, config_option, device_option, resolve_device
from rnnfast.cli.plots import plot_forecast, plot_losses, preload as preload_plotting
from rnnfast.cli.tasks import (TEXT_TASKS, TRANSLATE_OPTIONS, build_model, read_task, require_translate_metrics,
                               task_of, validation_data)
from rnnfast.data import ArrayBatcher, Scaler, StreamBatcher
from rnnfast.errors import CheckpointError
from rnnfast.optim import SGD, Adagrad, Adam, AdamW, Constant, CosineWarmup, ExponentialDecay, RMSprop, StepDecay, Warmup
from rnnfast.rundir import CHECKPOINT_FILES as CHECKPOINTS, claim, write_text_atomically
from rnnfast.tasks import TASKS, check_same_data, describe_loss
from rnnfast.trainer import Trainer, config_mismatch
from rnnfast.warmup import backward_compiled, compile_backward_in_background

OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad}

class ZoneoutParam(click.ParamType):
    """--zoneout: a fraction in [0, 1), or two (P_H,P_C) for the LSTM's h and c, as a list."""

    name = "zoneout"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float, list)):
            return value
        try:
            parts = [float(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a number or a pair P_H,P_C (e.g. 0.1 or 0.1,0.05)", param, ctx)
        if len(parts) > 2 or not all(0.0 <= p < 1.0 for p in parts):
            self.fail(f"{value!r}: give one fraction in [0, 1), or two (P_H,P_C) for an LSTM", param, ctx)
        return parts[0] if len(parts) == 1 else parts


# The options that define a run. A resumed run takes them from its checkpoint, so it continues
# exactly; the others (how long, where, on which device) belong to each invocation.
RUN_OPTIONS = ("data", "task", "cell", "hidden", "layers", "dropout", "bidirectional", "seq_len", "batch_size",
               "lr", "optimizer", "weight_decay", "clip", "val_frac", "seed", "dtype", "encoding", "column",
               "window", "horizon", "text_column", "label_column")
# The learning-rate schedule is a function of the step, so a resumed run continues it by rebuilding it.
# Checkpoints from before these options ran the constant rate, which their defaults give.
LR_SCHEDULE_OPTIONS = ("lr_schedule", "warmup_steps", "lr_step_size", "lr_gamma", "min_lr")
# Options newer than some checkpoints: a checkpoint without one ran what its default gives.
NEWER_OPTIONS = LR_SCHEDULE_OPTIONS + ("weight_drop", "recurrent_dropout", "zoneout", "features", "layer_norm",
                                       "tokens") + TRANSLATE_OPTIONS
RUN_OPTIONS += NEWER_OPTIONS
LIMITS = ("steps", "epochs", "time_budget")

# With no --steps, --epochs or --time-budget a run stops after this many seconds: long enough for
# the default model to learn visibly on two CPU cores, short enough to finish while you watch.
DEFAULT_TIME_BUDGET = 180.0
# The default 2x128 character model overfits the 61 KB built-in corpus within a minute without
# dropout (validation 1.75 nats/char at step 600, 2.26 by step 1900); with 0.3 it reaches 1.68.
DEFAULT_DROPOUT = {"charlm": 0.3, "forecast": 0.0, "classify": 0.0, "translate": 0.0}
# Each task's regularisers when none is given. With recurrent dropout 0.25 besides the dropout, the
# default character model's best validation loss on the built-in corpus fell from 1.677 (step 1200,
# then overfitting) to below 1.59 by step 2300, and on (README: "The default run", measured in
# step-limited runs); zoneout 0.1 got there later and needs more steps than 180 s give here.
# Recurrent dropout acts in training only, so the default model still exports to ONNX.
TASK_DEFAULTS = {"dropout": DEFAULT_DROPOUT,
                 "recurrent_dropout": {"charlm": 0.25, "forecast": 0.0, "classify": 0.0, "translate": 0.0}}
# What a checkpoint from before an option with a task default ran: the option off.
OFF_BEFORE = {"recurrent_dropout": 0.0}

# What a run writes besides its checkpoints: a run that stops before its first checkpoint in a
# directory it created removes them again, so no directory holds a run that never was.
RUN_FILES = ("config.json", "metrics.jsonl", "loss.png", "forecast.png", "tensorboard")
STOP_REASONS = {"steps": "--steps reached", "epochs": "--epochs reached", "time_budget": "--time-budget used up",
                "early_stopping": "no better validation loss in the last {patience} validations: --patience "
                                  "{patience}, 0 turns it off", "interrupted": "Ctrl-C"}
# A program that runs this command in-process (rnnfast tune) adds callbacks to the run as a list in
# ctx.meta[EXTRA_CALLBACKS]; one that ends the run by Trainer.stop_reason has that reason printed.
EXTRA_CALLBACKS = "rnnfast.train.callbacks"
# A run stops once its validation loss has not improved for this many validations in a row (1000
# steps at the default --eval-every): the default character model's best comes long before its
# time is up, and what follows only overfits (measured in the README's "The default run").
DEFAULT_PATIENCE = 10


class EvalReport(Callback):
    """One line per validation, above the progress bar, so the learning curve stays on screen."""

    def __init__(self, task: str, tokens: str = "char"):
        self.task, self.tokens = task, tokens

    def on_eval_end(self, trainer, step, logs):
        mark = "  (best so far)" if logs["improved"] else ""
        scores = _translation_scores(logs) if self.task == "translate" else ""
        loss = describe_loss(self.task, logs["val_loss"], self.tokens)
        tqdm.write(f"step {step}: validation loss {loss}{scores}{mark}", file=sys.stderr)


def _translation_scores(logs: dict) -> str:
    """A translator's validation scores beside its loss: the decoded held-out sources against their targets."""
    return (f", exact match {100 * logs['val_exact_match']:.1f}%, BLEU {logs['val_bleu']:.2f}, "
            f"chrF {logs['val_chrf']:.2f}")


def _explicit(ctx: click.Context, name: str) -> bool:
    """Whether the user chose this option (command line, environment or --config), not its default."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _absolute(data) -> str | None:
    return None if data is None else str(Path(data).resolve())


def _resumed_options(ctx: click.Context, opts: dict, resume: Path) -> tuple[dict, dict, dict]:
    """The run's options from the checkpoint (an explicitly different value is an error), its limits
    and its meta."""
    _, meta = load_checkpoint(resume)
    _, saved = task_of(meta, resume)
    saved = {**{p.name: OFF_BEFORE.get(p.name, p.default) for p in ctx.command.params if p.name in NEWER_OPTIONS},
             **saved}
    for name in RUN_OPTIONS:
        mine = _absolute(opts[name]) if name == "data" else opts[name]
        if name == "layer_norm" and _explicit(ctx, name) and mine != saved[name]:
            raise click.UsageError(_layer_norm_differs(mine, "resumed run", "start a new run without --resume"))
        if _explicit(ctx, name) and mine != saved[name]:
            flag = "DATA" if name == "data" else "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} {opts[name]} differs from the resumed run's {saved[name]}; a resumed run "
                                   "keeps its settings: drop the option, or start a new run without --resume")
    return {**opts, **{k: saved[k] for k in RUN_OPTIONS}}, meta["cli"]["limits"], meta


def _layer_norm_differs(mine: bool, theirs: str, instead: str) -> str:
    """The one line for --layer-norm (or --no-layer-norm) against a checkpoint that differs."""
    if mine:
        return (f"--layer-norm: the {theirs}'s model has no layer norm (its checkpoint holds no gains or biases "
                f"for it); drop --layer-norm, or {instead}")
    return f"--no-layer-norm: the {theirs}'s model has layer norm; drop --no-layer-norm, or {instead}"


def _run_dir(out: Path | None, opts: dict, resume: Path | None) -> tuple[Path, bool]:
    """Where checkpoints go: --out, the resumed checkpoint's directory, or a new runs/<task>-<cell>-<time>;
    and whether it is that default name (which ``claim`` extends when another run has it)."""
    if out is not None:
        return out, False
    if resume is not None:
        return resume.parent, False
    return Path("runs") / f"{opts['task']}-{opts['cell']}-{time.strftime('%Y%m%d-%H%M%S')}", True


def _refuse_another_run(out: Path, resume: Path | None) -> None:
    """A directory holding another run's checkpoints is refused, so nothing overwrites them."""
    continuing = resume is not None and resume.parent.resolve() == out.resolve()
    existing = [name for name in CHECKPOINTS if (out / name).exists()]
    if existing and not continuing:
        raise click.UsageError(f"{out} already holds a run ({existing[0]}); continue it with "
                               f"--resume {out / 'latest.safetensors'}, or choose a new --out")
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} is a file; pass a directory")


def _check_described(opts: dict, resume: Path) -> None:
    """Before a resumed run builds its model: the checkpoint's model description fits the tensors in
    its header (nothing allocated yet), and the run's settings describe that same model, so that an
    edited size (hidden 10**9) is a one-line error instead of an allocation."""
    described = check_model_fits(resume)
    for option, key in (("hidden", "hidden_size"), ("layers", "num_layers"), ("cell", "cell")):
        if described.get(key) != opts[option]:
            raise CheckpointError(f"{resume} is damaged or was edited: its run's settings say --{option} "
                                  f"{opts[option]!r}, but the model it holds has {key}={described.get(key)!r}; "
                                  "use another checkpoint, such as the run's best")


def _initialised_options(ctx: click.Context, opts: dict, init_from: Path) -> tuple[dict, dict]:
    """A new run from ``init_from``'s weights: the task must be the checkpoint's, and the model's
    shape is the checkpoint's (an explicitly different one is an error, so nothing is silently
    dropped); everything else, seed and dropout included, is this run's. Also the checkpoint's meta.
    The whole header is checked here, before anything is built or created."""
    meta = read_meta(init_from)
    task, saved = task_of(meta, init_from)
    if task != opts["task"]:
        raise click.UsageError(f"--init-from {init_from} holds a {task} model and this is a {opts['task']} run; "
                               f"use a {opts['task']} checkpoint, or train with --task {task}")
    saved = {"layer_norm": False, "tokens": "char", **saved}  # a checkpoint from before either has none
    if _explicit(ctx, "layer_norm") and opts["layer_norm"] != saved["layer_norm"]:
        raise click.UsageError(_layer_norm_differs(opts["layer_norm"], "--init-from checkpoint",
                                                   "train from scratch without --init-from"))
    # a character model's rows are characters and a word model's words: --tokens is the checkpoint's
    shape = ("cell", "hidden", "layers", "dtype", "bidirectional", "layer_norm") + {
        "forecast": ("horizon",), "translate": ("attention",), "charlm": ("tokens",),
        "classify": ("tokens",)}.get(task, ())
    for name in shape:
        if _explicit(ctx, name) and opts[name] != saved[name]:
            raise click.UsageError(f"--{name} {opts[name]} differs from the --init-from checkpoint's {saved[name]}; "
                                   "the model's shape comes from the checkpoint: drop the option")
    opts = {**opts, **{name: saved[name] for name in shape}}
    _check_described(opts, init_from)
    if task == "classify" and "labels" not in meta:
        raise CheckpointError(f"{init_from} has no labels in its metadata; use a checkpoint from a run directory")
    return opts, meta


def _check_same_vocabularies(init_meta: dict, td, data, init_from: Path) -> None:
    """A translator's embeddings and head are rows of its two vocabularies, and only a character
    model's rows are carried over to new tokens: a new run from a translator's weights needs data
    with the same vocabularies, or its rows would silently mean other tokens."""
    for side in ("source", "target"):
        key = f"{side}_vocab"
        if init_meta.get(key) != td.meta[key]:
            raise click.UsageError(f"the {side} tokens of {data} are not those of --init-from {init_from}, and a "
                                   "translator's weights follow its vocabularies; use data with the same tokens "
                                   "(and --tokens, --min-count), or train from scratch")


def _check_resumable(meta: dict, td, model, resume: Path) -> None:
    """A checkpoint must agree with itself: the model it describes is the one its run's settings
    build, and it holds what reading the data needs (the vocabulary, ...). Otherwise it was damaged
    or edited, which is what the message says (not that the data or the model changed)."""
    damaged = f"{resume} is damaged or was edited"
    use = "use another checkpoint, such as the run's best"
    saved = meta.get("model")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{damaged}: it has no model description; {use}")
    differ = config_mismatch(saved, model.config())
    if differ:
        key, theirs, ours = differ[0]
        raise CheckpointError(f"{damaged}: its model description says {key}={theirs!r}, but the settings of its "
                              f"run build {key}={ours!r}; {use}")
    missing = [key for key in td.meta if key not in meta]
    if missing:
        raise CheckpointError(f"{damaged}: it lacks the {missing[0]} its run read the data with; {use}")


def _check_task_options(ctx: click.Context, opts: dict) -> None:
    """A translator's option set for another task is an error, not silently unused, as are --tokens
    word for a forecaster and --min-count for a run of characters (whose Vocab has no <unk>). Values are
    compared with the defaults, not asked whether they were given, since every run's config.json
    holds them all and --config RUN/config.json repeats any run."""
    task = opts["task"]
    if opts["tokens"] != "char" and task not in TEXT_TASKS:
        raise click.UsageError(f"--tokens {opts['tokens']} is for the tasks that read text "
                               f"({', '.join(TEXT_TASKS)}); a {task} model reads numbers: drop --tokens")
    if task == "translate":
        return
    defaults = {p.name: p.default for p in ctx.command.params}
    shared = ()  # the translator's options that this task reads too
    if task in TEXT_TASKS:
        shared = ("min_count",)
        if opts["tokens"] == "char" and opts["min_count"] != defaults["min_count"]:
            raise click.UsageError(f"--min-count is for --tokens word here: a {task} model of characters keeps "
                                   "every character of its data; give --tokens word, or drop --min-count")
    for name in TRANSLATE_OPTIONS:
        if name not in shared and opts[name] != defaults[name]:
            raise click.UsageError(f"--{name.replace('_', '-')} is for --task translate; drop it for --task {task}")


def _limits(ctx: click.Context, opts: dict, saved_limits: dict | None) -> dict:
    """How long to train: the options given, else the resumed run's, else DEFAULT_TIME_BUDGET."""
    given = {k: opts[k] for k in LIMITS if _explicit(ctx, k) and opts[k] is not None}
    if given:
        return {k: given.get(k) for k in LIMITS}
    if saved_limits is not None:
        return saved_limits
    return {"steps": None, "epochs": None, "time_budget": DEFAULT_TIME_BUDGET}


def _describe_limits(limits: dict) -> str:
    parts = [f"{limits['steps']} steps" if limits["steps"] else None,
             f"{limits['epochs']} epochs" if limits["epochs"] else None,
             f"{limits['time_budget']:g} s" if limits["time_budget"] else None]
    return " or ".join(p for p in parts if p)


def _lr_schedule(opts: dict, total_steps: int | None):
    """The learning-rate schedule the options describe (None for the constant rate with no warm-up,
    which leaves the optimizer's lr alone as before there were schedules); a bad combination is a
    UsageError. ``total_steps``: the steps cosine decays over (the run's first --steps)."""
    kind, lr, warmup = opts["lr_schedule"], opts["lr"], opts["warmup_steps"]
    uses = {"lr_step_size": ("step",), "lr_gamma": ("step", "exponential"), "min_lr": ("cosine",)}
    for name, kinds in uses.items():
        if opts[name] is not None and kind not in kinds:
            raise click.UsageError(f"--{name.replace('_', '-')} is for --lr-schedule {' and '.join(kinds)}, "
                                   f"not {kind}; drop it or choose that schedule")
    if kind == "cosine":
        min_lr = opts["min_lr"] or 0.0
        if total_steps is None:
            raise click.UsageError("--lr-schedule cosine decays over --steps; give --steps N")
        if warmup >= total_steps:
            raise click.UsageError(f"--warmup-steps {warmup} leaves no steps of the {total_steps} for the cosine "
                                   "decay; use fewer warm-up steps or more --steps")
        if min_lr > lr:
            raise click.UsageError(f"--min-lr {min_lr:g} is above --lr {lr:g}; cosine decays from --lr down to --min-lr")
        return CosineWarmup(lr, warmup, total_steps, min_lr)
    if kind == "step":
        if opts["lr_step_size"] is None:
            raise click.UsageError("--lr-schedule step needs --lr-step-size N, the steps between decays")
        schedule = StepDecay(lr, opts["lr_step_size"], 0.1 if opts["lr_gamma"] is None else opts["lr_gamma"])
    elif kind == "exponential":
        if opts["lr_gamma"] is None:
            raise click.UsageError("--lr-schedule exponential needs --lr-gamma G, the factor per step (e.g. 0.999)")
        schedule = ExponentialDecay(lr, opts["lr_gamma"])
    elif warmup == 0:
        return None
    else:
        schedule = Constant(lr)
    return Warmup(schedule, warmup) if warmup else schedule


def _write_plots(out: Path, opts: dict, model, td) -> list[Path]:
    title = f"{opts['task']} {opts['cell']} {opts['layers']}x{opts['hidden']}"
    written = []
    if plot_losses(out / "metrics.jsonl", out / "loss.png", title, td.baseline, td.baseline_name):
        written.append(out / "loss.png")
    if opts["task"] == "forecast":
        X, Y = td.val
        scaler = Scaler.from_dict(td.meta["scaler"])
        pred = scaler.inverse_transform(to_numpy(model.predict(X))[:, 0])
        if plot_forecast(pred, scaler.inverse_transform(Y[:, 0]), out / "forecast.png",
                         f"{title}: one step ahead on the validation part"):
            written.append(out / "forecast.png")
    return written


def _describe_translator(opts: dict) -> str:
    """For the start line: what a translator's options make of it (nothing for the other tasks)."""
    if opts["task"] != "translate":
        return ""
    attention = "without attention" if opts["attention"] == "none" else f"with {opts['attention']} attention"
    return f"{attention} on {opts['tokens']} tokens "


def _describe_world(world, batch_size: int) -> str:
    """For the start line: how many processes train (nothing for one)."""
    if world.size == 1:
        return ""
    return f"{world.size} processes (mpiexec) of {batch_size // world.size} sequences each; "


@click.command("train", cls=Command)
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(TASKS), default="charlm", show_default=True,
              help="charlm: next-character model of a text; forecast: the next values of a CSV column; "
                   "classify: labels of texts in a CSV/TSV file; translate: a sequence-to-sequence model of "
                   "the source and target columns of a CSV/TSV file.")
@click.option("--cell", type=click.Choice(["rnn", "lstm", "gru"]), default="lstm", show_default=True,
              help="Recurrent cell (rnn is the tanh RNN).")
@click.option("--hidden", type=click.IntRange(min=1), default=128, show_default=True, help="Hidden units per layer.")
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True, help="Stacked recurrent layers.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Dropout between layers and before the output layer (a translator's embeddings too), "
                   "in [0, 1). [default: 0.3 for charlm, 0 for the other tasks]")
@click.option("--weight-drop", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="DropConnect on the recurrent weights W_hh (AWD-LSTM), in [0, 1): one mask per layer "
                   "and batch, scaled by 1/(1-p), in training only.")
@click.option("--recurrent-dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Variational dropout on the state where it enters W_hh (Gal & Ghahramani; Keras's "
                   "recurrent_dropout), in [0, 1): one mask per sequence and layer for all steps, in training only.  "
                   "[default: 0.25 for charlm, 0 for the other tasks]")
@click.option("--zoneout", type=ZoneoutParam(), default=0.0, show_default=True, metavar="P|P_H,P_C",
              help="Zoneout (Krueger et al.): each unit keeps its previous state with probability P at each step; "
                   "eval uses the expectation. For --cell lstm, P_H,P_C zones h and c apart.")
@click.option("--layer-norm/--no-layer-norm", default=False, show_default=True,
              help="Layer-normalised cells (Ba et al.; haste's LayerNormLSTM/GRU): the input and recurrent "
                   "pre-activations normalised apart, each with a gain and bias, and an LSTM's cell state before "
                   "its output tanh.")
@click.option("--bidirectional", is_flag=True,
              help="Read each sequence both ways (forecast, classify, and translate's encoder; a character model "
                   "must read forwards).")
@click.option("--seq-len", type=click.IntRange(min=1), default=64, show_default=True,
              help="charlm: characters (words, with --tokens word) per training sequence (truncated BPTT "
                   "length); classify: texts are cut to this many characters (or words).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Sequences per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Learning rate (the peak rate under a schedule).")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine", "step", "exponential"]), default="constant",
              show_default=True, help="How the learning rate changes with the step: cosine decays from --lr to "
                                      "--min-lr over --steps; step multiplies it by --lr-gamma every --lr-step-size "
                                      "steps; exponential by --lr-gamma every step.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Ramp the rate up linearly over this many first steps, then follow --lr-schedule.")
@click.option("--lr-step-size", type=click.IntRange(min=1), default=None, help="step: steps between decays.")
@click.option("--lr-gamma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="step, exponential: the factor per decay.  [default for step: 0.1]")
@click.option("--min-lr", type=click.FloatRange(min=0), default=None,
              help="cosine: the rate it ends at.  [default: 0]")
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default="adam", show_default=True,
              help="Update rule (each matches its torch.optim namesake).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight decay (decoupled for adamw, L2 for the others).")
@click.option("--clip", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Clip gradients to this global norm; 0 turns clipping off.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps in all (a resumed run counts from its start).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Stop after this many passes over the data.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop cleanly, with a checkpoint, after this many seconds. With none of --steps, --epochs "
                   f"and --time-budget, a run stops after {DEFAULT_TIME_BUDGET:g} s.")
@click.option("--val-frac", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Fraction of the data held out for validation: the end of a text or series, "
                                      "rows after a --seed shuffle for classify and translate.")
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Validate and write checkpoints every this many steps (and at the end).")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop after this many validations in a row without a better validation loss; 0 never stops "
                   f"early.  [default: {DEFAULT_PATIENCE}]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the weights, dropout and data order: the same seed gives the same run.")
@device_option("auto")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Precision of weights and activations.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory for checkpoints, metrics.jsonl, config.json and plots.  "
                   "[default: runs/<task>-<cell>-<date>-<time>, or the resumed checkpoint's directory]")
@click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="CKPT",
              help="Continue a run exactly from its checkpoint (its settings come from the checkpoint).")
@click.option("--init-from", type=click.Path(path_type=Path), default=None, metavar="CKPT",
              help="Start a new run (new directory, fresh optimizer, step 0) from a checkpoint's weights, on "
                   "DATA; the model's shape and --tokens come from the checkpoint, and a character (word) "
                   "model's new characters (words) get fresh rows.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of DATA (e.g. latin-1).")
@click.option("--column", default=None, help="forecast: the CSV column to forecast (header name or 0-based index).")
@click.option("--window", type=click.IntRange(min=1), default=32, show_default=True,
              help="forecast: past values the model reads.")
@click.option("--horizon", type=click.IntRange(min=1), default=1, show_default=True,
              help="forecast: future values it predicts.")
@click.option("--features", default=None, metavar="A,B,...",
              help="forecast: more CSV columns the model reads beside --column (names or 0-based indexes, "
                   "comma-separated), each standardised on the training part.")
@click.option("--text-column", default="text", show_default=True, help="classify: the column holding the texts.")
@click.option("--label-column", default="label", show_default=True, help="classify: the column holding the labels.")
@click.option("--source-column", default="source", show_default=True,
              help="translate: the column holding the texts to translate.")
@click.option("--target-column", default="target", show_default=True,
              help="translate: the column holding their translations.")
@click.option("--tokens", type=click.Choice(["char", "word"]), default="char", show_default=True,
              help="charlm, classify, translate: what texts are split into: characters, or words (runs of "
                   "letters, digits and _, each other mark a token of its own; whitespace only separates).")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="A token seen fewer times in the training part reads as <unk>: a word of --tokens word, or "
                   "for translate a character too (charlm and classify on characters keep every one).")
@click.option("--attention", type=click.Choice(["bahdanau", "luong", "none"]), default="bahdanau", show_default=True,
              help="translate: how the decoder reads the encoder's outputs at each step: bahdanau (additive), "
                   "luong (multiplicative, 'general'), or none (the encoder's final state alone).")
@click.option("--teacher-forcing", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="translate: the share of decoder steps fed the true previous token in training, in (0, 1]; "
                   "the others are fed the model's own likeliest token (scheduled sampling).")
@click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True,
              help="translate: beam width of the decoding that validation scores (exact match, BLEU, chrF); "
                   "1 is greedy. The loss, and so the best checkpoint, does not depend on it.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the live progress bar.")
@click.option("--tensorboard/--no-tensorboard", default=False, show_default=True,
              help="Also write TensorBoard event files to RUN/tensorboard (losses, learning rate, tokens/s, and "
                   "a text sample at each validation for charlm); needs pip install 'rnnfast[tensorboard]'. "
                   "A resumed run keeps the run's choice unless given.")
@config_option
@click.pass_context
def train(ctx, **opts):
    """Train a model on DATA and save checkpoints to a run directory.

    \b
    DATA is a text file for --task charlm (default: the built-in corpus, so
    plain `rnnfast train` works on a fresh install), a CSV for --task forecast,
    a CSV/TSV with text and label columns for --task classify, and one with
    source and target columns for --task translate (scored on the held-out
    pairs by loss, exact match, BLEU and chrF; needs the translate extra).

    Shows a live progress bar (step, loss, validation loss, tokens/s, ETA) and
    writes metrics.jsonl, latest.safetensors, best.safetensors, config.json and
    loss.png (with matplotlib) to the run directory, and with --tensorboard
    event files for 'tensorboard --logdir runs'. Ctrl-C or --time-budget
    stop cleanly with a checkpoint; --resume continues exactly; --config
    RUN/config.json repeats a run.
    """
    preload_plotting()
    resume, init_from = opts.pop("resume"), opts.pop("init_from")
    if resume is not None and init_from is not None:
        raise click.UsageError("--init-from starts a new run from a checkpoint's weights and --resume continues "
                               "one exactly; give one of them")
    device = resolve_device(opts.pop("device"))
    world = parallel.world()  # under mpiexec -n N: this process's place among the N training one model
    world.watch()
    if world.rank != 0:
        # rank 0 speaks for the run: the others would print copies of its lines and errors (the
        # watcher shows the last line of a rank that fails alone)
        sys.stdout, sys.stderr = open(os.devnull, "w"), open(world.log_path(), "w", buffering=1)
    if world.size > 1 and device == "gpu":
        raise click.UsageError("data-parallel training runs on the CPU (the GPU path is not built yet): "
                               "give --device cpu under mpiexec")
    out, progress, eval_every, patience = opts.pop("out"), opts.pop("progress"), opts.pop("eval_every"), opts.pop("patience")
    tensorboard = opts.pop("tensorboard")
    saved_limits = meta = None
    if resume is not None:
        opts, saved_limits, meta = _resumed_options(ctx, opts, resume)
        # how often it evaluates and how patient it is decide its checkpoints and its best: a
        # resumed run keeps the run's own unless given (checkpoints before they were recorded: 100, none)
        schedule = meta["cli"].get("schedule", {})
        eval_every = eval_every if _explicit(ctx, "eval_every") else schedule.get("eval_every", eval_every)
        patience = patience if _explicit(ctx, "patience") else schedule.get("patience", patience)
        # as does its TensorBoard logging (a checkpoint from before --tensorboard: off)
        tensorboard = tensorboard if _explicit(ctx, "tensorboard") else meta["cli"].get("tensorboard", False)
    elif patience is None:
        patience = DEFAULT_PATIENCE
    patience = patience or None  # 0: never stop early (a run from before the default recorded None)
    if tensorboard:
        try:
            import_tensorboardx()
        except ImportError as exc:
            raise click.ClickException(f"--tensorboard: {exc}") from None
    if init_from is not None:
        opts, init_meta = _initialised_options(ctx, opts, init_from)
    for name, defaults in TASK_DEFAULTS.items():
        if opts[name] is None:
            opts[name] = defaults[opts["task"]]
    if opts["bidirectional"] and opts["task"] == "charlm":
        raise click.UsageError("--bidirectional is for --task forecast, classify and translate (its encoder); "
                               "a character model reads forwards")
    _check_task_options(ctx, opts)
    if opts["task"] == "translate":
        require_translate_metrics()  # before the data is read and the model built
    if isinstance(opts["zoneout"], list) and opts["cell"] != "lstm":
        raise click.UsageError(f"--zoneout P_H,P_C is for --cell lstm (h and c); a {opts['cell']} has only h: "
                               "give one fraction")
    if opts["batch_size"] % world.size:
        raise click.UsageError(f"--batch-size {opts['batch_size']} does not divide among {world.size} processes; "
                               f"the global batch is split evenly: give a multiple of {world.size}")
    limits = _limits(ctx, opts, saved_limits)
    # cosine decays over the run's first --steps, which a resumed run keeps even when given more steps
    lr_total_steps = limits["steps"] if meta is None else meta["cli"].get("schedule", {}).get("lr_total_steps")
    lr_schedule = _lr_schedule(opts, lr_total_steps)
    out, default_name = _run_dir(out, opts, resume)
    if not default_name:  # a default name is made unique when claimed
        _refuse_another_run(out, resume)  # now, not after the seconds of start-up

    td = read_task(opts)
    if meta is not None:
        _check_described(opts, resume)
    model = build_model(opts, td)
    if meta is not None:
        _check_resumable(meta, td, model, resume)
        check_same_data(meta, td, resume)
    if init_from is not None:
        if opts["task"] == "classify" and init_meta["labels"] != td.meta["labels"]:
            raise click.UsageError(f"the labels of {opts['data']} are not those of --init-from {init_from} "
                                   f"({', '.join(map(repr, init_meta['labels']))}); use data with the same labels")
        if opts["task"] == "translate":
            _check_same_vocabularies(init_meta, td, opts["data"], init_from)
        init_weights_from(model, init_from, chars=vocab_tokens(td.meta["vocab"]) if "vocab" in td.meta else None)
    if device == "gpu":
        model.to("gpu")
    val_data = validation_data(opts, td)
    if opts["task"] == "charlm":
        train_data = StreamBatcher(td.train, opts["batch_size"], opts["seq_len"])
    else:
        train_data = ArrayBatcher(td.train, opts["batch_size"], seed=opts["seed"])
    optimizer = OPTIMIZERS[opts["optimizer"]](lr=opts["lr"], weight_decay=opts["weight_decay"])
    first_run = device == "cpu" and opts["task"] == "charlm" and not backward_compiled(opts["cell"], opts["dtype"])
    if first_run and world.rank == 0:  # one compile for all the ranks: they share Numba's cache
        # A first run after installing: another process compiles the backward pass's kernels while
        # this one compiles the forward pass's (the first 'train --steps 1': 14.7 -> 11.1 s)
        compile_backward_in_background(opts["cell"], opts["dtype"], type(optimizer).__name__, td.train.dtype)
    # The absolute path, so that eval and resume find the data from any working directory.
    run_options = {**{k: opts[k] for k in RUN_OPTIONS}, "data": _absolute(opts["data"])}
    # For the user's information (a resumed run keeps its record); --config RUN/config.json repeats it.
    init_record = _absolute(init_from) if init_from is not None else (meta or {}).get("cli", {}).get("init_from")
    origin = {} if init_record is None else {"init_from": init_record}
    # Only now, so that bad input leaves no run directory behind; from here on this run holds it, and
    # gives it back if it stops before its first checkpoint.
    with claim(out, unique=default_name, written=RUN_FILES) if world.rank == 0 else contextlib.nullcontext() as out:
        out = world.broadcast(out)  # rank 0 alone claims it, and writes there
        world.tell_run_dir(out)
        _refuse_another_run(out, resume)  # again: another run may have written it during start-up
        if resume is None and world.rank == 0:
            (out / "metrics.jsonl").unlink(missing_ok=True)  # of a run killed before its first checkpoint
        callbacks = [ProgressBar(disable=not progress, file=sys.stderr), EvalReport(opts["task"], opts["tokens"]),
                     JSONLLogger(out / "metrics.jsonl")]
        if tensorboard:
            callbacks.append(TensorBoardLogger(out / "tensorboard"))
        callbacks += ctx.meta.get(EXTRA_CALLBACKS, [])
        trainer = Trainer(
            model, optimizer, train_data, val_data, clip=opts["clip"] or None, schedule=lr_schedule,
            eval_every=eval_every, early_stopping_patience=patience, out_dir=out,
            callbacks=callbacks if world.rank == 0 else [], world=world,
            meta={**td.meta, "cli": {"options": run_options, "limits": limits, "baseline": td.baseline,
                                     "baseline_name": td.baseline_name,
                                     "schedule": {"eval_every": eval_every, "patience": patience,
                                                  "lr_total_steps": getattr(lr_schedule, "total_steps", None)},
                                     "tensorboard": tensorboard, **origin}},
            resume=resume,
        )
        # after the resume's checks, so that a checkpoint that cannot be continued leaves the run as it was
        if world.rank == 0:
            write_text_atomically(out / "config.json", json.dumps({**run_options, **limits, "eval_every": eval_every,
                                                                   "tensorboard": tensorboard, **origin,
                                                                   "world_size": world.size}, indent=2) + "\n")

        n_params = model.num_params()
        start = (f"resuming {resume} at step {trainer.step}" if resume else
                 f"training from the weights of {init_from}" if init_from else "training")
        click.echo(f"{start}: {opts['cell']} {opts['layers']}x{opts['hidden']} {opts['task']} model "
                   f"{_describe_translator(opts)}({n_params:,} parameters) on {td.description}; "
                   f"{device} {opts['dtype']}; "
                   f"{_describe_world(world, opts['batch_size'])}"
                   f"stops after {_describe_limits(limits)}; run directory {out}", err=True)

        result = trainer.run(**limits)

        plots = _write_plots(out, opts, model, td) if world.rank == 0 else []
        best = "no validation yet" if result["best_val"] is None else (
            f"best validation loss {describe_loss(opts['task'], result['best_val'], opts['tokens'])} "
            f"at step {result['best_step']}")
        click.echo(f"{best}; {td.baseline_name} baseline {describe_loss(opts['task'], td.baseline, opts['tokens'])}")
        files = [out / name for name in CHECKPOINTS if (out / name).exists()] + [out / "metrics.jsonl"] + plots
        if tensorboard:
            files.append(out / "tensorboard")
        reason = STOP_REASONS.get(result["stopped"], result["stopped"]).format(patience=patience)
        click.echo(f"stopped at step {result['step']} ({reason}); "
                   f"wrote {', '.join(map(str, files))}")
        world.end_cleanly()
        if result["stopped"] == "interrupted":
            click.echo(f"continue with: rnnfast train --resume {out / 'latest.safetensors'}", err=True)
            ctx.exit(130)  # the shell's code for a run stopped by Ctrl-C
