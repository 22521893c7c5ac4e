"""Saving and loading adapters: ``adapter.json`` + the safetensors file it names, in one folder.

The json names the base model (spec and a hash of the decomposed weights), the sites
and their shapes, the adapter class and options, the orientation (the calibrated sign)
and anything passed as ``extra`` (``training``, ``calibration``, ...); the safetensors
file holds the learned parameters and, for checking, each site's singular values where
the adapter has them. Loading rebuilds the adapter on the given model and refuses,
with a message saying why, an adapter made for other weights, other shapes or another
rank, and a damaged or incomplete file: nothing is ever loaded partially.

Integrity: the json records a sha256 of every tensor and of the options (class, sites,
options, orientation); loading verifies both, accepts only orientation +1 or -1 and
refuses non-finite values, all before anything is attached. The tensors are written
under a name that carries their hash (``adapter.<hash>.safetensors``) and the json,
replaced atomically last, names them: a save killed at any moment leaves the previous
adapter (or the new one) complete on disk, never none and never a mix. Folders of an
earlier format (version 1, without hashes) are refused with the reason.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp.adapters.base import AdapterSet
from interp.backends.base import RemoteUnavailable
from interp.provenance import weight_hash
from interp.provenance import git_commit, package_version
from interp.sites import Site
from interp.backends import linear_of
from interp.files import atomic_write

FORMAT = "innerpissa-lab-adapter"
FORMAT_VERSION = 2
CONFIG = "adapter.json"

# Adapter classes by their ``name``; imported lazily so that io does not pull them all in.
CLASSES: dict[str, str] = {
    "innerpissa": "interp.adapters.innerpissa:InnerPiSSA",
    "lora": "interp.adapters.lora:LoRA",
    "trained_vector": "interp.adapters.vector:TrainedVector",
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
        if getattr(layer, "saves_index", False):  # a basis chosen from data: which singular directions
            out[f"{key}.index"] = layer.index.detach().cpu().contiguous()
    return out


def tensor_hashes(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 (first 16 hex digits) of each tensor's dtype, shape and bytes."""
    out = {}
    for name, t in sorted(tensors.items()):
        digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()[:16]
    return out


def options_hash(config: dict) -> str:
    """sha256 of what decides how the tensors act: class, sites, options, orientation."""
    keys = {k: config.get(k) for k in ("class", "sites", "options", "orientation")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_adapter(adapter: AdapterSet, path: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``adapter`` to the folder ``path`` (an existing adapter there is replaced); returns the folder.

    ``extra`` entries (JSON-able) are merged into the json, e.g. ``{"training": ...}``.
    """
    path = Path(path)
    linears = {s.name: adapter._linears[s.name] for s in adapter.sites}
    if adapter._merged:
        raise ValueError("unmerge() the adapter before saving: the weights hold ΔW now")
    if adapter.orientation not in (1, -1):
        raise ValueError(f"orientation must be +1 or -1, got {adapter.orientation!r}")
    tensors = _tensors(adapter)
    bad = [n for n, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"the adapter holds non-finite values in {bad}: nothing saved")
    hashes = tensor_hashes(tensors)
    file_name = f"adapter.{hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:12]}.safetensors"
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
        "tensors": file_name,
        "package_version": package_version(),
        "git_commit": git_commit(),
    }
    calibration = adapter.calibration
    if calibration:
        config["calibration"] = calibration
    for key, value in (extra or {}).items():
        if key in config and key != "calibration":
            raise ValueError(f"extra key {key!r} would overwrite the adapter's own {key!r}")
        config[key] = value
    config["hashes"] = {"tensors": hashes, "options": options_hash(config)}
    text = json.dumps(config, indent=2, default=str)
    # tensors first, under their own name; then the json that names them (the switch is one rename)
    atomic_write(path / file_name, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text))
    for old in path.glob("adapter*.safetensors"):
        if old.name != file_name:
            old.unlink(missing_ok=True)
    return path


def tensors_file(path: str | Path, config: dict | None = None) -> Path:
    """The safetensors file a saved adapter's json names."""
    path = Path(path)
    config = config if config is not None else read_adapter_config(path)
    name = str(config["tensors"])
    if Path(name).name != name or not name.endswith(".safetensors"):
        raise AdapterLoadError(f"{path / CONFIG} names tensors {name!r}: not a .safetensors file in its folder")
    return path / name


def read_tensors(path: str | Path, config: dict | None = None) -> dict[str, torch.Tensor]:
    """A saved adapter's tensors, verified against the json's hashes and checked finite."""
    path = Path(path)
    config = config if config is not None else read_adapter_config(path)
    file = tensors_file(path, config)
    try:
        tensors = load_file(file)
    except FileNotFoundError:
        raise AdapterLoadError(f"{file} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterLoadError(f"{file} is damaged or truncated ({err})") from None
    recorded = config["hashes"]["tensors"]
    here = tensor_hashes(tensors)
    changed = sorted(n for n in set(here) & set(recorded) if here[n] != recorded[n])
    if changed:
        raise AdapterLoadError(f"{file}: {changed} differ from the hashes in {CONFIG} (damaged or edited); "
                               "re-save or re-train the adapter")
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise AdapterLoadError(f"{file} holds non-finite values in {bad}")
    return tensors


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
    if config.get("format_version", 1) < FORMAT_VERSION or not isinstance(config.get("hashes"), dict):
        raise AdapterLoadError(f"{file} was saved by a version before 0.1 (format version {config.get('format_version', 1)}, "
                               "without integrity hashes); re-train the adapter, or load it with that version and save it again")
    missing = [k for k in ("class", "sites", "shapes", "options", "weight_hash", "tensors") if k not in config]
    if missing:
        raise AdapterLoadError(f"{file} lacks {missing}")
    if config.get("orientation", 1) not in (1, -1):
        raise AdapterLoadError(f"{file}: orientation must be +1 or -1, got {config.get('orientation')!r}")
    if config["hashes"].get("options") != options_hash(config) or "tensors" not in config["hashes"]:
        raise AdapterLoadError(f"{file}: the class, sites, options or orientation differ from the ones it was saved "
                               "with (edited?); re-save the adapter instead of editing its json")
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
            weight = linear_of(model, site).weight
            if weight.is_meta:
                raise RemoteUnavailable(
                    f"the adapter at {path} needs the weights of its sites ({', '.join(config['sites'])}) to rebuild U, S, V, "
                    "but this model holds none here (an nnsight model built with remote=True keeps them on NDIF only); "
                    "load it with remote=False (or apply a steering vector remotely)")
            shape = list(weight.shape)
            if shape != list(config["shapes"][site.name]):
                raise AdapterLoadError(f"{site.name} has weight shape {shape} here but {config['shapes'][site.name]} in the adapter: it was made for another model ({config.get('model_spec')!r})")
    except (AdapterLoadError, RemoteUnavailable):
        raise
    except (ValueError, KeyError) as err:
        raise AdapterLoadError(f"the adapter at {path} does not fit this model: {err}") from None
    here = site_weight_hash(model, sites)
    if here != config["weight_hash"]:
        raise AdapterLoadError(
            f"the adapter at {path} was made for model {config.get('model_spec')!r} (weight hash {config['weight_hash']}), "
            f"but this model ({getattr(model, 'spec', '?')!r}) has weight hash {here} at those sites"
        )
    tensors = read_tensors(path, config)
    cls = _adapter_class(config["class"])
    try:
        adapter = cls.from_options(model, sites, dict(config["options"]))
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"the adapter options {config['options']} do not build on this model: {err}") from None
    try:  # attached now: any failure from here on detaches again, so a retry finds the model clean
        _copy_tensors(adapter, tensors, tensors_file(path, config))
        adapter.orientation = int(config.get("orientation", 1))
        if config.get("calibration"):
            adapter.calibration = dict(config["calibration"])
        adapter.metadata = config
    except BaseException:
        adapter.detach()
        raise
    return adapter


def _copy_tensors(adapter: AdapterSet, tensors: dict[str, torch.Tensor], file: Path) -> None:
    expected = _tensors(adapter)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterLoadError(f"{file} does not match the adapter's parameters: missing {missing}, unexpected {unexpected}")
    for name, value in expected.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise AdapterLoadError(f"{name} has shape {tuple(tensors[name].shape)} in the file but {tuple(value.shape)} here (another rank?)")
    for site, (key, layer) in zip(adapter.sites, adapter.layers.items(), strict=True):
        if f"{key}.index" in tensors:  # rebuild the basis the adapter was trained in
            try:
                layer.use_basis(linear_of(adapter._backend, site).weight, tensors[f"{key}.index"])
            except ValueError as err:
                raise AdapterLoadError(f"{file}: {err}") from None
        saved_s = tensors.get(f"{key}.S")
        if saved_s is not None and not torch.allclose(saved_s.double(), layer.S.cpu().double(), rtol=1e-4, atol=1e-6):
            raise AdapterLoadError(f"the singular values at {key} differ from the saved ones: other weights")
    with torch.no_grad():
        for key, layer in adapter.layers.items():
            for name, p in layer.named_parameters():
                p.copy_(tensors[f"{key}.{name}"].to(p.device, p.dtype))
