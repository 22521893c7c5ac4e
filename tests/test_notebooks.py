"""Every notebook runs on tiny-random (its parameter cell replaced), so none can rot.

Parametrised over ``notebooks/*.ipynb``: a notebook added later is picked up without
editing this file, as long as its one cell tagged ``parameters`` assigns only the names
in :data:`PARAMETERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Injected into every notebook (OUT is set per test to its tmp_path) ...
PARAMETERS = {"MODEL": "tiny-random", "QUICK": True, "OUT": None, "SEED": 0}
# ... merged with per-notebook overrides (by file stem), should one ever need them.
OVERRIDES: dict[str, dict] = {}
# Notebooks that read DailyDilemmas (skipped, not failed, where the data set is absent).
NEEDS_DILEMMAS = {"00_quickstart", "01_layer_depth", "05_methods"}
CELL_TIMEOUT_S = 300
FIGURE_MIME = ("application/vnd.plotly.v1+json", "text/html")


def parameter_cell(book) -> nbformat.NotebookNode:
    cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def assigned_names(source: str) -> set[str]:
    """Names a parameter cell assigns (it must hold plain assignments only)."""
    names = set()
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), f"parameter cells hold plain assignments only, got {ast.dump(node)[:60]}"
        names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def parameter_source(values: dict) -> str:
    return "\n".join(f"{k} = {v!r}" for k, v in values.items())


def test_parameter_helpers():
    values = {"MODEL": "tiny-random", "QUICK": True, "OUT": "/tmp/x y", "SEED": 3}
    src = parameter_source(values)
    assert assigned_names(src) == set(values)
    namespace: dict = {}
    exec(src, namespace)  # the injected cell reproduces the values exactly (quoting included)
    assert {k: namespace[k] for k in values} == values
    with pytest.raises(AssertionError):
        assigned_names("import os\nMODEL = 'x'")


def figure_outputs(book) -> list:
    return [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if any(m in o.get("data", {}) for m in FIGURE_MIME)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_shape(path):
    """Question first, one parameter cell with the shared names, an Answer, and kept outputs:
    committed notebooks are executed on the embedded default model (``python notebooks/run.py``)
    so their figures can be read without running anything."""
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# ")
    cell = parameter_cell(book)
    assert assigned_names(cell.source) == set(PARAMETERS), f"{path.name}: parameter names must be {sorted(PARAMETERS)}"
    defaults: dict = {}
    exec(cell.source, defaults)
    assert defaults["MODEL"] == "smollm2-135m" and isinstance(defaults["QUICK"], bool)
    assert any(c.cell_type == "markdown" and c.source.startswith("## Answer") for c in book.cells)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name}: run it with python notebooks/run.py"
    assert figure_outputs(book), f"{path.name}: the committed notebook keeps its figure"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: committed with an error output"
    # plotly.js comes from its CDN, not inlined (4 MB per notebook otherwise)
    assert path.stat().st_size < 1_000_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_tiny_random(path, tmp_path, request, monkeypatch):
    if path.stem in NEEDS_DILEMMAS:
        monkeypatch.setenv("INTERP_DILEMMAS_DIR", str(request.getfixturevalue("dilemmas_dir")))
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:  # the committed (default-model) outputs must not count as this run's
        if cell.cell_type == "code":
            cell.outputs = []
    values = {**PARAMETERS, "OUT": str(tmp_path / "out"), **OVERRIDES.get(path.stem, {})}
    parameter_cell(book).source = parameter_source(values)
    client = NotebookClient(book, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the traceback if a cell fails
    assert figure_outputs(book), "the notebook shows a figure"
    assert any((tmp_path / "out").rglob("*.nc")), "results are written under OUT"
