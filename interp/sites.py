"""One vocabulary for places in a model: site name <-> hook points <-> ``nn.Linear``.

A *site* is a linear layer of a transformer block, named by place as TransformerLens
names it: ``blocks.14.mlp.out`` (the MLP down-projection of block 14), ``blocks.3.attn.o``.
Its hook points are ``<name>.hook_in`` / ``<name>.hook_out`` on the bridge; its weight is
the raw Hugging Face ``nn.Linear`` the bridge wraps (``weight`` is [out, in]).

Select sites of a model with :func:`interp.backends.select_sites` (it knows the model's layer
count); :func:`resolve_sites` is the same rule on a layer count alone:

>>> [s.name for s in resolve_sites(4, regex=r"blocks\\.(1|2)\\.mlp\\.out")]
['blocks.1.mlp.out', 'blocks.2.mlp.out']

A depth fraction f in [0, 1] maps to layer ``round(f * (n_layers - 1))``:

>>> depth_to_layer(0.5, 30), parse_layers("0.1:0.2,-1", 30)
(14, [3, 4, 5, 6, 29])

``tests/test_sites.py`` runs these examples (``doctest.testmod``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass


LINEAR_MODULES: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.in", "mlp.out")
DEFAULT_LAYERS: float = 0.5  # what select_sites picks, without a regex, when layers are left out
DEFAULT_MODULES: tuple[str, ...] = ("mlp.out",)
LAYER_FORMS = "layer indices, depth fractions in [0, 1] or bands 'a:b', e.g. '0.5', '10,14', '-1' or '0.1:0.5'"
LayerSpec = float | int | Sequence[float | int] | str


class _Unset(enum.Enum):
    """Marks an argument left out: a regex alone must not be narrowed by the default layers or modules."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "<default>"


_UNSET = _Unset.UNSET


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


def parse_layers(layers: LayerSpec, total: int) -> list[int]:
    """Layers from indices (ints, negative counts from the end) and/or depth fractions (floats).

    In a string, ``a:b`` is a band: every layer from ``a`` to ``b`` inclusive, each end an
    index or a depth fraction (``"0.1:0.5"`` on a 30-layer model is layers 3..14), so a
    band named by depth carries to any model. An empty string (``--layers=``) is an error,
    not "no layers" and not "every layer": it is too easy to pass by accident.
    """
    if isinstance(layers, str):
        parts = layers.replace(",", " ").split()
        if not parts:
            raise ValueError(f"empty layer spec {layers!r}: give {LAYER_FORMS} (or layers=None for every layer)")
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


def check_layer_spec(text: str) -> str:
    """A layer spec string checked for form without a model (the CLI's ``--layers`` type); returned stripped.

    Catches what can be caught before a model is loaded: an empty spec, words that are not
    numbers, fractions outside [0, 1] and malformed bands; indices beyond the model's layers
    are caught by :func:`parse_layers` once the model is known. The ``ValueError`` says the
    valid forms; argparse prefixes it with the option's name.
    """
    parts = text.replace(",", " ").split()
    if not parts:
        raise ValueError(f"empty layer spec {text!r}; give {LAYER_FORMS}, or leave the option out for its default")
    for part in parts:
        ends = part.split(":")
        if len(ends) > 2 or any(not e for e in ends):
            raise ValueError(f"bad layer band {part!r}: write 'start:end', e.g. '0.1:0.5' or '3:14'")
        for end in ends:
            value = _number(end)
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"depth fraction {end!r} must lie in [0, 1]; give {LAYER_FORMS}")
    return text.strip()


def parse_spec(spec: str) -> dict:
    """``"layers=0.5;modules=mlp.out,attn.o"`` or ``"regex=..."`` -> keyword arguments."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("layers", "modules", "regex"):
            raise ValueError(f"bad site spec part {part!r}; use 'layers=...', 'modules=...' or 'regex=...' joined by ';'")
        if not value.strip():
            raise ValueError(f"site spec part {part!r} is empty; give a value, or leave the part out")
        if key == "modules":
            out[key] = [m.strip() for m in value.split(",") if m.strip()]
        else:
            out[key] = value.strip()
    return out


def resolve_sites(
    total: int,
    layers: LayerSpec | None | _Unset = _UNSET,
    modules: Sequence[str] | str | _Unset = _UNSET,
    regex: str | None = None,
    *,
    spec: str | None = None,
) -> list[Site]:
    """The sites of a ``total``-layer model that every given criterion selects, in (layer, module) order (pure).

    * no regex: ``layers`` x ``modules``; left out, they default to :data:`DEFAULT_LAYERS`
      (depth 0.5) and :data:`DEFAULT_MODULES` (``mlp.out``);
    * a regex: the sites whose name the regex matches in full (``re.fullmatch``), among
      ``layers`` x ``modules`` where given, else among every layer and every module: a regex
      alone searches the whole model, and each of ``layers`` / ``modules`` given beside it
      narrows the search (the intersection).

    ``layers=None`` is every layer. ``spec`` (``"layers=0.5;modules=mlp.out"``, the CLI form)
    sets the keyword arguments its parts name. Raises ``ValueError`` naming the bad input and
    the valid choices, also when the selection is empty.
    """
    if spec is not None:
        parsed = parse_spec(spec)
        layers = parsed.get("layers", layers)
        modules = parsed.get("modules", modules)
        regex = parsed.get("regex", regex)
    if regex is None:
        layers = DEFAULT_LAYERS if layers is _UNSET else layers
        modules = DEFAULT_MODULES if modules is _UNSET else modules
    else:
        layers = None if layers is _UNSET else layers
        modules = LINEAR_MODULES if modules is _UNSET else modules
    if isinstance(modules, str):
        modules = [modules]
    if not modules:
        raise ValueError(f"modules is empty; give one or more of {list(LINEAR_MODULES)}")
    unknown = [m for m in modules if m not in LINEAR_MODULES]
    if unknown:
        raise ValueError(f"unknown module(s) {unknown}; valid modules: {list(LINEAR_MODULES)}")
    chosen = list(range(total)) if layers is None else parse_layers(layers, total)
    sites = [Site(layer, module) for layer in chosen for module in modules]
    if not sites:
        raise ValueError(f"layers {layers!r} select no layer; give {LAYER_FORMS}, or layers=None for every layer")
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as err:
            raise ValueError(f"regex {regex!r} is not a valid regular expression ({err})") from err
        matched = [s for s in sites if pattern.fullmatch(s.name)]
        if not matched:
            anywhere = [f"blocks.{i}.{m}" for i in range(total) for m in LINEAR_MODULES if pattern.fullmatch(f"blocks.{i}.{m}")]
            among = f"among layers {chosen} x modules {list(modules)}" if len(sites) < total * len(LINEAR_MODULES) else ""
            if anywhere and among:
                raise ValueError(f"regex {regex!r} matches no site {among} (it matches {anywhere[:4]} outside them); "
                                 "a regex beside layers or modules selects the sites all of them allow")
            raise ValueError(f"regex {regex!r} matches no site; it must match a whole site name such as "
                             f"'blocks.0.mlp.out' (layers 0..{total - 1}, modules {list(LINEAR_MODULES)})")
        sites = matched
    return sites


def site_hook(site: Site | str) -> str:
    """A hook name for a site: a :class:`Site` or a bare site name (``blocks.3.mlp.out``) means
    its Linear's output (``<name>.hook_out``); hook names pass through."""
    if isinstance(site, Site):
        return site.hook_out
    if not isinstance(site, str) or not site.startswith("blocks."):
        raise ValueError(f"a site is a Site or a hook name like 'blocks.3.hook_resid_post', got {site!r}")
    if ".hook_" not in site:
        return Site.parse(site).hook_out
    return site
