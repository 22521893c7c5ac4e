"""What the analyses share: the atomic result writers of :mod:`interp.files` (re-exported),
figures written the same way, and their common CLI bits."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from interp.files import (
    RunLocked,
    atomic_write,
    check_run_config,
    load_dataset,
    load_or_compute,
    run_lock,
    write_netcdf,
    write_text,
)
from interp.cli import add_shared_args
from interp.floor import FLOOR_MESSAGE
from interp.measures import Measure
from interp.sites import parse_layers

__all__ = ["atomic_write", "load_dataset", "load_or_compute", "write_netcdf", "write_text", "write_html",
           "write_figure", "figure_images", "StaticExportUnavailable",
           "result_folder", "resumable_run", "locked", "analysis_parser", "analysis_layers",
           "FLOOR_FAILED", "suggestion", "stop_unless_held"]


# --------------------------------------------------------------------------- figures

STATIC_FORMATS = ("png", "svg")
STATIC_WIDTH = 900  # px, where neither the call nor the figure's layout sets one
STATIC_HEIGHT = 500
STATIC_TIMEOUT_S = 120.0
FIGURES_EXTRA = ('pip install -e ".[figures]" and a Chrome/Chromium (apt-get install chromium; '
                 "BROWSER_PATH=/path/to/chromium where it is not found)")
_static_off: str | None = None  # why static export failed in this process (noted once, not retried)


class StaticExportUnavailable(RuntimeError):
    """Static figure export cannot run: kaleido or a Chrome/Chromium is missing, or it failed or timed out."""


def figure_images(figs: Sequence[Any], formats: Sequence[str] = STATIC_FORMATS, *, width: int | None = None,
                  height: int | None = None, timeout_s: float = STATIC_TIMEOUT_S) -> list[dict[str, bytes]]:
    """Static renderings of plotly figures (``Figure`` objects or their dicts), one ``{format: bytes}``
    per figure, through plotly.js in a headless Chrome/Chromium driven by kaleido (v1).

    All figures and formats share one browser session (starting it is most of the cost).
    Size: ``width``/``height`` if given, else the figure's layout, else 900 x 500 px, at
    scale 1. MathJax is off so nothing is fetched from the network. The whole call runs in a
    worker thread limited to ``timeout_s``: a browser that hangs does not hang the run (the
    thread is abandoned, and the error says so). Raises :class:`StaticExportUnavailable`.
    """
    try:
        import kaleido
    except ImportError as err:
        raise StaticExportUnavailable(f"kaleido is not installed ({err})") from None
    specs = []
    for fig in figs:
        spec = fig.to_dict() if hasattr(fig, "to_dict") else dict(fig)
        layout = spec.get("layout") or {}
        size = (width or layout.get("width") or STATIC_WIDTH, height or layout.get("height") or STATIC_HEIGHT)
        specs.append((spec, size))

    async def render() -> list[dict[str, bytes]]:
        async with kaleido.Kaleido(n=1, timeout=timeout_s, mathjax=False) as k:
            return [{f: await k.calc_fig(spec, opts={"format": f, "width": w, "height": h, "scale": 1})
                     for f in formats} for spec, (w, h) in specs]

    box: dict[str, Any] = {}

    def run() -> None:  # its own event loop: works under a running one too (a notebook kernel)
        try:
            box["images"] = asyncio.run(render())
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            box["error"] = err

    worker = threading.Thread(target=run, name="kaleido-export", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise StaticExportUnavailable(f"kaleido did not finish within {timeout_s:.0f} s (abandoned)")
    if "error" in box:
        err = box["error"]
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise StaticExportUnavailable(f"{type(err).__name__}: {first_line}".rstrip(": ")) from err
    return box["images"]


def _note_static_off(reason: str) -> None:
    global _static_off
    if _static_off is None:
        print(f"note: HTML figures only, no PNG/SVG ({reason.split('. ')[0]}); for static figures: {FIGURES_EXTRA}",
              file=sys.stderr, flush=True)
    _static_off = reason


def write_figure(fig: Any, path: str | Path, static: Sequence[str] = STATIC_FORMATS) -> Path:
    """Write a plotly figure as one self-contained HTML file (plotly.js inlined) and, where static
    export is available (:func:`figure_images`), as ``.png`` and ``.svg`` beside it, all atomically.

    The static files render anywhere (repository web views, papers, viewers without
    JavaScript). Without kaleido or a browser, or after an export failure, only the HTML is
    written and a one-line note is printed once per process. ``INTERP_STATIC_FIGURES=0`` turns
    the static files off (each costs a browser start, about 3 s). Returns the HTML path.
    """
    path = Path(path)
    html = write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    if static and _static_off is None and os.environ.get("INTERP_STATIC_FIGURES", "1") != "0":
        try:
            images = figure_images([fig], static)[0]
        except StaticExportUnavailable as err:
            _note_static_off(str(err))
        else:
            for fmt, data in images.items():
                out = path.with_suffix(f".{fmt}")
                atomic_write(out, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return html


write_html = write_figure  # the analyses' name for it


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


# --------------------------------------------------------------------------- the floor check first

FLOOR_FAILED = 3  # the exit status of an analysis stopped by its floor check
HELD_BY_DEFAULT = {"honesty-facts": "--concept honesty --measure facts (factual honesty)",
                   "sentiment-continuations": "--concept sentiment (continuation margins)"}  # measures the embedded default holds


def suggestion(measure: Measure, action: str = "run") -> str:
    """What to run instead when the floor check fails: the measures the embedded default holds (other than this
    one), a larger model on a GPU, or ``--force``."""
    others = [text for key, text in HELD_BY_DEFAULT.items() if key != measure.key]
    return (f"Stopped before training: {FLOOR_MESSAGE} ({measure.label}). Run instead {' or '.join(others)}, which the "
            "embedded default model holds; or a larger model on a GPU (--model <hugging face id> --device cuda); "
            f"or add --force to {action} anyway")


def stop_unless_held(floor: dict, measure: Measure, *, force: bool, action: str = "run") -> None:
    """Exit with :data:`FLOOR_FAILED` and :func:`suggestion` on stderr when the stored floor check failed, unless ``force``."""
    if floor.get("passes") is False and not force:
        print(suggestion(measure, action), file=sys.stderr)
        raise SystemExit(FLOOR_FAILED)


# --------------------------------------------------------------------------- CLI pieces


def analysis_parser(analysis: str, doc: str, *, writes: str, quick: str, figures: str = "figures",
                    default_out: str | None = None, **shared) -> argparse.ArgumentParser:
    """The parser of ``python -m analyses.<analysis>`` (its description: the first paragraph of ``doc``)
    with the shared options (:func:`interp.cli.add_shared_args`: ``--model --device --dtype --out
    --seed --quick --no-progress`` and, as asked, ``--n-eval``, ``--layers``, ``--backend``) and
    ``--figures``. ``--out`` defaults to None: resolve it with :func:`result_folder` once the model is known.
    """

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

    layers = parse_layers(spec, n_layers) if spec else list(range(n_layers))
    if quick and len(layers) > most:
        layers = sorted({layers[i] for i in np.linspace(0, len(layers) - 1, most).round().astype(int)})
    return layers
