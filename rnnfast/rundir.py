"""A run directory: where one run's checkpoints, metrics and settings go, and what keeps it whole when
runs crash or collide.

- One process at a time: :func:`hold` takes an exclusive ``fcntl.flock`` on ``.lock`` in the
  directory and writes the holder's PID into it. The operating system drops the lock when the
  process ends, ``kill -9`` included, so a crashed run never leaves a stale lock; a second process
  gets a :class:`RunDirectoryError` that names the holder.
- A new directory never collides: :func:`new_run_dir` and :func:`make_run_dir` create it with
  ``os.mkdir``, which fails when the name exists, so of two runs started in the same second each
  gets its own directory (and knows whether it created it).
- No directory holds a run that never was: :func:`claim` creates and holds the directory for a
  block, and removes it again if the block stops (Ctrl-C, an error) before its first checkpoint.
- A crash leaves no debris for long: files are written under ``.<name>.<random>.tmp`` and renamed
  into place (:func:`write_text_atomically`, and ``rnnfast.checkpoint.save_checkpoint``, both
  naming them by :func:`temp_prefix`); :func:`remove_temp_files` deletes those of a killed
  run, and only those, when the next run holds the directory.

    >>> import tempfile
    >>> base = Path(tempfile.mkdtemp()) / "charlm-lstm"
    >>> with claim(base, unique=True) as first, claim(base, unique=True) as second:
    ...     write_text_atomically(first / "config.json", "{}")
    ...     print(first.name, second.name, sorted(p.name for p in first.iterdir()))
    charlm-lstm charlm-lstm-1 ['.lock', 'config.json']
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from rnnfast.errors import RnnfastError

try:
    import fcntl
except ImportError:  # Windows has no flock; runs there are not protected from each other
    fcntl = None

LOCK_NAME = ".lock"
CHECKPOINT_FILES = ("latest.safetensors", "best.safetensors")
# The files rnnfast writes by rename, whose temporary files a crash can leave behind.
RENAMED_FILES = (*CHECKPOINT_FILES, "config.json")

_held: dict[Path, list] = {}  # resolved directory -> [lock file descriptor, depth]


class RunDirectoryError(RnnfastError, OSError):
    """A run directory that cannot be used: another process holds it, or its disk refused a write."""


def temp_prefix(name: str) -> str:
    """The start of a temporary file's name for ``name`` (the end is random, then ``.tmp``)."""
    return f".{name}."


def new_run_dir(base: Path) -> Path:
    """Create and return ``base``, or ``base-1``, ``base-2``, ... when that name is taken (a default
    run name holds the time to the second, so runs started together would otherwise share one)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", *(f"-{n}" for n in range(1, 1000))):
        candidate = base.with_name(base.name + suffix)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunDirectoryError(f"{base} and 999 directories named after it exist already; choose an --out")


def make_run_dir(path: Path) -> bool:
    """Make sure the directory ``path`` exists; True when this call created it (and so owns it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
        return True
    except FileExistsError:
        if not path.is_dir():
            raise RunDirectoryError(f"--out {path} is a file; pass a directory") from None
        return False


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Ctrl-C waits for the end of the block and then acts as it would have. A handler, not a signal
    mask: the process's other threads (matplotlib's import) would take a masked signal and Python
    would still raise KeyboardInterrupt in this one, mid-block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught and callable(previous):
        previous(signal.SIGINT, None)
    elif caught and previous != signal.SIG_IGN:
        raise KeyboardInterrupt


@contextlib.contextmanager
def claim(path, *, unique: bool = False, written=()):
    """Create the run directory ``path`` (``unique``: or ``path-1``, ... when it exists), hold it for
    the block and yield its path. If the block stops before the directory holds a checkpoint, a
    directory this call created is removed again, with the files ``written`` that the block wrote."""
    with contextlib.ExitStack() as held:
        created = holding = False
        try:
            # Ctrl-C right after the mkdir would otherwise leave a directory that nobody removes
            with _ctrl_c_deferred():
                try:
                    path = new_run_dir(path) if unique else Path(path)
                    created = unique or make_run_dir(path)
                except RunDirectoryError:
                    raise
                except OSError as exc:
                    raise RunDirectoryError(f"cannot create the run directory {path} ({exc.strerror}); "
                                            "choose another --out") from None
                held.enter_context(hold(path))
                holding = True
            yield path
        except BaseException:
            # still held here: nobody else can be using what is removed
            if created and holding and not any((path / name).exists() for name in CHECKPOINT_FILES):
                discard(path, written)
            raise


def _holder(fd: int) -> str:
    """The PID the holder wrote into the lock file (it may be between truncating and writing it)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if pid:
            return pid
        time.sleep(0.005)
    return "unknown"


@contextlib.contextmanager
def hold(directory):
    """Hold ``directory`` (created if needed) for this process until the block ends. Re-entrant: the
    command line holds a run's directory from before its first write, and the trainer it starts
    holds it again. Raises :class:`RunDirectoryError` naming the PID of another holder."""
    key = Path(directory).resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    try:
        key.mkdir(parents=True, exist_ok=True)
        fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirectoryError(f"cannot use the run directory {directory} ({exc.strerror}); "
                                "choose another --out") from None
    # The ranks of one MPI job (a later issue) will share this lock: rank 0 takes it here for the
    # job, and the other ranks are let in by the job, not by flock.
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise RunDirectoryError(f"{directory} is in use by another rnnfast run (PID {pid}); wait for it to "
                                    "finish or stop it, or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # releases the lock


def remove_temp_files(directory) -> list[Path]:
    """Delete the temporary files a killed run left in ``directory`` (only rnnfast's own names, see
    :data:`RENAMED_FILES`); call it while holding the directory, so no live write loses its file."""
    removed = []
    for name in RENAMED_FILES:
        for path in Path(directory).glob(f"{temp_prefix(name)}*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text_atomically(path, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name and rename it into place, so that a crash
    leaves the old file or the new one, never a half-written one."""
    write_atomically(path, text.encode("utf-8"))


def write_atomically(path, data: bytes, error: type = RunDirectoryError,
                     advice: str = "free some disk space or choose another --out") -> None:
    """Write ``data`` to ``path`` as :func:`write_text_atomically` does; a refused write is ``error``
    (an RnnfastError class) with one line ending in ``advice``."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise error(f"cannot write {path} ({exc.strerror}); {advice}") from None
        raise


def discard(directory, names) -> None:
    """Remove a run directory that this process created and that holds no checkpoint: the files
    ``names`` it wrote (a folder among them with what is in it), its lock and then the directory
    itself (left in place if anything else is there)."""
    directory = Path(directory)
    for name in (*names, LOCK_NAME):
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    remove_temp_files(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()

