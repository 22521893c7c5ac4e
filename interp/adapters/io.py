"""Saving and loading adapters: ``adapter.safetensors`` + ``adapter.json`` in one folder.

The json names the base model (spec and a hash of the decomposed weights), the sites
and their shapes, the adapter class and options, the orientation (the calibrated sign)
and anything passed as ``extra`` (``training``, ``calibration``, ...); the safetensors
file holds the learned parameters and, for checking, each site's singular values where
the adapter has them. Loading rebuilds the adapter on the given model and refuses,
with a message saying why, an adapter made for other weights, other shapes or another
rank, and a damaged or incomplete file: nothing is ever loaded partially.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp.adapters.base import AdapterSet
from interp.models import weight_hash
from interp.provenance import git_commit, package_version
from interp.sites import Site, linear_of
from interp.store import current_umask

FORMAT = "innerpissa-lab-adapter"
FORMAT_VERSION = 1
TENSORS, CONFIG = "adapter.safetensors", "adapter.json"

# Adapter classes by their ``name``; imported lazily so that io does not pull them all in.
CLASSES: dict[str, str] = {
    "innerpissa": "interp.adapters.innerpissa:InnerPiSSA",
    "lora": "interp.adapters.lora:LoRA",
}


class AdapterLoadError(ValueError):
    """A saved adapter that cannot be loaded onto this model (the message says why)."""


def site_weight_hash(model, sites: list[Site]) -> str:
    """Hash of the raw weights an adapter decomposes (what it must be loaded onto)."""
    return weight_hash({s.name: linear_of(model, s).weight for s in sites})


def _tensors(adapter: AdapterSet) -> dict[str, torch.Tensor]:
    out = {f"{key}.{name}": p.detach().cpu().contiguous() for key, layer in adapter.layers.items() for name, p in layer.named_parameters()}
    for key, layer in adapter.layers.items():
        if isinstance(getattr(layer, "S", None), torch.Tensor):
            out[f"{key}.S"] = layer.S.detach().cpu().contiguous()
    return out


def save_adapter(adapter: AdapterSet, path: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``adapter`` to the folder ``path`` (replaced atomically); returns the folder.

    ``extra`` entries (JSON-able) are merged into the json, e.g. ``{"training": ...}``.
    """
    path = Path(path)
    linears = {s.name: adapter._linears[s.name] for s in adapter.sites}
    if adapter._merged:
        raise ValueError("unmerge() the adapter before saving: the weights hold ΔW now")
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": adapter.name,
        "model_spec": adapter.model_spec,
        "weight_hash": weight_hash({n: lin.weight for n, lin in linears.items()}),
        "sites": [s.name for s in adapter.sites],
        "shapes": {n: list(lin.weight.shape) for n, lin in linears.items()},
        "options": adapter.options(),
        "orientation": int(adapter.orientation),
        "package_version": package_version(),
        "git_commit": git_commit(),
    }
    calibration = getattr(adapter, "calibration", None)
    if calibration:
        config["calibration"] = calibration
    for key, value in (extra or {}).items():
        if key in config and key != "calibration":
            raise ValueError(f"extra key {key!r} would overwrite the adapter's own {key!r}")
        config[key] = value
    text = json.dumps(config, indent=2, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(_tensors(adapter), tmp / TENSORS, metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(text)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; saved adapters are shared like other results
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_adapter_config(path: str | Path) -> dict:
    """The json of a saved adapter folder, checked for format (clear errors otherwise)."""
    path = Path(path)
    file = path / CONFIG
    if not file.is_file():
        raise AdapterLoadError(f"{path} is not a saved adapter: {CONFIG} is missing")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{file} is damaged (not valid JSON: {err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AdapterLoadError(f"{file} is not an {FORMAT} config")
    missing = [k for k in ("class", "sites", "shapes", "options", "weight_hash") if k not in config]
    if missing:
        raise AdapterLoadError(f"{file} lacks {missing}")
    return config


def _adapter_class(name: str) -> type[AdapterSet]:
    if name not in CLASSES:
        raise AdapterLoadError(f"unknown adapter class {name!r}; known: {sorted(CLASSES)}")
    module, attr = CLASSES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def load_adapter(model, path: str | Path) -> AdapterSet:
    """Rebuild a saved adapter on ``model`` (attached, c = 0) with its parameters and sign.

    The json is available as ``adapter.metadata``; its calibration as ``adapter.calibration``.
    """
    path = Path(path)
    config = read_adapter_config(path)
    try:
        sites = [Site.parse(s) for s in config["sites"]]
        for site in sites:
            shape = list(linear_of(model, site).weight.shape)
            if shape != list(config["shapes"][site.name]):
                raise AdapterLoadError(f"{site.name} has weight shape {shape} here but {config['shapes'][site.name]} in the adapter: it was made for another model ({config.get('model_spec')!r})")
    except AdapterLoadError:
        raise
    except (ValueError, KeyError) as err:
        raise AdapterLoadError(f"the adapter at {path} does not fit this model: {err}") from None
    here = site_weight_hash(model, sites)
    if here != config["weight_hash"]:
        raise AdapterLoadError(
            f"the adapter at {path} was made for model {config.get('model_spec')!r} (weight hash {config['weight_hash']}), "
            f"but this model ({getattr(model, 'spec', '?')!r}) has weight hash {here} at those sites"
        )
    try:
        tensors = load_file(path / TENSORS)
    except FileNotFoundError:
        raise AdapterLoadError(f"{path / TENSORS} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterLoadError(f"{path / TENSORS} is damaged or truncated ({err})") from None
    cls = _adapter_class(config["class"])
    try:
        adapter = cls.from_options(model, sites, dict(config["options"]))
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"the adapter options {config['options']} do not build on this model: {err}") from None
    try:
        _copy_tensors(adapter, tensors, path)
    except AdapterLoadError:
        adapter.detach()
        raise
    adapter.orientation = int(config.get("orientation", 1))
    if config.get("calibration"):
        adapter.calibration = dict(config["calibration"])
    adapter.metadata = config
    return adapter


def _copy_tensors(adapter: AdapterSet, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = _tensors(adapter)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterLoadError(f"{path / TENSORS} does not match the adapter's parameters: missing {missing}, unexpected {unexpected}")
    for name, value in expected.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise AdapterLoadError(f"{name} has shape {tuple(tensors[name].shape)} in the file but {tuple(value.shape)} here (another rank?)")
    for key, layer in adapter.layers.items():
        saved_s = tensors.get(f"{key}.S")
        if saved_s is not None and not torch.allclose(saved_s.double(), layer.S.cpu().double(), rtol=1e-4, atol=1e-6):
            raise AdapterLoadError(f"the singular values at {key} differ from the saved ones: other weights")
    with torch.no_grad():
        for key, layer in adapter.layers.items():
            for name, p in layer.named_parameters():
                p.copy_(tensors[f"{key}.{name}"].to(p.device, p.dtype))
