"""Activations as labelled xarray datasets on disk: collected in chunks, resumable, opened lazily.

Collect hidden states at hook points for a set of already-tokenised prompts, optionally
under a steering method at several coefficients::

    from interp.store import collect, open_store
    path = collect(model, "runs/acts", batch.tokens, batch.attention_mask,
                   sites=["blocks.5.hook_resid_post", "blocks.5.mlp.out.hook_in"],
                   method=adapter, coeffs=(-1.0, 0.0, 1.0),
                   meta=meta_from_pair_batch(n_pairs, "honesty"))
    ds = open_store(path)                 # lazy: nothing read until .values / .load()
    ds.acts.sel(site="blocks.5.hook_resid_post", coeff=1.0)

Layout of the dataset (one netCDF file, ``<path>/store.nc``):

* ``acts`` -- sites whose width is ``d_model``: dims ``(sample, coeff, site, d_model)``
  for ``positions="last"`` (the last real token of each row), or
  ``(sample, coeff, site, pos, d_model)`` for ``positions="all"``.
* ``acts_d<W>`` -- sites of another width ``W`` (e.g. ``mlp.out.hook_in`` is ``d_mlp``
  wide): dims ``(sample, coeff, site_d<W>, [pos,] d<W>)``. :func:`site_array` finds a
  site's array whichever variable holds it.
* ``mask`` ``(sample, pos)`` int8 (only with ``positions="all"``: ragged lengths) and
  ``last_index`` ``(sample,)``: the position of each row's last real token.
* coordinates on ``sample``: ``prompt_id``, ``text``, ``pair_id`` (-1 if none), ``label``
  (``"chosen"``/``"rejected"``/``""``), ``concept``; ``coeff`` (floats); ``site`` (strings).
  No MultiIndex (netCDF cannot hold one).
* attrs: :func:`interp.provenance.provenance` plus the collection options.

Values are float32 or float16 (netCDF has no bfloat16).

How it is written (peak memory is one chunk, whatever the number of prompts): each chunk
of ``chunk_size`` samples becomes ``<path>/parts/part-NNNNNN.nc`` (temp file +
``os.replace``), so a killed run resumes by skipping finished parts; when all parts exist
they are streamed one at a time into ``store.nc`` (again temp + rename). xarray without
dask cannot concatenate lazily, hence one consolidated file rather than ``open_mfdataset``.

Every backend goes through the same code: :func:`collect_with` takes a :data:`Runner` (a
function from a token batch and a coefficient to ``{site: [batch, pos, width]}``), and
:func:`runner` makes one from any model through :func:`interp.backends.run`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.data import last_token_index
from interp.files import ENGINE, write_netcdf, write_text
from interp.provenance import provenance
from interp.sites import Site, site_hook
from interp.steering import SteeringMethod
from interp.backends import backend_of
from interp.backends import n_layers
from interp.backends import run

STORE_FILE = "store.nc"
MANIFEST = "manifest.json"
PARTS = "parts"


POSITIONS = ("last", "all")
DTYPES = ("float32", "float16")
META_KEYS = ("prompt_id", "text", "pair_id", "label", "concept")

# (tokens, attention_mask, coefficient) -> {site: activations [batch, pos, width]}
Runner = Callable[[Tensor, Tensor, float], Mapping[str, Tensor]]


class StoreError(RuntimeError):
    """A store on disk is missing, unfinished or belongs to other inputs."""


@dataclass(frozen=True)
class StoreConfig:
    """What to collect: hook names, which positions, coefficients, chunking and dtype."""

    sites: tuple[str, ...]
    positions: Literal["last", "all"] = "last"
    coeffs: tuple[float, ...] = (0.0,)
    chunk_size: int = 64
    batch_size: int = 8
    dtype: Literal["float32", "float16"] = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("StoreConfig needs at least one site (a hook name such as 'blocks.3.hook_resid_post')")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"duplicate sites in {list(self.sites)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {list(POSITIONS)}, got {self.positions!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)} (netCDF has no bfloat16), got {self.dtype!r}")
        if not self.coeffs or not all(math.isfinite(c) for c in self.coeffs):
            raise ValueError(f"coeffs must be a non-empty tuple of finite floats, got {self.coeffs}")
        if len(set(self.coeffs)) != len(self.coeffs):
            raise ValueError(f"duplicate coefficients in {list(self.coeffs)}")
        if self.chunk_size < 1 or self.batch_size < 1:
            raise ValueError(f"chunk_size and batch_size must be >= 1, got {self.chunk_size}, {self.batch_size}")


# --------------------------------------------------------------------------- sample metadata


def default_meta(n: int) -> dict[str, np.ndarray]:
    """Metadata for ``n`` unlabelled prompts: ids 0..n-1, no text, no pairs."""
    return {
        "prompt_id": np.arange(n, dtype=np.int64),
        "text": np.array([""] * n, dtype=object),
        "pair_id": np.full(n, -1, dtype=np.int64),
        "label": np.array([""] * n, dtype=object),
        "concept": np.array([""] * n, dtype=object),
    }


def meta_from_pair_batch(n_pairs: int, concept: str = "", texts: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Metadata for an :func:`interp.data.tokenize_pairs` batch: rows ``0..n-1`` chosen, then rejected."""
    meta = default_meta(2 * n_pairs)
    meta["pair_id"] = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)]).astype(np.int64)
    meta["label"] = np.array(["chosen"] * n_pairs + ["rejected"] * n_pairs, dtype=object)
    meta["concept"] = np.array([concept] * (2 * n_pairs), dtype=object)
    if texts is not None:
        meta["text"] = np.array(list(texts), dtype=object)
    return _check_meta(meta, 2 * n_pairs)


def _check_meta(meta: Mapping[str, Sequence] | None, n: int) -> dict[str, np.ndarray]:
    out = default_meta(n)
    for key, values in (meta or {}).items():
        if key not in META_KEYS:
            raise ValueError(f"unknown metadata key {key!r}; valid keys: {list(META_KEYS)}")
        arr = np.asarray(values, dtype=np.int64 if key in ("prompt_id", "pair_id") else object)
        if arr.shape != (n,):
            raise ValueError(f"metadata {key!r} has shape {arr.shape}, expected ({n},) (one per prompt)")
        if arr.dtype == object:
            arr = np.array([str(v) for v in arr], dtype=object)
        out[key] = arr
    return out


# --------------------------------------------------------------------------- runners


def runner(model, sites: Sequence[str], method: SteeringMethod | None = None) -> Runner:
    """A :data:`Runner` on any backend (:func:`interp.backends.run`): ``method``'s edits at each
    coefficient, activations read at ``sites``."""

    sites = [site_hook(s) for s in sites]

    def read(tokens: Tensor, attention_mask: Tensor, coeff: float) -> dict[str, Tensor]:
        edits = method.edits(coeff) if method is not None else ()
        with torch.no_grad():
            return run(model, tokens, attention_mask, edits, read=sites).states

    return read


# --------------------------------------------------------------------------- collection


def collect(
    model,
    path: str | Path,
    tokens: Int[Tensor, "n pos"],
    attention_mask: Int[Tensor, "n pos"],
    sites: Sequence[Site | str],
    *,
    method: SteeringMethod | None = None,
    coeffs: Sequence[float] = (0.0,),
    positions: Literal["last", "all"] = "last",
    meta: Mapping[str, Sequence] | None = None,
    chunk_size: int = 64,
    batch_size: int = 8,
    dtype: Literal["float32", "float16"] = "float32",
    seed: int = 0,
    extra_attrs: Mapping | None = None,
    progress: bool = True,
) -> Path:
    """Collect activations into ``path`` (a folder) on any backend (a bridge, an nnsight model or
    a backend; remote nnsight models run on NDIF); return ``path``.

    ``tokens`` are chat-templated ids (no extra BOS is added); rows are samples.
    Re-running with the same inputs resumes (finished chunks are skipped) and returns
    at once when the store is complete; other inputs at the same path raise ``StoreError``.
    """
    config = StoreConfig(
        sites=tuple(site_hook(s) for s in sites), positions=positions, coeffs=tuple(float(c) for c in coeffs),
        chunk_size=chunk_size, batch_size=batch_size, dtype=dtype, seed=seed,
    )

    backend = backend_of(model)
    for s in config.sites:  # bad names fail before any work
        layer = s.split(".")[1] if s.startswith("blocks.") else None
        if layer is None or not layer.isdigit() or not 0 <= int(layer) < n_layers(backend):
            raise ValueError(f"unknown site {s!r}: expected 'blocks.<layer>...' with layer in 0..{n_layers(backend) - 1}")
    attrs = provenance(
        backend, sites=config.sites, config=method.config() if method is not None else None, seed=seed,
        method=method.name if method is not None else "base", **dict(extra_attrs or {}),
    )
    return collect_with(
        runner(backend, config.sites, method), path, tokens, attention_mask, config,
        d_model=backend.d_model, meta=meta, attrs=attrs, progress=progress,
    )


def collect_with(
    runner: Runner,
    path: str | Path,
    tokens: Int[Tensor, "n pos"],
    attention_mask: Int[Tensor, "n pos"],
    config: StoreConfig,
    *,
    d_model: int,
    meta: Mapping[str, Sequence] | None = None,
    attrs: Mapping | None = None,
    progress: bool = True,
) -> Path:
    """The backend-independent collector: chunks, resume, consolidation (see the module doc)."""
    if tokens.ndim != 2 or tokens.shape != attention_mask.shape:
        raise ValueError(
            f"tokens and attention_mask must both be [n, pos], got {tuple(tokens.shape)} and {tuple(attention_mask.shape)}"
        )
    n = int(tokens.shape[0])
    if n == 0:
        raise ValueError("no prompts to collect")
    meta_arrays = _check_meta(meta, n)
    attrs = dict(attrs or {})
    attrs.update({"store_" + k: json.dumps(v) if isinstance(v, (tuple, list)) else v for k, v in asdict(config).items()})
    root = Path(path)
    fingerprint = _fingerprint(tokens, attention_mask, config, meta_arrays, attrs)
    _claim(root, fingerprint, attrs, n)
    if (root / STORE_FILE).is_file():
        return root
    parts = root / PARTS
    parts.mkdir(exist_ok=True)
    n_chunks = math.ceil(n / config.chunk_size)
    todo = [i for i in range(n_chunks) if not _part_path(parts, i).is_file()]
    for index in tqdm(todo, desc="collect chunks", disable=not progress or not todo):
        start, stop = index * config.chunk_size, min(n, (index + 1) * config.chunk_size)
        # Seeded per chunk, so a resumed run computes each chunk exactly as an unbroken one.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1_000_003 + index)
            ds = _collect_chunk(runner, tokens[start:stop], attention_mask[start:stop], config, d_model)
        ds = ds.assign_coords(sample=np.arange(start, stop, dtype=np.int64))
        ds = ds.assign_coords({k: ("sample", v[start:stop]) for k, v in meta_arrays.items()})
        write_netcdf(ds, _part_path(parts, index))
    _consolidate(root, n_chunks, n, attrs, config.chunk_size)
    return root


def _collect_chunk(runner: Runner, tokens: Tensor, mask: Tensor, config: StoreConfig, d_model: int) -> xr.Dataset:
    """One chunk in memory: arrays ``[chunk, coeff, site, (pos,) width]`` per width group."""
    rows, width_pos = tokens.shape
    np_dtype = np.dtype(config.dtype)
    last = last_token_index(mask)
    arrays: dict[str, np.ndarray] = {}
    widths: dict[str, int] = {}
    for b0 in range(0, rows, config.batch_size):
        b1 = min(rows, b0 + config.batch_size)
        for ci, coeff in enumerate(config.coeffs):
            found = runner(tokens[b0:b1], mask[b0:b1], coeff)
            for si, site in enumerate(config.sites):
                x = found[site]
                if x.ndim != 3 or x.shape[:2] != (b1 - b0, width_pos):
                    raise ValueError(f"site {site} gave shape {tuple(x.shape)}, expected [batch, pos, width]")
                if site not in widths:
                    widths[site] = int(x.shape[-1])
                    shape = (rows, len(config.coeffs)) + ((width_pos,) if config.positions == "all" else ()) + (widths[site],)
                    arrays[site] = np.zeros(shape, dtype=np_dtype)
                if config.positions == "last":
                    x = x[torch.arange(b1 - b0, device=x.device), last[b0:b1].to(x.device)]
                arrays[site][b0:b1, ci] = x.float().cpu().numpy().astype(np_dtype)
    groups = _groups(config.sites, widths, d_model)
    data_vars = {}
    pos_dims = ("pos",) if config.positions == "all" else ()
    for var, (site_dim, width_dim, names) in groups.items():
        stacked = np.stack([arrays[s] for s in names], axis=2)
        data_vars[var] = (("sample", "coeff", site_dim) + pos_dims + (width_dim,), stacked)
    data_vars["last_index"] = ("sample", last.cpu().numpy().astype(np.int64))
    if config.positions == "all":
        data_vars["mask"] = (("sample", "pos"), mask.cpu().numpy().astype(np.int8))
    coords: dict = {"coeff": np.array(config.coeffs, dtype=np.float64)}
    for var, (site_dim, _, names) in groups.items():
        coords[site_dim] = np.array(names, dtype=object)
    return xr.Dataset(data_vars, coords=coords)


def _groups(sites: Sequence[str], widths: Mapping[str, int], d_model: int) -> dict[str, tuple[str, str, list[str]]]:
    """variable -> (site dim, width dim, sites): ``acts`` for d_model-wide sites, ``acts_d<W>`` otherwise."""
    out: dict[str, tuple[str, str, list[str]]] = {}
    for site in sites:
        w = widths[site]
        key = ("acts", "site", "d_model") if w == d_model else (f"acts_d{w}", f"site_d{w}", f"d{w}")
        out.setdefault(key[0], (key[1], key[2], []))[2].append(site)
    return out


def _fingerprint(tokens: Tensor, mask: Tensor, config: StoreConfig, meta: Mapping[str, np.ndarray], attrs: Mapping) -> str:
    """What identifies a store's inputs (not its creation time), to refuse mixing runs."""
    digest = hashlib.sha256()
    digest.update(tokens.cpu().long().numpy().tobytes())
    digest.update(mask.cpu().long().numpy().tobytes())
    digest.update(json.dumps(asdict(config), sort_keys=True).encode())
    for key in META_KEYS:
        digest.update(json.dumps([str(v) for v in meta[key]]).encode())
    stable = {k: v for k, v in attrs.items() if k not in ("created", "git_commit")}
    digest.update(json.dumps(stable, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _claim(root: Path, fingerprint: str, attrs: Mapping, n: int) -> None:
    """Create the folder and manifest, or check that an existing one is for the same inputs."""
    manifest = root / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found.get("fingerprint") != fingerprint:
            raise StoreError(
                f"{root} holds a store for other inputs (model, prompts, sites, coefficients or options differ); "
                "pick another path or delete it"
            )
        return
    if root.exists() and any(root.iterdir()):
        raise StoreError(f"{root} exists and is not an activation store; pick another path")
    root.mkdir(parents=True, exist_ok=True)
    write_text(manifest, json.dumps({"fingerprint": fingerprint, "n_samples": n, "attrs": dict(attrs)}, indent=1, default=str))


def _part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.nc"


def _consolidate(root: Path, n_chunks: int, n: int, attrs: Mapping, chunk_size: int) -> None:
    """Stream the parts, one at a time, into one netCDF file (temp + rename), then drop the parts."""
    import h5netcdf
    import h5py

    parts = root / PARTS
    target = root / STORE_FILE
    fd, tmp = tempfile.mkstemp(prefix=STORE_FILE + ".", suffix=".tmp", dir=root)
    os.close(fd)
    try:
        with xr.open_dataset(_part_path(parts, 0), engine=ENGINE) as first, h5netcdf.File(tmp, "w") as out:
            out.dimensions = {d: (n if d == "sample" else int(s)) for d, s in first.sizes.items()}
            for name, var in first.variables.items():
                string = var.dtype.kind in "OUS"
                dtype = h5py.string_dtype() if string else var.dtype
                chunks = None
                if "sample" in var.dims and not string:
                    chunks = tuple(min(chunk_size, n) if d == "sample" else int(first.sizes[d]) for d in var.dims)
                created = out.create_variable(name, var.dims, dtype=dtype, chunks=chunks)
                if "sample" not in var.dims:
                    created[...] = var.values.astype(object) if string else var.values
            for key, value in attrs.items():
                out.attrs[key] = value
        with h5netcdf.File(tmp, "a") as out:
            for index in range(n_chunks):
                with xr.open_dataset(_part_path(parts, index), engine=ENGINE) as part:
                    start = int(part["sample"].values[0])
                    stop = start + part.sizes["sample"]
                    for name, var in part.variables.items():
                        if "sample" not in var.dims:
                            continue
                        values = var.values
                        axis = var.dims.index("sample")
                        region = tuple(slice(start, stop) if i == axis else slice(None) for i in range(values.ndim))
                        out.variables[name][region] = values.astype(object) if values.dtype.kind in "OUS" else values
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def open_store(path: str | Path) -> xr.Dataset:
    """Open a finished store lazily (values are read from disk only when used)."""
    root = Path(path)
    target = root / STORE_FILE
    if not target.is_file():
        if (root / MANIFEST).is_file():
            raise StoreError(f"{root} is unfinished; run the same collect(...) again to resume it")
        raise StoreError(f"no activation store at {root} (expected {target})")
    ds = xr.open_dataset(target, engine=ENGINE)
    # The consolidated file is written with h5netcdf directly, which does not mark
    # non-dimension coordinates; restore them (metadata only, still lazy).
    return ds.set_coords([k for k in META_KEYS if k in ds.data_vars])


def site_array(ds: xr.Dataset, site: Site | str) -> xr.DataArray:
    """The activations of one site, whichever ``acts*`` variable holds it (site dim dropped)."""
    hook = site_hook(site)
    for name, var in ds.data_vars.items():
        if not name.startswith("acts"):
            continue
        site_dim = next(d for d in var.dims if d.startswith("site"))
        if hook in ds[site_dim].values:
            return var.sel({site_dim: hook})
    available = [str(s) for d in ds.dims if str(d).startswith("site") for s in ds[d].values]
    raise ValueError(f"site {hook!r} is not in this store; stored sites: {available}")
