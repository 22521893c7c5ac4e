"""ReprPO training of a bidirectional adapter: ``python -m interp.train``.

One step, for a batch of ``n`` contrastive pairs (rows: chosen then rejected, see
:mod:`interp.data`):

1. reference forward at ``c = 0`` (plain model, ``torch.no_grad``): last-token hidden
   states at the loss hook and per-row NLL;
2. one policy forward carrying both directions: the pair rows twice, with a per-row
   coefficient tensor ``[+1]*2n + [-1]*2n`` under ``adapter.steer(model, coeff)``;
3. loss = projection (or logsigmoid) separation along the frozen preference direction
   + ``coherence_weight`` · coherence + ``ordering_weight`` · ordering (:mod:`interp.losses`);
4. AdamW step with gradient clipping and a warmup + cosine schedule.

The preference direction is fixed before training from reference differences on a
calibration subset of the *training* pairs. The adapter trains with
``orientation = +1``; the guard's sign is recorded each step, and after training the
orientation is set from the separation summed over all steps (training
data only) so that ``+c`` means "more of the concept". Validation (held-out suffixes)
reports the mean gap at ``c ∈ {−1, 0, +1}`` and ΔNLL at ``c = ±1``.

Runs are reproducible without touching the global random generators: data order is a pure
function of ``(seed, step)`` (:func:`interp.data.batch_indices`), the adapter's initial values
come from its own seeded generator, and checkpoints (adapter parameters, optimizer,
scheduler, step, direction, history) are written atomically every
``checkpoint_every`` steps; ``--resume`` continues a killed run to the same adapter, bit
for bit on CPU.

Python API: :func:`train` (any :class:`~interp.adapters.base.AdapterSet`, e.g. LoRA) and
:func:`train_adapter` (builds an InnerPiSSA adapter first).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.adapters.innerpissa import SCALINGS, InnerPiSSAConfig
from interp.adapters.io import site_weight_hash
from interp.backends import backend_of, run
from interp.calibrate import next_token_kl
from interp.geometry import left_singular_basis
from interp.interventions import Edits
from interp.data import (
    DEFAULT_CONCEPT,
    ContrastivePair,
    PairBatch,
    PairSplit,
    batch_indices,
    make_pairs,
    pairs_hash,
    split_by_suffix,
    tokenize_pairs,
)
from interp.losses import (
    LOSS_KINDS,
    SPACES,
    ProjectionTerm,
    antisymmetry_loss,
    coherence_loss,
    gap_scale,
    gaps,
    ordering_loss,
    preference_direction,
    projection_loss,
    to_space,
    token_nll,
)
from interp.models import DEFAULT_MODEL
from interp.provenance import model_weight_hash
from interp.sites import LINEAR_MODULES, Site, linear_of, n_layers, parse_layers, resid_hook, select_sites
from interp.store import RunLocked, atomic_write, config_differences, run_lock, said_differences, write_text

TARGETS = ("gap", "shift", "both")
KL_SPANS = ("all", "prompt")
CHECKPOINT = "checkpoint.pt"
LOG = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (stored in the adapter's json ``training`` extra).

    The defaults are sized for the embedded default model on 2 CPU cores (about 6 minutes on
    one core: 40 steps on 24 sites).
    ``loss_layer`` (index or depth fraction) is where hidden states are read
    (``blocks.L.hook_resid_post``); ``None`` means the deepest adapted layer.
    ``system`` is the chat's system message: ``""`` keeps prompts short (an empty system
    turn), ``None`` uses the template's default system prompt.
    """

    # model and adapter (used by train_adapter and the CLI; train() takes a built adapter)
    model: str = DEFAULT_MODEL
    # the recipe found by analyses.recipe_search (validation split, sentiment): a band of residual
    # writers over depths 0.1-0.5, the loss read just after it, rotations bounded by 0.1 rad
    layers: str = "0.1:0.5"
    modules: tuple[str, ...] = ("attn.o", "mlp.out")
    # the adapter's own options (rank, rotations, scaling, angle bound); its init is seeded by ``seed``
    adapter: InnerPiSSAConfig = InnerPiSSAConfig(max_angle=0.1)
    # data
    concept: str = DEFAULT_CONCEPT
    suffixes: str | None = None
    n_pairs: int = 1000
    val_fraction: float = 0.1
    n_calibration: int = 32
    n_validation: int = 32
    system: str | None = ""
    max_length: int | None = 64
    # optimisation
    steps: int = 40
    batch_size: int = 4
    lr: float = 8e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    # loss
    space: str = "dHS"
    loss: str = "proj"
    target: str = "gap"  # what the loss moves: the pairs' gaps, every row's own state ("shift"), or "both"
    loss_layer: int | float | None = 0.55
    beta: float = 1.0
    tau: float = 0.2
    coherence_weight: float = 1.0
    coherence_temperature: float = 0.1
    ordering_weight: float = 1.0
    margin: float = 0.1
    # read the loss's hidden state as the mean over the last n suffix tokens (1: the last token only)
    last_tokens: int = 1
    # weight of the mean next-token KL(base || steered) over the training rows at c = +1 and -1: the
    # coherence cost the strength calibration matches, paid during training; kl_span "all" takes every
    # position, "prompt" those before the assistant suffix (where the concept is not being expressed)
    kl_weight: float = 0.0
    kl_span: str = "all"
    # bookkeeping
    eval_batch_size: int = 16
    diagnostics_every: int = 10
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; valid spaces: {list(SPACES)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; valid targets: {list(TARGETS)}")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"unknown loss {self.loss!r}; valid losses: {list(LOSS_KINDS)}")
        if not isinstance(self.adapter, InnerPiSSAConfig):
            raise ValueError(f"adapter must be an InnerPiSSAConfig, got {type(self.adapter).__name__}")
        bad = [m for m in self.modules if m not in LINEAR_MODULES]
        if bad:
            raise ValueError(f"unknown module(s) {bad}; valid modules: {list(LINEAR_MODULES)}")
        for name in ("steps", "batch_size", "n_calibration", "n_validation", "eval_batch_size",
                     "diagnostics_every", "checkpoint_every", "last_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_calibration < 2:
            raise ValueError("n_calibration must be >= 2 (a direction needs two pairs)")
        if self.kl_span not in KL_SPANS:
            raise ValueError(f"unknown kl_span {self.kl_span!r}; valid: {list(KL_SPANS)}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")

    @classmethod
    def of(cls, **fields) -> TrainConfig:
        """A config from flat fields: the adapter's options (``rank``, ``max_angle``, ...) by their names too."""
        return cls().with_(**fields)

    def with_(self, **overrides) -> TrainConfig:
        """``dataclasses.replace`` that also takes the adapter's options by name (``rank=8``)."""
        unknown = set(overrides) - set(TRAIN_FIELDS) - set(ADAPTER_FIELDS)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; valid: {sorted(set(TRAIN_FIELDS) | set(ADAPTER_FIELDS))}")
        adapter = {k: overrides.pop(k) for k in list(overrides) if k in ADAPTER_FIELDS}
        if adapter:
            overrides["adapter"] = replace(overrides.get("adapter", self.adapter), **adapter)
        return replace(self, **overrides)

    def adapter_config(self) -> InnerPiSSAConfig:
        """The adapter's options, its init seeded by the run's seed."""
        return replace(self.adapter, seed=self.seed)

    def record(self) -> dict:
        """The config as one flat, JSON-able dict (the adapter's options at the top level, as stored
        in run folders, checkpoints and adapter files); :meth:`from_record` reads it back."""
        flat = {k: v for k, v in asdict(self).items() if k != "adapter"}
        return {**flat, **{k: v for k, v in asdict(self.adapter).items() if k in ADAPTER_FIELDS}}

    @classmethod
    def from_record(cls, record: dict) -> TrainConfig:
        """The config a :meth:`record` describes (settings it lacks keep today's defaults)."""
        fields_ = {k: tuple(v) if k == "modules" else v for k, v in record.items() if k in TRAIN_FIELDS or k in ADAPTER_FIELDS}
        return cls.of(**fields_)


TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.name != "adapter")
# the adapter's options a training config sets by name (its seed is the run's)
ADAPTER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(InnerPiSSAConfig) if f.name != "seed")


# settings written as comma-separated lists in a recipe
_TUPLES = {"modules"}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_recipe(spec: str) -> dict:
    """``"layers=0.1:0.5;modules=attn.o,mlp.out;lr=0.02"`` -> overrides for :meth:`TrainConfig.with_`
    (TrainConfig and adapter fields, names checked): the ``--recipe`` of every command that trains."""
    known = set(TRAIN_FIELDS) | set(ADAPTER_FIELDS)
    out: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"bad recipe part {part!r}: write field=value with a TrainConfig or adapter field, one of {sorted(known)}")
        out[key] = tuple(v.strip() for v in value.split(",") if v.strip()) if key in _TUPLES else (
            value.strip() if key == "layers" else _value(value.strip()))
    return out


@dataclass
class TrainResult:
    """What a run produced: orientation, validation metrics, per-step history, provenance."""

    orientation: int
    metrics: dict[str, float]
    history: list[dict]
    direction: Tensor
    loss_hook: str
    pairs_hash: str
    config: TrainConfig
    seconds: float = 0.0
    out: Path | None = None
    extra: dict = field(default_factory=dict)

    def training_extra(self) -> dict:
        """The ``training`` entry of the adapter's json."""
        return {
            "config": self.config.record(),
            "orientation": self.orientation,
            "metrics": self.metrics,
            "pairs_hash": self.pairs_hash,
            "loss_hook": self.loss_hook,
            "steps": len(self.history),
            "seconds": round(self.seconds, 2),
            **self.extra,
        }


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


@contextmanager
def _orientation(adapter, value: int):
    saved = adapter.orientation
    adapter.orientation = value
    try:
        yield
    finally:
        adapter.orientation = saved


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
RESUME_FREE = ("checkpoint_every", "diagnostics_every")
# settings added after runs were first recorded, with the value that means "as before": a stored
# config without them describes a run made with these values
ADDED_SETTINGS = {"last_tokens": 1, "kl_weight": 0.0, "target": "gap", "kl_span": "all", "select": "top",
                  # the adapter options a training record names since it holds the whole adapter config
                  "clamp": "angle", "init_std": 1e-3}


def _checkpoint_state(adapter, opt, sched, step: int, direction: Tensor, scale: Tensor, history: list[dict],
                      config: TrainConfig, base_hash: str) -> dict:
    return {
        "config": config.record(),
        "base_weight_hash": base_hash,
        "scale": scale,
        "step": step,
        "adapter": {name: p.detach().clone() for name, p in adapter.layers.named_parameters()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "direction": direction,
        "history": history,
    }


def _restore(state: dict, adapter, opt, sched) -> None:
    params = dict(adapter.layers.named_parameters())
    if set(params) != set(state["adapter"]):
        raise ValueError(f"checkpoint parameters {sorted(state['adapter'])} do not match the adapter's {sorted(params)}")
    with torch.no_grad():
        for name, value in state["adapter"].items():
            if params[name].shape != value.shape:
                raise ValueError(f"checkpoint {name} has shape {tuple(value.shape)}, adapter {tuple(params[name].shape)}")
            params[name].copy_(value)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])


def train(
    model,
    adapter,
    pairs: PairSplit | Sequence[ContrastivePair],
    config: TrainConfig = TrainConfig(),
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``adapter`` (any AdapterSet) on contrastive ``pairs`` with the ReprPO losses.

    ``pairs`` is a :class:`PairSplit` or a list (split by suffix here, seeded). With
    ``out``, per-step metrics go to ``out/metrics.jsonl`` and checkpoints to
    ``out/checkpoint.pt``; ``resume=True`` continues from that checkpoint. ``callback``
    gets each step's metrics dict (after the checkpoint of that step is written).
    On return ``adapter.orientation`` is set so that ``+c`` means more of the concept;
    the adapter is not saved here (see :func:`main` / :func:`interp.adapters.io.save_adapter`).
    ``out`` is held for this run (:func:`interp.store.run_lock`): a second run into it fails at once.
    """
    if out is None:
        return _train(model, adapter, pairs, config, None, resume, progress, callback)
    with run_lock(out):
        return _train(model, adapter, pairs, config, Path(out), resume, progress, callback)


def _train(model, adapter, pairs, config: TrainConfig, out: Path | None, resume: bool, progress: bool,
           callback: Callable[[dict], None] | None) -> TrainResult:
    t0 = time.perf_counter()
    split = pairs if isinstance(pairs, PairSplit) else split_by_suffix(pairs, config.val_fraction, config.seed)
    if len(split.train) < max(2, config.n_calibration) and len(split.train) < 2:
        raise ValueError(f"need at least 2 training pairs, got {len(split.train)}")
    if not split.val:
        raise ValueError("no validation pairs")
    ckpt_path = out / CHECKPOINT if out else None
    base_hash = model_weight_hash(model) if ckpt_path else ""
    if resume and not (ckpt_path and ckpt_path.is_file()):
        raise ValueError(f"--resume needs a checkpoint at {ckpt_path}, found none")

    sites = list(adapter.sites)
    layer = loss_layer_of(model, sites, config.loss_layer)
    hook = resid_hook(layer)
    U = site_basis(model, sites, layer, config.adapter.rank)[1] if config.space == "dHS@U" else None
    device = backend_of(model).device
    U = U.to(device) if U is not None else None
    tok_kw = dict(system=config.system, max_length=config.max_length)

    params = list(adapter.parameters())
    if not params:
        raise ValueError("the adapter has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config.steps, config.warmup_fraction))

    calib = split.train[: config.n_calibration]
    history: list[dict] = []
    start = 0
    if resume:
        try:  # tensors and plain data only: a checkpoint from elsewhere cannot run code here
            state = torch.load(ckpt_path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{ckpt_path} is not a checkpoint this version wrote (it holds objects other than tensors "
                             f"and plain data, refused unloaded: {str(err).splitlines()[0]}); start afresh without --resume") from None
        if not isinstance(state, dict) or "config" not in state or "base_weight_hash" not in state:
            raise ValueError(f"{ckpt_path} records no training config or base-weight hash, so nothing says it belongs to "
                             "this run; start afresh without --resume")
        if state["base_weight_hash"] != base_hash:
            raise ValueError(f"{ckpt_path} was written on other base weights (hash {state['base_weight_hash']}, here "
                             f"{base_hash}): the same model spec now loads different weights; start afresh without --resume")
        # continuing with other settings would give an adapter neither run describes
        diff = config_differences(state["config"], config.record(), ignore=RESUME_FREE, absent_means=ADDED_SETTINGS)
        if diff:
            raise ValueError(f"{ckpt_path} was written with other settings ({said_differences(diff, 'in the checkpoint')}); "
                             "resume with those or start afresh")
        _restore(state, adapter, opt, sched)
        start, direction, history = state["step"], state["direction"].to(device), list(state["history"])
        scale = state["scale"].to(device)
    else:
        # the direction: PC1 of reference differences on training pairs only
        with torch.no_grad(), _orientation(adapter, 1):
            h = []
            for i in range(0, len(calib), config.eval_batch_size):
                b = tokenize_pairs(model.tokenizer, calib[i : i + config.eval_batch_size], **tok_kw).to(device)
                hb, _ = _forward(model, b, hook, last_tokens=config.last_tokens)
                h.append((hb[: b.n_pairs], hb[b.n_pairs :]))
            h_cho, h_rej = torch.cat([x for x, _ in h]), torch.cat([y for _, y in h])
            direction = preference_direction(h_cho, h_rej, config.space, U)
            # one fixed unit for every step's separation: mean |reference gap| on the calibration set
            scale = gap_scale(gaps(h_cho, h_rej, direction, config.space, U))
    log_path = out / LOG if out else None
    if log_path:
        kept = [json.dumps(r) for r in history]
        write_text(log_path, "".join(line + "\n" for line in kept))

    n_train = len(split.train)
    bar = tqdm(range(start, config.steps), desc="train", disable=not progress, initial=start, total=config.steps)
    with _frozen_base(model, adapter), _orientation(adapter, 1):
        for step in bar:
            idx = batch_indices(n_train, config.batch_size, step, config.seed)
            batch = tokenize_pairs(model.tokenizer, [split.train[i] for i in idx], **tok_kw).to(device)
            summed = sum(r["separation"] for r in history)
            loss, parts = step_loss(model, adapter, batch, direction, scale, config, hook=hook, U=U, prior=summed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            record = {"step": step + 1, **parts, "grad_norm": float(grad_norm), "lr": lr}
            if (step + 1) % config.diagnostics_every == 0 or step + 1 == config.steps:
                record["diagnostics"] = adapter.diagnostics()
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", sep=f"{record['separation']:+.2f}",
                            coh=f"{record['coherence']:.3f}", ord=f"{record['ordering']:.3f}")
            if log_path:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record, default=str) + "\n")
            if ckpt_path and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                state = _checkpoint_state(adapter, opt, sched, step + 1, direction, scale, history, config, base_hash)
                atomic_write(ckpt_path, lambda p: torch.save(state, p))
            if callback is not None:
                callback(record)

    # orientation from training data only: the sign of the separation summed over all
    # steps (the guard's own final decision)
    total = sum(r["separation"] for r in history)
    orientation = 1 if total >= 0 else -1
    adapter.orientation = orientation
    metrics = evaluate_separation(
        model, adapter, split.val[: config.n_validation], direction, hook=hook, space=config.space, U=U,
        batch_size=config.eval_batch_size, last_tokens=config.last_tokens, progress=progress, **tok_kw,
    )
    metrics["train_separation_mean"] = total / max(1, len(history))
    metrics["ordered"] = float(metrics["gap@-1"] < metrics["gap@+0"] < metrics["gap@+1"])
    return TrainResult(
        orientation=orientation,
        metrics=metrics,
        history=history,
        direction=direction.detach().cpu(),
        loss_hook=hook,
        pairs_hash=pairs_hash(list(split.train) + list(split.val)),
        config=config,
        seconds=time.perf_counter() - t0,
        out=out,
        extra={"n_train": len(split.train), "n_val": len(split.val), "n_val_scored": min(len(split.val), config.n_validation),
               "calibration_pairs": len(calib), "base_weight_hash": site_weight_hash(model, sites)},
    )


def build_pairs(config: TrainConfig) -> PairSplit:
    """The seeded pairs and split a config describes."""
    pairs = make_pairs(config.concept, config.suffixes, n_pairs=config.n_pairs, seed=config.seed)
    return split_by_suffix(pairs, config.val_fraction, config.seed)


def train_adapter(
    model, sites: Sequence[Site] | None = None, config: TrainConfig = TrainConfig(), **train_kwargs
):
    """Attach an InnerPiSSA adapter (config's rank / rotations / scaling / seed) and train it.

    ``sites=None`` selects ``config.layers`` x ``config.modules``. Returns ``(adapter, result)``.
    """
    from interp.adapters.innerpissa import attach

    if sites is None:
        sites = select_sites(model, layers=config.layers, modules=list(config.modules))
    adapter = attach(model, list(sites), config.adapter_config())
    return adapter, train(model, adapter, build_pairs(config), config, **train_kwargs)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    from interp.cli import add_shared_args, positive_int

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m interp.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_shared_args(p, out="run folder (default: runs/<concept>-<model>-s<seed>)", seed="training seed (data order, adapter init)",
                    quick="6 steps on 200 pairs: a smoke run",
                    layers=f"adapted layers: indices, depth fractions and bands, e.g. '0.5', '10,14' or '0.1:0.5' (default {d.layers})")
    p.add_argument("--modules", default=",".join(d.modules), help=f"comma-separated, from {list(LINEAR_MODULES)}")
    p.add_argument("--rank", type=positive_int, default=d.adapter.rank)
    p.add_argument("--concept", default=d.concept, help="shipped concept name or path to a concept .json")
    p.add_argument("--suffixes", default=d.suffixes, help="text file of suffixes (default: the shipped list)")
    p.add_argument("--n-pairs", type=int, default=d.n_pairs)
    p.add_argument("--steps", type=positive_int, default=d.steps)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="pairs per step")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--space", choices=SPACES, default=d.space)
    p.add_argument("--loss", choices=LOSS_KINDS, default=d.loss)
    p.add_argument("--loss-layer", default=str(d.loss_layer), help="read hidden states here (index or depth fraction; 'none': the deepest adapted layer)")
    p.add_argument("--no-rotate-v", action="store_true")
    p.add_argument("--rotate-u", action="store_true")
    p.add_argument("--scaling", choices=SCALINGS, default=d.adapter.scaling)
    p.add_argument("--max-angle", type=float, default=d.adapter.max_angle, help="largest rotation angle at |c| = 1 (radians)")
    p.add_argument("--recipe", default="", help="further TrainConfig or adapter settings, 'field=value;...' (e.g. 'target=shift')")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep the training orientation instead of calibrating the sign on the concept's own measure "
                        "(its calibration split: DailyDilemmas for honesty, continuation margins for sentiment)")
    args = p.parse_args(argv)
    args.error = p.error
    loss_layer = None
    if args.loss_layer is not None and args.loss_layer.lower() != "none":
        try:
            loss_layer = int(args.loss_layer)
        except ValueError:
            try:
                loss_layer = float(args.loss_layer)
            except ValueError:
                p.error(f"--loss-layer must be an int index or a float depth fraction, got {args.loss_layer!r}")
    try:
        config = TrainConfig.of(
            model=args.model, layers=args.layers or d.layers,
            modules=tuple(m.strip() for m in args.modules.split(",") if m.strip()),
            rank=args.rank, rotate_v=not args.no_rotate_v, rotate_u=args.rotate_u, scaling=args.scaling,
            max_angle=args.max_angle,
            concept=args.concept, suffixes=args.suffixes, n_pairs=200 if args.quick else args.n_pairs,
            steps=6 if args.quick else args.steps,
            batch_size=args.batch_size, lr=args.lr, space=args.space, loss=args.loss, loss_layer=loss_layer, seed=args.seed,
        ).with_(**parse_recipe(args.recipe))
    except ValueError as err:
        p.error(str(err))
    return config, args


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, calibrate the sign and save an adapter; returns its training record (the json's ``training``)."""
    config, args = parse_args(argv)
    out = Path(args.out or f"runs/{Path(config.concept).stem}-{config.model.replace('/', '_')}-s{config.seed}")
    try:
        with run_lock(out):
            return _main(config, args, out)
    except RunLocked as err:
        args.error(str(err))


def _main(config: TrainConfig, args: argparse.Namespace, out: Path) -> dict:
    from interp.cli import model_from_args
    from interp.protocol import fit_adapter

    model = model_from_args(args)
    # representation orientation does not fix the behavioural sign: unless --no-calibrate it is
    # checked on the calibration split of the concept's own measure
    adapter, training = fit_adapter(model, config, out, calibrate=not args.no_calibrate, resume=args.resume,
                                    progress=not args.no_progress)
    sign = (getattr(adapter, "calibration", None) or {}).get("sign")
    if sign:
        print(f"sign on the {sign['n']}-item calibration split of the concept's measure: +1 {sign['score_pos']:.4f} vs "
              f"-1 {sign['score_neg']:.4f} -> orientation {sign['orientation']:+d}{' (flipped)' if sign['flipped'] else ''}")
    m = training["metrics"]
    print(
        f"done in {training['seconds']:.0f}s: orientation {adapter.orientation:+d}; validation gap "
        f"(-1) {m['gap@-1']:.3f} < (0) {m['gap@+0']:.3f} < (+1) {m['gap@+1']:.3f}: {bool(m['ordered'])}; "
        f"dNLL(-1) {m['dnll@-1']:.3f}, dNLL(+1) {m['dnll@+1']:.3f}; adapter -> {out / 'adapter'}"
    )
    adapter.detach()
    return training


if __name__ == "__main__":
    main(sys.argv[1:])
