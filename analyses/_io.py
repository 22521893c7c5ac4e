"""What the analyses share: the atomic result writers of :mod:`interp.store` (re-exported),
figures written the same way, and their common CLI bits."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import numpy as np

from interp.store import (
    RunLocked,
    atomic_write,
    check_run_config,
    load_dataset,
    load_or_compute,
    run_lock,
    write_netcdf,
    write_text,
)

__all__ = ["atomic_write", "load_dataset", "load_or_compute", "write_netcdf", "write_text", "write_html",
           "result_folder", "resumable_run", "locked", "analysis_parser", "analysis_layers"]


def write_html(fig, path: str | Path) -> Path:
    """Write a plotly figure as one self-contained HTML file (plotly.js inlined), atomically."""
    return write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def result_folder(analysis: str, model: str, quick: bool = False) -> Path:
    """An analysis's default results folder, ``results/<analysis>/<model>[-quick]``: runs on
    different models, or quick and full runs, never overwrite each other."""
    return Path("results") / analysis / (model.replace("/", "_") + ("-quick" if quick else ""))


def _exit(message: str) -> NoReturn:
    raise SystemExit(f"error: {message}")


@contextmanager
def locked(folder: str | Path, error: Callable[[str], NoReturn] | None = None) -> Iterator[Path]:
    """:func:`interp.store.run_lock` for a command line: a held folder is reported, naming the holder,
    through ``error`` (the command's ``parser.error``; default: exit with the message)."""
    try:
        with run_lock(folder) as held:
            yield held
    except RunLocked as err:
        (error or _exit)(str(err))


@contextmanager
def resumable_run(out: str | None, analysis: str, config, *, quick: bool, ignore: Sequence[str] = (),
                  error: Callable[[str], NoReturn] | None = None) -> Iterator[Path]:
    """The results folder of a resumable run (``out`` or :func:`result_folder`), held for this run.

    The folder is created and locked (:func:`interp.store.run_lock`: a second writer fails at
    once, naming the holder) *before* ``config`` (a dataclass with a ``model``) is checked
    against the run that started it, so two runs cannot both pass the check. A re-run with
    other settings is reported through ``error`` (as :func:`locked`) instead of mixing results.
    """
    folder = Path(out) if out else result_folder(analysis, config.model, quick)
    with locked(folder, error):
        try:
            check_run_config(folder, asdict(config), ignore=ignore)
        except ValueError as err:
            (error or _exit)(str(err))
        yield folder


# --------------------------------------------------------------------------- CLI pieces


def analysis_parser(analysis: str, doc: str, *, writes: str, quick: str, figures: str = "figures",
                    default_out: str | None = None, **shared) -> argparse.ArgumentParser:
    """The parser of ``python -m analyses.<analysis>`` (its description: the first paragraph of ``doc``)
    with the shared options (:func:`interp.cli.add_shared_args`: ``--model --device --dtype --out
    --seed --quick --no-progress`` and, as asked, ``--n-eval``, ``--layers``, ``--backend``) and
    ``--figures``. ``--out`` defaults to None: resolve it with :func:`result_folder` once the model is known.
    """
    from interp.cli import add_shared_args

    p = argparse.ArgumentParser(prog=f"python -m analyses.{analysis}", description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    default_out = default_out or f"results/{analysis}/<model>[-quick]"
    add_shared_args(p, out=f"results folder for {writes} (default {default_out})", quick=quick, **shared)
    p.add_argument("--figures", default=figures, help="folder for the HTML figures ('' for none)")
    return p


def analysis_layers(spec: str | None, n_layers: int, *, quick: bool = False, most: int = 6) -> list[int]:
    """The layers to analyse: ``spec`` parsed (indices / depth fractions), else all of them.

    With ``quick``, at most ``most`` of them, evenly spaced and always keeping the first
    and last (so a quick run still spans the depth).
    """
    from interp.sites import parse_layers

    layers = parse_layers(spec, n_layers) if spec else list(range(n_layers))
    if quick and len(layers) > most:
        layers = sorted({layers[i] for i in np.linspace(0, len(layers) - 1, most).round().astype(int)})
    return layers
