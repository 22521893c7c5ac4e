"""The training loop: seeded batches, AdamW with warmup + cosine, checkpoints that resume bit
for bit, the orientation set from the training separation (see :mod:`interp.train`)."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.adapters.io import site_weight_hash
from interp.backends import backend_of
from interp.data import (
    ContrastivePair,
    PairSplit,
    batch_indices,
    make_pairs,
    pairs_hash,
    split_by_suffix,
    tokenize_pairs,
)
from interp.losses import (
    gap_scale,
    gaps,
    preference_direction,
)
from interp.sites import Site, resid_hook
from interp.backends import select_sites
from interp.files import atomic_write, config_differences, run_lock, said_differences, write_text

from interp.train.config import ADDED_SETTINGS, CHECKPOINT, LOG, RESUME_FREE, TrainConfig
from interp.train.objectives import Objective, StepInputs, objective_of
from interp.train.step import _forward, _frozen_base, evaluate_separation, loss_layer_of, lr_factor, site_basis
from interp.adapters.innerpissa import attach


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
    ``out`` is held for this run (:func:`interp.files.run_lock`): a second run into it fails at once.
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
    base_hash = backend_of(model).weight_hash if ckpt_path else ""
    if resume and not (ckpt_path and ckpt_path.is_file()):
        raise ValueError(f"--resume needs a checkpoint at {ckpt_path}, found none")

    sites = list(adapter.sites)
    layer = loss_layer_of(model, sites, config.loss_layer)
    hook = resid_hook(layer)
    U = site_basis(model, sites, layer, config.adapter.rank)[1] if config.space == "dHS@U" else None
    device = backend_of(model).device
    U = U.to(device) if U is not None else None

    params = list(adapter.parameters())
    if not params:
        raise ValueError("the adapter has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config.steps, config.warmup_fraction))

    calib = split.train[: config.n_calibration]
    history: list[dict] = []
    start = 0
    if resume:
        start, direction, history, scale = _resume(ckpt_path, base_hash, config, adapter, opt, sched, device)
    else:
        direction, scale = _direction(model, adapter, calib, hook, config, U, device)
    log_path = out / LOG if out else None
    if log_path:
        kept = [json.dumps(r) for r in history]
        write_text(log_path, "".join(line + "\n" for line in kept))

    objective = objective_of(config)
    objective.prepare(model, split.train, progress=progress)
    bar = tqdm(range(start, config.steps), desc="train", disable=not progress, initial=start, total=config.steps)
    with _frozen_base(model, adapter), adapter.oriented(1):
        for step in bar:
            record = _step(model, adapter, objective, split, step, direction, scale, history, config, hook, U, opt, sched,
                           params)
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

    return _finish(model, adapter, objective, split, history, direction, hook, U, config, out, progress,
                   time.perf_counter() - t0)


def _finish(model, adapter, objective: Objective, split: PairSplit, history: list[dict], direction, hook: str, U,
            config: TrainConfig, out: Path | None, progress: bool, seconds: float) -> TrainResult:
    """Set the orientation from the training data only (the sign of the separation summed over all steps,
    the guard's own final decision) and measure the validation separation."""
    total = sum(r["separation"] for r in history)
    # distillation and preference fix the sign by construction (+1 is the chosen persona's behaviour); ReprPO's guard decides it
    orientation = 1 if objective.fixes_sign or total >= 0 else -1
    adapter.orientation = orientation
    metrics = evaluate_separation(
        model, adapter, split.val[: config.n_validation], direction, hook=hook, space=config.space, U=U,
        batch_size=config.eval_batch_size, last_tokens=config.last_tokens, progress=progress, system=config.system,
        max_length=config.max_length,
    )
    metrics["train_separation_mean"] = total / max(1, len(history))
    metrics["ordered"] = float(metrics["gap@-1"] < metrics["gap@+0"] < metrics["gap@+1"])
    return TrainResult(
        orientation=orientation, metrics=metrics, history=history, direction=direction.detach().cpu(), loss_hook=hook,
        pairs_hash=pairs_hash(list(split.train) + list(split.val)), config=config, seconds=seconds, out=out,
        extra={"n_train": len(split.train), "n_val": len(split.val), "n_val_scored": min(len(split.val), config.n_validation),
               "calibration_pairs": min(len(split.train), config.n_calibration),
               "base_weight_hash": site_weight_hash(model, list(adapter.sites))},
    )


def _resume(ckpt_path: Path, base_hash: str, config: TrainConfig, adapter, opt, sched, device):
    """``(step, direction, history, scale)`` of a checkpoint this run may continue (checked, then restored)."""
    try:  # tensors and plain data only: a checkpoint from elsewhere cannot run code here
        state = torch.load(ckpt_path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{ckpt_path} is not a checkpoint this version wrote (it holds objects other than tensors "
                         f"and plain data, refused unloaded: {str(err).splitlines()[0]}); delete it to train afresh") from None
    if not isinstance(state, dict) or "config" not in state or "base_weight_hash" not in state:
        raise ValueError(f"{ckpt_path} records no training config or base-weight hash, so nothing says it belongs to "
                         "this run; delete it to train afresh")
    if state["base_weight_hash"] != base_hash:
        raise ValueError(f"{ckpt_path} was written on other base weights (hash {state['base_weight_hash']}, here "
                         f"{base_hash}): the same model spec now loads different weights; delete it to train afresh")
    # continuing with other settings would give an adapter neither run describes
    diff = config_differences(state["config"], config.record(), ignore=RESUME_FREE, absent_means=ADDED_SETTINGS)
    if diff:
        raise ValueError(f"{ckpt_path} was written with other settings ({said_differences(diff, 'in the checkpoint')}); "
                         "resume with those or start afresh")
    _restore(state, adapter, opt, sched)
    return state["step"], state["direction"].to(device), list(state["history"]), state["scale"].to(device)


@torch.no_grad()
def _direction(model, adapter, calib: Sequence[ContrastivePair], hook: str, config: TrainConfig, U, device):
    """The frozen preference direction (PC1 of reference differences on training pairs only) and the gap scale."""
    tok_kw = dict(system=config.system, max_length=config.max_length)
    with adapter.oriented(1):
        h = []
        for i in range(0, len(calib), config.eval_batch_size):
            b = tokenize_pairs(model.tokenizer, calib[i : i + config.eval_batch_size], **tok_kw).to(device)
            hb, _ = _forward(model, b, hook, last_tokens=config.last_tokens)
            h.append((hb[: b.n_pairs], hb[b.n_pairs :]))
        h_cho, h_rej = torch.cat([x for x, _ in h]), torch.cat([y for _, y in h])
        direction = preference_direction(h_cho, h_rej, config.space, U)
        # one fixed unit for every step's separation: mean |reference gap| on the calibration set
        return direction, gap_scale(gaps(h_cho, h_rej, direction, config.space, U))


def _step(model, adapter, objective: Objective, split: PairSplit, step: int, direction, scale, history: list[dict],
          config: TrainConfig, hook: str, U, opt, sched, params) -> dict:
    """One optimiser step on the step's seeded batch; its metrics record."""
    pairs = [split.train[i] for i in batch_indices(len(split.train), config.batch_size, step, config.seed)]
    batch = tokenize_pairs(model.tokenizer, pairs, system=config.system,
                           max_length=config.max_length).to(backend_of(model).device)
    inputs = StepInputs(pairs, batch, step, direction, scale, hook, U, prior=sum(r["separation"] for r in history))
    loss, parts = objective.loss(model, adapter, inputs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    record = {"step": step + 1, **parts, "grad_norm": float(grad_norm), "lr": lr}
    if (step + 1) % config.diagnostics_every == 0 or step + 1 == config.steps:
        record["diagnostics"] = adapter.diagnostics()
    return record


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

    if sites is None:
        sites = select_sites(model, layers=config.layers, modules=list(config.modules))
    adapter = attach(model, list(sites), config.adapter_config())
    return adapter, train(model, adapter, build_pairs(config), config, **train_kwargs)


