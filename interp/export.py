"""Take a steered model elsewhere: an adapter merged at one coefficient, as a plain Hugging Face folder.

The folder holds safetensors weights, the config, the tokenizer with its chat template
and a model card (base model, adapter, coefficient, weight hashes). Plain
``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it with no project
code, and its logits are the steered model's at that coefficient (the adapter's saved
sign applied). The embedded GGUF default model is written as plain float32 safetensors.

    python -m interp.export --adapter runs/default/adapter --coeff 1 --out exports/smollm2-honest
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from interp.adapters.base import AdapterSet, layer_key
from interp.provenance import model_weight_hash
from interp.sites import Site, linear_of

# The bridge wraps each Hugging Face module in a component that keeps it under this name.
_WRAPPED = "._original_component"
CARD = "README.md"


class ExportError(ValueError):
    """The adapter cannot be exported as asked; the message says why and what to do."""


def site_weights(model, adapter: AdapterSet) -> dict[str, tuple[Site, nn.Linear]]:
    """``{hf parameter name: (site, bridge linear)}`` for every adapted site, in one pass over the modules."""
    names = {id(m): n.replace(_WRAPPED, "") for n, m in model.original_model.named_modules()}
    out = {}
    for site in adapter.sites:
        linear = linear_of(model, site)
        if id(linear) not in names:
            raise ExportError(f"{site.name} is not a module of this model")
        out[names[id(linear)] + ".weight"] = (site, linear)
    return out


@torch.no_grad()
def merged_weights(model, adapter: AdapterSet, coeff: float) -> dict[str, torch.Tensor]:
    """``{hf parameter name: W + ΔW(c)}`` for every adapted site (orientation applied)."""
    eff = float(adapter.effective(float(coeff)))
    out = {}
    for name, (site, linear) in site_weights(model, adapter).items():
        delta = adapter.layers[layer_key(site)].delta_weight(eff)
        out[name] = (linear.weight.float() + delta.float()).to(linear.weight.dtype).cpu()
    return out


def model_card(info: dict) -> str:
    """A short README for the exported folder (what it is, how it was made, how to load it)."""
    sites = ", ".join(info["sites"])
    return f"""---
base_model: {info["base_model"]}
library_name: transformers
tags: [steering, innerpissa]
---
# {info["base_model"]} steered at c = {info["coeff"]:+g}

The base model with a steering adapter merged into its weights at coefficient
{info["coeff"]:+g} (the adapter's saved orientation {info["orientation"]:+d} applied, so +c means
more of the concept it was calibrated on: `{info["concept"]}`). Made by InnerPiSSA-lab
`python -m interp.export`; it loads with plain transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

| | |
|---|---|
| base model spec | `{info["model_spec"]}` |
| adapter | `{info["adapter"]}` ({info["adapter_class"]}) |
| coefficient | {info["coeff"]:+g} |
| sites ({len(info["sites"])}) | {sites} |
| base weight hash (sha256, adapted sites) | `{info["site_weight_hash"]}` |
| base weight hash (sha256, all weights; the `weight_hash` results record) | `{info["base_weight_hash"]}` |
| merged weight hash (sha256, all weights) | `{info["merged_weight_hash"]}` |
"""


def export_merged(model, adapter: AdapterSet, coeff: float, out: str | Path, *, dtype: torch.dtype = torch.float32,
                  adapter_path: str = "", overwrite: bool = False) -> Path:
    """Write ``model`` with ``adapter`` merged at ``coeff`` as a Hugging Face folder at ``out``.

    The base weights come from a fresh plain copy of the model's spec (the bridge rewrites
    its own copy's module tree); each merged site is checked to hold the same base weight
    there. The folder is filled beside ``out`` and renamed into place, so a killed export
    leaves no half folder.
    """
    from interp.models import load_hf

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pick another --out or pass --overwrite")
    merged = merged_weights(model, adapter, coeff)
    hf, tokenizer = load_hf(model.spec, dtype=torch.float32)
    base_hash = model_weight_hash(hf)
    params = dict(hf.named_parameters())
    for name, (site, linear) in site_weights(model, adapter).items():
        if name not in params or not torch.equal(params[name].data, linear.weight.detach().cpu().float()):
            raise ExportError(f"the plain model of {model.spec!r} does not hold the bridge's base weight at {site.name} "
                              f"({name}): cannot merge there")
        params[name].data.copy_(merged[name].to(params[name].dtype))
    hf = hf.to(dtype)
    info = {
        "base_model": _hub_id(model),
        "model_spec": model.spec,
        "adapter": adapter_path,
        "adapter_class": type(adapter).__name__,
        "concept": (adapter.metadata.get("training") or {}).get("concept", "") or "unknown",
        "coeff": float(coeff),
        "orientation": int(adapter.orientation),
        "sites": [s.name for s in adapter.sites],
        "site_weight_hash": str(adapter.metadata.get("weight_hash", "")),
        "base_weight_hash": base_hash,
        "merged_weight_hash": model_weight_hash(hf),
        "dtype": str(dtype).replace("torch.", ""),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CARD).write_text(model_card(info), encoding="utf-8")
        (tmp / "steering.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _hub_id(model) -> str:
    from interp.models import DEFAULT_MODEL, EMBEDDED_HF_ID

    return EMBEDDED_HF_ID if model.spec == DEFAULT_MODEL else model.spec


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from interp.cli import add_shared_args, join_negative_values

    p = argparse.ArgumentParser(prog="python -m interp.export", description=__doc__.split("\n\n")[0])
    # no --seed or --quick: a merge has no randomness and no smaller version
    add_shared_args(p, out="the Hugging Face folder to write (required)", seed="")
    p.set_defaults(model=None)
    p.add_argument("--adapter", required=True, help="a saved adapter folder (InnerPiSSA or LoRA)")
    p.add_argument("--coeff", type=float, required=True, help="the coefficient to merge at (its saved sign applied)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, ["--coeff"]))
    if args.out is None:
        p.error("--out is required: the Hugging Face folder to write")
    if not torch.isfinite(torch.tensor(args.coeff)):
        p.error(f"--coeff must be finite, got {args.coeff}")
    args.error = p.error
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    from interp.adapters.io import AdapterLoadError, load_adapter, read_adapter_config
    from interp.cli import DTYPES
    from interp.models import load_model

    args = parse_args(argv)
    try:
        spec = args.model or read_adapter_config(args.adapter).get("model_spec")
        if not spec:
            args.error(f"{args.adapter} does not name its base model; pass --model")
        model = load_model(spec, device=args.device)  # merged in float32; --dtype is the written weights'
        adapter = load_adapter(model, args.adapter)
        path = export_merged(model, adapter, args.coeff, args.out, dtype=DTYPES[args.dtype],
                             adapter_path=str(args.adapter), overwrite=args.overwrite)
    except (AdapterLoadError, ExportError) as err:
        args.error(str(err))
    print(f"wrote {path} ({spec} + {args.adapter} merged at c = {args.coeff:+g}); "
          f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})")
    return path


if __name__ == "__main__":
    main()
