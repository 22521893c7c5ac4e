"""What every weight-space adapter shares: per-site delta layers and their manager.

An adapter changes a linear layer ``y = x Wᵀ + b`` at a steering coefficient ``c`` to
``y = x (W + ΔW(c))ᵀ + b`` with ``ΔW(0) = 0``. It acts in the *delta form*: at ``c`` it is
one :class:`~interp.interventions.WeightDelta` per site (:meth:`AdapterSet.edits`), which a
backend executes by adding ``x ΔW(c)ᵀ`` to the layer's output (the bridge: a forward hook
on the raw Hugging Face ``nn.Linear``; nnsight: the same sum inside a trace). The base
weight is never copied or re-parametrised, so ``c = 0`` (no edits) is the base model bit
for bit.

Attaching an adapter marks each adapted Linear with its site's layer (so edits run only on
the model they were made for, and two adapters never stack silently) and freezes the
model's own parameters; :meth:`AdapterSet.detach` undoes both.

Subclasses provide the :class:`DeltaLayer` (``delta`` / ``delta_weight`` /
``diagnostics``) and, for saving, ``options()`` / ``from_options()``
(see :mod:`interp.adapters.io`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.interventions import ADAPTED, Edits, WeightDelta, is_zero
from interp.sites import Site
from interp.backends import linear_of
from interp.steering import Coeff, SteeringMethod
from interp.backends import backend_of


def site_seed(seed: int, site: Site) -> int:
    """A stable per-site seed (Python's ``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{site.name}".encode()).digest()[:8], "little")


def layer_key(site: Site) -> str:
    """``nn.ModuleDict`` key of a site (dots are not allowed in module names)."""
    return site.name.replace(".", "_")


class DeltaLayer(nn.Module):
    """One site's weight change ``ΔW(c)`` (``d_out × d_in``, Hugging Face layout)."""

    site: Site

    def delta(
        self, x: Float[Tensor, "batch pos d_in"], coeff: float | Float[Tensor, " batch"]
    ) -> Float[Tensor, "batch pos d_out"]:
        """``x ΔW(c)ᵀ`` for a scalar ``c`` or one coefficient per batch row."""
        raise NotImplementedError

    def delta_weight(self, coeff: float) -> Float[Tensor, "d_out d_in"]:
        """``ΔW(c)`` as a dense matrix (for merging and for the nnsight backend)."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Scalar summaries of the learned change (for logs and the rotation-norm analysis)."""
        return {}


class AdapterSet(SteeringMethod):
    """Delta layers attached at ``sites`` of one model, steered together by one ``c``.

    ``orientation`` (set by training or sign calibration) multiplies every coefficient,
    so ``+c`` can mean "more of the concept" without touching the parameters.
    """

    name = "adapter"

    def __init__(self, model, sites: Sequence[Site], layers: Sequence[DeltaLayer]):

        if not sites:
            raise ValueError("an adapter needs at least one site")
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate sites: {names}")
        self.sites: list[Site] = list(sites)
        self.layers = nn.ModuleDict({layer_key(s): layer for s, layer in zip(sites, layers, strict=True)})
        self.orientation = 1
        self.metadata: dict[str, Any] = {}
        self._backend = backend_of(model)
        self.model_spec: str = self._backend.spec
        self._merged: dict[str, Tensor] = {}
        self._linears: dict[str, nn.Linear] = {}
        self._attached = False
        for site in self.sites:
            linear = linear_of(self._backend, site)
            if getattr(linear, ADAPTED, None) is not None:
                raise ValueError(f"{site.name} already carries an adapter; detach it first")
            self._linears[site.name] = linear
        # Only adapter parameters take gradients (as in PEFT); detach restores the flags.
        self._trainable_base = [p for p in self._backend.parameters() if p.requires_grad]
        for p in self._trainable_base:
            p.requires_grad_(False)
        for site in self.sites:
            # object.__setattr__: a Module attribute would register the layer as a submodule of the Linear
            object.__setattr__(self._linears[site.name], ADAPTED, self.layers[layer_key(site)])
        self._attached = True

    # ------------------------------------------------------------------ steering

    def parameters(self) -> Iterator[nn.Parameter]:
        """The adapter's trainable parameters (base weights are never among them)."""
        return (p for p in self.layers.parameters() if p.requires_grad)

    def edits(self, coeff: Coeff) -> Edits:
        """One :class:`~interp.interventions.WeightDelta` per site at ``coeff`` (scalar or ``[batch]``;
        orientation applied); none at 0."""
        if not self._attached:
            raise ValueError("this adapter has been detached")
        if self._merged:
            raise ValueError("the adapter is merged into the weights; unmerge() before steering")
        eff = self.effective(coeff)
        if is_zero(eff):
            return ()
        return tuple(WeightDelta(site, self.layers[layer_key(site)], eff) for site in self.sites)

    @contextmanager
    def steer(self, model, coeff: Coeff) -> Iterator[None]:
        """Run the block at coefficient ``coeff`` (scalar or ``[batch]``; orientation applied)."""

        if backend_of(model) is not self._backend:
            raise ValueError("this adapter is attached to another model instance; attach it to this one (or load it with interp.adapters.io.load_adapter)")
        with super().steer(model, coeff):
            yield

    # ------------------------------------------------------------------ merge / detach

    @torch.no_grad()
    def merge(self, coeff: float) -> None:
        """Fold ``ΔW(c)`` (orientation applied) into the weights: zero-overhead inference."""
        if self._merged:
            raise ValueError("already merged; unmerge() first")
        if not self._attached:
            raise ValueError("this adapter has been detached")
        eff = float(self.effective(float(coeff)))
        for site in self.sites:
            w = self._linears[site.name].weight
            self._merged[site.name] = w.data.clone()
            w.data += self.layers[layer_key(site)].delta_weight(eff).to(w.dtype)
        self._backend.weights_changed()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the weights saved by :meth:`merge`, bit for bit."""
        for name, original in self._merged.items():
            self._linears[name].weight.data.copy_(original)
        if self._merged:
            self._backend.weights_changed()
        self._merged = {}

    def detach(self) -> None:
        """Unmerge, unmark the Linears and unfreeze the base: the model is the original again."""
        self.unmerge()
        for p in self._trainable_base:
            p.requires_grad_(True)
        self._trainable_base = []
        for site in self.sites:
            linear = self._linears[site.name]
            if getattr(linear, ADAPTED, None) is self.layers[layer_key(site)]:
                delattr(linear, ADAPTED)
        self._attached = False

    # ------------------------------------------------------------------ reports

    def diagnostics(self) -> list[dict]:
        """One dict per site: site name, layer, module and the layer's diagnostics."""
        out = []
        with torch.no_grad():
            for site in self.sites:
                d = self.layers[layer_key(site)].diagnostics()
                out.append({"site": site.name, "layer": site.layer, "module": site.module, **d})
        return out

    def options(self) -> dict:
        """JSON-able constructor options (saved with the adapter)."""
        return {}

    @classmethod
    def from_options(cls, model, sites: Sequence[Site], options: dict) -> "AdapterSet":
        """Rebuild an adapter of this class from :meth:`options` (used by loading)."""
        raise NotImplementedError

    def config(self) -> dict:
        out = {
            **super().config(),
            "model_spec": self.model_spec,
            "sites": [s.name for s in self.sites],
            "options": self.options(),
        }
        calibration = self.calibration
        if calibration:
            out["calibration"] = calibration
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sites={[s.name for s in self.sites]}, options={self.options()}, orientation={self.orientation})"


class ConfiguredAdapter(AdapterSet):
    """An adapter built from one frozen config dataclass: ``layer_class(site, linear, config)`` per site.

    Subclasses set ``name``, ``layer_class`` and ``config_class``; saving and loading
    go through :meth:`options` (the config as a dict) and :meth:`from_options`.
    """

    layer_class: type[DeltaLayer]
    config_class: type

    def __init__(self, model, sites: Sequence[Site | str], config=None):

        sites = [Site.parse(s) if isinstance(s, str) else s for s in sites]
        self.adapter_config = self.config_class() if config is None else config
        backend = backend_of(model)
        layers = [self.layer_class(site, linear_of(backend, site), self.adapter_config) for site in sites]
        super().__init__(model, sites, layers)

    def options(self) -> dict:
        return asdict(self.adapter_config)

    @classmethod
    def from_options(cls, model, sites: Sequence[Site], options: dict) -> "ConfiguredAdapter":
        return cls(model, sites, cls.config_class(**options))
