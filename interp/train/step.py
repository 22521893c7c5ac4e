"""One ReprPO training step and its parts: reference and policy forwards, the loss points, the
validation separation (see :mod:`interp.train`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends import backend_of, run
from interp.calibrate import next_token_kl
from interp.geometry import left_singular_basis
from interp.interventions import Edits
from interp.data import (
    ContrastivePair,
    PairBatch,
    tokenize_pairs,
)
from interp.losses import (
    distill_kl,
    ProjectionTerm,
    antisymmetry_loss,
    coherence_loss,
    gap_scale,
    gaps,
    ordering_loss,
    projection_loss,
    to_space,
    token_nll,
)
from interp.sites import Site, parse_layers
from interp.backends import linear_of, n_layers

from interp.train.config import TARGETS, TrainConfig


# --------------------------------------------------------------------------- small shells


def lr_factor(step: int, steps: int, warmup_fraction: float) -> float:
    """Linear warmup to 1 over ``ceil(warmup_fraction · steps)`` steps, then cosine to 0."""
    warm = math.ceil(warmup_fraction * steps)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@contextmanager
def _frozen_base(model, adapter):
    """Only adapter parameters require grad inside the block (restored on exit): base
    weights get no gradient, which also keeps backward from running below the adapter."""
    own = {id(p) for p in adapter.parameters()}
    saved = [(p, p.requires_grad) for p in model.parameters() if id(p) not in own]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _forward(model, batch: PairBatch, hook: str, edits: Edits = (), *, last_tokens: int = 1, keep_logits: bool = False):
    """One forward pass with ``edits``: the hidden state at ``hook`` read at the last token (or
    the mean of the last ``last_tokens`` suffix tokens) and per-row next-token NLL over real
    tokens; with ``keep_logits`` the logits too: ``(h [rows, d_model], nll [rows][, logits])``."""
    out = run(model, batch.tokens, batch.attention_mask, edits, read=[hook])
    nll, _ = token_nll(out.logits.float(), batch.tokens, batch.attention_mask)
    h = read_states(out.states[hook], batch, last_tokens)
    return (h, nll, out.logits) if keep_logits else (h, nll)


def read_states(x: Float[Tensor, "rows pos d_model"], batch: PairBatch, last_tokens: int = 1) -> Float[Tensor, "rows d_model"]:
    """The state a loss reads per row: at the last real token, or the mean over the last
    ``last_tokens`` tokens of the assistant suffix (fewer where the suffix is shorter)."""
    rows = torch.arange(x.shape[0], device=x.device)
    if last_tokens == 1:
        return x[rows, batch.last].float()
    pos = torch.arange(x.shape[1], device=x.device)
    window = batch.suffix_mask & (pos[None, :] > (batch.last[:, None] - last_tokens))
    window[rows, batch.last] = True
    w = window.to(torch.float32)
    return torch.einsum("rp,rpd->rd", w, x.float()) / w.sum(1, keepdim=True)


def loss_points(
    h_pos: Float[Tensor, "rows d_model"], h_neg: Float[Tensor, "rows d_model"], h_ref: Float[Tensor, "rows d_model"],
    n_pairs: int, target: str = "gap", space: str = "dHS", U: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """What the loss moves, at c = +1, -1 and 0, in the loss space: ``[items, k]`` each.

    ``"gap"``: per pair, chosen minus rejected (ReprPO: the contrast; a shift that moves both
    rows alike is invisible to it). ``"shift"``: every row itself (chosen and rejected), so
    the loss rewards moving any prompt along the direction, as a steering vector does.
    ``"both"``: the pairs' gaps followed by the rows.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {list(TARGETS)}")
    out = []
    for h in (h_pos, h_neg, h_ref):
        x = to_space(h, space, U)
        gap, rows = x[:n_pairs] - x[n_pairs:], x
        out.append(gap if target == "gap" else rows if target == "shift" else torch.cat([gap, rows]))
    return out[0], out[1], out[2]


def _stack(batch: PairBatch, times: int) -> PairBatch:
    return PairBatch(*(torch.cat([t] * times) for t in (batch.tokens, batch.attention_mask, batch.last, batch.suffix_mask)))


def loss_layer_of(model, sites: Sequence[Site], loss_layer: int | float | None) -> int:
    """The layer whose residual stream the loss reads; must not precede the first adapted layer."""
    deepest = max(s.layer for s in sites)
    if loss_layer is None:
        return deepest
    layer = parse_layers([loss_layer], n_layers(model))[0]
    if layer < min(s.layer for s in sites):
        raise ValueError(f"loss layer {layer} lies before every adapted layer {sorted({s.layer for s in sites})}: the adapter cannot move it")
    return layer


def site_basis(model, sites: Sequence[Site], layer: int, rank: int) -> tuple[Site, Float[Tensor, "d_model r"]]:
    """Top-``rank`` left singular vectors ``U`` of the raw weight of the deepest site at or
    before ``layer`` whose output is the residual stream (``d_out = d_model``).

    Decomposes the raw HF weight in float64 (as the adapter does), so the basis exists
    for any adapter type (LoRA included).
    """
    d_model = backend_of(model).d_model
    ok = [s for s in sites if s.layer <= layer and linear_of(model, s).weight.shape[0] == d_model]
    if not ok:
        raise ValueError(
            f"space 'dHS@U' needs an adapted site writing to the residual stream (attn.o or mlp.out) "
            f"at or before the loss layer {layer}; got {[s.name for s in sites]}"
        )
    site = max(ok)
    return site, left_singular_basis(linear_of(model, site).weight, rank).float()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_separation(
    model,
    adapter,
    pairs: Sequence[ContrastivePair],
    direction: Float[Tensor, " k"],
    *,
    hook: str,
    space: str = "dHS",
    U: Tensor | None = None,
    coeffs: Sequence[float] = (-1.0, 0.0, 1.0),
    batch_size: int = 16,
    system: str | None = "",
    max_length: int | None = None,
    last_tokens: int = 1,
    progress: bool = False,
) -> dict[str, float]:
    """Mean gap along ``direction`` and ΔNLL per coefficient on ``pairs`` (orientation applied).

    One forward per chunk carries every coefficient (rows stacked per coefficient).
    Keys: ``gap@c`` (raw units), ``sep@c`` (gap in units of ``mean|gap(0)|``; needs 0 in
    ``coeffs``), ``nll@c``, and ``dnll@c = nll@c − nll@0`` per coefficient.
    """
    coeffs = [float(c) for c in coeffs]
    device = backend_of(model).device
    sums: dict[str, list[Tensor]] = {f"gap@{c:+g}": [] for c in coeffs} | {f"nll@{c:+g}": [] for c in coeffs}
    for start in tqdm(range(0, len(pairs), batch_size), desc="evaluate", disable=not progress, leave=False):
        chunk = tokenize_pairs(model.tokenizer, pairs[start : start + batch_size], system=system, max_length=max_length).to(device)
        rows, n = chunk.tokens.shape[0], chunk.n_pairs
        coeff = torch.tensor([c for c in coeffs for _ in range(rows)], device=device)
        h, nll = _forward(model, _stack(chunk, len(coeffs)), hook, adapter.edits(coeff), last_tokens=last_tokens)
        for k, c in enumerate(coeffs):
            hk = h[k * rows : (k + 1) * rows]
            sums[f"gap@{c:+g}"].append(gaps(hk[:n], hk[n:], direction, space, U))
            sums[f"nll@{c:+g}"].append(nll[k * rows : (k + 1) * rows])
    out = {key: float(torch.cat(v).mean()) for key, v in sums.items()}
    if 0.0 in coeffs:
        scale = float(gap_scale(torch.cat(sums["gap@+0"])))
        for c in coeffs:
            out[f"sep@{c:+g}"] = out[f"gap@{c:+g}"] / scale
            out[f"dnll@{c:+g}"] = out[f"nll@{c:+g}"] - out["nll@+0"]
    return out


# --------------------------------------------------------------------------- training
def suffix_columns(batch: PairBatch) -> Bool[Tensor, "rows pos"]:
    """Per row, the columns whose next-token prediction is a suffix token, aligned between the two rows of a pair.

    Rows are left-padded, so a pair's shared suffix ends every row at the last column; the ``k`` suffix
    tokens a pair shares are predicted at columns ``width - 1 - k .. width - 2`` of both of its rows.
    """
    n, width = batch.n_pairs, batch.tokens.shape[1]
    counts = batch.suffix_mask.sum(1)
    k = torch.minimum(counts[:n], counts[n:]).repeat(2)  # a pair's shared suffix length, for both of its rows
    cols = torch.arange(width, device=batch.tokens.device)
    return (cols[None] >= width - 1 - k[:, None]) & (cols[None] < width - 1)


def distill_loss(model, adapter, batch: PairBatch, config: TrainConfig) -> tuple[Float[Tensor, ""], dict]:
    """The distillation objective of one batch and its parts: at ``c = +1`` on the rejected (negative persona) rows
    the steered model predicts the shared suffix as the base model does on the chosen rows, and at ``c = -1`` on
    the chosen rows as the base model does on the rejected ones. At ``c = 0`` the adapter is the base model, so the
    loss there is the persona's own effect and the gradient comes only from the steered rows."""
    n = batch.n_pairs
    mask = suffix_columns(batch)
    with torch.no_grad():
        teacher = run(model, batch.tokens, batch.attention_mask).logits
    swapped = torch.cat([teacher[n:], teacher[:n]])  # row i (chosen) learns from row n + i (rejected) and back
    coeff = torch.cat([-torch.ones(n, device=batch.tokens.device), torch.ones(n, device=batch.tokens.device)])
    student = run(model, batch.tokens, batch.attention_mask, adapter.edits(coeff)).logits
    kl_neg = distill_kl(student[:n], swapped[:n], mask[:n])
    kl_pos = distill_kl(student[n:], swapped[n:], mask[n:])
    loss = (kl_pos + kl_neg) / 2
    return loss, {"loss": float(loss.detach()), "distill_pos": float(kl_pos.detach()), "distill_neg": float(kl_neg.detach()),
                  "separation": 0.0, "coherence": 0.0, "ordering": 0.0}


def step_loss(
    model,
    adapter,
    batch: PairBatch,
    direction: Float[Tensor, " k"],
    scale: Float[Tensor, ""] | float,
    config: TrainConfig,
    *,
    hook: str,
    U: Tensor | None = None,
    prior: float = 0.0,
) -> tuple[Float[Tensor, ""], dict]:
    """The ReprPO loss of one batch (differentiable in the adapter) and its parts as floats.

    Reference forward at c = 0 under ``no_grad``; one policy forward whose rows are the
    batch at ``c = +1`` then at ``c = −1`` (per-row coefficient tensor). ``prior`` is the
    separation summed over earlier steps (the guard's memory).
    """
    n, rows = batch.n_pairs, batch.tokens.shape[0]
    kw = dict(last_tokens=config.last_tokens, keep_logits=config.kl_weight > 0)
    with torch.no_grad():
        h_ref, nll_ref, *ref_logits = _forward(model, batch, hook, **kw)
    coeff = torch.cat([torch.ones(rows, device=batch.tokens.device), -torch.ones(rows, device=batch.tokens.device)])
    h, nll, *logits = _forward(model, _stack(batch, 2), hook, adapter.edits(coeff), **kw)
    # per item, at c = +1, -1, 0: its coordinates in the loss space and their value along the direction
    points = loss_points(h[:rows], h[rows:], h_ref, n, config.target, config.space, U)
    g_pos, g_neg, g_ref = (p @ direction.to(p.dtype) for p in points)
    if config.loss == "antisym":
        # the guard's orientation still comes from the separation (the ordering hinge needs it)
        proj = projection_loss(g_pos, g_neg, g_ref, "proj", scale=scale, prior=prior)
        proj = ProjectionTerm(loss=antisymmetry_loss(*points, direction), orientation=proj.orientation,
                              separation=proj.separation)
    else:
        proj = projection_loss(g_pos, g_neg, g_ref, config.loss, beta=config.beta, scale=scale, prior=prior)
    order = ordering_loss(g_neg, g_ref, g_pos, proj.orientation, config.margin, scale=scale)
    coh, w = coherence_loss(nll[:rows], nll[rows:], nll_ref, config.tau, config.coherence_temperature)
    loss = proj.loss + config.coherence_weight * coh + config.ordering_weight * order
    kls = {}
    if config.kl_weight > 0:
        span = batch.attention_mask.bool()
        if config.kl_span == "prompt":
            span = span & ~batch.suffix_mask
        kl_pos, kl_neg = (next_token_kl(ref_logits[0], logits[0][part], span)
                          for part in (slice(0, rows), slice(rows, None)))
        loss = loss + config.kl_weight * (kl_pos + kl_neg) / 2
        kls = {"kl_pos": float(kl_pos.detach()), "kl_neg": float(kl_neg.detach())}
    parts = {
        "loss": float(loss.detach()),
        "proj": float(proj.loss.detach()),
        "coherence": float(coh.detach()),
        "ordering": float(order.detach()),
        "separation": float(proj.separation),
        "orientation": proj.orientation,
        "dnll_pos": float((nll[:rows] - nll_ref).mean().detach()),
        "dnll_neg": float((nll[rows:] - nll_ref).mean().detach()),
        "w_pos": float(w[0]),
        "w_neg": float(w[1]),
        **kls,
    }
    return loss, parts




# settings that only change logging and checkpoint cadence may differ on --resume
