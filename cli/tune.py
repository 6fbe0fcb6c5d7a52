"""``rnnfast tune``: hyper-parameter search on Optuna, each trial a real ``rnnfast train`` run.

A trial is the train command itself, invoked in this process with the fixed options plus the trial's
sampled ones and ``--out OUT/trial-NNN``: its run directory, checkpoints, metrics, config.json, plots,
NaN check and one-line errors are those of any ``rnnfast train`` run, and its output goes to
``OUT/trial-NNN/train.log``. The only thing added is the pruning callback (``rnnfast.tune.OptunaPruning``).
"""
from __future__ import annotations

import contextlib
import json
import time
import traceback
from pathlib import Path

import click
from click.core import ParameterSource

from rnnfast.cli.common import Command, read_config
from rnnfast.cli.plots import plot_search_history
from rnnfast.cli.train import EXTRA_CALLBACKS, ZoneoutParam, train
from rnnfast.rundir import write_atomically, write_text_atomically
from rnnfast.tasks import describe_loss

OPTUNA_INSTALL_HINT = "pip install 'rnnfast[tune]'"
# Searched when no --param or --space is given, less any option given on the command line: the
# sizes and rates char-rnn's README names as the ones worth searching, around train's defaults.
DEFAULT_SPACE = {"hidden": "64,128,256", "layers": "1,2,3", "lr": "3e-4:1e-2:log", "dropout": "0:0.5"}
# Each trial's --time-budget when none of --trial-budget, --steps, --epochs and --time-budget is given:
# ten trials in ten minutes, each long enough for the default model to pass its first validations.
DEFAULT_TRIAL_BUDGET = 60.0
DEFAULT_STUDY = "rnnfast"
# train options a trial's run sets itself (its directory, a quiet log), or that no trial can take
NOT_SEARCHABLE = ("data", "out", "progress", "resume")
LIMITS = ("steps", "epochs", "time_budget")
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def _flag(param: click.Parameter) -> str:
    """The option's long name without dashes (``batch-size``): a trial's parameter name and best.toml's key."""
    return max(param.opts, key=len).lstrip("-")


def _train_options() -> dict:
    """Every spelling of each train option (``batch-size``, ``batch_size``) -> the option."""
    by_key = {}
    for p in train.params:
        if isinstance(p, click.Option) and p.name != "config":
            for key in (p.name, *(o.lstrip("-") for o in p.opts if o.startswith("--"))):
                by_key[key.replace("-", "_")] = p
    return by_key


def _number_kind(param: click.Parameter):
    if isinstance(param.type, click.types.IntParamType):
        return int
    if isinstance(param.type, (click.types.FloatParamType, ZoneoutParam)):
        return float
    return None


def _distribution(tuning, name: str, spec, given: str) -> tuple[str, object]:
    """(the option's flag name, its Optuna distribution) for ``name`` = ``spec``, every value checked
    against the option's own type; ``given`` says where it came from, for the one-line error."""
    by_key = _train_options()
    param = by_key.get(name.strip().replace("-", "_"))
    if param is None or param.name in NOT_SEARCHABLE:
        known = ", ".join(sorted({_flag(p) for p in by_key.values() if p.name not in NOT_SEARCHABLE}))
        raise click.UsageError(f"{given}: {name.strip()!r} is not a train option that a trial can take; "
                               f"NAME is one of {known}")
    if isinstance(spec, list):  # a TOML array is a choice
        spec = ",".join(map(str, spec))
    try:
        distribution = tuning.parse_spec(str(spec), number=_number_kind(param))
    except tuning.TuneError as exc:
        raise click.UsageError(f"{given}: {exc}") from None
    if tuning.is_choice(distribution):
        values = distribution.choices
    elif _number_kind(param) is None:
        raise click.UsageError(f"{given}: --{_flag(param)} does not take a number, so give choices; "
                               f"{tuning.SPEC_GRAMMAR}")
    else:
        values = (distribution.low, distribution.high)
    for value in values:
        try:
            param.type.convert(value, param, None)
        except click.BadParameter as exc:
            raise click.UsageError(f"{given}: --{_flag(param)} cannot be {value!r} ({exc.format_message()}); "
                                   f"{tuning.SPEC_GRAMMAR}") from None
    return _flag(param), distribution


def _search_space(tuning, params: tuple[str, ...], space_file: Path | None, fixed: click.Context) -> dict:
    """Flag name -> distribution: the space file's entries, then each --param (which win); with neither,
    DEFAULT_SPACE less the options given. An option fixed on the command line cannot also be searched."""
    entries = []
    if space_file is not None:
        table = read_config(space_file, "--space")
        entries += [(key, value, f"--space {space_file}: {key}") for key, value in table.items()]
    for item in params:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--param {item}: write NAME=SPEC, as in hidden=64,128 or lr=1e-4:1e-2:log; "
                                   f"{tuning.SPEC_GRAMMAR}")
        entries.append((name, spec, f"--param {item}"))
    space = {}
    for name, spec, given in entries:
        flag, distribution = _distribution(tuning, name, spec, given)
        option = _train_options()[flag.replace("-", "_")].name
        if fixed.get_parameter_source(option) == ParameterSource.COMMANDLINE:  # a --config value may be searched
            raise click.UsageError(f"{given}: --{flag} is also given as a fixed option; drop one of them")
        space[flag] = distribution
    if not entries:
        given = {p.name for p in train.params
                 if fixed.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)}
        space = dict(_distribution(tuning, name, spec, "the default space") for name, spec in DEFAULT_SPACE.items()
                     if name not in given)
        if not space:
            raise click.UsageError("every option of the default space is fixed; say what to search with "
                                   "--param NAME=SPEC")
    return space


def _trial_tokens(flag: str, value) -> list[str]:
    param = _train_options()[flag.replace("-", "_")]
    if param.is_flag:
        if param.secondary_opts:
            return [f"--{flag}" if value else param.secondary_opts[0]]
        return [f"--{flag}"] if value else []
    return [f"--{flag}", str(value)]


def _recorded_options(argv: list[str]) -> dict:
    """The train options ``argv`` sets (command line and --config file), by flag name, as JSON values
    (paths absolute, so the record holds wherever it is read): what best.toml writes."""
    ctx = train.make_context("rnnfast train", list(argv))
    with ctx:
        recorded = {}
        for p in train.params:
            value = ctx.params.get(p.name)
            if p.name in ("out", "progress") or value is None \
                    or ctx.get_parameter_source(p.name) in (ParameterSource.DEFAULT, None):
                continue
            if isinstance(value, Path):
                value = str(value.resolve())
            recorded["data" if p.name == "data" else _flag(p)] = list(value) if isinstance(value, tuple) else value
        return recorded


def _train(argv: list[str], callbacks: list) -> int:
    """Run ``rnnfast train argv`` in this process with ``callbacks`` added; its exit code (0, or 130 after
    Ctrl-C). Its errors are ClickExceptions, one line each, as on the command line."""
    ctx = train.make_context("rnnfast train", list(argv))
    ctx.meta[EXTRA_CALLBACKS] = callbacks
    with ctx:
        try:
            train.invoke(ctx)
        except click.exceptions.Exit as exc:
            return exc.exit_code
    return 0


def _run_trial(tuning, study, trial, fixed_argv: list[str], out: Path, task: str, tokens: str) -> bool:
    """Run one trial to its end and tell the study how it went; False when Ctrl-C stopped it."""
    run_dir = out / f"trial-{trial.number:03d}"
    argv = [*fixed_argv, *(t for flag, value in trial.params.items() for t in _trial_tokens(flag, value))]
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    shown = " ".join(f"{flag}={_shown(value)}" for flag, value in trial.params.items())
    click.echo(f"trial {trial.number}: {shown}; run directory {run_dir}", err=True)
    pruning = tuning.OptunaPruning(trial)
    start, reason, interrupted = time.monotonic(), None, False
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a", encoding="utf-8") as log:
        try:
            trial.set_user_attr("options", _recorded_options(argv))
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                code = _train([*argv, "--out", str(run_dir), "--no-progress"], [pruning])
            interrupted = code == 130
        except click.ClickException as exc:  # a bad combination, a NaN, a full disk: train's own line
            reason = exc.format_message()
        except KeyboardInterrupt:  # Ctrl-C while the run was starting, before training held it
            interrupted = True
        except Exception as exc:  # whatever else breaks one trial must not end the search
            reason = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=log)
        if reason is not None:
            print(f"Error: {reason}", file=log)
    result = pruning.result or {}
    trial.set_user_attr("seconds", round(time.monotonic() - start, 2))
    for key in ("step", "best_step", "stopped"):
        if key in result:
            trial.set_user_attr(key, result[key])
    if interrupted:
        where = f" at step {result['step']}; its latest checkpoint is kept" if result.get("step") else ""
        reason = f"interrupted by Ctrl-C{where}"
    elif reason is None and result.get("best_val") is None:
        reason = "the run ended before its first validation; give it more --steps or a longer --trial-budget"
    if reason is not None:
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=tuning.TrialState.FAIL)
        click.echo(f"trial {trial.number}: failed: {reason}", err=True)
    elif result["stopped"] == tuning.PRUNED:
        study.tell(trial, state=tuning.TrialState.PRUNED)
        click.echo(f"trial {trial.number}: pruned at step {result['step']} (validation loss "
                   f"{describe_loss(task, result['val']['loss'], tokens)})", err=True)
    else:
        study.tell(trial, result["best_val"])
        click.echo(f"trial {trial.number}: validation loss {describe_loss(task, result['best_val'], tokens)} at step "
                   f"{result['best_step']}", err=True)
    return not interrupted


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(tuning, trials) -> str:
    """The study's trials, best first, as an aligned text table."""
    flags = list(dict.fromkeys(flag for t in trials for flag in t.params))
    header = ["rank", "trial", "state", "val loss", "step", *flags, "seconds"]
    rows = []
    for rank, t in enumerate(tuning.ranked(trials), 1):
        loss = tuning.trial_loss(t)
        step = (max(t.intermediate_values) if t.state == tuning.TrialState.PRUNED and t.intermediate_values
                else t.user_attrs.get("best_step"))
        rows.append([str(rank), str(t.number), STATE_NAMES.get(t.state.name, t.state.name.lower()),
                     "-" if loss is None else f"{loss:.4f}", "-" if step is None else str(step),
                     *(_shown(t.params[f]) if f in t.params else "-" for f in flags),
                     _shown(float(t.user_attrs["seconds"])) if "seconds" in t.user_attrs else "-"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # TOML reads Python's int and float reprs (1e-05, inf) as they are
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return json.dumps(str(value))  # a JSON string's escapes are TOML's basic string's


def _best_toml(study, best, out: Path, task: str, tokens: str) -> str:
    lines = [f"# rnnfast tune: the best trial of study {study.study_name!r}: trial {best.number}, validation loss",
             f"# {describe_loss(task, best.value, tokens)} at step {best.user_attrs.get('best_step')} "
             f"(run directory {best.user_attrs.get('run_dir')}).",
             f"# Rerun it with: rnnfast train --config {out / 'best.toml'}",
             "# (options on that command line win over these, e.g. --steps 5000)"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in best.user_attrs.get("options", {}).items()]
    return "\n".join(lines) + "\n"


def _report(tuning, study, out: Path, task: str, tokens: str) -> bool:
    """The ranked table, each failure's reason, best.toml and history.png; whether any trial completed."""
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return False
    click.echo(_table(tuning, trials))
    for t in trials:
        if t.state == tuning.TrialState.FAIL:
            click.echo(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no reason recorded')}")
    wrote = []
    complete = [t for t in trials if t.state == tuning.TrialState.COMPLETE]
    if complete:
        best = min(complete, key=lambda t: t.value)
        write_text_atomically(out / "best.toml", _best_toml(study, best, out, task, tokens))
        wrote.append(out / "best.toml")
        click.echo(f"best: trial {best.number}, validation loss {describe_loss(task, best.value)}; "
                   f"rerun it with: rnnfast train --config {out / 'best.toml'}")
    points = [(t.number, tuning.trial_loss(t), STATE_NAMES[t.state.name]) for t in trials
              if tuning.trial_loss(t) is not None]
    title = f"rnnfast tune: study {study.study_name!r}"
    png = plot_search_history(points, title, "validation loss") if points else None
    if png is not None:
        write_atomically(out / "history.png", png)
        wrote.append(out / "history.png")
    if wrote:
        click.echo(f"wrote {', '.join(map(str, wrote))}")
    return bool(complete)


def _import_tuning():
    """rnnfast.tune, or a one-line error naming the extra when Optuna is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"rnnfast tune needs Optuna, which cannot be imported ({exc}); install it "
                                   f"with: {OPTUNA_INSTALL_HINT}") from None
    from rnnfast import tune as tuning

    return tuning


@click.command("tune", cls=Command, context_settings={"ignore_unknown_options": True})
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED, metavar="[DATA] [TRAIN OPTION]...")
@click.option("--trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Trials this process runs (a continued or shared study keeps its earlier ones besides).")
@click.option("--trial-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Train each trial this many seconds (its --time-budget).  [default: "
                   f"{DEFAULT_TRIAL_BUDGET:g}, unless --steps, --epochs or --time-budget is given]")
@click.option("--param", "params", multiple=True, metavar="NAME=SPEC",
              help="Search train option NAME (hidden, layers, lr, dropout, cell, batch-size, weight-drop, ...) over "
                   "SPEC: a,b,c a choice; lo:hi uniform (whole numbers when both ends are and the option takes "
                   "them); lo:hi:log log-uniform. Repeatable.  [default: "
                   + " ".join(f"{k}={v}" for k, v in DEFAULT_SPACE.items()) + ", less the options given]")
@click.option("--space", type=click.Path(path_type=Path), default=None, metavar="FILE.toml",
              help="Search space from a file: NAME = \"SPEC\" or NAME = [choices] per line (--param wins).")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default="tpe", show_default=True,
              help="How trials are chosen: Optuna's TPE, uniformly at random, or every combination (grid: "
                   "choices only).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the sampler and of each trial's training (train's --seed): the same seed repeats "
                   "the search.  [default: a fresh sampler order; trials train with train's seed 0]")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="Stop a trial whose validation loss is worse than the median of earlier trials' at the same "
                   "step (Optuna's MedianPruner, once five trials have completed); it keeps its checkpoint.")
@click.option("--storage", default=None, metavar="URL",
              help="Where the study lives: an SQLAlchemy URL (sqlite:///study.db, postgresql://user@host/db for "
                   "workers on many machines) or journal:PATH, a journal file for several processes on one "
                   "machine.  [default: sqlite:///OUT/study.db]")
@click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True,
              help="Study name: rnnfast tune processes given the same --storage and --study share one search.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Directory for study.db, the trials' run directories (trial-NNN), best.toml and history.png; "
                   "the same --out again continues the study.  [default: runs/tune-<task>-<date>-<time>]")
@click.pass_context
def tune(ctx, train_args, trials, trial_budget, params, space, sampler, seed, prune, storage, study_name, out):
    """Search hyper-parameters with Optuna; each trial is an `rnnfast train` run.

    \b
    Every option that is not tune's own is a `rnnfast train` option (see
    rnnfast train --help), fixed for all trials; --param NAME=SPEC says
    what to search. Each trial validates as train does, and a hopeless
    one is pruned. Prints the trials ranked, and writes OUT/best.toml
    (rerun the best with `rnnfast train --config OUT/best.toml`) and,
    with matplotlib, OUT/history.png. Ctrl-C stops cleanly: the study
    stays whole, and the same command continues it. Example:
    \b
      rnnfast tune input.txt --steps 2000 --trials 20 \\
          --param hidden=128,256 --param lr=1e-4:1e-2:log
    """
    tuning = _import_tuning()
    fixed_argv = list(train_args)
    fixed = train.make_context("rnnfast train", list(fixed_argv))  # the fixed options, checked once, now
    with fixed:
        if fixed.params["resume"] is not None:
            raise click.UsageError("--resume continues one run; each trial starts its own, so drop it")
        given_limits = [k for k in LIMITS if fixed.get_parameter_source(k) != ParameterSource.DEFAULT
                        and fixed.params[k] is not None]
        if trial_budget is not None and "time_budget" in given_limits:
            raise click.UsageError("--trial-budget is each trial's --time-budget; give one of them")
        if trial_budget is None and not given_limits:
            trial_budget = DEFAULT_TRIAL_BUDGET
        space_of_study = _search_space(tuning, params, space, fixed)
        task, tokens = fixed.params["task"], fixed.params.get("tokens") or "char"  # the loss's units
        limits = [f"{fixed.params[k]} {k}" for k in ("steps", "epochs") if k in given_limits]
        budget = trial_budget if trial_budget is not None else fixed.params["time_budget"]
        if budget is not None:
            limits.append(f"{budget:g} s")
    try:
        chosen = tuning.make_sampler(sampler, space_of_study, seed)
    except tuning.TuneError as exc:
        raise click.UsageError(str(exc)) from None
    if trial_budget is not None:
        fixed_argv += ["--time-budget", repr(trial_budget)]
    if seed is not None and "seed" not in space_of_study:
        fixed_argv += ["--seed", str(seed)]

    out = out if out is not None else Path("runs") / f"tune-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} is a file; pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    url = storage if storage is not None else f"sqlite:///{(out / 'study.db').resolve()}"
    study = tuning.open_study(url, study_name, chosen, prune)
    earlier = len(study.get_trials(deepcopy=False))
    searched = ", ".join(f"{f}={tuning.describe_distribution(d)}" for f, d in space_of_study.items())
    so_far = f" ({earlier} trial{'s' if earlier > 1 else ''} so far)" if earlier else ""
    click.echo(f"{'continuing' if earlier else 'starting'} study {study_name!r} in {url}{so_far}: {trials} trials "
               f"of {' or '.join(limits)} each, "
               f"{sampler} sampler, {'median pruning' if prune else 'no pruning'}; searching {searched}", err=True)

    interrupted = False
    try:
        for _ in range(trials):
            if tuning.grid_done(chosen, study):
                click.echo("every combination of the grid has been tried", err=True)
                break
            trial = study.ask(space_of_study)
            try:
                if not _run_trial(tuning, study, trial, fixed_argv, out, task, tokens):
                    interrupted = True
                    break
            except KeyboardInterrupt:  # between the trial's run and its record: it still gets one
                trial.set_user_attr("fail_reason", "interrupted by Ctrl-C")
                study.tell(trial, state=tuning.TrialState.FAIL, skip_if_finished=True)
                raise
    except KeyboardInterrupt:
        interrupted = True
    any_complete = _report(tuning, study, out, task, tokens)
    if interrupted:
        click.echo(f"interrupted by Ctrl-C; the study is intact in {url}: the same command continues it", err=True)
        ctx.exit(130)
    if not any_complete:
        raise click.ClickException("no trial has completed; the reasons are above (a trial's output is in its "
                                   "run directory's train.log)")
