"""Hyper-parameter search on Optuna: the search-space grammar, storages named by URL, the callback
that lets a study's pruner stop a training run, and a study's trials in rank order.

``rnnfast tune`` (``rnnfast/cli/tune.py``) runs each trial as an ``rnnfast train`` run; a program can
use the same pieces with a :class:`~rnnfast.Trainer` of its own:

    >>> import optuna
    >>> parse_spec("64,128,256")
    CategoricalDistribution(choices=(64, 128, 256))
    >>> parse_spec("1e-4:1e-2:log")
    FloatDistribution(high=0.01, log=True, low=0.0001, step=None)
    >>> parse_spec("0:1", number=float)  # an option that takes fractions: uniform over [0, 1]
    FloatDistribution(high=1.0, log=False, low=0.0, step=None)

Needs Optuna: ``pip install 'rnnfast[tune]'``.
"""
from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from rnnfast.callbacks import Callback
from rnnfast.errors import RnnfastError

SPEC_GRAMMAR = ("SPEC is a,b,c (a choice), lo:hi (uniform; over whole numbers when both ends are) "
                "or lo:hi:log (log-uniform)")
JOURNAL_PREFIX = "journal:"
PRUNED = "pruned"  # the Trainer's stop_reason for a trial the pruner stopped

_INTEGER = re.compile(r"[+-]?\d+")


class TuneError(RnnfastError, ValueError):
    """A search space or a study storage that cannot be used."""


def _number(text: str):
    """An int for a whole number, else a float; ValueError for anything else."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else float(text)


def _choice(text: str):
    """A choice as the value it names: a number, true/false, else the text itself."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return _number(text)
    except ValueError:
        return text


def parse_spec(spec: str, number: type | None = None) -> BaseDistribution:
    """The Optuna distribution a SPEC names (see :data:`SPEC_GRAMMAR`).

    ``number``: ``int`` or ``float`` for a parameter that takes that kind of number (a range of a
    ``float`` parameter is uniform over floats even when its ends are whole, so dropout ``0:1`` is not
    a coin toss between 0 and 1; a range of an ``int`` one must have whole ends); None goes by the ends.
    A bad SPEC is a :class:`TuneError` that names the grammar.
    """
    spec = str(spec).strip()
    if ":" not in spec:
        choices = [_choice(part) for part in spec.split(",")]
        if any(c == "" for c in choices):
            raise TuneError(f"{spec!r} has an empty choice; {SPEC_GRAMMAR}")
        if len(set(map(repr, choices))) < len(choices):
            raise TuneError(f"{spec!r} names a choice twice; {SPEC_GRAMMAR}")
        return CategoricalDistribution(choices)
    parts = spec.split(":")
    log = len(parts) == 3 and parts[2].strip() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise TuneError(f"{spec!r} is not a range; {SPEC_GRAMMAR}")
    try:
        low, high = _number(parts[0]), _number(parts[1])
    except ValueError:
        raise TuneError(f"{spec!r}: the ends of a range are numbers; {SPEC_GRAMMAR}") from None
    whole = isinstance(low, int) and isinstance(high, int)
    if number is int and not whole:
        raise TuneError(f"{spec!r}: this option takes whole numbers, so both ends must be; {SPEC_GRAMMAR}")
    if not low < high:
        raise TuneError(f"{spec!r}: the low end must be below the high end; {SPEC_GRAMMAR}")
    if log and low <= 0:
        raise TuneError(f"{spec!r}: a log-uniform range must start above 0; {SPEC_GRAMMAR}")
    if whole and number is not float:
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def describe_distribution(distribution: BaseDistribution) -> str:
    """A distribution written back in the SPEC grammar (for start lines and tables)."""
    if isinstance(distribution, CategoricalDistribution):
        return ",".join(map(str, distribution.choices))
    return f"{distribution.low:g}:{distribution.high:g}" + (":log" if distribution.log else "")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage ``url`` names: ``journal:PATH`` is a journal file (several processes on one
    machine), anything else an SQLAlchemy database URL (``sqlite:///study.db``,
    ``postgresql://user@host/db``, ``mysql+pymysql://...``). A URL that cannot be opened is one line."""
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
        if not path.name:
            raise TuneError(f"--storage {url}: name the journal file, as in journal:runs/tune/journal.log")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        except OSError as exc:
            raise TuneError(f"--storage {url}: cannot open the journal file ({exc.strerror})") from None
    # SQLite lets one writer at a time in and makes the others wait up to this many seconds, rather
    # than failing at once with "database is locked" when two processes finish trials together
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:
        raise TuneError(f"--storage {url}: its database driver is not installed ({exc})") from None
    except Exception as exc:  # SQLAlchemy's ArgumentError, OperationalError, ...: all say why in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"--storage {url}: cannot open it ({reason}); give a database URL such as "
                        f"sqlite:///study.db, or {JOURNAL_PREFIX}PATH for a journal file") from None


def is_choice(distribution: BaseDistribution) -> bool:
    return isinstance(distribution, CategoricalDistribution)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler for ask and tell: its after_trial stops ``Study.optimize`` once every
    combination is handed out, which outside ``optimize`` is a RuntimeError from ``tell`` (Optuna 5.0);
    a caller of ask checks :func:`grid_done` before each trial instead."""

    def after_trial(self, study, trial, state, values):
        pass


def make_sampler(kind: str, space: dict[str, BaseDistribution], seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Optuna's sampler of ``kind``: "tpe", "random" or "grid" (every combination of ``space``'s choices,
    which must all be choices; a range is a TuneError)."""
    if kind == "grid":
        ranges = [name for name, d in space.items() if not is_choice(d)]
        if ranges:
            raise TuneError(f"--sampler grid tries every combination of choices, but {', '.join(ranges)} is a range; "
                            "give choices (a,b,c), or use --sampler tpe or random")
        return _GridSampler({name: list(d.choices) for name, d in space.items()}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}; use tpe, random or grid")


def grid_done(sampler, study: optuna.Study) -> bool:
    """Whether a grid sampler has handed out every combination (never, for the other samplers)."""
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def open_study(url: str, name: str, sampler: optuna.samplers.BaseSampler, prune: bool = True) -> optuna.Study:
    """The study ``name`` in the storage at ``url`` (see :func:`open_storage`), created when new, found
    again when not: several processes that open it share it. Minimises the validation loss; ``prune``:
    Optuna's MedianPruner (a trial whose loss is worse than the median of the earlier trials' at the
    same step stops, once five trials have completed), else none."""
    pruner = optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the caller says what each trial did
    return optuna.create_study(storage=open_storage(url), sampler=sampler, pruner=pruner, study_name=name,
                               direction="minimize", load_if_exists=True)


class OptunaPruning(Callback):
    """Reports every validation loss of a run to an Optuna trial (at the trainer's step) and, once the
    study's pruner finds the trial hopeless, ends the run after that evaluation's checkpoint with
    ``trainer.stop_reason = "pruned"``. ``result`` is the run's result when it has ended."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.result = None

    def on_eval_end(self, trainer, step, logs):
        self.trial.report(logs["val_loss"], step)
        if self.trial.should_prune():
            trainer.stop_reason = PRUNED

    def on_train_end(self, trainer, result):
        self.result = result


_RANK_OF_STATE = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2, TrialState.RUNNING: 3,
                  TrialState.WAITING: 4}


def trial_loss(trial: FrozenTrial) -> float | None:
    """A trial's validation loss: its value when complete, its last report when pruned, else None."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials best first: the complete ones by loss, then the pruned ones by their last loss, then the
    failed, running and waiting ones, each group in trial order."""
    def key(trial):
        loss = trial_loss(trial)
        return _RANK_OF_STATE.get(trial.state, 5), loss if loss is not None else float("inf"), trial.number
    return sorted(trials, key=key)
