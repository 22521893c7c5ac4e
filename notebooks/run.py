"""Execute notebooks in place with the parameters in their cells, keeping the outputs (as committed).

    python notebooks/run.py                                  # every notebook, in order
    python notebooks/run.py notebooks/01_layer_depth.ipynb   # one

What ``jupyter nbconvert --execute --inplace`` does, without needing nbconvert (nbclient is
a dependency already). Figures are kept as plotly JSON plus HTML that loads plotly.js from
its CDN: a few kB per figure instead of 4 MB of inlined JavaScript; and, where static export
is available (``pip install -e ".[figures]"`` and a Chrome/Chromium), a 900 px PNG of each
(:mod:`static_images`), drawn once the notebook has run, so viewers without JavaScript show
the figure. The notebooks reuse the analyses' own result folders, so running the CLI first
and the notebook after costs only the figure.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path[1:1] = [str(ROOT / "notebooks"), str(ROOT)]  # static_images and `analyses` from this checkout


def execute(path: Path, timeout_s: int = 7200) -> float:
    """Run every cell of ``path`` (from the repo root), add PNGs of its plotly figures where static
    export is available, and write it back with outputs; returns seconds."""
    from static_images import add_static_images

    from analyses._io import StaticExportUnavailable

    book = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(book, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    try:
        add_static_images(book)
    except StaticExportUnavailable as err:
        print(f"note: {path.name} keeps its figures without PNGs ({str(err).split('. ')[0]}); "
              'for static images: pip install -e ".[figures]" and apt-get install chromium', flush=True)
    nbformat.write(book, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook_connected")  # read by the kernel's plotly
    paths = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
