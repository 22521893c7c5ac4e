"""Backends: one forward-with-intervention entry point per way of running a model, and the model's facts.

:mod:`interp.backends.bridge` (TransformerLens hooks) and :mod:`interp.backends.nnsight` (inside one
nnsight trace, local or remote) implement :class:`~interp.backends.base.Backend`;
:func:`backend_of` gives any model its backend, :func:`run` is the one forward pass with edits.
The backend owns what describes the model, so the site helpers that need its layer count or its
linear layers live here: :func:`select_sites` (the rule of :func:`interp.sites.resolve_sites` on
this model), :func:`linear_of`, :func:`n_layers`.

On the 4-layer ``tiny-random`` model (layers 0..3):

>>> names = lambda sites: [s.name for s in sites]
>>> names(select_sites(model))                       # the default: depth 0.5, the MLP output
['blocks.2.mlp.out']
>>> names(select_sites(model, layers=[1, -1], modules=["attn.o", "mlp.out"]))
['blocks.1.attn.o', 'blocks.1.mlp.out', 'blocks.3.attn.o', 'blocks.3.mlp.out']
>>> names(select_sites(model, regex=r"blocks\\.(1|2)\\.mlp\\.out"))   # a regex alone: over every site
['blocks.1.mlp.out', 'blocks.2.mlp.out']
>>> names(select_sites(model, layers="0:1", regex=r".*\\.mlp\\.(in|out)"))  # regex and layers: both hold
['blocks.0.mlp.in', 'blocks.0.mlp.out', 'blocks.1.mlp.in', 'blocks.1.mlp.out']
>>> names(select_sites(model, spec="layers=0.0,1.0;modules=mlp.in"))  # the CLI form
['blocks.0.mlp.in', 'blocks.3.mlp.in']

The rule: ``layers`` and ``modules`` left out default to depth 0.5 and ``mlp.out``, but only
when no regex is given. A regex alone is matched (``re.fullmatch``) against every site of
the model; ``layers`` or ``modules`` given beside it narrow the candidates, so the result is
the intersection (each criterion given must hold). ``layers=None`` is every layer. Parts of
a ``spec`` string count as the keyword arguments of the same name.

``tests/test_sites.py`` runs these examples (``doctest.testmod``, ``model`` = ``tiny-random``).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Int
from torch import Tensor, nn

from interp.backends.base import Backend, Readout, RemoteUnavailable
from interp.backends.bridge import BridgeBackend
from interp.backends.nnsight import NNsightBackend
from interp.interventions import Edits
from interp.sites import _UNSET, LINEAR_MODULES, LayerSpec, Site, _Unset, resolve_sites

__all__ = ["Backend", "Readout", "RemoteUnavailable", "all_sites", "backend_of", "linear_of", "n_layers", "run",
           "select_sites"]

_ATTR = "_interp_backend"


def backend_of(model) -> Backend:
    """The backend of a bridge, an nnsight model, or a backend (returned as it is); one per model object."""
    if isinstance(model, Backend):
        return model
    found = getattr(model, _ATTR, None)
    if isinstance(found, Backend):
        return found
    backend = NNsightBackend(model) if _is_nnsight(model) else BridgeBackend(model)
    object.__setattr__(model, _ATTR, backend)
    return backend


def _is_nnsight(model) -> bool:
    return type(model).__module__.split(".")[0] == "nnsight"


def run(model, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], edits: Edits = (),
        read: Sequence[str] = ()) -> Readout:
    """:meth:`Backend.run` of ``model``'s backend: the one forward-with-intervention entry point."""
    return backend_of(model).run(tokens, attention_mask, edits, read)


def n_layers(model) -> int:
    """The number of blocks of a model (bridge, nnsight model or backend)."""
    return backend_of(model).n_layers


def all_sites(model) -> list[Site]:
    """Every site of the model: each layer x each of :data:`interp.sites.LINEAR_MODULES`."""
    return [Site(layer, module) for layer in range(n_layers(model)) for module in LINEAR_MODULES]


def select_sites(
    model,
    layers: LayerSpec | None | _Unset = _UNSET,
    modules: Sequence[str] | str | _Unset = _UNSET,
    regex: str | None = None,
    *,
    spec: str | None = None,
) -> list[Site]:
    """The sites of ``model`` that every given criterion selects (:func:`interp.sites.resolve_sites`'s rule),
    each checked to be a linear layer the model has."""
    sites = resolve_sites(n_layers(model), layers, modules, regex, spec=spec)
    for site in sites:
        linear_of(model, site)  # fail now, not at attach time, if the model lacks it
    return sites


def linear_of(model, site: Site | str) -> nn.Linear:
    """The raw Hugging Face ``nn.Linear`` behind a site (the module adapters decompose), on any backend."""
    site = Site.parse(site) if isinstance(site, str) else site
    backend = backend_of(model)
    if not 0 <= site.layer < backend.n_layers:
        raise ValueError(f"layer {site.layer} out of range: the model has layers 0..{backend.n_layers - 1}")
    linear = backend.linear(site)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{site.name} wraps a {type(linear).__name__}, not an nn.Linear; pick another module")
    return linear
