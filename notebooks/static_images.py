"""Add a PNG rendering to every plotly figure output of executed notebooks, in place.

    python notebooks/static_images.py                      # every committed notebook
    python notebooks/static_images.py notebooks/01_layer_depth.ipynb --force

A figure output keeps its plotly JSON (interactive in JupyterLab, Notebook 7, VS Code) and
gains ``image/png`` beside it, drawn from that same JSON by plotly.js in a headless
Chrome/Chromium (kaleido: ``pip install -e ".[figures]"``, ``apt-get install chromium``), so
nothing is re-computed: the notebooks' result folders need not exist. Outputs that already
have a PNG are left alone unless ``--force``.

Viewers that do not run JavaScript choose among an output's formats by a fixed priority
in which ``text/html`` ranks above ``image/png`` (nbconvert, nbviewer, repository web views),
so while the CDN-loading HTML is kept, such viewers still pick it. ``--drop-html`` removes
that HTML from the figure outputs, leaving plotly JSON + PNG, so they show the PNG.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import nbformat

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PNG_MIME = "image/png"
WIDTH = 900  # px: readable in a page, a few tens of kB per figure

ROOT = Path(__file__).resolve().parents[1]


def figure_outputs(book: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The outputs of ``book``'s code cells that carry a plotly figure (as JSON)."""
    return [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if PLOTLY_MIME in o.get("data", {})]


def add_static_images(book: nbformat.NotebookNode, *, width: int = WIDTH, force: bool = False,
                      drop_html: bool = False) -> int:
    """Add ``image/png`` (rendered from the output's own plotly JSON) to each plotly figure output of
    ``book`` that lacks one (each one with ``force``); with ``drop_html`` also remove those outputs'
    ``text/html``. Returns how many PNGs were added. All figures share one browser session.

    Raises :class:`analyses._io.StaticExportUnavailable` without kaleido or a browser.
    """
    import plotly.io as pio

    from analyses._io import figure_images

    outputs = [o for o in figure_outputs(book) if force or PNG_MIME not in o["data"]]
    if outputs:
        figs = [pio.from_json(json.dumps(o["data"][PLOTLY_MIME]), skip_invalid=True) for o in outputs]
        for output, images in zip(outputs, figure_images(figs, ("png",), width=width), strict=True):
            output["data"][PNG_MIME] = base64.b64encode(images["png"]).decode("ascii")
    if drop_html:
        for output in figure_outputs(book):
            output["data"].pop("text/html", None)
    return len(outputs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python notebooks/static_images.py", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    p.add_argument("--width", type=int, default=WIDTH, help="PNG width in pixels")
    p.add_argument("--force", action="store_true", help="re-render figures that already have a PNG")
    p.add_argument("--drop-html", action="store_true", help="remove the figures' text/html so static viewers show the PNG")
    args = p.parse_args(argv)
    for path in args.paths or sorted((ROOT / "notebooks").glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        before = path.stat().st_size
        added = add_static_images(book, width=args.width, force=args.force, drop_html=args.drop_html)
        if added or args.drop_html:
            nbformat.write(book, path)
        print(f"{path.name}: {added} PNG(s) added, {before / 1e3:.0f} -> {path.stat().st_size / 1e3:.0f} kB", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # `analyses` from this checkout, run from anywhere
    main()
