"""LoRA with the steering coefficient, on the shared adapter interface (a baseline).

``ΔW(c) = c · (alpha / r) · B A`` with ``A [r, d_in]``, ``B [d_out, r]``, added in the delta
form (base layer untouched, bias kept; ``c = 0`` is the base model exactly).

Init: PEFT zero-initialises B, so ΔW = 0 at init and the +1 and -1 rows of a contrastive
step start identical. Here both A and B are drawn at random (seeded per site) by default:
``A ~ N(0, 1/d_in)`` (so ``x Aᵀ`` has unit scale) and ``B ~ N(0, init_std²)`` (so the initial
change is small but not zero). ``init="zero_b"`` gives the PEFT choice for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.adapters.base import ConfiguredAdapter, DeltaLayer, site_seed
from interp.sites import Site

INITS: tuple[str, ...] = ("random", "zero_b")


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA options: rank ``r``, ``alpha`` (ΔW is scaled by ``alpha / r``), init mode, seed."""

    rank: int = 8
    alpha: float = 16.0
    init: str = "random"
    init_std: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {list(INITS)}")
        if self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank}")
        if not (math.isfinite(self.alpha) and self.init_std >= 0):
            raise ValueError(f"alpha must be finite and init_std >= 0, got {self.alpha}, {self.init_std}")




class LoRALayer(DeltaLayer):
    """One site's low-rank change ``ΔW(c) = c · (alpha / r) · B A``."""

    def __init__(self, site: Site, linear: nn.Linear, config: LoRAConfig = LoRAConfig()):
        super().__init__()
        self.site = site
        d_out, d_in = linear.weight.shape
        r = config.rank
        if r > min(d_out, d_in):
            raise ValueError(f"rank {r} too large for {site.name} ({d_out}x{d_in}); use rank <= {min(d_out, d_in)}")
        gen = torch.Generator().manual_seed(site_seed(config.seed, site))
        a = torch.randn(r, d_in, generator=gen, dtype=torch.float32, device="cpu") / math.sqrt(d_in)
        b = torch.randn(d_out, r, generator=gen, dtype=torch.float32, device="cpu") * config.init_std
        if config.init == "zero_b":
            b = torch.zeros_like(b)
        # float32 whatever the model's dtype (small updates need the precision), on the model's device
        self.lora_a = nn.Parameter(a.to(linear.weight.device))
        self.lora_b = nn.Parameter(b.to(linear.weight.device))
        self.scaling = float(config.alpha) / r

    def delta(
        self, x: Float[Tensor, "batch pos d_in"], coeff: float | Float[Tensor, " batch"]
    ) -> Float[Tensor, "batch pos d_out"]:
        out = (x.float() @ self.lora_a.T) @ self.lora_b.T
        if isinstance(coeff, Tensor) and coeff.ndim == 1:
            coeff = coeff.to(out.device, out.dtype).view(-1, *([1] * (out.ndim - 1)))
        return (out * (coeff * self.scaling)).to(x.dtype)

    def delta_weight(self, coeff: float) -> Float[Tensor, "d_out d_in"]:
        return (float(coeff) * self.scaling) * (self.lora_b @ self.lora_a)

    def diagnostics(self) -> dict[str, float]:
        with torch.no_grad():
            return {
                "rank": float(self.lora_a.shape[0]),
                "scaling": self.scaling,
                "a_norm": float(self.lora_a.norm()),
                "b_norm": float(self.lora_b.norm()),
                "delta_norm": float(self.delta_weight(1.0).norm()),
            }


class LoRA(ConfiguredAdapter):
    """LoRA layers at several sites, steered by ``c`` like every adapter."""

    name = "lora"
    layer_class = LoRALayer
    config_class = LoRAConfig


def attach(model, sites: Sequence[Site | str], config: LoRAConfig = LoRAConfig()) -> LoRA:
    """Attach a LoRA adapter to ``model`` at ``sites`` (c = 0 until steered)."""
    return LoRA(model, sites, config)
