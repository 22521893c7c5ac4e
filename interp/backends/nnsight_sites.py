"""Where an edit lands in an nnsight model, and what it is there: site names resolved to the wrapped
Hugging Face model's modules (:func:`resolve`, :func:`module_of`), and edits turned into plain tensors
ready to inline in a trace or a hook (:class:`NNSteering`, :func:`edit_tensors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from interp.interventions import AddToResidual, Edits, WeightDelta
from interp.sites import LINEAR_MODULES, Site, site_hook

# Project module names -> attribute paths inside a Llama-family decoder layer.
LLAMA_MODULES: dict[str, str] = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "mlp.gate": "mlp.gate_proj",
    "mlp.in": "mlp.up_proj",
    "mlp.out": "mlp.down_proj",
}
# Execution order inside a block, so a trace touches modules in the order they run.
_STAGE = {"resid_pre": 0, "attn.q": 1, "attn.k": 2, "attn.v": 3, "attn.o": 4, "mlp.gate": 5, "mlp.in": 6, "mlp.out": 7, "resid_post": 8}

# --------------------------------------------------------------------------- site names


@dataclass(frozen=True, order=True)
class NNSite:
    """Where a project hook name lives in the wrapped model: block, stage, module path, input/output."""

    layer: int
    stage: int
    is_output: bool
    path: str
    name: str = field(compare=False)


def resolve(name: Site | str, n_layers: int | None = None) -> NNSite:
    """Project hook name -> :class:`NNSite` (``model.layers.L[.module]``, ``input`` or ``output``).

    Accepts ``blocks.L.hook_resid_pre``, ``blocks.L.hook_resid_post`` / ``blocks.L.hook_out``,
    ``blocks.L.<module>`` (its output), ``blocks.L.<module>.hook_in`` / ``.hook_out``.
    """
    hook = site_hook(name) if isinstance(name, Site) else name
    parts = hook.split(".")
    valid = (
        "blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_out, blocks.L.<module>[.hook_in|.hook_out] "
        f"with module in {list(LINEAR_MODULES)}"
    )
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"unknown site {hook!r}; valid forms: {valid}")
    layer = int(parts[1])
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
    rest = ".".join(parts[2:])
    block = f"model.layers.{layer}"
    if rest == "hook_resid_pre":
        return NNSite(layer, _STAGE["resid_pre"], False, block, hook)
    if rest in ("hook_resid_post", "hook_out"):
        return NNSite(layer, _STAGE["resid_post"], True, block, hook)
    is_output = True
    if rest.endswith(".hook_in"):
        rest, is_output = rest[: -len(".hook_in")], False
    elif rest.endswith(".hook_out"):
        rest = rest[: -len(".hook_out")]
    if rest not in LLAMA_MODULES:
        raise ValueError(f"unknown site {hook!r}; valid forms: {valid}")
    return NNSite(layer, _STAGE[rest], is_output, f"{block}.{LLAMA_MODULES[rest]}", hook)


def envoy(nn_model, path: str):
    """The nnsight Envoy at a dotted module path (``model.layers.3.mlp.down_proj``)."""
    node = nn_model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def module_of(nn_model, name: Site | str) -> torch.nn.Module:
    """The plain torch module behind a site (for weight checks; not for use inside a trace)."""
    node = nn_model._module
    for part in resolve(name).path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _n_layers(nn_model) -> int:
    return int(nn_model._module.config.num_hidden_layers)


# --------------------------------------------------------------------------- steering


@dataclass(frozen=True)
class NNSteering:
    """Steering as plain tensors, ready to inline in a trace.

    ``deltas``: site name (``blocks.L.<module>``) -> ``ΔW`` ``[d_out, d_in]`` or per row
    ``[batch, d_out, d_in]``. ``vectors``: layer -> ``[d_model]`` or ``[batch, 1, d_model]``,
    already scaled by the coefficient.
    """

    deltas: Mapping[str, Tensor] = field(default_factory=dict)
    vectors: Mapping[int, Tensor] = field(default_factory=dict)


def edit_tensors(edits: Edits, n_layers: int | None = None) -> NNSteering:
    """The plain tensors of ``edits`` for a trace or hooks: ``ΔW(c)`` per site (one per row for a
    ``[batch]`` c: ``ΔW`` is not linear in c, so one per distinct coefficient), ``c · vector`` per layer."""
    deltas: dict[str, Tensor] = {}
    vectors: dict[int, Tensor] = {}
    with torch.no_grad():
        for edit in edits:
            if isinstance(edit, WeightDelta):
                c = edit.coeff
                if isinstance(c, Tensor) and c.ndim == 1:
                    cache = {v: edit.layer.delta_weight(v) for v in sorted(set(c.tolist()))}
                    deltas[edit.site.name] = torch.stack([cache[v] for v in c.tolist()])
                else:
                    deltas[edit.site.name] = edit.layer.delta_weight(float(c))
            elif isinstance(edit, AddToResidual):
                v, c = edit.vector.detach().float(), edit.coeff
                add = c.float().view(-1, 1, 1).cpu() * v if isinstance(c, Tensor) and c.ndim == 1 else float(c) * v
                vectors[edit.layer] = vectors[edit.layer] + add if edit.layer in vectors else add
            else:
                raise TypeError(f"nnsight cannot apply {type(edit).__name__}; edits are interp.interventions values")
    if n_layers is not None:
        bad = sorted(L for L in vectors if not 0 <= L < n_layers)
        if bad:
            raise ValueError(f"steering layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    return NNSteering(deltas=deltas, vectors=vectors)


