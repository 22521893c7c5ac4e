"""One vocabulary for places in a model: site name <-> hook points <-> ``nn.Linear``.

A *site* is a linear layer of a transformer block, named by place as TransformerLens
names it: ``blocks.14.mlp.out`` (the MLP down-projection of block 14), ``blocks.3.attn.o``.
Its hook points are ``<name>.hook_in`` / ``<name>.hook_out`` on the bridge; its weight is
the raw Hugging Face ``nn.Linear`` the bridge wraps (``weight`` is [out, in]).

Select sites with :func:`select_sites`::

    select_sites(model, layers=0.5, modules=["mlp.out"])      # depth fraction
    select_sites(model, layers=[10, 14], modules=["attn.o", "mlp.out"])
    select_sites(model, regex=r"blocks\\.(1|2)\\.attn\\.o")
    select_sites(model, spec="layers=0.3,0.5;modules=mlp.out")  # the CLI form

A depth fraction f in [0, 1] maps to layer ``round(f * (n_layers - 1))``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

LINEAR_MODULES: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.in", "mlp.out")


@dataclass(frozen=True, order=True)
class Site:
    """A linear layer in block ``layer``; ``module`` is one of :data:`LINEAR_MODULES`."""

    layer: int
    module: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.module}"

    @property
    def hook_in(self) -> str:
        return f"{self.name}.hook_in"

    @property
    def hook_out(self) -> str:
        return f"{self.name}.hook_out"

    @classmethod
    def parse(cls, name: str) -> Site:
        """``"blocks.14.mlp.out"`` (or one of its hook names) -> ``Site(14, "mlp.out")``."""
        m = re.fullmatch(r"blocks\.(\d+)\.(.+?)(\.hook_(?:in|out))?", name.strip())
        if not m or m.group(2) not in LINEAR_MODULES:
            raise ValueError(
                f"not a site name: {name!r}; expected 'blocks.<layer>.<module>' with module one of {list(LINEAR_MODULES)}"
            )
        return cls(int(m.group(1)), m.group(2))


def n_layers(model) -> int:
    """The number of blocks of a model (bridge, nnsight model or backend)."""
    from interp.backends import backend_of

    return backend_of(model).n_layers


def resid_hook(layer: int) -> str:
    """The residual stream after block ``layer`` (alias of ``blocks.N.hook_out``)."""
    return f"blocks.{layer}.hook_resid_post"


def depth_to_layer(fraction: float, total: int) -> int:
    """Depth fraction in [0, 1] -> layer index ``round(f * (total - 1))``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"depth fraction must lie in [0, 1], got {fraction}")
    return int(round(fraction * (total - 1)))


def depth_spec(fraction: float) -> str:
    """A depth fraction as :func:`parse_layers` reads it back as a fraction: ``1.0`` is written
    ``"1.0"`` (``"1"`` would be layer index 1); 0 stays ``"0"`` (index 0 is depth 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"depth fraction must lie in [0, 1], got {fraction}")
    return "1.0" if fraction == 1.0 else f"{fraction:g}"


def parse_layers(layers: float | int | Sequence[float | int] | str, total: int) -> list[int]:
    """Layers from indices (ints, negative counts from the end) and/or depth fractions (floats).

    In a string, ``a:b`` is a band: every layer from ``a`` to ``b`` inclusive, each end an
    index or a depth fraction (``"0.1:0.5"`` on a 30-layer model is layers 3..14), so a
    band named by depth carries to any model.
    """
    if isinstance(layers, str):
        parts = layers.replace(",", " ").split()
        layers = []
        for part in parts:
            if ":" in part:
                lo, sep, hi = part.partition(":")
                if not lo or not hi or ":" in hi:
                    raise ValueError(f"bad layer band {part!r}: write 'start:end', e.g. '0.1:0.5' or '3:14'")
                a, b = (parse_layers([_number(x)], total)[0] for x in (lo, hi))
                if a > b:
                    raise ValueError(f"layer band {part!r} runs backwards (layers {a} > {b})")
                layers.extend(range(a, b + 1))
            else:
                layers.append(_number(part))
    if isinstance(layers, (int, float)):
        layers = [layers]
    out: list[int] = []
    for item in layers:
        if isinstance(item, bool):
            raise ValueError(f"bad layer {item!r}")
        if isinstance(item, float):
            idx = depth_to_layer(item, total)
        elif isinstance(item, int):
            idx = item + total if item < 0 else item
            if not 0 <= idx < total:
                raise ValueError(f"layer {item} out of range: the model has layers 0..{total - 1}")
        else:
            raise ValueError(f"bad layer {item!r}: use an int index or a float depth fraction in [0, 1]")
        if idx not in out:
            out.append(idx)
    return sorted(out)


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"bad layer {text!r}: use an int index or a float depth fraction in [0, 1]") from None


def parse_spec(spec: str) -> dict:
    """``"layers=0.5;modules=mlp.out,attn.o"`` or ``"regex=..."`` -> keyword arguments."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("layers", "modules", "regex"):
            raise ValueError(f"bad site spec part {part!r}; use 'layers=...', 'modules=...' or 'regex=...' joined by ';'")
        if key == "modules":
            out[key] = [m.strip() for m in value.split(",") if m.strip()]
        else:
            out[key] = value.strip()
    return out


def all_sites(model) -> list[Site]:
    return [Site(layer, module) for layer in range(n_layers(model)) for module in LINEAR_MODULES]


def select_sites(
    model,
    layers: float | int | Sequence[float | int] | str | None = 0.5,
    modules: Sequence[str] = ("mlp.out",),
    regex: str | None = None,
    *,
    spec: str | None = None,
) -> list[Site]:
    """Sites by layers (indices or depth fractions) x modules, optionally filtered by a regex.

    ``layers=None`` means every layer. Raises ``ValueError`` listing the valid choices.
    """
    if spec is not None:
        parsed = parse_spec(spec)
        layers = parsed.get("layers", layers if "regex" not in parsed else None)
        modules = parsed.get("modules", modules)
        regex = parsed.get("regex", regex)
    if isinstance(modules, str):
        modules = [modules]
    unknown = [m for m in modules if m not in LINEAR_MODULES]
    if unknown:
        raise ValueError(f"unknown module(s) {unknown}; valid modules: {list(LINEAR_MODULES)}")
    total = n_layers(model)
    chosen = range(total) if layers is None else parse_layers(layers, total)
    sites = [Site(layer, module) for layer in chosen for module in modules]
    if regex is not None:
        pattern = re.compile(regex)
        sites = [s for s in (all_sites(model) if layers is None else sites) if pattern.fullmatch(s.name)]
        if not sites:
            raise ValueError(f"regex {regex!r} matches no site; site names look like 'blocks.0.mlp.out' (layers 0..{total - 1})")
    for site in sites:
        linear_of(model, site)  # fail now, not at attach time, if the model lacks it
    return sites


def linear_of(model, site: Site | str) -> nn.Linear:
    """The raw Hugging Face ``nn.Linear`` behind a site (the module adapters decompose), on any backend."""
    from interp.backends import backend_of

    site = Site.parse(site) if isinstance(site, str) else site
    backend = backend_of(model)
    if not 0 <= site.layer < backend.n_layers:
        raise ValueError(f"layer {site.layer} out of range: the model has layers 0..{backend.n_layers - 1}")
    linear = backend.linear(site)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{site.name} wraps a {type(linear).__name__}, not an nn.Linear; pick another module")
    return linear
