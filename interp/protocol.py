"""The fair-comparison protocol: every method is fitted, calibrated and scored alike.

1. DailyDilemmas is split by dilemma id into calibration / validation / test
   (:func:`dilemma_splits`; :func:`interp.calibrate.three_way_split`) with its own seed,
   :data:`SPLIT_SEED`, never the training seed: every analysis and every training seed
   sees the same test split, so no choice made on one run's validation dilemmas can
   touch another run's test dilemmas.
2. Sign: each method is scored on the calibration split at ``-c`` and ``+c`` and its
   orientation flipped if ``+c`` lowers the target score (:func:`calibrate_method_sign`);
   representation orientation does not fix the behavioural sign.
3. Strength (optional): the coefficient whose coherence cost on a fixed text set (the
   calibration prompts) reaches a budget in nats (:func:`calibrate_method_strength`).
4. Scoring on one named split at ``-c, 0, +c`` (:func:`score_method`); the test split is
   touched once per final configuration, and every result says which split it is from.

:func:`fit_adapter` is the one fit of every trained method (InnerPiSSA, LoRA), for the
training CLI and the analyses alike: it trains (resuming or reloading what is on disk),
calibrates the sign and saves the adapter with its training and calibration records, so a
loaded adapter means "+c = more of the concept" without re-running.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from interp.calibrate import (
    CalibratedStrength,
    calibrate_sign,
    calibrate_strength,
    coherence_cost,
    record_strength,
)
from interp.splits import SPLIT_SEED
from interp.steering import SteeringMethod




@dataclass(frozen=True)
class ProtocolConfig:
    """Splits and scoring shared by every method of one comparison.

    ``split_seed`` is the split's own seed (default :data:`SPLIT_SEED`); it is not a
    training seed, and changing it makes results incomparable with every other run.
    """

    split_seed: int = SPLIT_SEED
    n_calibration: int = 64
    validation_fraction: float = 0.3
    n_validation: int | None = None  # cap on validation dilemmas scored (None: all)
    n_test: int | None = None  # cap on test dilemmas scored (None: all)
    dilemmas: str | None = None  # folder; None: $INTERP_DILEMMAS_DIR or ../shared/data/daily_dilemmas


def dilemma_splits(config: ProtocolConfig = ProtocolConfig()) -> dict:
    """``{"calibration", "validation", "test"}`` -> disjoint DailyDilemmas subsets (capped)."""
    from interp.dilemmas import load_dilemmas, split_dilemmas

    splits = split_dilemmas(load_dilemmas(config.dilemmas), seed=config.split_seed, n_calibration=config.n_calibration,
                            validation_fraction=config.validation_fraction)
    caps = {"validation": config.n_validation, "test": config.n_test}
    return {name: (part.head(caps[name]) if caps.get(name) else part) for name, part in splits.items()}


def calibrate_method_sign(model, method: SteeringMethod, calibration, coeff: float = 1.0, *, seed: int = 0,
                          config=None, measure=None):
    """Flip ``method.orientation`` so that ``+coeff`` raises the target score on ``calibration``.

    ``measure`` (:class:`interp.measures.Measure`; default: DailyDilemmas with ``config``'s
    target) says what the calibration items are and how they are scored.
    """
    from interp.evaluate import EvalConfig, target_score

    if measure is not None:
        from interp.measures import score_fn

        result = calibrate_sign(method, score_fn(model, measure, calibration, seed=seed, config=config), coeff, seed=seed)
        method.calibration["sign"] = {**method.calibration["sign"], "measure": measure.label, "split": "calibration"}
        return result
    config = config or EvalConfig()
    return calibrate_sign(method, lambda m, c: target_score(model, m, c, calibration, config), coeff, seed=seed)


def calibrate_method_strength(
    model, method: SteeringMethod, calibration, budget: float, *, kind: str = "kl", n_texts: int = 16, c_max: float = 16.0,
    measure=None,
) -> CalibratedStrength:
    """The coefficient whose coherence cost (``kind``, nats) on calibration prompts reaches ``budget``.

    The prompts are the first ``n_texts`` calibration items of ``measure`` (default: dilemmas).
    """
    from interp.measures import cost_tokens

    tokens, mask = cost_tokens(model, measure, calibration.head(n_texts))
    strength = calibrate_strength(coherence_cost(model, method, tokens, mask, kind=kind), budget, c_max=c_max, symmetric=True)
    record_strength(method, strength)
    return strength


def score_method(model, method: SteeringMethod, dilemmas, *, coeff: float = 1.0, progress: bool = True,
                 config=None, base: xr.Dataset | None = None, measure=None) -> tuple[xr.Dataset, dict]:
    """Score ``method`` at ``-coeff, 0, +coeff``; returns the dataset and the ``+coeff`` metrics row.

    ``base``: these dilemmas already scored at c = 0 (reused: c = 0 is the same model for every method).
    ``measure``: a continuation measure scores its items instead of dilemmas (same row keys).
    """
    from interp.evaluate import EvalConfig, score_dilemmas

    if measure is not None and measure.kind != "dailydilemmas":
        from interp.measures import score_measure

        ds, _ = score_measure(model, method, measure, dilemmas, (-coeff, 0.0, coeff), progress=progress,
                              seed=(config.seed if config else 0), base=base)
        return ds, scored_metrics(ds, coeff, config, measure)
    config = config or EvalConfig()
    ds = score_dilemmas(model, method, (-coeff, 0.0, coeff), dilemmas, config, progress=progress, base=base)
    return ds, scored_metrics(ds, coeff, config)


def scored_metrics(ds: xr.Dataset, coeff: float, config=None, measure=None) -> dict[str, float]:
    """The ``+coeff`` metrics row of a scored dataset (as :func:`score_method` returns it).

    Resumed analyses call this on their stored scores, so a finished run's table always
    follows the current metric definitions. Keys are :data:`interp.tables.METRIC_KEYS`
    (``delta_target_neg`` / ``delta_nll_neg`` are those at ``-coeff``); a continuation measure
    leaves the DailyDilemmas-only ones NaN.
    """
    if measure is not None and measure.kind != "dailydilemmas":
        from interp.continuations import continuation_table

        table = continuation_table(ds, seed=config.seed if config else 0)
    else:
        from interp.evaluate import EvalConfig, metrics_table

        table = metrics_table(ds, config or EvalConfig())
    return metrics_at(table, coeff)


def metrics_at(table, coeff: float) -> dict[str, float]:
    """The ``+coeff`` row of a measure's metrics table (evaluate's or continuations') as
    :data:`interp.tables.METRIC_KEYS` (NaN where the measure has no such metric), with
    ``delta_target_neg`` / ``delta_nll_neg`` read from its ``-coeff`` row."""
    from interp.tables import METRIC_KEYS

    coeffs = table["coeff"].astype(float).to_numpy()
    pos, neg = table[np.isclose(coeffs, coeff)], table[np.isclose(coeffs, -coeff)]
    row = {k: float(pos[k].iloc[0]) if k in pos else math.nan for k in METRIC_KEYS}
    row["delta_target_neg"] = float(neg["delta_target"].iloc[0]) if len(neg) else math.nan
    row["delta_nll_neg"] = float(neg["delta_nll"].iloc[0]) if len(neg) else math.nan
    return row


TRAINED_KINDS: tuple[str, ...] = ("innerpissa", "lora")


def fit_adapter(model, train_config, folder: str | Path, *, kind: str = "innerpissa", calibration=None, measure=None,
                calibrate: bool = True, coeff: float = 1.0, resume: bool | None = None, config=None,
                progress: bool = True):
    """Train an adapter into ``folder``, calibrate its sign, save it: the one fit of every trained method.

    ``kind``: ``"innerpissa"`` (the config's rank, rotations, scaling, bound) or ``"lora"`` (rank 8,
    a baseline), at the config's layers and modules. ``resume=None`` reuses what ``folder`` holds
    (a saved adapter is loaded; a checkpoint is continued), as the analyses want; ``False``
    trains afresh, ``True`` continues from the checkpoint (the training CLI). The sign is
    calibrated on ``calibration`` (default: the calibration split of ``measure``, default the
    concept's own) unless ``calibrate`` is False. The saved json carries the training record
    and the calibration. Returns ``(adapter, training record)``, the adapter attached to
    ``model``; a failure before the save detaches it again.
    """
    from interp.adapters.io import load_adapter, read_adapter_config, save_adapter
    from interp.sites import select_sites
    from interp.train import CHECKPOINT, build_pairs, train

    if kind not in TRAINED_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose from {list(TRAINED_KINDS)}")
    folder = Path(folder)
    saved = folder / "adapter"
    if resume is None and (saved / "adapter.json").is_file():
        return load_adapter(model, saved), read_adapter_config(saved).get("training", {})
    sites = select_sites(model, layers=train_config.layers, modules=list(train_config.modules))
    adapter = attach_adapter(model, sites, train_config, kind)
    try:
        result = train(model, adapter, build_pairs(train_config), train_config, out=folder,
                       resume=(folder / CHECKPOINT).is_file() if resume is None else resume, progress=progress)
        if calibrate and calibration is None:
            from interp.measures import calibrate_concept_sign

            calibrate_concept_sign(model, adapter, measure or train_config.concept, coeff=coeff, seed=train_config.seed)
        elif calibrate:
            calibrate_method_sign(model, adapter, calibration, coeff, seed=train_config.seed, config=config, measure=measure)
        training = result.training_extra()
        save_adapter(adapter, saved, extra={"training": training})
    except BaseException:
        adapter.detach()
        raise
    return adapter, training


def attach_adapter(model, sites, train_config, kind: str = "innerpissa"):
    """A fresh adapter of ``kind`` at ``sites``, built as the training config says (see :func:`fit_adapter`)."""
    if kind == "lora":
        from interp.adapters.lora import LoRAConfig, attach

        return attach(model, sites, LoRAConfig(rank=8, seed=train_config.seed))
    from interp.adapters.innerpissa import attach, select_directions

    config = train_config.adapter_config()
    indices = None
    if config.select != "top":  # the basis chosen on the training pairs' first n_calibration pairs
        from interp.data import tokenize_pairs
        from interp.train import build_pairs

        pairs = build_pairs(train_config).train[: train_config.n_calibration]
        batch = tokenize_pairs(model.tokenizer, pairs, system=train_config.system, max_length=train_config.max_length)
        indices = select_directions(model, sites, batch, config)
    return attach(model, sites, config, indices)


def fit_vector_method(model, method: str, train_config, seed: int):
    """A steering-vector baseline (``pca``, ``mean_diff``, ``s_mean_diff``, ``random``) fitted on the
    training config's concept pairs at its layers, as every comparison fits it."""
    from interp import baselines
    from interp.data import tokenize_pairs
    from interp.sites import n_layers, parse_layers
    from interp.train import build_pairs

    layers = parse_layers(train_config.layers, n_layers(model))
    pairs = build_pairs(train_config).train[: max(train_config.n_calibration, 64)]
    batch = tokenize_pairs(model.tokenizer, pairs, system=train_config.system, max_length=train_config.max_length)
    cls = {"pca": baselines.PCASteering, "mean_diff": baselines.MeanDiff, "s_mean_diff": baselines.SSpaceMeanDiff,
           "random": baselines.RandomDirection}[method]
    kwargs = {"seed": seed} if method == "random" else {"rank": train_config.adapter.rank} if method == "s_mean_diff" else {}
    return cls.fit_pairs(model, batch, layers, **kwargs)


def base_scores(model, dilemmas, *, progress: bool = True, config=None) -> xr.Dataset:
    """The unsteered model's scores on ``dilemmas`` (pass as ``base=`` to :func:`score_method`)."""
    from interp.evaluate import EvalConfig, score_dilemmas

    return score_dilemmas(model, None, (0.0,), dilemmas, config or EvalConfig(), progress=progress)
