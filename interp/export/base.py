"""What every export format shares: the merge, the refusals that keep data safe, the checks, the card.

* :func:`check_out`: where an export may write. A folder that a live run holds (its
  ``.lock``, :func:`interp.files.run_lock`), a folder that overlaps the adapter being
  exported, or a non-empty folder that no export wrote is refused before anything is read
  or written; ``overwrite`` replaces only an earlier export.
* :func:`merged_weights`: ``W + ΔW(c)`` at every adapted site, refused when non-finite,
  beyond the written dtype's range, or absurdly far from ``W``.
* :func:`check_logits`: the merged model's logits at one prompt against the steered model's.
* :func:`replace_folder`: the finished folder renamed into place, so a killed or refused
  export leaves no half folder and changes nothing.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn

from interp.adapters.base import AdapterSet, layer_key
from interp.sites import Site
from interp.backends import linear_of
from interp.files import LOCK_FILE
from interp.models import DEFAULT_MODEL, EMBEDDED_HF_ID

# The bridge wraps each Hugging Face module in a component that keeps it under this name.
_WRAPPED = "._original_component"
CARD = "README.md"
STEERING = "steering.json"
# The prompt whose next-token logits every export compares (merged vs steered).
CHECK_PROMPT = "The most important thing to remember when giving advice is"
# Largest max |logit difference| (merged vs steered at CHECK_PROMPT) before a warning, by written dtype:
# float32 differs only by summation order (measured <= 2e-3 on the default model); float16
# and bfloat16 round every weight.
LOGIT_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-2, torch.float16: 0.25, torch.bfloat16: 1.0}
# Largest ||ΔW|| / ||W|| at a site that is exported: a trained adapter moves a weight by a fraction
# of its norm at |c| = 1; a thousand times its norm is a typo'd coefficient, not a steering strength.
MAX_RELATIVE_CHANGE = 1e3


class ExportError(ValueError):
    """The adapter cannot be exported as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- where to write


def lock_holders(folder: Path) -> list[str]:
    """The live holders of every run lock (``.lock``) in ``folder`` or below it, as the lock files name them.

    A lock file whose process died is free (the kernel dropped its ``flock``) and is not listed.
    """
    holders = []
    for lock in sorted(folder.rglob(LOCK_FILE)):
        with _shared_lock(lock) as free:
            if not free:
                text = lock.read_text(encoding="utf-8", errors="replace").strip() or "a process that wrote nothing yet"
                holders.append(f"{lock.parent} is held by {text}")
    return holders


@contextmanager
def _shared_lock(lock: Path) -> Iterator[bool]:
    """Hold a shared ``flock`` on an existing lock file while the block runs; yields False when a writer holds it.

    A shared lock keeps a run from taking the folder (its exclusive lock fails at once) until
    the block ends, without blocking other readers.
    """
    try:
        fh = open(lock, encoding="utf-8")
    except OSError:  # vanished or unreadable: nothing to hold
        yield True
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_out(out: str | Path, *, overwrite: bool = False, adapter_path: str | Path | None = None) -> Path:
    """Refuse an ``out`` whose writing could destroy data; returns it resolved. Reads only, changes nothing.

    Refused: ``out`` equal to, inside or containing the adapter folder; ``out`` an existing
    file; a non-empty ``out`` that a live run holds (a ``.lock`` in it or below it, naming the
    holder); a non-empty ``out`` without ``overwrite``; and with ``overwrite``, a non-empty
    ``out`` that no export wrote (no ``steering.json``): ``overwrite`` replaces earlier
    exports only, never a training run or anything else.
    """
    out = Path(out).expanduser().resolve()
    if adapter_path:
        adapter = Path(adapter_path).expanduser().resolve()
        if out == adapter or adapter in out.parents or out in adapter.parents:
            where = "is" if out == adapter else "is inside" if adapter in out.parents else "contains"
            raise ExportError(f"--out {out} {where} the adapter folder {adapter} being exported; writing there would "
                              "replace the adapter: pick an --out outside it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; --out names a folder to write (it is created)")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    holders = lock_holders(out)
    if holders:
        raise ExportError(f"--out {out} is being written by a live run ({'; '.join(holders)}); wait for it to finish "
                          "or pick another --out")
    if not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pick another --out or pass --overwrite "
                          "(which replaces an earlier export only)")
    if not (out / STEERING).is_file():
        some = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ExportError(f"--out {out} holds files that no export wrote ({some}; no {STEERING}); --overwrite replaces "
                          "an earlier export only: pick another --out, or move that folder away yourself")
    return out


def replace_folder(out: str | Path, fill: Callable[[Path], None], *, overwrite: bool = False,
                   adapter_path: str | Path | None = None) -> Path:
    """Fill a temporary sibling of ``out``, then put it in ``out``'s place; returns ``out``.

    ``out`` is checked (:func:`check_out`) again just before it is replaced, and while it is
    replaced every lock file in it is held shared, so a run that starts meanwhile cannot take
    the folder. The old folder is moved aside first and restored if the new one cannot be
    moved in. An error in ``fill`` leaves ``out`` as it was.
    """
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        with ExitStack() as stack:
            if out.is_dir():
                for lock in sorted(out.rglob(LOCK_FILE)):
                    stack.enter_context(_shared_lock(lock))
            check_out(out, overwrite=overwrite, adapter_path=adapter_path)
            if out.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                out.rename(aside / out.name)
                try:
                    tmp.rename(out)
                except OSError:
                    (aside / out.name).rename(out)
                    raise
                shutil.rmtree(aside, ignore_errors=True)
            else:
                tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- the merge


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
def merged_weights(model, adapter: AdapterSet, coeff: float, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``{hf parameter name: W + ΔW(c)}`` for every adapted site (orientation applied), on the CPU.

    Raises :class:`ExportError` naming the coefficient and the site when a merged weight is
    not finite, overflows the written ``dtype`` (float16 above 65504), or moves further than
    :data:`MAX_RELATIVE_CHANGE` times the base weight's norm: an absurd coefficient gives a
    model whose activations overflow (a normalisation of an infinite residual gives zeros,
    so even its logits can look finite).
    """
    eff = float(adapter.effective(float(coeff)))
    out = {}
    for name, (site, linear) in site_weights(model, adapter).items():
        base = linear.weight.detach().float()
        delta = adapter.layers[layer_key(site)].delta_weight(eff).float()
        merged = (base + delta).to(linear.weight.dtype).cpu()
        if not torch.isfinite(merged).all():
            raise ExportError(f"merging at --coeff {coeff:+g} gives non-finite weights at {site.name} ({name}); "
                              "pick a coefficient of the size the adapter was trained at (|c| around 1)")
        check_finite(f"{site.name} ({name})", merged.to(dtype), coeff, dtype)
        ratio = float(delta.norm() / base.norm().clamp_min(1e-30))
        if not ratio <= MAX_RELATIVE_CHANGE:
            raise ExportError(f"merging at --coeff {coeff:+g} changes the weight at {site.name} ({name}) by {ratio:.3g} "
                              f"times its own norm (at most {MAX_RELATIVE_CHANGE:g} is exported): the merged model's "
                              "activations would overflow; pick a coefficient of the size the adapter was trained at "
                              "(|c| around 1)")
        out[name] = merged
    return out


def check_finite(name: str, weight: torch.Tensor, coeff: float, dtype: torch.dtype) -> None:
    """Refuse a weight that is not finite once cast to the written ``dtype`` (float16 overflows above 65504)."""
    if not torch.isfinite(weight).all():
        dt = str(dtype).replace("torch.", "")
        raise ExportError(f"the weights merged at --coeff {coeff:+g} overflow {dt} at {name} (largest |w| in float32 "
                          "is beyond its range); export with --dtype float32 or bfloat16, or a smaller |--coeff|")


# --------------------------------------------------------------------------- checks and provenance


def check_ids(model) -> torch.Tensor:
    """The token ids of :data:`CHECK_PROMPT` for ``model``'s tokenizer, ``[1, n]``."""
    ids = model.tokenizer(CHECK_PROMPT, return_tensors="pt")["input_ids"]
    return ids[:, :32]


@torch.no_grad()
def steered_logits(model, adapter: AdapterSet, coeff: float, ids: torch.Tensor) -> torch.Tensor:
    """The steered bridge's logits at ``ids`` and coefficient ``coeff`` (float32, CPU)."""
    device = next(model.original_model.parameters()).device
    with adapter.steer(model, coeff):
        return model(ids.to(device)).float().cpu()


def check_logits(merged: torch.Tensor, steered: torch.Tensor, coeff: float, dtype: torch.dtype,
                 where: str) -> float:
    """Compare the merged model's logits with the steered model's; returns the max abs difference.

    Non-finite merged logits are refused (:class:`ExportError` naming the coefficient); a
    difference above :data:`LOGIT_TOLERANCE` for ``dtype`` is a warning, since rounding to a
    half-precision dtype may move logits that much and the file may still be wanted.
    """
    if not torch.isfinite(merged).all() or not torch.isfinite(steered).all():
        raise ExportError(f"the model merged at --coeff {coeff:+g} computes non-finite logits; pick a coefficient of "
                          "the size the adapter was trained at (|c| around 1)")
    diff = float((merged.float() - steered.float()).abs().max())
    tol = LOGIT_TOLERANCE.get(dtype, 1.0)
    if diff > tol:
        warnings.warn(f"{where}: the merged model's logits differ from the steered model's by up to {diff:.3g} at "
                      f"--coeff {coeff:+g} (tolerance {tol:g} for {str(dtype).replace('torch.', '')}); check its "
                      "outputs, or export --dtype float32", stacklevel=3)
    return diff


def hub_id(model) -> str:
    """The Hub id of ``model``'s base (the embedded default's original repository; else its spec)."""

    return EMBEDDED_HF_ID if model.spec == DEFAULT_MODEL else model.spec


def export_info(model, adapter: AdapterSet, coeff: float, dtype: torch.dtype, adapter_path: str, **extra) -> dict:
    """The provenance record of an export (``steering.json``; the GGUF's ``innerpissa.*`` keys)."""
    return {
        "base_model": hub_id(model),
        "model_spec": model.spec,
        "adapter": adapter_path,
        "adapter_class": type(adapter).__name__,
        "concept": (adapter.metadata.get("training") or {}).get("concept", "") or "unknown",
        "coeff": float(coeff),
        "orientation": int(adapter.orientation),
        "sites": [s.name for s in adapter.sites],
        "site_weight_hash": str(adapter.metadata.get("weight_hash", "")),
        "dtype": str(dtype).replace("torch.", ""),
        **extra,
    }


_LOAD = {
    "hf": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```""",
    "gguf": """```bash
llama-cli -m {file} -cnv                    # llama.cpp
echo 'FROM ./{file}' > Modelfile && ollama create steered -f Modelfile   # Ollama
```

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>", gguf_file="{file}")
tokenizer = AutoTokenizer.from_pretrained("<this folder>", gguf_file="{file}")
```""",
}


def model_card(info: dict) -> str:
    """A short README for the exported folder (what it is, how it was made, how to load it)."""
    sites = ", ".join(info["sites"])
    fmt = info.get("format", "hf")
    library = "gguf" if fmt == "gguf" else "transformers"
    load = _LOAD[fmt].format(file=info.get("file", ""))
    what = (f"a GGUF file (`{info.get('file', '')}`, tensors in {info['dtype']}, 1-D tensors in float32; metadata "
            "and tokenizer of the source GGUF, provenance in its `innerpissa.*` keys)"
            if fmt == "gguf" else "a Hugging Face folder")
    rows = [
        ("base model spec", f"`{info['model_spec']}`"),
        ("adapter", f"`{info['adapter']}` ({info['adapter_class']})"),
        ("coefficient", f"{info['coeff']:+g}"),
        (f"sites ({len(info['sites'])})", sites),
        ("base weight hash (sha256, adapted sites)", f"`{info['site_weight_hash']}`"),
        ("base weight hash (sha256, all weights; the `weight_hash` results record)", f"`{info['base_weight_hash']}`"),
        ("merged weight hash (sha256, all weights)", f"`{info['merged_weight_hash']}`"),
    ]
    if "check" in info:
        c = info["check"]
        rows.append(("max abs logit difference, merged vs steered (one prompt)", f"{c['max_abs_logit_diff']:.3g}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""---
base_model: {info["base_model"]}
library_name: {library}
tags: [steering, innerpissa]
---
# {info["base_model"]} steered at c = {info["coeff"]:+g}

The base model with a steering adapter merged into its weights at coefficient
{info["coeff"]:+g} (the adapter's saved orientation {info["orientation"]:+d} applied, so +c means
more of the concept it was calibrated on: `{info["concept"]}`), as {what}. Made by
InnerPiSSA-lab `python -m interp.export`; it loads with no project code:

{load}

| | |
|---|---|
{table}
"""
