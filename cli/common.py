"""What every command shares: one-line errors, ``--config`` files and ``--device``.

Every command is declared with ``cls=Command`` so that any error a user can cause, a bad option
value or an :class:`~rnnfast.errors.RnnfastError` from the library (bad file, bad checkpoint, NaN
loss), ends as one line ``Error: ...`` on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from rnnfast.backend import GPU_INSTALL_HINT, backend_for_device
from rnnfast.errors import RnnfastError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON config files still work
    tomllib = None


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line (Click's own prints the usage block and a hint first)."""

    exit_code = 2  # Click's exit code for usage errors, so scripts can still tell them apart


class Command(click.Command):
    """A Click command whose user errors are one line each and whose library errors are not tracebacks."""

    def make_context(self, info_name, args, parent=None, **extra):
        # Option parsing and value checks (ranges, choices, --config contents) all happen here.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # options that only clash once the command runs
            raise _one_line(exc) from None
        except RnnfastError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            # The library turns the MemoryErrors that an input can cause into RnnfastErrors; what
            # is left is a model or batch too large for this machine, which a traceback won't help.
            raise click.ClickException("out of memory; use a smaller model, --batch-size or input, "
                                       "or a machine with more memory") from None


def _one_line(exc: click.UsageError) -> OneLineUsageError:
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return OneLineUsageError(exc.format_message() + where)


# -- config files -------------------------------------------------------------------------------

def read_config(path: Path, option: str = "--config") -> dict:
    """The mapping in a TOML (``.toml``) or JSON (any other name) file; a file that cannot be read is a
    BadParameter of ``option`` (``--config``; rnnfast tune's ``--space`` too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise click.BadParameter(f"file not found: {path}", param_hint=f"'{option}'") from None
    except IsADirectoryError:
        raise click.BadParameter(f"{path} is a directory; pass a .toml or .json file", param_hint=f"'{option}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path} ({exc})", param_hint=f"'{option}'") from None
    is_toml = path.suffix.lower() == ".toml"
    if is_toml and tomllib is None:
        raise click.BadParameter("TOML config files need Python 3.11 or newer; write the config as JSON",
                                 param_hint=f"'{option}'")
    try:
        data = tomllib.loads(text) if is_toml else json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError both are
        raise click.BadParameter(f"{path} is not valid {'TOML' if is_toml else 'JSON'} ({exc})",
                                 param_hint=f"'{option}'") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a table of option names and values", param_hint=f"'{option}'")
    return data


# What a run's config.json records beside its options, which --config RUN/config.json passes over:
# the number of processes that trained it is mpiexec's -n, not an option.
RECORDED_ONLY = ("world_size",)


def _load_config(ctx: click.Context, param: click.Parameter, path):
    """Eager callback of ``--config``: the file's keys become the defaults of the other options.

    Keys are option names with dashes or underscores (``batch-size`` or ``batch_size``). A file may
    hold one table per command (``[train]``, ``[generate]``); a command uses its own table if there
    is one, else the top level. Options given on the command line still win.
    """
    if path is None:
        return
    data = read_config(path)
    section = data.get(ctx.info_name)
    if isinstance(section, dict):
        data = section
    options = [p for p in ctx.command.params if p.name != "config"]
    # A key may be the option's flag ("json", "batch-size") or its parameter name ("as_json", "data").
    by_key = {}
    for p in options:
        for key in (p.name, *(o.lstrip("-") for o in p.opts if o.startswith("--"))):
            by_key[key.replace("-", "_")] = p.name
    defaults = {}
    for key, val in data.items():
        name = by_key.get(key.replace("-", "_"))
        if name is None and key in RECORDED_ONLY:
            continue
        if name is None:
            known = ", ".join(sorted(max(p.opts, key=len).lstrip("-") for p in options))
            raise click.BadParameter(f"{path} sets unknown option {key!r}; known options: {known}",
                                     param_hint="'--config'")
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def config_option(f):
    """``--config FILE``: option defaults from a TOML or JSON file (the command line still wins)."""
    return click.option(
        "--config", type=click.Path(path_type=Path), is_eager=True, expose_value=False,
        callback=_load_config,
        help="Read option values from a TOML or JSON file: keys are option names (hidden = 256), at the top "
             "level or in a table named after the command ([train]); options on the command line win.",
    )(f)


# -- shared options -----------------------------------------------------------------------------

def device_option(default: str = "auto"):
    return click.option(
        "--device", type=click.Choice(["cpu", "gpu", "auto"], case_sensitive=False), default=default,
        show_default=True,
        help="Where to compute: cpu (Numba), gpu (CUDA via CuPy; needs the gpu extra), or auto (the GPU when one is usable).",
    )


def resolve_device(device: str) -> str:
    """"cpu" or "gpu" for a ``--device`` value; an unusable GPU asked for by name is a one-line error."""
    try:
        return backend_for_device(device).name
    except RuntimeError as exc:  # the backend's reason, which says what to install
        reason = str(exc)
        hint = "" if GPU_INSTALL_HINT in reason else f"; to use a GPU, {GPU_INSTALL_HINT}"
        raise click.ClickException(f"--device gpu: no usable GPU: {reason}{hint}; or run with --device cpu")
