"""``rnnfast eval``: a checkpoint's metrics on a file, or on the split its training run held out."""
from __future__ import annotations

import json
from pathlib import Path

import click

from rnnfast.backend import to_numpy
from rnnfast.checkpoint import load_model
from rnnfast.cli.common import Command, config_option, device_option, resolve_device
from rnnfast.cli.tasks import (classify_eval_data, forecast_eval_windows, read_task, require_translate_metrics,
                               task_of, translate_eval_data, translation_pairs, validation_data)
from rnnfast.data import Scaler, read_text, require_length
from rnnfast.metrics import mae, rmse
from rnnfast.tasks import check_same_data, describe_loss, text_vocab


def _file_data(task: str, meta: dict, opts: dict, path: Path, checkpoint: Path, beam: int):
    """What ``model.evaluate`` takes for a new file, read as the training data was, and its description
    (``beam``: a translator's decoding)."""
    if task == "charlm":
        text = read_text(path, opts["encoding"])
        vocab = text_vocab(meta, checkpoint)
        unit = "characters" if vocab.unit == "char" else "words"
        ids = vocab.encode(text)
        require_length(len(ids), 2, str(path), f"one prediction needs two {unit}; pass a longer text", unit=unit)
        return ids, f"{path} ({len(ids):,} {unit})"
    if task == "forecast":
        X, Y = forecast_eval_windows(meta, opts, path)
        return (X, Y), f"{path} column {opts['column']!r} ({len(X):,} windows)"
    if task == "translate":
        pairs = translate_eval_data(meta, opts, path)
        return translation_pairs(meta, pairs, beam), f"{path} ({len(pairs[0]):,} pairs)"
    data = classify_eval_data(meta, opts, path)
    return data, f"{path} ({len(data[0]):,} texts)"


def _original_units(model, meta: dict, data) -> dict:
    """A forecaster's errors in the units of the CSV column (training works in standardised units)."""
    X, Y = data
    scaler = Scaler.from_dict(meta["scaler"])
    pred = scaler.inverse_transform(to_numpy(model.predict(X)))
    truth = scaler.inverse_transform(Y)
    return {"mae_original_units": mae(pred, truth), "rmse_original_units": rmse(pred, truth)}


@click.command("eval", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--encoding", default=None, help="Text encoding of DATA  [default: the training run's]")
@click.option("--beam", type=click.IntRange(min=1), default=None,
              help="translate: beam width of the decoding that exact match, BLEU and chrF score (1: greedy).  "
                   "[default: the training run's --beam]")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@device_option("auto")
@config_option
def eval_command(checkpoint, data, encoding, beam, as_json, device):
    """Score CHECKPOINT on DATA, or on the part of its training data that was held out for validation.

    A character model reports loss (nats per character), bits per character and perplexity, with
    the unigram baseline on the held-out split (one of --tokens word: per word, so nats and bits
    per token); a forecaster MSE, MAE and RMSE (standardised and
    in the column's units); a classifier loss, accuracy, precision, recall and F1; a translator
    (DATA: a CSV/TSV with its source and target columns) loss, exact match, token accuracy, BLEU
    and chrF of its translations (sacrebleu's, 0-100).
    """
    device = resolve_device(device)
    model, meta = load_model(checkpoint)
    task, opts = task_of(meta, checkpoint)
    if beam is not None and task != "translate":
        raise click.UsageError(f"--beam is for a translation model, and {checkpoint} holds a {task} model; drop --beam")
    if task == "translate":
        require_translate_metrics()
        beam = opts["beam"] if beam is None else beam
    if encoding is not None:
        opts = {**opts, "encoding": encoding}
    if device == "gpu":
        model.to("gpu")
    baseline = None
    if data is None:
        td = read_task(opts)
        check_same_data(meta, td, checkpoint)
        data, description = validation_data(opts, td, beam), f"held-out part of {td.description}"
        baseline = {"name": td.baseline_name, "loss": td.baseline}
    else:
        data, description = _file_data(task, meta, opts, data, checkpoint, beam)
    if task == "translate":
        description += f"; translated {'greedily' if beam == 1 else f'with a beam of {beam}'}"
    metrics = model.evaluate(data)
    tokens = opts.get("tokens", "char")
    if task == "charlm" and tokens == "word":  # its loss is per word, and so are its bits
        metrics = {("bits_per_token" if name == "bpc" else name): value for name, value in metrics.items()}
    if task == "forecast":
        metrics.update(_original_units(model, meta, data))
    step = meta.get("trainer", {}).get("step")
    if as_json:
        click.echo(json.dumps({"checkpoint": str(checkpoint), "step": step, "task": task, "data": description,
                               "metrics": metrics, "baseline": baseline}))
        return
    click.echo(f"checkpoint: {checkpoint} (step {step}, {opts['cell']} {opts['layers']}x{opts['hidden']} {task})")
    click.echo(f"data: {description}")
    width = max(map(len, metrics))
    for name, value in metrics.items():
        click.echo(f"{name:<{width}}  {value:.4f}")
    if baseline is not None:
        click.echo(f"{baseline['name']} baseline: {describe_loss(task, baseline['loss'], tokens)}")
