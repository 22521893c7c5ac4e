"""What every backend offers: one forward pass with interventions, and the model's facts.

A *backend* runs a batch of token ids through a model with the edits of
:mod:`interp.interventions` applied and returns the read-outs asked for
(:class:`Readout`: logits and the activations at named hook points). Everything that runs
a model in this project -- training, evaluation, calibration, collection, baselines,
analyses, generation -- calls :func:`run` (or, for a decoding loop, :meth:`Backend.applied`),
so each backend has exactly one forward-with-intervention path.

It also owns what describes the model: tokenizer, spec, device, dtype, layer count,
width, the linear layer at a site, and the hash of its weights (computed once, at the
first request; :meth:`Backend.weights_changed` forgets it after a merge).

``model`` arguments across the library are a TransformerBridge (what
:func:`interp.models.load_model` returns), an nnsight model, or a backend itself;
:func:`interp.backends.backend_of` turns any of them into its backend (one per model object, kept on it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from interp.interventions import Edits
from interp.provenance import model_weight_hash
from interp.sites import Site

_ATTR = "_interp_backend"


@dataclass
class Readout:
    """What a forward pass returns: logits ``[batch, pos, vocab]`` and ``{hook name: activations}``."""

    logits: Float[Tensor, "batch pos vocab"]
    states: dict[str, Tensor] = field(default_factory=dict)


class RemoteUnavailable(RuntimeError):
    """What a remote (NDIF) run needs is missing here: a key, the network, a served model, or weights held locally."""


class Backend:
    """A model behind one forward-with-intervention entry point (see the module docstring)."""

    name: str = "backend"

    # ------------------------------------------------------------------ facts

    @property
    def tokenizer(self):
        raise NotImplementedError

    @property
    def spec(self) -> str:
        raise NotImplementedError

    @property
    def n_layers(self) -> int:
        raise NotImplementedError

    @property
    def d_model(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def parameters(self) -> Iterator[nn.Parameter]:
        """The model's own parameters (adapters freeze them while attached)."""
        raise NotImplementedError

    def linear(self, site: Site) -> nn.Linear:
        """The raw Hugging Face linear layer at ``site`` (what adapters decompose and hook)."""
        raise NotImplementedError

    def hf_model(self) -> nn.Module:
        """The underlying Hugging Face model (for weight hashes and exports)."""
        raise NotImplementedError

    @property
    def weight_hash(self) -> str:
        """:func:`interp.provenance.model_weight_hash` of the model, computed once."""
        cached = getattr(self, "_weight_hash", None)
        if cached is None:
            cached = self._weight_hash = model_weight_hash(self.hf_model())
        return cached

    def weights_changed(self) -> None:
        """Forget the cached weight hash (after weights were edited in place, e.g. a merge)."""
        self._weight_hash = None

    # ------------------------------------------------------------------ running

    def run(self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], edits: Edits = (),
            read: Sequence[str] = ()) -> Readout:
        """One forward pass with ``edits`` applied, reading the activations at the hook names in ``read``.

        Activations read at a place an edit changes are read after the change. Gradients
        flow when the caller has them enabled (training runs through here).
        """
        raise NotImplementedError

    @contextmanager
    def applied(self, edits: Edits) -> Iterator[None]:
        """``edits`` installed on the model for the block (for code that calls the model itself)."""
        raise NotImplementedError
        yield

    def decode(self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], edits: Edits, config,
               *, eos: Sequence[int], generator: torch.Generator | None = None, seed: int = 0,
               progress: bool = False) -> tuple[Int[Tensor, "batch new"], Int[Tensor, " batch"]]:
        """Continue left-padded prompts with ``edits`` applied, KV-cached (``config``: an
        :class:`interp.backends.decoding.GenerateConfig`); ``(new tokens, lengths)`` as :func:`interp.backends.decoding.decode`."""
        raise NotImplementedError
