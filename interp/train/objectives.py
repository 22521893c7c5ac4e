"""What training optimises: one class per objective, chosen by ``TrainConfig.objective``.

* :class:`ReprPO` -- hidden states of a pair separated along the frozen preference direction,
  under the coherence and ordering terms (:func:`interp.train.step.step_loss`).
* :class:`Distill` -- at ``c = ±1`` the steered model predicts what the model prompted with the
  other persona predicts (:func:`interp.train.step.distill_loss`).
* :class:`Preference` -- at a coefficient drawn from ``[-1, 1]`` per row, the steered model's
  preference for the chosen persona's own completion over the rejected persona's, relative to
  the base model, moves with the coefficient (:func:`interp.losses.preference_loss`, BiPO's
  bidirectional reference ratio with RePS's length normalisation and sampled factors), under a
  KL barrier (:func:`interp.losses.kl_barrier`).

An objective sees one step (:class:`StepInputs`) and returns the loss and its parts as floats; the
loop (:mod:`interp.train.loop`) is the same for every objective. ``fixes_sign``: whether ``+c``
means "the chosen persona" by construction (else the loop sets the orientation from the
training separation, ReprPO's guard).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from interp.backends import backend_of, run
from interp.data import ContrastivePair, PairBatch, batch_indices
from interp.losses import completion_logprob, kl_barrier, kl_rows, preference_loss
from interp.train.completions import Completions, pair_key, persona_completions, preference_batch
from interp.train.config import TrainConfig
from interp.train.step import distill_loss, step_loss


@dataclass(frozen=True)
class StepInputs:
    """One optimiser step's data and the run's fixed quantities."""

    pairs: Sequence[ContrastivePair]
    batch: PairBatch
    step: int
    direction: Float[Tensor, " k"]
    scale: Tensor | float
    hook: str
    U: Tensor | None
    prior: float  # the separation summed over earlier steps (ReprPO's guard)


class Objective(ABC):
    """A training objective: prepared once per run, then a loss per step."""

    name: ClassVar[str]
    fixes_sign: ClassVar[bool] = True

    def __init__(self, config: TrainConfig):
        self.config = config

    def prepare(self, model, train_pairs: Sequence[ContrastivePair], progress: bool = False) -> None:
        """Whatever the objective needs before the first step (default: nothing)."""

    @abstractmethod
    def loss(self, model, adapter, inputs: StepInputs) -> tuple[Float[Tensor, ""], dict]:
        """The step's loss (differentiable in the adapter) and its parts as floats."""


class ReprPO(Objective):
    name = "reprpo"
    fixes_sign = False

    def loss(self, model, adapter, inputs: StepInputs) -> tuple[Float[Tensor, ""], dict]:
        return step_loss(model, adapter, inputs.batch, inputs.direction, inputs.scale, self.config, hook=inputs.hook,
                         U=inputs.U, prior=inputs.prior)


class Distill(Objective):
    name = "distill"

    def loss(self, model, adapter, inputs: StepInputs) -> tuple[Float[Tensor, ""], dict]:
        return distill_loss(model, adapter, inputs.batch, self.config)


class Preference(Objective):
    name = "preference"

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.completions: Completions = {}

    def prepare(self, model, train_pairs: Sequence[ContrastivePair], progress: bool = False) -> None:
        """The personas' completions of every pair a step will draw (generated once, cached per model)."""
        c = self.config
        drawn = {i for step in range(c.steps) for i in batch_indices(len(train_pairs), c.batch_size, step, c.seed)}
        self.complete(model, [train_pairs[i] for i in sorted(drawn)], progress)

    def complete(self, model, pairs: Sequence[ContrastivePair], progress: bool = False) -> None:
        """Add the completions of ``pairs`` this objective does not hold yet."""
        c = self.config
        missing = [p for p in pairs if pair_key(p, c.system) not in self.completions]
        if missing:
            self.completions.update(persona_completions(model, missing, concept=c.concept, tokens=c.completion_tokens,
                                                        system=c.system, max_length=c.max_length, progress=progress))

    def loss(self, model, adapter, inputs: StepInputs) -> tuple[Float[Tensor, ""], dict]:
        c = self.config
        pairs = [p for p in inputs.pairs if _differ(self.completions[pair_key(p, c.system)])]
        if not pairs:  # the personas wrote the same text for every pair of this batch: nothing to prefer
            zero = sum(p.sum() * 0.0 for p in adapter.parameters())
            return zero, {"loss": 0.0, "preference": 0.0, "barrier": 0.0, "margin": 0.0, "separation": 0.0,
                          "coherence": 0.0, "ordering": 0.0}
        n = len(pairs)
        gen = torch.Generator().manual_seed(c.seed * 100_003 + inputs.step)  # a pure function of (seed, step): resumable
        context_coeff = torch.rand(2 * n, generator=gen) * 2 - 1  # one per (pair, persona context)
        lp, lp_ref, coeff, kl = self.logprobs(model, adapter, pairs, context_coeff)
        pos, neg = _sides(n, lp.device)
        pref = preference_loss(lp[pos], lp[neg], lp_ref[pos], lp_ref[neg], coeff[pos], c.preference_beta)
        barrier = kl_barrier(kl, coeff, c.kl_allowed)
        loss = pref + barrier
        margin = ((lp[pos] - lp_ref[pos]) - (lp[neg] - lp_ref[neg])).detach()
        agree = float((margin * coeff[pos]).sum() / coeff[pos].abs().sum().clamp_min(1e-8))  # c-weighted margin
        return loss, {"loss": float(loss.detach()), "preference": float(pref.detach()), "barrier": float(barrier.detach()),
                      "margin": agree, "kl": float(kl.mean().detach()), "separation": agree, "coherence": 0.0,
                      "ordering": 0.0}

    def logprobs(self, model, adapter, pairs: Sequence[ContrastivePair], context_coeff: Float[Tensor, " contexts"]):
        """Per row of :func:`~interp.train.completions.preference_batch` (``pairs``' two contexts, each with ``y+`` and
        ``y−``): the completion's mean log-probability per token steered at the row's context coefficient
        (``context_coeff``: the chosen contexts' then the rejected contexts'), the same at ``c = 0``, the row
        coefficients, and the row's next-token KL to the base model."""
        backend = backend_of(model)
        batch = preference_batch(backend.tokenizer, pairs, self.completions, system=self.config.system,
                                 max_length=self.config.max_length).to(backend.device)
        n, cc = batch.n, context_coeff.to(backend.device)
        coeff = torch.cat([cc[:n], cc[:n], cc[n:], cc[n:]])
        with torch.no_grad():
            ref = run(model, batch.tokens, batch.attention_mask).logits
        steered = run(model, batch.tokens, batch.attention_mask, adapter.edits(coeff)).logits
        lp, lp_ref = (completion_logprob(x, batch.tokens, batch.completion) for x in (steered, ref))
        return lp, lp_ref, coeff, kl_rows(ref, steered, batch.attention_mask.bool())

    def margins(self, model, adapter, pairs: Sequence[ContrastivePair], coeff: float) -> Float[Tensor, " rows"]:
        """Per pair and context, the steered model's preference margin at ``coeff`` relative to the base model:
        ``(log p_c(y+) − log p_0(y+)) − (log p_c(y−) − log p_0(y−))`` in nats per token."""
        self.complete(model, pairs)
        with torch.no_grad():
            lp, lp_ref, _, _ = self.logprobs(model, adapter, pairs, torch.full((2 * len(pairs),), float(coeff)))
        pos, neg = _sides(len(pairs), lp.device)
        return (lp[pos] - lp_ref[pos]) - (lp[neg] - lp_ref[neg])


def _sides(n: int, device) -> tuple[Tensor, Tensor]:
    """Rows ending in ``y+`` (chosen and rejected contexts) and the same contexts' rows ending in ``y−``."""
    pos = torch.cat([torch.arange(0, n), torch.arange(2 * n, 3 * n)]).to(device)
    return pos, pos + n


def _differ(pair_completions: tuple[list[int], list[int]]) -> bool:
    pos, neg = pair_completions
    return len(pos) > 0 and len(neg) > 0 and pos != neg


REGISTRY: dict[str, type[Objective]] = {cls.name: cls for cls in (ReprPO, Distill, Preference)}  # keys: config.OBJECTIVES


def objective_of(config: TrainConfig) -> Objective:
    """The objective ``config.objective`` names, built for ``config``."""
    return REGISTRY[config.objective](config)
