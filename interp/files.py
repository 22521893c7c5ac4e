"""Result files that a killed or concurrent run cannot corrupt (pure I/O, no model).

* Atomic writes: every result file goes through a temporary sibling and ``os.replace``,
  so a killed run never leaves a half-written file that a resumed run would trust
  (:func:`atomic_write`, :func:`write_text`, :func:`write_netcdf`; :func:`load_dataset`
  reads a stored result fully and closes it).
* Run settings: a resumable folder records the settings it was made with
  (:func:`check_run_config`), so a re-run with other settings cannot mix results.
* One writer per folder: :func:`run_lock` holds ``<folder>/.lock`` (an ``flock`` the kernel
  drops when its process dies) and names the holder to a second writer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import xarray as xr

ENGINE = "h5netcdf"
RECOMPUTE = "delete it to compute it again"  # the fix for a damaged record this project wrote


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; results are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as netCDF (h5netcdf), atomically."""
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine=ENGINE))


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file (tables, json), atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_dataset(path: str | Path) -> xr.Dataset:
    """Open a stored result fully into memory (and close the file, so it can be replaced later)."""
    with xr.open_dataset(path, engine=ENGINE) as ds:
        return ds.load()


def load_or_compute(path: str | Path, compute: Callable[[], xr.Dataset]) -> xr.Dataset:
    """The dataset stored at ``path``, or ``compute()`` written there first (resumable runs)."""
    path = Path(path)
    if not path.is_file():
        write_netcdf(compute(), path)
    return load_dataset(path)


RUN_CONFIG = "run_config.json"


def config_differences(recorded: Mapping, current: Mapping, *, ignore: Sequence[str] = (),
                       absent_means: Mapping | None = None) -> dict[str, tuple]:
    """``{key: (recorded, current)}`` for every setting that differs, compared as JSON would store them.

    ``absent_means`` gives, for settings added after a record was written, the value their
    absence stands for (the behaviour before they existed), so old records still match.
    """
    old, new = (json.loads(json.dumps(dict(c), default=str)) for c in (recorded, current))
    old = {**json.loads(json.dumps(dict(absent_means or {}), default=str)), **old}
    keys = (set(old) | set(new)) - set(ignore)
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


def said_differences(diff: Mapping[str, tuple], recorded_in: str) -> str:
    """``diff`` of :func:`config_differences` in words, e.g. ``steps 6 there, 40 now``."""
    return ", ".join(f"{k} {a!r} {recorded_in}, {b!r} now" for k, (a, b) in diff.items())


def check_run_config(folder: str | Path, config: Mapping, *, ignore: Sequence[str] = (),
                     absent_means: Mapping | None = None) -> None:
    """Record the settings a resumable result folder is made with, or check a re-run matches them.

    Resumable analyses skip what a folder already holds; without this check a re-run with
    other settings (more steps, another budget) would silently mix old and new results.
    ``ignore`` names settings that only add work (more depths, more methods); ``absent_means``
    is :func:`config_differences`'. Raises ``ValueError`` naming the differing settings.
    """
    path = Path(folder) / RUN_CONFIG
    if path.is_file():
        diff = config_differences(read_json_file(path, "the run's recorded settings", RECOMPUTE), config, ignore=ignore,
                                  absent_means=absent_means)
        if diff:
            raise ValueError(f"{folder} holds results made with other settings ({said_differences(diff, 'there')}); "
                             "pass another --out, or delete the folder to start over")
    write_text(path, json.dumps(dict(config), indent=1, sort_keys=True, default=str))


# --------------------------------------------------------------------------- one writer per folder

LOCK_FILE = ".lock"
_HELD: dict[Path, list] = {}  # folder -> [open lock file, depth]: re-entrant within a process


class RunLocked(RuntimeError):
    """Another live process is writing this results folder (the message names it)."""


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` for one writer while the block runs (the folder is created).

    An exclusive ``fcntl.flock`` on ``<folder>/.lock``, which holds the writer's pid and
    command line. A second writer fails at once with :class:`RunLocked` naming the holder.
    The kernel drops the lock when its process dies, so a killed run's lock file is stale
    by construction and the next run simply takes it over. Re-entrant in one process
    (an analysis may train into its own folder).
    """
    import fcntl
    import socket
    import sys

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if folder in _HELD:
        _HELD[folder][1] += 1
        try:
            yield folder
        finally:
            _HELD[folder][1] -= 1
        return
    fh = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "a process that wrote nothing yet"
        fh.close()
        raise RunLocked(f"{folder} is being written by another run ({holder}); wait for it to finish or pass "
                        "another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:300]}\n")
    fh.flush()
    _HELD[folder] = [fh, 1]
    try:
        yield folder
    finally:
        if _HELD[folder][1] == 1:
            del _HELD[folder]
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        else:
            _HELD[folder][1] -= 1


def read_json_file(path: str | Path, expected: str, fix: str = "") -> object:
    """A UTF-8 JSON file's content; ``ValueError`` naming the file, ``expected`` (what it should hold) and, where
    given, ``fix`` (what to do about it), the original error chained.

    Bare ``JSONDecodeError`` / ``UnicodeDecodeError`` name a line and a byte, not the file: every JSON file the
    project reads (concepts, run records, run settings, floor checks) goes through here instead.
    """
    path, tail = Path(path), f"; {fix}" if fix else ""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); expected a UTF-8 JSON file "
                         f"holding {expected}{tail}") from err
    except OSError as err:
        raise ValueError(f"cannot read {path} ({err.strerror or err}); expected a JSON file holding {expected}{tail}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                         f"expected {expected}{tail}") from err
