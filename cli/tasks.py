"""The ``--task`` options of ``rnnfast train`` and ``eval`` turned into :mod:`rnnfast.tasks` calls.

``train`` and ``eval`` both go through here, so the held-out split that ``eval`` scores is cut
exactly as training cut it, from the options stored in the checkpoint. What each task reads,
splits and builds is the library's (:mod:`rnnfast.tasks`); this module only maps option dicts
onto its keyword arguments and says which options a task lacks.
"""
from __future__ import annotations

import click

from rnnfast import tasks
from rnnfast.errors import CheckpointError, DataError
from rnnfast.models import PairSet
from rnnfast.models.seq2seq import import_sacrebleu
from rnnfast.tasks import TASKS, TaskData, translate_vocabs

# The train options that only a translator reads: its columns, its vocabulary's cut-off, its model
# and the decoding its validation scores. The cut-off, --min-count, is also a word run's (charlm and
# classify with --tokens word): it stays listed here, where the run options take their order from.
TRANSLATE_OPTIONS = ("source_column", "target_column", "min_count", "attention", "teacher_forcing", "beam")
# The tasks whose texts --tokens splits into characters or words.
TEXT_TASKS = ("charlm", "classify", "translate")


def _column(value):
    """--column: a header name, or a 0-based index when it is all digits."""
    return int(value) if value is not None and value.isdigit() else value


def _features(opts: dict) -> list:
    """--features a,b,c: the columns read beside --column, each as --column reads one (a checkpoint
    from before the option has none)."""
    value = opts.get("features")
    if not value:
        return []
    if opts["task"] != "forecast":
        raise DataError(f"--features is for --task forecast (the columns a forecaster reads beside --column); "
                        f"drop it for --task {opts['task']}")
    names = [name.strip() for name in value.split(",")]
    if "" in names:
        raise DataError(f"--features {value!r} has an empty column name; give names (or 0-based indexes) "
                        "separated by commas, such as --features volume,open")
    if str(opts["column"]) in names:
        raise DataError(f"--features names the --column {opts['column']!r} itself, which the model always reads; "
                        "drop it from --features")
    repeated = [name for name in names if names.count(name) > 1]
    if repeated:
        raise DataError(f"--features names {repeated[0]!r} twice; give each column once")
    return [_column(name) for name in names]


def _tokens(opts: dict) -> dict:
    """--tokens and --min-count as the readers take them (a checkpoint from before them read characters)."""
    return {"tokens": opts.get("tokens", "char"), "min_count": opts.get("min_count", 1)}


def read_task(opts: dict) -> TaskData:
    """The data of ``opts["task"]``, read and split as the train options say."""
    task, data = opts["task"], opts["data"]
    features = _features(opts)
    if task == "charlm":
        return tasks.read_charlm(data, batch_size=opts["batch_size"], seq_len=opts["seq_len"],
                                 val_frac=opts["val_frac"], encoding=opts["encoding"], **_tokens(opts))
    if task == "forecast":
        if data is None:
            raise DataError("--task forecast needs a CSV file: rnnfast train series.csv --task forecast --column NAME")
        if opts["column"] is None:
            raise DataError("--task forecast needs --column: the header name (or 0-based index) of the values to forecast")
        return tasks.read_forecast(data, _column(opts["column"]), window=opts["window"], horizon=opts["horizon"],
                                   val_frac=opts["val_frac"], encoding=opts["encoding"], features=features)
    if task == "translate":
        if data is None:
            raise DataError("--task translate needs a CSV or TSV file with a source and a target column: "
                            "rnnfast train pairs.tsv --task translate")
        return tasks.read_translate(data, source_column=opts["source_column"], target_column=opts["target_column"],
                                    tokens=opts["tokens"], min_count=opts["min_count"], val_frac=opts["val_frac"],
                                    seed=opts["seed"], encoding=opts["encoding"])
    if data is None:
        raise DataError("--task classify needs a CSV or TSV file with a text and a label column: "
                        "rnnfast train reviews.tsv --task classify")
    return tasks.read_classify(data, seq_len=opts["seq_len"], text_column=opts["text_column"],
                               label_column=opts["label_column"], val_frac=opts["val_frac"], seed=opts["seed"],
                               encoding=opts["encoding"], **_tokens(opts))


def forecast_eval_windows(meta: dict, opts: dict, path):
    """Every window of a new CSV file, scaled as in training."""
    return tasks.forecast_eval_windows(meta, path, _column(opts["column"]), window=opts["window"],
                                       horizon=opts["horizon"], encoding=opts["encoding"])


def forecast_columns(meta: dict, opts: dict) -> list:
    """The CSV columns a forecaster's checkpoint reads: its --column, then its --features."""
    return [_column(opts["column"]), *tasks.feature_columns(meta)]


def classify_eval_data(meta: dict, opts: dict, path) -> tuple:
    """(ids, lengths, labels) of a new labelled file, read with the checkpoint's vocabulary and labels."""
    return tasks.classify_eval_data(meta, path, seq_len=opts["seq_len"], text_column=opts["text_column"],
                                    label_column=opts["label_column"], encoding=opts["encoding"])


def translate_eval_data(meta: dict, opts: dict, path) -> tuple:
    """(src, src_lengths, tgt, tgt_lengths) of a new file of pairs, read with the checkpoint's vocabularies."""
    return tasks.translate_eval_data(meta, path, source_column=opts["source_column"],
                                     target_column=opts["target_column"], encoding=opts["encoding"])


def translation_pairs(meta: dict, arrays: tuple, beam: int):
    """What a translator's ``evaluate`` scores: the pairs ``arrays`` (src, src_lengths, tgt,
    tgt_lengths), decoded with a beam of ``beam`` into text for BLEU and chrF."""
    return PairSet(*arrays, detokenize=translate_vocabs(meta)[1].decode, beam=beam)


def validation_data(opts: dict, td: TaskData, beam: int | None = None):
    """The held-out part as the model's ``evaluate`` takes it: ``td.val``, or for a translator its
    pairs decoded with ``beam`` (default: the run's --beam)."""
    if opts["task"] != "translate":
        return td.val
    return translation_pairs(td.meta, td.val, opts["beam"] if beam is None else beam)


def require_translate_metrics() -> None:
    """A translator's validation scores BLEU and chrF with sacrebleu, an optional dependency: its
    absence is a one-line error before anything is read or built."""
    try:
        import_sacrebleu()
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None


def build_model(opts: dict, td: TaskData):
    """The task's model, freshly initialised from the options (the seed fixes every weight)."""
    return tasks.build_model(opts["task"], td, hidden_size=opts["hidden"], num_layers=opts["layers"], cell=opts["cell"],
                             dropout=opts["dropout"], dtype=opts["dtype"], seed=opts["seed"],
                             bidirectional=opts["bidirectional"], horizon=opts["horizon"],
                             weight_drop=opts["weight_drop"], recurrent_dropout=opts["recurrent_dropout"],
                             zoneout=opts["zoneout"], layer_norm=opts.get("layer_norm", False),
                             attention=opts["attention"], teacher_forcing=opts["teacher_forcing"])


def task_of(meta: dict, path) -> tuple[str, dict]:
    """The task and the train options a checkpoint written by ``rnnfast train`` records."""
    cli = meta.get("cli")
    if not isinstance(cli, dict) or cli.get("options", {}).get("task") not in TASKS:
        raise CheckpointError(f"{path} was not written by 'rnnfast train' (it has no record of its task and data); "
                              "use a checkpoint from a run directory")
    return cli["options"]["task"], cli["options"]
