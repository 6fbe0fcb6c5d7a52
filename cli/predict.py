"""``rnnfast predict``: a checkpoint used on new data: the values after the end of a series, the labels
of texts, the loss of each line of a text, or the translation of each. The task comes from the
checkpoint, as for ``eval``.

Every task gives rows: printed as CSV (a translator's: one translation a line), or written to
``--out`` (CSV, TSV for a ``.tsv`` name), or with ``--json`` as one JSON object a row. Files are
written atomically, and never over the checkpoint or the data read.
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
from rnnfast.cli.plots import plot_attention, plot_future
from rnnfast.cli.tasks import forecast_columns, task_of
from rnnfast.data import Scaler, load_csv_columns, load_text_column, read_text, require_length
from rnnfast.errors import DataError, OutputError
from rnnfast.metrics import bits_per_char, perplexity
from rnnfast.models.sampling import default_prime
from rnnfast.prediction import forecast, future_rows_needed, text_losses
from rnnfast.rundir import write_atomically
from rnnfast.tasks import (checkpoint_part, encode_sources, encode_texts, scale_features, scale_forecast_inputs,
                           text_vocab, translate_vocabs)

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


def _texts(path: Path, column, encoding: str, skip_blank: bool = True) -> tuple[list[int], list[str]]:
    """The lines and texts of DATA: a table's text column, or each non-blank line of any other file;
    with ``skip_blank`` False every line, blank ones as "" (the newline that ends the last one
    starts no line)."""
    if path.suffix.lower() in TABLE_SUFFIXES:
        return load_text_column(path, column, encoding=encoding)
    lines = read_text(path, encoding).split("\n")
    if lines[-1] == "":
        lines.pop()
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() or not skip_blank]
    return [n for n, _ in numbered], [line for _, line in numbered]


def _classify(model, meta: dict, opts: dict, data: Path, text_column, checkpoint) -> list[dict]:
    """One row per text: its line, the text, the likeliest label, its probability, and every label's."""
    lines, texts = _texts(data, opts["text_column"] if text_column is None else text_column, opts["encoding"])
    vocab = text_vocab(meta, checkpoint)
    names = checkpoint_part(meta, "labels", checkpoint)
    ids, lengths = encode_texts(vocab, texts, opts["seq_len"], data, lines)
    probs = np.asarray(to_numpy(model.predict_proba(ids, lengths)), np.float64)
    return [{"line": line, "text": text, "label": names[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(names, map(float, p)))} for line, text, p in zip(lines, texts, probs)]


def _score_lines(model, meta: dict, opts: dict, data: Path, checkpoint) -> list[dict]:
    """One row per non-blank line: its loss in nats per character, bits per character and perplexity,
    each line read from a fresh state after the prime a sample starts from (a new line); a word
    model's per word (its words counted; a word it lacks is <unk>, scored as such)."""
    vocab = text_vocab(meta, checkpoint)
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
    if vocab.unit == "word":
        return [{"line": n, "tokens": len(ids) - len(prime), "nats_per_token": float(loss),
                 "bits_per_token": bits_per_char(loss), "perplexity": perplexity(loss), "text": text}
                for n, text, ids, loss in zip(lines, texts, encoded, losses)]
    return [{"line": n, "characters": len(text), "nats_per_char": float(loss), "bpc": bits_per_char(loss),
             "perplexity": perplexity(loss), "text": text} for n, text, loss in zip(lines, texts, losses)]


def _translate(model, meta: dict, opts: dict, data: Path, text_column, beam: int, attention: bool,
               checkpoint) -> tuple[list[dict], tuple | None]:
    """One row per input (each line of DATA, blank ones an error, so that the translations line up
    with them; or a table's source column): its line, the text and its translation. With
    ``attention``, also the first input's attention weights (T_out, S) and the tokens that label them."""
    lines, texts = _texts(data, opts["source_column"] if text_column is None else text_column, opts["encoding"],
                          skip_blank=False)
    src, lengths = encode_sources(meta, texts, data, lines)
    _warn_of_long_sources(model, lengths, lines, data)
    if attention:
        translations, weights = model.translate(src, lengths, beam=beam, return_attention=True)
    else:
        translations, weights = model.translate(src, lengths, beam=beam), None
    source_vocab, target_vocab = translate_vocabs(meta, checkpoint)
    records = [{"line": n, "text": text, "translation": target_vocab.decode(ids)}
               for n, text, ids in zip(lines, texts, translations)]
    if weights is None:
        return records, None
    sources = source_vocab.tokenize(texts[0])
    targets = [target_vocab.decode([i]) for i in translations[0]]
    targets += ["<eos>"] * (len(weights[0]) - len(targets))  # the step that wrote the end of the translation
    return records, (np.asarray(weights[0]), sources, targets, lines[0])


def _warn_of_long_sources(model, lengths: np.ndarray, lines: list[int], data: Path) -> None:
    """One line on stderr when inputs are longer than every training source: they are translated
    anyway, but a model has not learnt to read that far, and its output stops at max_target_len."""
    longest = model.max_source_len
    if longest is None or lengths.max() <= longest:
        return
    long = np.flatnonzero(lengths > longest)
    first = int(long[0])
    where = f"{data} line {lines[first]} ({int(lengths[first])} tokens)"
    which = f"{where} is" if len(long) == 1 else f"{len(long)} inputs, the first {where}, are"
    click.echo(f"warning: {which} longer than any training source ({longest} tokens); translated anyway, each "
               f"output capped at {model.max_target_len} tokens (the model's max_target_len)", err=True)


def _render(records: list[dict], as_json: bool, delimiter: str) -> str:
    """Rows as JSON Lines, or as a CSV table with a header (a classifier's per-label probabilities
    only in JSON, where they fit one field)."""
    if as_json:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if "translation" in records[0]:  # one a line, as the inputs were
        return "".join(r["translation"] + "\n" for r in records)
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
              help="classify, translate: the column of a CSV/TSV DATA holding the texts.  [default: the training "
                   "run's text or source column]")
@click.option("--beam", type=click.IntRange(min=1), default=None,
              help="translate: beam width (1: greedy decoding).  [default: the training run's --beam]")
@click.option("--attention-plot", type=click.Path(path_type=Path), default=None, metavar="FILE.png",
              help="translate: draw the attention of the first input's translation, target tokens against source "
                   "tokens (needs matplotlib, and a model trained with attention).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the rows to this file (CSV, TSV for a .tsv name, JSON Lines with --json; a translator's "
                   "translations one a line) instead of printing them.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per row; a classifier's also holds every label's probability.")
@click.option("--encoding", default=None, help="Text encoding of DATA  [default: the training run's]")
@device_option("auto")
@config_option
def predict(checkpoint, data, steps, future, plot, text_column, beam, attention_plot, out, as_json, encoding, device):
    """Use CHECKPOINT on DATA; what it gives depends on the task it was trained for.

    \b
    forecast: the next --steps values after the end of the series in DATA, a CSV
      with the columns it was trained on (default: its training CSV), in the
      column's units; one row per future step, the value in the last column.
    classify: the label of each text in DATA (a .csv/.tsv with the text column,
      or any other file, one text a line) with its probability; with --json
      every label's probability.
    charlm: each non-blank line of DATA scored: nats per character, bits per
      character and perplexity (low for text like the training text); for a
      model of --tokens word, per word (nats_per_token, bits_per_token).
    translate: the translation of each line of DATA (or of the source column
      of a .csv/.tsv), one a line in the same order; a blank line is an error.
      A text longer than any training source is translated anyway, with one
      warning line on stderr: the output stops at the model's max_target_len
      tokens, and past the lengths it learnt on it is seldom right.
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
    if text_column is not None and task not in ("classify", "translate"):
        raise click.UsageError(f"--text-column is for a classifier or a translator, and {checkpoint} holds a {task} "
                               "model; drop it")
    translate_only = {"--beam": beam, "--attention-plot": attention_plot}
    for flag, value in translate_only.items():
        if value is not None and task != "translate":
            raise click.UsageError(f"{flag} is for a translation model, and {checkpoint} holds a {task} model; "
                                   "drop it")
    if attention_plot is not None and opts["attention"] == "none":
        raise click.UsageError(f"--attention-plot: {checkpoint} was trained with --attention none, so it has no "
                               "attention to draw; drop --attention-plot, or train with --attention bahdanau or luong")
    if future is not None and not forecast_columns(meta, opts)[1:]:
        raise click.UsageError(f"--future gives the values of a forecaster's --features, and {checkpoint} reads "
                               "none; drop it")
    if data is None:
        if task != "forecast":
            kind = {"classify": "texts: a .csv/.tsv with a text column, or one text a line",
                    "translate": "the texts to translate: one a line, or a .csv/.tsv with a source column",
                    "charlm": "a text whose lines to score"}[task]
            raise click.UsageError(f"{checkpoint} holds a {task} model; pass DATA, {kind}")
        data = Path(opts["data"])
    read = {"the checkpoint": checkpoint, "DATA": data, "the --future file": future}
    _check_destination(out, "--out", read)
    _check_destination(plot, "--plot", read)
    _check_destination(attention_plot, "--attention-plot", read)
    if device == "gpu":
        model.to("gpu")

    if task == "forecast":
        records, (history, pred, name) = _forecast(model, meta, opts, data, steps, future, checkpoint)
    elif task == "classify":
        records = _classify(model, meta, opts, data, text_column, checkpoint)
    elif task == "translate":
        records, attention = _translate(model, meta, opts, data, text_column, opts["beam"] if beam is None else beam,
                                        attention_plot is not None, checkpoint)
    else:
        records = _score_lines(model, meta, opts, data, checkpoint)
    text = _render(records, as_json, "\t" if out is not None and out.suffix.lower() == ".tsv" else ",")
    png, drawn = None, None  # the plot's bytes, and (where, flag)
    if plot is not None:
        shown = min(len(history), max(PLOTTED_HISTORY, 4 * len(pred)))
        png = plot_future(history[-shown:], pred, f"{name}: {len(pred)} steps past {data.name}", name,
                          first=len(history) - shown)
        drawn = plot, "--plot"
    if attention_plot is not None:
        weights, sources, targets, line = attention
        png = plot_attention(weights, sources, targets, f"attention: {data.name} line {line}")
        drawn = attention_plot, "--attention-plot"
    if drawn is not None and png is None:
        raise click.ClickException(f"{drawn[1]} needs matplotlib: pip install 'rnnfast[plot]'")
    # translations printed are one a line and nothing else, so the note of a plot goes to stderr
    notes_to_stderr = task == "translate" and out is None
    if out is None:
        click.echo(text, nl=False)
    else:
        _write(out, text.encode("utf-8"), "--out")
        click.echo(f"wrote {out} ({len(records)} {'translations' if task == 'translate' else 'rows'})")
    if png is not None:
        _write(drawn[0], png, drawn[1])
        click.echo(f"wrote {drawn[0]}", err=notes_to_stderr)
