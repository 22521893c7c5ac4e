"""ReprPO loss parts as pure functions on tensors.

Notation: ``h_cho``, ``h_rej`` are last-token hidden states of the chosen / rejected rows
of a pair; a *gap* is their difference projected on the frozen preference direction
``d``: ``gap = (φ(h_cho) − φ(h_rej)) · d``, where ``φ(h) = h`` in the ``"dHS"`` space and
``φ(h) = h @ U`` (coordinates on the site weight's top-r left singular vectors) in the
``"dHS@U"`` space. ``gap(c)`` is the gap of the policy at coefficient ``c``; ``gap(0)`` is
the reference (frozen base model).

Parts (all combined by :mod:`interp.train`):

* :func:`preference_direction` -- PC1 of the reference differences, frozen before training.
* :func:`projection_loss` -- separation of ``gap(+1)`` and ``gap(−1)`` along ``d``, with
  the anti-alignment guard; ``kind="logsigmoid"`` is the DPO-style variant.
* :func:`antisymmetry_loss` -- the ``kind="antisym"`` variant: per pair, the cosines of the
  +1 and −1 shifts with ``d`` pushed to opposite signs, bounded so neither side can win by
  growing without bound (magnitude is left to the ordering margin and coherence).
* :func:`coherence_loss` -- ``relu(ΔNLL − τ)²`` per direction, adaptively weighted.
* :func:`ordering_loss` -- hinges enforcing ``gap(−1) < gap(0) < gap(+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

SPACES: tuple[str, ...] = ("dHS", "dHS@U")
LOSS_KINDS: tuple[str, ...] = ("proj", "logsigmoid", "antisym")
Space = Literal["dHS", "dHS@U"]


def check_space(space: str, U: Tensor | None) -> None:
    """``space`` must be one of :data:`SPACES`; ``"dHS@U"`` needs ``U``."""
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; valid spaces: {list(SPACES)}")
    if space == "dHS@U" and U is None:
        raise ValueError("space 'dHS@U' needs the site's left singular vectors U [d_model, r]")


def to_space(h: Float[Tensor, "n d_model"], space: Space = "dHS", U: Float[Tensor, "d_model r"] | None = None) -> Float[Tensor, "n k"]:
    """φ(h): ``h`` itself (``"dHS"``) or its coordinates ``h @ U`` (``"dHS@U"``, k = r)."""
    check_space(space, U)
    if space == "dHS":
        return h
    if U.shape[0] != h.shape[-1]:
        raise ValueError(f"U has {U.shape[0]} rows but hidden states have width {h.shape[-1]}: U must be [d_model, r]")
    return h @ U.to(h.dtype)


def preference_direction(
    h_cho: Float[Tensor, "n d_model"],
    h_rej: Float[Tensor, "n d_model"],
    space: Space = "dHS",
    U: Float[Tensor, "d_model r"] | None = None,
    *,
    center: bool = False,
) -> Float[Tensor, " k"]:
    """Unit first principal component of the differences ``D = φ(h_cho) − φ(h_rej)``.

    ``d = argmax_{|v|=1} |D v|²`` (top right singular vector of ``D``, or of ``D − mean(D)``
    when ``center``), signed so that ``mean(D) · d > 0``. Uncentred by default: the
    consistent chosen-minus-rejected shift *is* the signal, and centring would remove it.
    Computed in float64; returned as float32 of width ``d_model`` (dHS) or ``r`` (dHS@U).
    """
    if h_cho.shape != h_rej.shape or h_cho.ndim != 2:
        raise ValueError(f"h_cho {tuple(h_cho.shape)} and h_rej {tuple(h_rej.shape)} must be equal [n, d_model]")
    if h_cho.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs for a direction, got {h_cho.shape[0]}")
    D = (to_space(h_cho.double(), space, None if U is None else U.double())
         - to_space(h_rej.double(), space, None if U is None else U.double()))
    X = D - D.mean(0) if center else D
    direction = torch.linalg.svd(X, full_matrices=False).Vh[0]
    if D.mean(0) @ direction < 0:
        direction = -direction
    return direction.float()


def gaps(
    h_cho: Float[Tensor, "n d_model"],
    h_rej: Float[Tensor, "n d_model"],
    direction: Float[Tensor, " k"],
    space: Space = "dHS",
    U: Float[Tensor, "d_model r"] | None = None,
) -> Float[Tensor, " n"]:
    """Per-pair gap ``(φ(h_cho) − φ(h_rej)) · d``."""
    diff = to_space(h_cho, space, U) - to_space(h_rej, space, U)
    if diff.shape[-1] != direction.shape[0]:
        raise ValueError(f"direction has width {direction.shape[0]} but the {space} differences have width {diff.shape[-1]}")
    return diff @ direction.to(diff.dtype)


def gap_scale(gap_ref: Float[Tensor, " n"], eps: float = 1e-6) -> Float[Tensor, ""]:
    """``mean |gap(0)|`` (detached): the unit in which separations are measured, so the
    loss does not depend on the hidden-state scale of the model or layer."""
    return gap_ref.detach().abs().mean().clamp_min(eps)


@dataclass(frozen=True)
class ProjectionTerm:
    """The projection loss, the guard's orientation (+1 / −1) and the raw separation."""

    loss: Float[Tensor, ""]
    orientation: int
    separation: Float[Tensor, ""]


def projection_loss(
    gap_pos: Float[Tensor, " n"],
    gap_neg: Float[Tensor, " n"],
    gap_ref: Float[Tensor, " n"],
    kind: str = "proj",
    *,
    beta: float = 1.0,
    scale: float | Tensor | None = None,
    prior: float = 0.0,
) -> ProjectionTerm:
    """Separation of the policy along ``d`` at ``c = +1`` versus ``c = −1``.

    With ``s = scale`` (default ``gap_scale(gap_ref)``; training passes the calibration
    set's, so the unit does not jitter with the batch)::

        sep = mean(gap(+1) − gap(0)) / s − mean(gap(−1) − gap(0)) / s
        o   = +1 if prior + sep ≥ 0 else −1      (anti-alignment guard, detached)
        proj:        L = −o · sep
        logsigmoid:  L = −log σ(β · o · sep)

    The guard: if the summed (signed) projection is negative, the adapter moves the
    concept the other way round for ``+c``; rather than fight that, both signs are
    flipped (``o = −1``) and the orientation is recorded, so ``o · c`` is "more concept".
    ``prior`` is the separation summed over earlier steps (0 for a lone batch): summing
    makes the guard's decision stable instead of flipping with each noisy small batch.
    ``separation`` is the raw ``sep`` (before the flip).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown projection loss {kind!r}; valid kinds: {list(LOSS_KINDS)}")
    s = gap_scale(gap_ref) if scale is None else scale
    sep = (gap_pos - gap_ref).mean() / s - (gap_neg - gap_ref).mean() / s
    o = 1 if prior + float(sep.detach()) >= 0 else -1
    loss = -o * sep if kind == "proj" else -F.logsigmoid(beta * o * sep)
    return ProjectionTerm(loss=loss, orientation=o, separation=sep.detach())


def antisymmetry_loss(
    diff_pos: Float[Tensor, "n k"],
    diff_neg: Float[Tensor, "n k"],
    diff_ref: Float[Tensor, "n k"],
    direction: Float[Tensor, " k"],
    eps: float = 1e-8,
) -> Float[Tensor, ""]:
    """Anti-parallel, normalised shifts along the preference direction.

    Per pair ``i`` with chosen-minus-rejected differences ``D_i(c)`` (in the loss space)::

        δ⁺_i = D_i(+1) − D_i(0),   δ⁻_i = D_i(−1) − D_i(0)
        L    = mean_i cos(δ⁺_i, d) · cos(δ⁻_i, d)          ∈ [−1, 1]

    ``L = −1`` when every pair's two shifts lie on ``d`` with opposite signs; shifts off
    ``d`` or on the same side cost. Scale-free in each shift, so the +1 side cannot buy
    the loss by growing while −1 stays put (the failure of a summed separation), and it
    does not depend on which side is "more": the orientation is decided afterwards.
    (The method's later reference code uses this product of cosines.)
    """
    d = direction.to(diff_pos.dtype)
    d = d / d.norm().clamp_min(eps)

    def cos(delta: Tensor) -> Tensor:
        return (delta @ d) / delta.norm(dim=-1).clamp_min(eps)

    return (cos(diff_pos - diff_ref) * cos(diff_neg - diff_ref)).mean()


def ordering_loss(
    gap_neg: Float[Tensor, " n"],
    gap_ref: Float[Tensor, " n"],
    gap_pos: Float[Tensor, " n"],
    orientation: int = 1,
    margin: float = 0.1,
    *,
    scale: float | Tensor | None = None,
) -> Float[Tensor, ""]:
    """Per-pair hinges enforcing ``gap(−1) < gap(0) < gap(+1)`` (after orientation).

    On the projection gap (the same quantity validation reports), in units of
    ``s = scale`` (default ``gap_scale(gap_ref)``), with ``g(c) = o · gap(c) / s``::

        L = mean_i [ relu(g_i(0) − g_i(+1) + m) + relu(g_i(−1) − g_i(0) + m) ]

    Zero once every pair is ordered with margin ``m``.
    """
    if orientation not in (1, -1):
        raise ValueError(f"orientation must be +1 or -1, got {orientation}")
    s = gap_scale(gap_ref) if scale is None else scale
    gn, g0, gp = (orientation * g / s for g in (gap_neg, gap_ref, gap_pos))
    return (F.relu(g0 - gp + margin) + F.relu(gn - g0 + margin)).mean()


def token_nll(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"],
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """Mean next-token NLL per row over scored tokens, and the number of tokens scored.

    Token ``t`` (``t ≥ 1``) is scored when ``mask[t]`` and ``mask[t−1]`` are both set (it
    and its context are real): ``nll_row = Σ_t −log p(tokens_t | <t) / n_row``.
    """
    scored = (mask[:, 1:].bool() & mask[:, :-1].bool()).to(logits.dtype)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    count = scored.sum(1)
    return (nll * scored).sum(1) / count.clamp_min(1), count


def coherence_loss(
    nll_pos: Float[Tensor, " rows"],
    nll_neg: Float[Tensor, " rows"],
    nll_ref: Float[Tensor, " rows"],
    tau: float = 0.2,
    temperature: float = 0.1,
) -> tuple[Float[Tensor, ""], Float[Tensor, " 2"]]:
    """Penalty on the NLL increase of the policy over the reference, per direction.

    Per row ``ΔNLL = nll(c) − nll(0)`` (per-token means, from :func:`token_nll`)::

        P(c) = mean_rows relu(ΔNLL − τ)²                       for c = +1, −1
        w    = 2 · softmax([mean ΔNLL(+1), mean ΔNLL(−1)] / T)    (detached)
        L    = w₊ P(+1) + w₋ P(−1)

    The adaptive weights put more weight on the direction that is currently less
    coherent (higher ΔNLL); equal ΔNLL gives ``w = (1, 1)``. Returns ``(L, w)``.
    """
    d_pos, d_neg = nll_pos - nll_ref, nll_neg - nll_ref
    pens = torch.stack([F.relu(d_pos - tau).pow(2).mean(), F.relu(d_neg - tau).pow(2).mean()])
    w = 2 * torch.softmax(torch.stack([d_pos.mean(), d_neg.mean()]).detach() / temperature, 0)
    return (w * pens).sum(), w


def token_kl(logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """``KL(p || q)`` of the next-token distributions at every position (nats), in float32: the one KL of the
    project (distillation, the preference objective's barrier, the coherence budget)."""
    logp, logq = logits_p.float().log_softmax(-1), logits_q.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def distill_kl(
    student: Float[Tensor, "rows pos vocab"], teacher: Float[Tensor, "rows pos vocab"], mask: Bool[Tensor, "rows pos"],
) -> Float[Tensor, ""]:
    """Mean over the masked positions of ``KL(teacher || student)`` between next-token distributions (nats).

    The distillation objective: the steered model (``student``) should predict what the prompted
    model (``teacher``, no gradient) predicts. Zero exactly when the two distributions agree.
    """
    if student.shape != teacher.shape or mask.shape != student.shape[:2]:
        raise ValueError(f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and mask {tuple(mask.shape)} must align")
    if not mask.any():
        raise ValueError("no masked positions to distil on")
    return token_kl(teacher[mask], student[mask]).mean()


# --------------------------------------------------------------------------- the preference objective


def completion_logprob(
    logits: Float[Tensor, "rows pos vocab"], tokens: Int[Tensor, "rows pos"], completion: Bool[Tensor, "rows pos"],
) -> Float[Tensor, " rows"]:
    """Per row, the mean log-probability per token of the tokens marked in ``completion`` (length-normalised, so
    completions of different lengths compare); token ``t`` is predicted by the logits at ``t - 1``."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    marked = completion[:, 1:].to(logp.dtype)
    if (marked.sum(1) == 0).any():
        raise ValueError("a row marks no completion token")
    return (logp * marked).sum(1) / marked.sum(1)


def preference_loss(
    logp_pos: Float[Tensor, " rows"], logp_neg: Float[Tensor, " rows"], ref_pos: Float[Tensor, " rows"],
    ref_neg: Float[Tensor, " rows"], coeff: Float[Tensor, " rows"], beta: float = 1.0,
) -> Float[Tensor, ""]:
    """The bidirectional preference loss: ``-log σ(β · c · m)`` averaged over rows, with the preference margin
    ``m = (log p_c(y+) − log p_0(y+)) − (log p_c(y−) − log p_0(y−))`` relative to the base model (BiPO's
    reference ratio; RePS's length normalisation: the log-probabilities are means per token).

    The coefficient's sign says which completion the steered model should come to prefer, and its size how
    hard: at ``c = 0`` the loss is ``log 2`` whatever the model does (no gradient), so the base model is kept
    there; ``-c`` asks for the opposite of ``+c``.
    """
    margin = (logp_pos - ref_pos) - (logp_neg - ref_neg)
    return -F.logsigmoid(beta * coeff * margin).mean()


def kl_rows(
    logits_base: Float[Tensor, "rows pos vocab"], logits_steered: Float[Tensor, "rows pos vocab"], mask: Bool[Tensor, "rows pos"],
) -> Float[Tensor, " rows"]:
    """Per row, the mean next-token ``KL(base || steered)`` over the masked positions (nats)."""
    kl = token_kl(logits_base, logits_steered)
    m = mask.to(kl.dtype)
    return (kl * m).sum(1) / m.sum(1).clamp_min(1)


def kl_barrier(kl: Float[Tensor, " rows"], coeff: Float[Tensor, " rows"], allowed: float) -> Float[Tensor, ""]:
    """``relu(KL − allowed · |c|)`` averaged over rows: the coherence barrier of a dose, free below the KL a
    row at its coefficient may spend (the budget grows with the dose), linear above it."""
    return F.relu(kl - allowed * coeff.abs()).mean()
