"""A trained steering vector on the adapter interface: the parameterisation baseline for the objectives.

At each site (a residual writer, e.g. ``mlp.out``) the layer's output gains ``c · v``: a vector added to
the residual stream after that layer, the same at every position and for every input, trained with the
same objectives and loop as InnerPiSSA and LoRA. Comparing it with InnerPiSSA at the same budget asks
what a weight edit (which acts on each input differently) adds over a vector (which adds the same thing
everywhere). ``c = 0`` is the base model exactly; ``-c`` subtracts what ``+c`` adds.

It is a bias change, not a weight change: it has no dense ``ΔW`` to merge into an exported model or to
hand to the nnsight backend, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.adapters.base import ConfiguredAdapter, DeltaLayer, site_seed
from interp.sites import Site


@dataclass(frozen=True)
class VectorConfig:
    """A trained vector's options: its initial scale (small, not zero: +c and -c must differ at the start) and seed."""

    init_std: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.init_std < float("inf"):
            raise ValueError(f"init_std must be a finite number > 0, got {self.init_std}")


class VectorLayer(DeltaLayer):
    """One site's added output ``c · v`` (``v`` of the layer's output width)."""

    def __init__(self, site: Site, linear: nn.Linear, config: VectorConfig = VectorConfig()):
        super().__init__()
        self.site = site
        gen = torch.Generator().manual_seed(site_seed(config.seed, site))
        v = torch.randn(linear.weight.shape[0], generator=gen, dtype=torch.float32, device="cpu") * config.init_std
        self.vector = nn.Parameter(v.to(linear.weight.device))  # float32 whatever the model's dtype

    def delta(self, x: Float[Tensor, "batch pos d_in"], coeff: float | Float[Tensor, " batch"]) -> Float[Tensor, "batch pos d_out"]:
        out = self.vector.expand(*x.shape[:-1], -1)
        if isinstance(coeff, Tensor) and coeff.ndim == 1:
            coeff = coeff.to(out.device, out.dtype).view(-1, *([1] * (out.ndim - 1)))
        return (out * coeff).to(x.dtype)

    def delta_weight(self, coeff: float) -> Float[Tensor, "d_out d_in"]:
        raise NotImplementedError(f"a trained steering vector at {self.site.name} adds c * v to the layer's output (a bias), "
                                  "which no weight matrix holds: it cannot be merged or exported, nor run by the nnsight backend")

    def diagnostics(self) -> dict[str, float]:
        with torch.no_grad():
            return {"vector_norm": float(self.vector.norm())}


class TrainedVector(ConfiguredAdapter):
    """Trained steering vectors at several sites, steered by ``c`` like every adapter."""

    name = "trained_vector"
    layer_class = VectorLayer
    config_class = VectorConfig


def attach(model, sites: Sequence[Site | str], config: VectorConfig = VectorConfig()) -> TrainedVector:
    """Attach trained-vector layers to ``model`` at ``sites`` (c = 0 until steered)."""
    return TrainedVector(model, sites, config)
