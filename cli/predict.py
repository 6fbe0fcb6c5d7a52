"""``rnnfast predict``: a checkpoint used on new data: the values after the end of a series, the labels
of texts, or the loss of each line of a text. The task comes from the checkpoint, as for ``eval``.

Every task gives rows: printed as CSV, or written to ``--out`` (CSV, TSV for a ``.tsv`` name), or
with ``--json`` as one JSON object a row. Files are written atomically, and never over the
checkpoint or the data read.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.checkpoint import load_model
from rnnfast.cli.common import Command, config_option, device_option, resolve_device
from rnnfast.cli.plots import plot_future
from rnnfast.cli.tasks import forecast_columns, task_of
from rnnfast.data import Scaler, Vocab, load_csv_columns, load_text_column, read_text, require_length
from rnnfast.errors import DataError, OutputError
from rnnfast.metrics import bits_per_char, perplexity
from rnnfast.models.sampling import default_prime
from rnnfast.prediction import forecast, future_rows_needed, text_losses
from rnnfast.rundir import write_atomically
from rnnfast.tasks import checkpoint_part, encode_texts, scale_features, scale_forecast_inputs

# DATA with one of these names is a table (its text column is read); any other is one text a line.
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
# A plot shows at most this many past values before the forecast, or four times the forecast's length.
PLOTTED_HISTORY = 200


def _forecast(model, meta: dict, opts: dict, data: Path, steps: int | None, future: Path | None, checkpoint):
    """The rows of a forecast past the end of ``data``, in the column's units, and its plot's input."""
    columns = forecast_columns(meta, opts)
    target, features = columns[0], columns[1:]
    values = load_csv_columns(data, columns, encoding=opts["encoding"])  # (N, 1 + K), the CSV's units
    window, horizon = opts["window"], opts["horizon"]
    require_length(len(values), window, f"{data} column {target!r}",
                   f"the model reads the last --window {window} values; pass a longer series", unit="values")
    steps = horizon if steps is None else steps
    needed = future_rows_needed(steps, horizon)
    future_values = None
    if features and needed:
        if future is None:
            raise DataError(f"{checkpoint} reads the features {', '.join(map(repr, features))} beside {target!r}, so "
                            f"forecasting {steps} steps, past its --horizon {horizon}, needs their values at the next "
                            f"{needed} steps: pass them with --future FILE.csv, or ask for --steps {horizon} or fewer")
        future_values = scale_features(meta, load_csv_columns(future, features, encoding=opts["encoding"]), checkpoint)
    pred = forecast(model, scale_forecast_inputs(meta, values, checkpoint), steps, window, future_values)
    pred = Scaler.from_dict(meta["scaler"]).inverse_transform(pred)
    records = [{"step": k, str(target): float(v)} for k, v in enumerate(pred, 1)]
    return records, (values[:, 0], pred, str(target))


def _texts(path: Path, column, encoding: str) -> tuple[list[int], list[str]]:
    """The lines and texts of DATA: a table's text column, or each non-blank line of any other file."""
    if path.suffix.lower() in TABLE_SUFFIXES:
        return load_text_column(path, column, encoding=encoding)
    numbered = [(n, line.strip()) for n, line in enumerate(read_text(path, encoding).split("\n"), 1) if line.strip()]
    return [n for n, _ in numbered], [line for _, line in numbered]


def _classify(model, meta: dict, opts: dict, data: Path, text_column, checkpoint) -> list[dict]:
    """One row per text: its line, the text, the likeliest label, its probability, and every label's."""
    lines, texts = _texts(data, opts["text_column"] if text_column is None else text_column, opts["encoding"])
    vocab = Vocab.from_dict(checkpoint_part(meta, "vocab", checkpoint))
    names = checkpoint_part(meta, "labels", checkpoint)
    ids, lengths = encode_texts(vocab, texts, opts["seq_len"], data, lines)
    probs = np.asarray(to_numpy(model.predict_proba(ids, lengths)), np.float64)
    return [{"line": line, "text": text, "label": names[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(names, map(float, p)))} for line, text, p in zip(lines, texts, probs)]


def _score_lines(model, meta: dict, opts: dict, data: Path, checkpoint) -> list[dict]:
    """One row per non-blank line: its loss in nats per character, bits per character and perplexity,
    each line read from a fresh state after the prime a sample starts from (a new line)."""
    vocab = Vocab.from_dict(checkpoint_part(meta, "vocab", checkpoint))
    prime = vocab.encode(default_prime(vocab))
    lines, texts, encoded = [], [], []
    for n, line in enumerate(read_text(data, opts["encoding"]).split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            encoded.append(np.concatenate([prime, vocab.encode(line)]))
        except DataError as exc:
            raise DataError(f"{data} line {n}: {exc}") from None
        lines.append(n)
        texts.append(line)
    losses = text_losses(model, encoded)
    return [{"line": n, "characters": len(text), "nats_per_char": float(loss), "bpc": bits_per_char(loss),
             "perplexity": perplexity(loss), "text": text} for n, text, loss in zip(lines, texts, losses)]


def _render(records: list[dict], as_json: bool, delimiter: str) -> str:
    """Rows as JSON Lines, or as a CSV table with a header (a classifier's per-label probabilities
    only in JSON, where they fit one field)."""
    if as_json:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    fields = [k for k in records[0] if k != "probabilities"]
    table = io.StringIO()
    writer = csv.writer(table, delimiter=delimiter, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows([r[k] for k in fields] for r in records)
    return table.getvalue()


def _check_destination(path: Path | None, flag: str, read: dict) -> None:
    """``path`` must not be a file this command reads (the checkpoint, DATA, --future)."""
    if path is None:
        return
    for what, other in read.items():
        if other is not None and path.resolve() == Path(other).resolve():
            raise OutputError(f"{flag} {path} is {what}, which predict reads and never overwrites; "
                              "choose another file name")


def _write(path: Path, data: bytes, flag: str) -> None:
    write_atomically(path, data, OutputError, f"choose a writable path for {flag}")


@click.command("predict", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="forecast: how many values to predict after the end of the series; past the model's --horizon "
                   "it reads its own predictions back in.  [default: the model's --horizon]")
@click.option("--future", type=click.Path(path_type=Path), default=None, metavar="FILE.csv",
              help="forecast with --features: a CSV of the features' values at the future steps, one row per "
                   "step in order, with the columns the model was trained on.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="FILE.png",
              help="forecast: draw the end of the series and the forecast, the future shaded (needs matplotlib).")
@click.option("--text-column", default=None,
              help="classify: the column of a CSV/TSV DATA holding the texts.  [default: the training run's]")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the rows to this file (CSV, TSV for a .tsv name, JSON Lines with --json) instead of "
                   "printing them.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per row; a classifier's also holds every label's probability.")
@click.option("--encoding", default=None, help="Text encoding of DATA  [default: the training run's]")
@device_option("auto")
@config_option
def predict(checkpoint, data, steps, future, plot, text_column, out, as_json, encoding, device):
    """Use CHECKPOINT on DATA; what it gives depends on the task it was trained for.

    \b
    forecast: the next --steps values after the end of the series in DATA, a CSV
      with the columns it was trained on (default: its training CSV), in the
      column's units; one row per future step, the value in the last column.
    classify: the label of each text in DATA (a .csv/.tsv with the text column,
      or any other file, one text a line) with its probability; with --json
      every label's probability.
    charlm: each non-blank line of DATA scored: nats per character, bits per
      character and perplexity (low for text like the training text).
    """
    device = resolve_device(device)
    model, meta = load_model(checkpoint)
    task, opts = task_of(meta, checkpoint)
    if encoding is not None:
        opts = {**opts, "encoding": encoding}
    forecast_only = {"--steps": steps, "--future": future, "--plot": plot}
    for flag, value in forecast_only.items():
        if value is not None and task != "forecast":
            raise click.UsageError(f"{flag} is for a forecaster, and {checkpoint} holds a {task} model; drop it")
    if text_column is not None and task != "classify":
        raise click.UsageError(f"--text-column is for a classifier, and {checkpoint} holds a {task} model; drop it")
    if future is not None and not forecast_columns(meta, opts)[1:]:
        raise click.UsageError(f"--future gives the values of a forecaster's --features, and {checkpoint} reads "
                               "none; drop it")
    if data is None:
        if task != "forecast":
            kind = ("texts: a .csv/.tsv with a text column, or one text a line" if task == "classify" else
                    "a text whose lines to score")
            raise click.UsageError(f"{checkpoint} holds a {task} model; pass DATA, {kind}")
        data = Path(opts["data"])
    read = {"the checkpoint": checkpoint, "DATA": data, "the --future file": future}
    _check_destination(out, "--out", read)
    _check_destination(plot, "--plot", read)
    if device == "gpu":
        model.to("gpu")

    if task == "forecast":
        records, (history, pred, name) = _forecast(model, meta, opts, data, steps, future, checkpoint)
    elif task == "classify":
        records = _classify(model, meta, opts, data, text_column, checkpoint)
    else:
        records = _score_lines(model, meta, opts, data, checkpoint)
    text = _render(records, as_json, "\t" if out is not None and out.suffix.lower() == ".tsv" else ",")
    png = None
    if plot is not None:
        shown = min(len(history), max(PLOTTED_HISTORY, 4 * len(pred)))
        png = plot_future(history[-shown:], pred, f"{name}: {len(pred)} steps past {data.name}", name,
                          first=len(history) - shown)
        if png is None:
            raise click.ClickException("--plot needs matplotlib: pip install 'rnnfast[plot]'")
    if out is None:
        click.echo(text, nl=False)
    else:
        _write(out, text.encode("utf-8"), "--out")
        click.echo(f"wrote {out} ({len(records)} rows)")
    if png is not None:
        _write(plot, png, "--plot")
        click.echo(f"wrote {plot}")
