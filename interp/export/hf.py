"""A steered model as a plain Hugging Face folder: safetensors, config, tokenizer with chat template, card.

Plain ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it with no project
code, and its logits are the steered model's at that coefficient (the adapter's saved sign
applied). The embedded GGUF default model is written as plain safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from interp.adapters.base import AdapterSet
from interp.export.base import (CARD, CHECK_PROMPT, STEERING, ExportError, check_ids, check_logits, check_out, export_info,
    merged_weights, model_card, replace_folder, site_weights, steered_logits)
from interp.provenance import model_weight_hash
from interp.models import load_hf


def export_merged(model, adapter: AdapterSet, coeff: float, out: str | Path, *, dtype: torch.dtype = torch.float32,
                  adapter_path: str = "", overwrite: bool = False) -> Path:
    """Write ``model`` with ``adapter`` merged at ``coeff`` as a Hugging Face folder at ``out``; returns the folder.

    ``out`` is checked first (:func:`interp.export.base.check_out`: never a live run's folder,
    the adapter's own folder, or a non-export folder). The base weights come from a fresh
    plain copy of the model's spec (the bridge rewrites its own copy's module tree); each
    merged site is checked to hold the same base weight there. Non-finite merged weights
    are refused, and the merged model's logits at one prompt are compared with the
    steered model's (a warning above the tolerance). The folder is filled beside ``out``
    and renamed into place, so a killed or refused export changes no file.
    """

    check_out(out, overwrite=overwrite, adapter_path=adapter_path or None)
    merged = merged_weights(model, adapter, coeff, dtype)
    hf, tokenizer = load_hf(model.spec, dtype=torch.float32)
    base_hash = model_weight_hash(hf)
    params = dict(hf.named_parameters())
    for name, (site, linear) in site_weights(model, adapter).items():
        if name not in params or not torch.equal(params[name].data, linear.weight.detach().cpu().float()):
            raise ExportError(f"the plain model of {model.spec!r} does not hold the bridge's base weight at {site.name} "
                              f"({name}): cannot merge there")
        params[name].data.copy_(merged[name].to(params[name].dtype))
    hf = hf.to(dtype)
    ids = check_ids(model)
    with torch.no_grad():
        diff = check_logits(hf(ids).logits.float(), steered_logits(model, adapter, coeff, ids), coeff, dtype,
                            f"export of {adapter_path or 'the adapter'}")
    info = export_info(model, adapter, coeff, dtype, adapter_path, format="hf", base_weight_hash=base_hash,
                       merged_weight_hash=model_weight_hash(hf),
                       check={"prompt": CHECK_PROMPT, "n_tokens": int(ids.shape[1]),
                              "max_abs_logit_diff": diff})

    def fill(tmp: Path) -> None:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CARD).write_text(model_card(info), encoding="utf-8")
        (tmp / STEERING).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    return replace_folder(out, fill, overwrite=overwrite, adapter_path=adapter_path or None)
