"""Interventions as values: what a steering method does to a forward pass at a coefficient.

A fitted method describes itself at ``c`` as a tuple of *edits* (:meth:`SteeringMethod.edits`),
plain values that name a place in the model and what to add there; a backend
(:mod:`interp.backends`: the TransformerBridge, nnsight locally or on NDIF) executes them.
So one forward-with-intervention per backend serves training, evaluation, calibration,
collection and generation, and no backend needs to know which method made the edits.

* :class:`AddToResidual` -- ``coeff · vector`` added to the residual stream after block
  ``layer`` (``blocks.L.hook_resid_post``) at every position: steering vectors.
* :class:`WeightDelta` -- ``x ΔW(coeff)ᵀ`` added to the output of the linear layer at
  ``site`` (``layer`` is the adapter's :class:`~interp.adapters.base.DeltaLayer`, whose
  ``delta`` is differentiable, so training runs through the same edits).

* :class:`AtHook` -- any function of the activations at a TransformerLens hook point
  (bridge only): synthetic methods with known answers in tests, one-off probes.

Prompting changes the chat instead (:meth:`SteeringMethod.messages`) and has no edits.

``coeff`` is what the maths uses (orientation already applied): a float, or a ``[batch]``
tensor of one coefficient per row. The contract ``edits(0) == ()`` (c = 0 is the base
model, with nothing installed) is checkable without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from jaxtyping import Float
from torch import Tensor

from interp.sites import Site, resid_hook

if TYPE_CHECKING:
    from interp.adapters.base import DeltaLayer

Coeff = Union[float, Float[Tensor, " batch"]]


@dataclass(frozen=True, eq=False)
class AddToResidual:
    """Add ``coeff · vector`` to ``blocks.<layer>.hook_resid_post`` at every position."""

    layer: int
    vector: Float[Tensor, " d_model"]
    coeff: Coeff

    @property
    def hook(self) -> str:
        return resid_hook(self.layer)


@dataclass(frozen=True, eq=False)
class WeightDelta:
    """Add ``x ΔW(coeff)ᵀ`` to the output of the linear layer at ``site`` (``layer.delta(x, coeff)``)."""

    site: Site
    layer: "DeltaLayer"
    coeff: Coeff


@dataclass(frozen=True, eq=False)
class AtHook:
    """Replace the activations at the TransformerLens hook point ``hook`` by ``fn(activations)`` (bridge only)."""

    hook: str
    fn: Callable[[Tensor], Tensor]


Edit = Union[AddToResidual, WeightDelta, AtHook]
# Set by an attached adapter on each Linear it adapts, to the site's DeltaLayer: a backend
# applies a WeightDelta only where its layer is attached, and two adapters never stack.
ADAPTED = "_interp_adapter"
Edits = tuple[Edit, ...]


def is_zero(coeff: Coeff) -> bool:
    """Whether ``coeff`` is 0 everywhere (then a method has no edits)."""
    if isinstance(coeff, Tensor):
        return not bool(coeff.any())
    return float(coeff) == 0.0
