"""Execute notebooks in place with the parameters in their cells, keeping the outputs (as committed).

    python notebooks/run.py                                  # every notebook, in order
    python notebooks/run.py notebooks/01_layer_depth.ipynb   # one

What ``jupyter nbconvert --execute --inplace`` does, without needing nbconvert (nbclient is
a dependency already). Figures are kept as plotly JSON plus HTML that loads plotly.js from
its CDN: a few kB per figure instead of 4 MB of inlined JavaScript. The notebooks reuse the
analyses' own result folders, so running the CLI first and the notebook after costs only
the figure.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, timeout_s: int = 7200) -> float:
    """Run every cell of ``path`` (from the repo root) and write it back with outputs; returns seconds."""
    book = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(book, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    nbformat.write(book, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook_connected")  # read by the kernel's plotly
    paths = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
