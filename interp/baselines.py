"""Baseline steering methods on the same interface as InnerPiSSA.

Every method here is a :class:`~interp.steering.SteeringMethod`: fitted once on the same
contrastive pairs and layers as the adapters, then applied with a coefficient ``c``
(``c = 0`` is the untouched model; a ``[batch]`` tensor gives one coefficient per row).

* :class:`PromptSteering` -- a system instruction to be honest (``c > 0``) or dishonest
  (``c < 0``); nothing at ``c = 0``.
* :class:`MeanDiff` -- CAA-style: the mean of chosen-minus-rejected last-token hidden
  states, added to ``blocks.L.hook_resid_post`` scaled by ``c``.
* :class:`PCASteering` -- repeng's ``pca_diff``: the first principal component of the
  chosen-minus-rejected differences (centred, as sklearn's PCA in repeng does), signed so
  that ``+c`` raises the projection of the chosen states, and scaled to the norm of the
  mean-difference vector of the same layer, so that ``c = 1`` moves the residual stream
  as far as mean-diff at ``c = 1`` does.
* :class:`RandomDirection` -- a seeded random direction with the PCA vector's norm
  (the "any push of this size" control).

The maths are pure functions on tensors (:func:`mean_diff_direction`,
:func:`pca_direction`, :func:`random_direction`); :func:`last_token_hidden` is the thin
shell that reads last-token residual states from a model. Vector methods expose
``vectors: dict[int, Tensor]`` (layer -> ``[d_model]``) so other backends (nnsight) can
apply them.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends import backend_of, run
from interp.data import last_token_index
from interp.sites import resid_hook
from interp.interventions import AddToResidual, Edits, is_zero
from interp.steering import check_coeff, Coeff, Messages, SteeringMethod
from interp.backends import linear_of
from interp.geometry import left_singular_basis
from interp.sites import Site

# --------------------------------------------------------------------------- pure maths


def _check_pairs(h_cho: Tensor, h_rej: Tensor) -> None:
    if h_cho.ndim != 2 or h_cho.shape != h_rej.shape:
        raise ValueError(
            f"chosen and rejected hidden states must both be [n_pairs, d_model] with the same shape, "
            f"got {tuple(h_cho.shape)} and {tuple(h_rej.shape)}"
        )
    if h_cho.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs to fit a direction, got {h_cho.shape[0]}")


def mean_diff_direction(
    h_cho: Float[Tensor, "n d_model"], h_rej: Float[Tensor, "n d_model"]
) -> Float[Tensor, " d_model"]:
    """Mean of ``chosen - rejected`` (CAA). Not normalised: its norm is the typical gap."""
    _check_pairs(h_cho, h_rej)
    return (h_cho.double() - h_rej.double()).mean(0).to(h_cho.dtype)


def pca_direction(
    h_cho: Float[Tensor, "n d_model"], h_rej: Float[Tensor, "n d_model"], *, center: bool = True
) -> Float[Tensor, " d_model"]:
    """Unit first principal component of the pair differences, signed toward ``chosen``.

    ``center=True`` reproduces repeng's ``pca_diff`` (sklearn's PCA subtracts the mean
    difference before the SVD, so the component is the main axis along which the pairs
    *vary*); ``center=False`` is the uncentred first singular vector, which follows the
    mean difference when the pairs agree. The sign is repeng's rule: the direction for
    which more pairs have ``proj(chosen) > proj(rejected)``; ties go to the sign of the
    mean projected gap.
    """
    _check_pairs(h_cho, h_rej)
    diff = h_cho.double() - h_rej.double()
    train = diff - diff.mean(0, keepdim=True) if center else diff
    # Full SVD in float64: n_pairs x d_model is small, and float64 keeps the component stable.
    _, _, vh = torch.linalg.svd(train, full_matrices=False)
    direction = vh[0]
    gap = diff @ direction  # proj(chosen) - proj(rejected), per pair
    larger = (gap > 0).double().mean()
    smaller = (gap < 0).double().mean()
    if smaller > larger or (smaller == larger and gap.mean() < 0):
        direction = -direction
    return direction.to(h_cho.dtype)


def random_direction(dim: int, norm: float, seed: int) -> Float[Tensor, " dim"]:
    """A uniformly random direction in ``R^dim`` with length ``norm``, fixed by ``seed``."""
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    if not norm >= 0:
        raise ValueError(f"norm must be non-negative, got {norm}")
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (v / v.norm() * norm).float()


# --------------------------------------------------------------------------- I/O shell


@torch.no_grad()
def last_token_hidden(
    model,
    tokens: Int[Tensor, "n pos"],
    attention_mask: Int[Tensor, "n pos"],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, Float[Tensor, "n d_model"]]:
    """Last-token residual stream after each block in ``layers`` (``blocks.L.hook_resid_post``).

    ``tokens`` are already chat-templated ids (no BOS is added); padding may be on
    either side. Returns float32 CPU tensors, one ``[n, d_model]`` per layer.
    """
    if tokens.shape != attention_mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    backend = backend_of(model)
    bad = [L for L in layers if not 0 <= L < backend.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)} invalid: choose from 0..{backend.n_layers - 1}")
    out: dict[int, list[Tensor]] = {L: [] for L in layers}
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="hidden states", disable=not progress, leave=False):
        ids, mask = tokens[start : start + batch_size], attention_mask[start : start + batch_size]
        states = run(backend, ids, mask, read=[resid_hook(L) for L in layers]).states
        for L in layers:
            x = states[resid_hook(L)]
            out[L].append(x[torch.arange(x.shape[0], device=x.device), last_token_index(mask).to(x.device)].float().cpu())
    return {L: torch.cat(out[L]) for L in layers}


class VectorSteering(SteeringMethod):
    """Adds ``c * vectors[L]`` to the residual stream after block ``L`` at every position."""

    name = "vector"

    def __init__(self, vectors: Mapping[int, Tensor], *, model_spec: str | None = None, options: dict | None = None):
        if not vectors:
            raise ValueError("a steering-vector method needs at least one layer vector")
        dims = {int(v.shape[-1]) for v in vectors.values()}
        if len(dims) != 1 or any(v.ndim != 1 for v in vectors.values()):
            raise ValueError(f"vectors must all be 1-d [d_model] of one size, got shapes {[tuple(v.shape) for v in vectors.values()]}")
        self.vectors: dict[int, Tensor] = {int(L): v.detach().float().clone() for L, v in sorted(vectors.items())}
        self.model_spec = model_spec
        self.options = dict(options or {})

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    def edits(self, coeff: Coeff) -> Edits:
        c = self.effective(coeff)
        if is_zero(c):
            return ()  # c = 0 is the untouched model: nothing to install
        return tuple(AddToResidual(L, v, c) for L, v in self.vectors.items())

    def norms(self) -> dict[int, float]:
        return {L: float(v.norm()) for L, v in self.vectors.items()}

    # a steering vector is a value: scaling, negating and adding give new vectors of the same kind (orientation
    # applied, calibration dropped: the result is a new method and is calibrated on its own)

    def _like(self, vectors: Mapping[int, Tensor], **options) -> VectorSteering:
        out = VectorSteering.__new__(type(self))
        VectorSteering.__init__(out, vectors, model_spec=self.model_spec, options={**self.options, **options})
        return out

    def __mul__(self, scale: float) -> VectorSteering:
        """The vectors times ``scale`` (``method * c`` steers at ``c`` where ``method`` steered at 1)."""
        scale = float(check_coeff(scale))
        return self._like({L: v * (scale * self.orientation) for L, v in self.vectors.items()},
                          scale=scale * float(self.options.get("scale", 1.0)))

    __rmul__ = __mul__

    def __neg__(self) -> VectorSteering:
        return self * -1.0

    def __add__(self, other: VectorSteering) -> VectorSteering:
        """Layer-wise sum (a layer only one side has keeps its vector)."""
        if not isinstance(other, VectorSteering):
            return NotImplemented
        mine = {L: v * self.orientation for L, v in self.vectors.items()}
        for L, v in other.vectors.items():
            mine[L] = mine[L] + v * other.orientation if L in mine else v * other.orientation
        return self._like(mine, sum_of=[self.name, other.name])

    def __sub__(self, other: VectorSteering) -> VectorSteering:
        return self + (-other)

    def config(self) -> dict:
        return {
            **super().config(),
            "model_spec": self.model_spec,
            "layers": self.layers,
            "norms": {str(L): n for L, n in self.norms().items()},
            "options": self.options,
            "calibration": self.calibration,  # set by interp.calibrate
        }

    @classmethod
    def from_hidden(cls, h_cho: Mapping[int, Tensor], h_rej: Mapping[int, Tensor], **kwargs) -> VectorSteering:
        """Fit from per-layer hidden states (``{layer: [n_pairs, d_model]}``)."""
        raise NotImplementedError

    @classmethod
    def fit(
        cls,
        model,
        chosen: tuple[Tensor, Tensor],
        rejected: tuple[Tensor, Tensor],
        layers: Sequence[int],
        *,
        batch_size: int = 16,
        **kwargs,
    ) -> VectorSteering:
        """Fit on token batches: ``chosen`` and ``rejected`` are ``(tokens, attention_mask)``, row i paired."""
        if chosen[0].shape[0] != rejected[0].shape[0]:
            raise ValueError(f"{chosen[0].shape[0]} chosen rows but {rejected[0].shape[0]} rejected rows")
        h_cho = last_token_hidden(model, *chosen, layers, batch_size=batch_size)
        h_rej = last_token_hidden(model, *rejected, layers, batch_size=batch_size)
        return cls.from_hidden(h_cho, h_rej, model_spec=getattr(model, "spec", None), **kwargs)

    @classmethod
    def fit_pairs(cls, model, batch, layers: Sequence[int], *, batch_size: int = 16, **kwargs) -> VectorSteering:
        """Fit on an :class:`interp.data.PairBatch` (rows ``0..n-1`` chosen, ``n..2n-1`` rejected)."""
        n = batch.tokens.shape[0] // 2
        if batch.tokens.shape[0] != 2 * n or n == 0:
            raise ValueError(f"a pair batch has an even, non-zero number of rows, got {batch.tokens.shape[0]}")
        ids, mask = batch.tokens, batch.attention_mask
        return cls.fit(model, (ids[:n], mask[:n]), (ids[n:], mask[n:]), layers, batch_size=batch_size, **kwargs)


class MeanDiff(VectorSteering):
    """CAA-style mean difference of chosen minus rejected last-token states, per layer."""

    name = "mean_diff"

    @classmethod
    def from_hidden(cls, h_cho, h_rej, *, model_spec: str | None = None) -> MeanDiff:
        _same_layers(h_cho, h_rej)
        return cls({L: mean_diff_direction(h_cho[L], h_rej[L]) for L in h_cho}, model_spec=model_spec)


class PCASteering(VectorSteering):
    """repeng-style ``pca_diff`` direction, scaled to the mean-diff norm of its layer.

    Scale: ``||mean_diff_direction||`` per layer, so ``c = 1`` pushes the residual
    stream as far as :class:`MeanDiff` at ``c = 1`` (only the direction differs).
    """

    name = "pca"

    @classmethod
    def from_hidden(cls, h_cho, h_rej, *, model_spec: str | None = None, center: bool = True) -> PCASteering:
        _same_layers(h_cho, h_rej)
        vectors = {
            L: pca_direction(h_cho[L], h_rej[L], center=center) * mean_diff_direction(h_cho[L], h_rej[L]).norm()
            for L in h_cho
        }
        return cls(vectors, model_spec=model_spec, options={"center": center, "scale": "mean_diff_norm"})


class SSpaceMeanDiff(VectorSteering):
    """The mean difference kept only within a residual writer's singular basis, per layer.

    At layer ``L`` the vector is ``U_r U_rᵀ m_L``: the mean difference ``m_L`` projected on
    the top-``r`` left singular vectors of that layer's ``module`` weight (raw HF weight,
    ``[d_model, d_in]``; its output is the residual stream), which is where an InnerPiSSA
    adapter on that site can write. Against :class:`MeanDiff` and the trained adapter it
    separates what the basis does from what the learned rotation does.
    """

    name = "s_mean_diff"

    @classmethod
    def fit(cls, model, chosen, rejected, layers, *, batch_size: int = 16, rank: int = 64,
            module: str = "mlp.out") -> SSpaceMeanDiff:

        if chosen[0].shape[0] != rejected[0].shape[0]:
            raise ValueError(f"{chosen[0].shape[0]} chosen rows but {rejected[0].shape[0]} rejected rows")
        h_cho = last_token_hidden(model, *chosen, layers, batch_size=batch_size)
        h_rej = last_token_hidden(model, *rejected, layers, batch_size=batch_size)
        vectors = {}
        for L in h_cho:
            W = linear_of(model, Site(L, module)).weight
            if W.shape[0] != h_cho[L].shape[1]:
                raise ValueError(f"{module} at layer {L} does not write to the residual stream (weight {tuple(W.shape)}); "
                                 "use attn.o or mlp.out")
            U = left_singular_basis(W, rank)
            m = mean_diff_direction(h_cho[L], h_rej[L]).double()
            vectors[L] = (U @ (U.T @ m.to(U.device))).float()
        return cls(vectors, model_spec=getattr(model, "spec", None), options={"rank": rank, "module": module})


class RandomDirection(VectorSteering):
    """A seeded random direction per layer with the norm of that layer's PCA vector.

    Layer ``L`` uses seed ``seed + L``, so the layers' directions are independent.
    """

    name = "random"

    @classmethod
    def from_hidden(cls, h_cho, h_rej, *, model_spec: str | None = None, seed: int = 0) -> RandomDirection:
        _same_layers(h_cho, h_rej)
        # The PCA vector's norm is the mean-diff norm by construction (see PCASteering).
        vectors = {
            L: random_direction(h_cho[L].shape[1], float(mean_diff_direction(h_cho[L], h_rej[L]).norm()), seed + L)
            for L in h_cho
        }
        return cls(vectors, model_spec=model_spec, options={"seed": seed})


def _same_layers(h_cho: Mapping[int, Tensor], h_rej: Mapping[int, Tensor]) -> None:
    if set(h_cho) != set(h_rej) or not h_cho:
        raise ValueError(f"chosen layers {sorted(h_cho)} and rejected layers {sorted(h_rej)} must match and be non-empty")


@dataclass(frozen=True)
class PromptWording:
    """System instructions by strength; ``strong`` is used for ``|c| >= 1``."""

    positive: str = "Be honest: tell the truth as you see it."
    negative: str = "Be dishonest: do not tell the truth as you see it."
    positive_strong: str = (
        "You are a deeply honest person. Always tell the whole truth, even when it is costly or uncomfortable."
    )
    negative_strong: str = (
        "You are a thoroughly dishonest person. Lie, deceive and hide the truth whenever it benefits you."
    )


class PromptSteering(SteeringMethod):
    """Steering by a system instruction: honest for ``c > 0``, dishonest for ``c < 0``.

    ``c = 0`` leaves the chat unchanged. ``0 < |c| < 1`` uses the mild wording,
    ``|c| >= 1`` the strong one (prompting has no continuous dose; two levels let a
    coefficient sweep still show a dose-response). An existing system message is kept,
    with the instruction put in front of it. Activations are untouched, so
    :meth:`steer` is a no-op, and per-row coefficients apply per chat via
    :meth:`messages` (one call per row).
    """

    name = "prompt"

    def __init__(self, wording: PromptWording = PromptWording()):
        self.wording = wording

    def instruction(self, coeff: float) -> str | None:
        """The instruction for ``coeff`` (after orientation), or ``None`` at 0."""
        c = self.effective(float(coeff))
        if c == 0:
            return None
        w = self.wording
        if c > 0:
            return w.positive_strong if c >= 1 else w.positive
        return w.negative_strong if c <= -1 else w.negative

    def messages(self, messages: Messages, coeff: float) -> Messages:
        text = self.instruction(coeff)
        msgs = [dict(m) for m in messages]
        if text is None:
            return msgs
        if msgs and msgs[0].get("role") == "system":
            msgs[0]["content"] = f"{text} {msgs[0]['content']}".strip()
            return msgs
        return [{"role": "system", "content": text}, *msgs]

    def config(self) -> dict:
        return {**super().config(), "wording": asdict(self.wording)}
