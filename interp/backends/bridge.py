"""The TransformerBridge backend: edits as hooks, one forward pass.

* :class:`~interp.interventions.WeightDelta` -- a torch forward hook on the raw Hugging Face
  ``nn.Linear`` of the site (:meth:`BridgeBackend.linear`) adds ``layer.delta(x, c)`` to its
  output. Why the raw Linear rather than the bridge's ``hook_in``/``hook_out`` pair: the hook
  sees the layer's input and output together, and the module tree (hook names, state-dict
  keys, nnsight paths) stays untouched. The Linear must carry that layer (an adapter attached
  to this model marks its Linears), so an edit of another model's adapter is refused.
* :class:`~interp.interventions.AddToResidual` -- a TransformerLens hook on
  ``blocks.L.hook_resid_post`` adds ``c · vector`` (one coefficient per row for a ``[batch]`` c).
* :class:`~interp.interventions.AtHook` -- its function, as a TransformerLens hook.

Read-outs are TransformerLens hooks registered after the edits, so a read at a place an
edit changes sees the changed value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from interp.backends.decoding import decode
from interp.backends.base import Backend, Readout
from interp.interventions import ADAPTED, AddToResidual, AtHook, Edits, WeightDelta
from interp.sites import LINEAR_MODULES, Site


def row_coeff(coeff, batch: int, like: Tensor) -> Tensor:
    """A coefficient broadcastable over ``[batch, pos, d]`` activations (float or ``[batch]``)."""
    if isinstance(coeff, Tensor) and coeff.ndim == 1:
        if coeff.shape[0] != batch:
            raise ValueError(f"{coeff.shape[0]} coefficients for a batch of {batch} rows")
        return coeff.to(like.device, like.dtype).view(batch, 1, 1)
    return torch.full((batch, 1, 1), float(coeff), device=like.device, dtype=like.dtype)


class BridgeBackend(Backend):
    """A TransformerBridge (``interp.models.load_model``) as a backend."""

    name = "bridge"

    def __init__(self, model):
        self.model = model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def spec(self) -> str:
        return str(getattr(self.model, "spec", "") or "")

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def linear(self, site: Site) -> nn.Module:
        try:
            bridge_module = self.model.get_submodule(site.name)
        except AttributeError:
            raise ValueError(f"this model has no module {site.name!r}; valid modules: {list(LINEAR_MODULES)}") from None
        return getattr(bridge_module, "original_component", bridge_module)

    def hf_model(self) -> nn.Module:
        return self.model.original_model

    @contextmanager
    def applied(self, edits: Edits) -> Iterator[None]:
        handles, hooks = [], []
        for edit in edits:
            if isinstance(edit, WeightDelta):
                linear = self.linear(edit.site)
                if getattr(linear, ADAPTED, None) is not edit.layer:
                    raise ValueError(f"{edit.site.name}: this edit's adapter is not attached to this model (attach it, or "
                                     "load it with interp.adapters.io.load_adapter)")
                handles.append(linear.register_forward_hook(_delta_hook(edit)))
            elif isinstance(edit, AddToResidual):
                hooks.append((edit.hook, _add_hook(edit)))
            elif isinstance(edit, AtHook):
                hooks.append((edit.hook, lambda x, hook, fn=edit.fn: fn(x)))
            else:
                raise TypeError(f"the bridge cannot apply {type(edit).__name__}; edits are interp.interventions values")
        try:
            with ExitStack() as stack:
                if hooks:
                    stack.enter_context(self.model.hooks(fwd_hooks=hooks))
                yield
        finally:
            for handle in handles:
                handle.remove()

    def decode(self, tokens, attention_mask, edits: Edits, config, *, eos, generator=None, seed: int = 0, progress: bool = False):
        with self.applied(edits):
            return decode(self.model, tokens.to(self.device), attention_mask.to(self.device), config, eos=eos,
                          generator=generator, progress=progress)

    def run(self, tokens: Tensor, attention_mask: Tensor, edits: Edits = (), read: Sequence[str] = ()) -> Readout:
        found: dict[str, Tensor] = {}

        def keep(name: str):
            def hook(x: Tensor, hook) -> Tensor:
                found[name] = x
                return x

            return hook

        device = self.device
        with self.applied(edits), ExitStack() as stack:
            if read:
                stack.enter_context(self.model.hooks(fwd_hooks=[(name, keep(name)) for name in read]))
            logits = self.model(tokens.to(device), attention_mask=attention_mask.to(device))
        missing = [name for name in read if name not in found]
        if missing:
            raise ValueError(f"hook point(s) {missing} did not fire; check the names (e.g. 'blocks.3.hook_resid_post')")
        return Readout(logits, found)


def _delta_hook(edit: WeightDelta):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        x = inputs[0]
        coeff = edit.coeff
        if isinstance(coeff, Tensor) and coeff.ndim == 1 and coeff.shape[0] != x.shape[0]:
            raise ValueError(f"{coeff.shape[0]} coefficients for a batch of {x.shape[0]} rows at {edit.site.name}")
        return output + edit.layer.delta(x, coeff).to(output.dtype)

    return hook


def _add_hook(edit: AddToResidual):
    def hook(x: Tensor, hook) -> Tensor:
        return x + row_coeff(edit.coeff, x.shape[0], x) * edit.vector.to(x.device, x.dtype)

    return hook
