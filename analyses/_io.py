"""Atomic writes and reads shared by the analyses (results, tables, figures), and their common CLI bits.

Every file is written to a temporary sibling and moved into place with ``os.replace``,
so a killed run never leaves a half-written result that a resumed run would trust.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

ENGINE = "h5netcdf"


def _umask_mode() -> int:
    # mkstemp creates 0600 files; results are shared, so give them the usual umask permissions.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())
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


def write_html(fig, path: str | Path) -> Path:
    """Write a plotly figure as one self-contained HTML file (plotly.js inlined), atomically."""
    return write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def load_dataset(path: str | Path) -> xr.Dataset:
    """Open a stored result fully into memory (and close the file, so it can be replaced later)."""
    with xr.open_dataset(path, engine=ENGINE) as ds:
        return ds.load()


# --------------------------------------------------------------------------- CLI pieces


def add_common_args(p: argparse.ArgumentParser, *, out: str, out_help: str, figures: str = "figures") -> None:
    """The options every per-layer analysis takes: ``--model``, ``--out``, ``--figures``, ``--layers``."""
    p.add_argument("--model", default="smollm2-135m", help="model spec (see interp.models)")
    p.add_argument("--out", default=out, help=out_help)
    p.add_argument("--figures", default=figures, help="folder for the HTML figures")
    p.add_argument("--layers", default=None, help="layer indices / depth fractions (default: all layers)")


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


def load_or_compute(path: str | Path, compute: Callable[[], xr.Dataset]) -> xr.Dataset:
    """The dataset stored at ``path``, or ``compute()`` written there first (resumable runs)."""
    path = Path(path)
    if not path.is_file():
        write_netcdf(compute(), path)
    return load_dataset(path)
