"""Where a stored result came from, as flat attrs that JSON and netCDF both accept.

Every store, table and figure dataset carries :func:`provenance` in its attrs::

    ds.attrs.update(provenance(backend_of(model), sites=sites, config=method.config(), seed=0))

Values are only ``str``, ``int`` and ``float`` (netCDF attrs cannot hold ``None``,
dicts or nested lists): structured values (sites, config, extra dicts) are JSON strings,
missing ones are ``""``. Read them back with :func:`read_json_attr`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import functools
import json
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

PACKAGE = "innerpissa-lab"
_REPO = Path(__file__).resolve().parents[1]

Attr = str | int | float


@functools.lru_cache(maxsize=None)
def package_version(name: str = PACKAGE) -> str:
    """Installed version of a distribution, or ``"unknown"`` (read once per process)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=None)
def git_commit(repo: str | Path = _REPO) -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from, or ``"unknown"`` (asked once per
    process: the code a run executes is the code it started with)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _site_names(sites: Sequence[Any]) -> list[str]:
    return [getattr(s, "name", s) if not isinstance(s, str) else s for s in sites]


def to_attr(value: Any) -> Attr:
    """One value as a netCDF-able attr: numbers and strings pass, ``None`` -> ``""``, the rest -> JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return str(value)  # str subclasses (TorchVersion) are not writable by h5py
    if isinstance(value, (int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def read_json_attr(attrs: dict, key: str) -> Any:
    """Inverse of :func:`to_attr` for structured values (``""`` -> ``None``)."""
    value = attrs.get(key, "")
    if value == "":
        return None
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value


def provenance(
    model=None,
    *,
    sites: Sequence[Any] | None = None,
    config: dict | None = None,
    seed: int | None = None,
    weight_hash: str | None = None,
    **extra: Any,
) -> dict[str, Attr]:
    """Flat provenance attrs: model spec and weight hash, sites, config, seed, versions, commit, time.

    ``model`` is a backend (``interp.backends.backend_of(model)``, whose weight hash is computed
    once), a TransformerBridge or a plain HF model (hashed here), or ``None``; pass ``weight_hash=``
    when it is already known.
    ``extra`` keys are added as they are (structured values JSON-encoded).
    """
    attrs: dict[str, Attr] = {
        "model_spec": "",
        "weight_hash": weight_hash or "",
        "sites": to_attr(_site_names(sites) if sites is not None else None),
        "config": to_attr(config),
        "seed": -1 if seed is None else int(seed),
        "package": PACKAGE,
        "package_version": package_version(),
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # TorchVersion, a str subclass h5py rejects
        "transformer_lens_version": package_version("transformer-lens"),
        "transformers_version": package_version("transformers"),
        "nnsight_version": package_version("nnsight"),
    }
    if model is not None:
        if hasattr(model, "weight_hash") and hasattr(model, "spec"):  # a backend (interp.backends.backend_of(model))
            attrs["model_spec"] = str(model.spec)
            attrs["weight_hash"] = weight_hash or model.weight_hash
            attrs.setdefault("backend", str(getattr(model, "name", "")))
        elif isinstance(model, nn.Module):  # a TransformerBridge or a plain Hugging Face model (hashed here, each call)
            attrs["model_spec"] = str(getattr(model, "spec", "") or getattr(model, "name_or_path", "") or "")
            attrs["weight_hash"] = weight_hash or model_weight_hash(model)
        else:
            raise TypeError(f"provenance needs a backend (interp.backends.backend_of(model)), a TransformerBridge or a "
                            f"Hugging Face model, got a {type(model).__name__}")
    for key, value in extra.items():
        attrs[key] = to_attr(value)
    return attrs


def hf_state_dict(model) -> dict:
    """The HF-named weights of a bridge, an nnsight wrapper or a plain HF model.

    A booted bridge renames its HF model's entries (``._original_component.`` segments,
    alias names like ``self_attn.q``); the names a fresh HF model of the same config has
    are recovered from a meta-device copy (no memory, no weights), so both backends hash
    the same tensors under the same names.
    """
    hf = getattr(model, "original_model", None)
    if hf is None:
        # an nnsight wrapper keeps the HF model as ``_module``
        hf = None if isinstance(model, nn.Module) else getattr(model, "_module", None)
    if hf is None:
        hf = model
    raw = hf.state_dict()
    if not any("_original_component" in k for k in raw):
        return dict(raw)
    norm: dict = {}
    for key, value in raw.items():
        norm.setdefault(key.replace("_original_component.", ""), value)
    try:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            names = AutoModelForCausalLM.from_config(hf.config).state_dict().keys()
        return {k: norm[k] for k in names if k in norm}
    except Exception:  # an exotic config: fall back to every renamed entry (still deterministic)
        return norm


def model_weight_hash(model) -> str:
    """:func:`weight_hash` of the underlying HF model's weights (HF names)."""
    return weight_hash(hf_state_dict(model))


def weight_hash(tensors: dict[str, torch.Tensor] | nn.Module, length: int = 16) -> str:
    """A short sha256 over named tensors (sorted by name): identifies base weights."""
    if isinstance(tensors, nn.Module):
        tensors = dict(tensors.state_dict())
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:length]
