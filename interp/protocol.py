"""The fair-comparison protocol: every method is fitted, calibrated, scaled and scored alike.

1. Items: the measure's one calibration / validation / test split (:meth:`Measure.splits`,
   :data:`interp.splits.SPLIT_SEED`), never a training seed's.
2. Fit (:func:`fit_method`): a registered method (:data:`METHODS`: InnerPiSSA and its
   ablations and LoRA trained on the concept's pairs, steering vectors fitted on them,
   prompting written in the concept's words) at the training config's layers.
3. Sign: each method is scored on the calibration split at ``-c`` and ``+c`` and its
   orientation flipped if ``+c`` lowers the measure (:meth:`Measure.calibrate_sign`);
   representation orientation does not fix the behavioural sign.
4. Strength (per budget): the coefficient whose coherence cost on fixed texts (the
   calibration items' prompts) reaches a budget in nats (:func:`calibrate_method_strength`).
5. Score on one named split at ``-c, 0, +c`` (:meth:`Measure.score`); the test split is
   touched once per final configuration, and every record says which split it is from.

:func:`run_method` is that sequence, once: it writes the scores and a ``result.json`` that
marks the run done, and resumes what a folder holds (a saved adapter is reloaded, a budget
not yet scored is added, a record made with other weights is refused). :func:`fit_adapter`
is the one fit of every trained method, for the training command and the analyses alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from torch import Tensor

from interp.adapters.innerpissa import ABLATIONS, attach as attach_innerpissa, select_directions
from interp.adapters.io import load_adapter, read_adapter_config, save_adapter
from interp.adapters.lora import LoRAConfig, attach as attach_lora
from interp.adapters.vector import VectorConfig, attach as attach_vector
from interp.backends import backend_of
from interp.baselines import MeanDiff, PCASteering, RandomDirection, SSpaceMeanDiff, VectorSteering
from interp.calibrate import CalibratedStrength, calibrate_strength, coherence_cost, record_strength
from interp.data import tokenize_pairs
from interp.files import check_run_config, RECOMPUTE, read_json_file, load_dataset, load_or_compute, run_lock, write_netcdf, write_text
from interp.measures import Measure, ids_digest, measure_of, unrelated_measure
from interp.sites import parse_layers
from interp.backends import select_sites
from interp.steering import SteeringMethod
from interp.train import ADDED_SETTINGS, CHECKPOINT, TrainConfig, build_pairs, train

# --------------------------------------------------------------------------- the method registry

# trained methods: name -> TrainConfig overrides on top of the recipe (InnerPiSSA ablations, the loss-space ablation, LoRA)
TRAINED: dict[str, dict] = {"innerpissa": {}, **ABLATIONS, "loss_dHS@U": {"space": "dHS@U"}, "lora": {},
                            "trained_vector": {"modules": ("mlp.out",)}}  # one vector per layer of the band
VECTORS: dict[str, type[VectorSteering]] = {"pca": PCASteering, "mean_diff": MeanDiff, "s_mean_diff": SSpaceMeanDiff,
                                            "random": RandomDirection}
METHODS: tuple[str, ...] = (*TRAINED, *VECTORS, "prompt")
SEEDED: frozenset[str] = frozenset({*TRAINED, "random"})  # methods a seed changes; the others are fitted alike for every seed
NO_BUDGET = "n/a"  # a row at the method's own c = ±1 (trained adapters, prompting), not scaled to a budget
# selectivity: next-token KL (nats/token) at +c and -c on text unrelated to the concept (interp.measures.unrelated_measure)
OFF_KEYS: tuple[str, ...] = ("off_kl", "off_kl_neg")
RESULT = "result.json"


@dataclass(frozen=True)
class MethodSpec:
    """What to run: a registered method, fitted as ``train`` says (concept, layers, seed, recipe)."""

    method: str
    train: TrainConfig = TrainConfig()
    label: str = ""  # the row's name in a table (a recipe's name); default: the method

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(METHODS)}")

    @property
    def name(self) -> str:
        return self.label or self.method

    @property
    def trained(self) -> bool:
        return self.method in TRAINED

    def fit_config(self) -> TrainConfig:
        """The training settings of this method: the recipe with the method's own overrides."""
        return self.train.with_(**TRAINED[self.method]) if self.method in TRAINED else self.train

    def record(self) -> dict:
        """The settings a run folder is made with (checked on resume)."""
        return {"method": self.method, **self.fit_config().record()}


# --------------------------------------------------------------------------- fitting


ADAPTER_KINDS: tuple[str, ...] = ("innerpissa", "lora", "trained_vector")


def attach_adapter(model, sites, train_config: TrainConfig, kind: str = "innerpissa"):
    """A fresh adapter of ``kind`` (``innerpissa``, ``lora`` of rank 8, or a ``trained_vector``) at ``sites``, built
    as the training config says."""
    if kind == "lora":
        return attach_lora(model, sites, LoRAConfig(rank=8, seed=train_config.seed))
    if kind == "trained_vector":
        return attach_vector(model, sites, VectorConfig(seed=train_config.seed))
    config = train_config.adapter_config()
    indices = None
    if config.select != "top":  # the basis chosen on the training pairs' first n_calibration pairs
        pairs = build_pairs(train_config).train[: train_config.n_calibration]
        batch = tokenize_pairs(model.tokenizer, pairs, system=train_config.system, max_length=train_config.max_length)
        indices = select_directions(model, sites, batch, config)
    return attach_innerpissa(model, sites, config, indices)


def fit_adapter(model, train_config: TrainConfig, folder: str | Path, *, kind: str = "innerpissa", measure: Measure | None = None,
                calibration=None, calibrate: bool = True, coeff: float = 1.0, resume: bool | None = None,
                progress: bool = True):
    """Train an adapter into ``folder``, calibrate its sign, save it: the one fit of every trained method.

    ``resume=None`` reuses what ``folder`` holds (a saved adapter is loaded; a checkpoint is
    continued), as the analyses want; ``False`` trains afresh, ``True`` continues from the
    checkpoint. The sign is calibrated on ``calibration`` (default: the calibration split of
    ``measure``, default the concept's own) unless ``calibrate`` is False. Returns ``(adapter,
    training record)``, the adapter attached to ``model``; a failure before the save detaches it.
    """
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose from {list(ADAPTER_KINDS)}")
    folder = Path(folder)
    saved = folder / "adapter"
    if resume is None and (saved / "adapter.json").is_file():
        return load_adapter(model, saved), read_adapter_config(saved).get("training", {})
    sites = select_sites(model, layers=train_config.layers, modules=list(train_config.modules))
    adapter = attach_adapter(model, sites, train_config, kind)
    try:
        result = train(model, adapter, build_pairs(train_config), train_config, out=folder,
                       resume=(folder / CHECKPOINT).is_file() if resume is None else resume, progress=progress)
        if calibrate:
            measure = measure or measure_of(train_config.concept)
            items = measure.splits()["calibration"] if calibration is None else calibration
            measure.calibrate_sign(model, adapter, items, coeff, seed=train_config.seed)
        training = result.training_extra()
        save_adapter(adapter, saved, extra={"training": training})
    except BaseException:
        adapter.detach()
        raise
    return adapter, training


def fit_vector_method(model, method: str, train_config: TrainConfig, seed: int) -> VectorSteering:
    """A steering-vector baseline (``pca``, ``mean_diff``, ``s_mean_diff``, ``random``) fitted on the
    training config's concept pairs at its layers, as every comparison fits it."""
    layers = parse_layers(train_config.layers, backend_of(model).n_layers)
    pairs = build_pairs(train_config).train[: max(train_config.n_calibration, 64)]
    batch = tokenize_pairs(model.tokenizer, pairs, system=train_config.system, max_length=train_config.max_length)
    kwargs = {"seed": seed} if method == "random" else {"rank": train_config.adapter.rank} if method == "s_mean_diff" else {}
    return VECTORS[method].fit_pairs(model, batch, layers, **kwargs)


def fit_method(model, spec: MethodSpec, measure: Measure, calibration, folder: str | Path, *,
               progress: bool = True) -> tuple[SteeringMethod, dict]:
    """A fitted, sign-calibrated method and its training record (trained ones are saved under ``folder``)."""
    config = spec.fit_config()
    if spec.trained:
        kind = spec.method if spec.method in ADAPTER_KINDS else "innerpissa"  # ablations are InnerPiSSA variants
        return fit_adapter(model, config, folder, kind=kind, measure=measure,
                           calibration=calibration, progress=progress)
    method = measure.prompt_method() if spec.method == "prompt" else fit_vector_method(model, spec.method, config, config.seed)
    measure.calibrate_sign(model, method, calibration, seed=config.seed)
    return method, {}


def calibrate_method_strength(model, method: SteeringMethod, measure: Measure, calibration, budget: float, *,
                              kind: str = "kl", n_texts: int = 16, c_max: float = 16.0) -> CalibratedStrength:
    """The coefficient whose coherence cost (``kind``, nats) on the first ``n_texts`` calibration items'
    prompts reaches ``budget`` (recorded on the method)."""
    tokens, mask = measure.cost_tokens(model, calibration.head(n_texts))
    strength = calibrate_strength(coherence_cost(model, method, tokens, mask, kind=kind), budget, c_max=c_max, symmetric=True)
    record_strength(method, strength)
    return strength


# --------------------------------------------------------------------------- one run


def budget_key(budget: float | str, kind: str = "kl") -> str:
    """A budget's record key: ``"n/a"`` (the method's own c = ±1), ``"0.3"`` (next-token KL), ``"nll0.2"`` (ΔNLL)."""
    if budget == NO_BUDGET:
        return NO_BUDGET
    return f"{float(budget):g}" if kind == "kl" else f"{kind}{float(budget):g}"


def budget_amount(key: str) -> float:
    """The nats of a budget key (the inverse of :func:`budget_key`: ``"0.3"``, ``"1"``, ``"nll0.2"``)."""
    return float(str(key).lstrip("abcdefghijklmnopqrstuvwxyz"))


def scores_path(folder: Path, key: str) -> Path:
    """Where a run's scores at one budget are stored (``eval_<key>.nc``; ``eval_none.nc`` at c = ±1)."""
    return folder / f"eval_{'none' if key == NO_BUDGET else key}.nc"


def row_of(record: dict, key: str) -> dict:
    """A finished record's row at one budget key (empty if not scored)."""
    return next((r for r in record.get("rows", []) if r["budget"] == key), {})


def _scored_row(measure: Measure, ds: xr.Dataset, key: str, coeff: float, reached: bool, seed: int) -> dict:
    row = measure.metrics_at(ds, coeff, seed)
    return {"budget": key, "coeff": coeff, "reached": reached, **row,
            "monotonic": bool(row["delta_target_neg"] < 0 < row["delta_target"])}


def base_scores(model, measure: Measure, items, path: str | Path, *, progress: bool = True) -> xr.Dataset:
    """The unsteered model's scores on ``items`` kept at ``path`` (reused by every method: c = 0 is the same
    model), computed and written if absent; a stored dataset made with other weights or of other items is refused."""
    here = backend_of(model).weight_hash
    ds = load_or_compute(path, lambda: measure.base(model, items, progress=progress))
    if ds.attrs.get("weight_hash") != here:
        raise ValueError(f"{path} holds scores of other model weights (hash {ds.attrs.get('weight_hash') or 'not recorded'},"
                         f" this model {here}); pass another --out, or delete the file to score again")
    stored = ds[measure.item_dim].values
    if ids_digest(stored) != ids_digest(items.ids):  # the floor check's identity of an item set
        raise ValueError(f"{path} holds base scores of other items ({len(stored)} there, {len(items.ids)} asked for: another "
                         "--n-eval or --split?); pass another --out, or delete the file to score again")
    return ds


def _check_weights(record: dict, folder: Path, weight_hash: str) -> None:
    made = record.get("weight_hash")
    if made != weight_hash:
        raise ValueError(f"{folder / RESULT} was made with other model weights (hash {made or 'not recorded'}, this model "
                         f"{weight_hash}); pass another --out, or delete the folder to start over")


def off_concept_texts(model, measure: Measure, n: int = 16) -> tuple[Tensor, Tensor]:
    """``(tokens, mask)`` of ``n`` prompts unrelated to ``measure``'s concept (:func:`interp.measures.unrelated_measure`'s
    calibration items): where a method's selectivity, the KL it spends off its concept, is measured."""
    other = unrelated_measure(measure)
    return other.cost_tokens(model, other.scorable(other.splits()["calibration"]).head(n))


def _off_kl(cost, coeff: float) -> dict[str, float]:
    return {"off_kl": cost(coeff), "off_kl_neg": cost(-coeff)}


def run_method(model, spec: MethodSpec, measure: Measure, splits: dict, folder: str | Path, *, split: str = "validation",
               budgets: Sequence[float] = (), budget_kind: str = "kl", unit: bool | None = None,
               base: xr.Dataset | None = None, n_cost_texts: int = 16, c_max: float = 16.0, progress: bool = True,
               off_texts: tuple[Tensor, Tensor] | None = None) -> dict:
    """Fit, calibrate the sign, scale to each budget, score on ``split``, write, resume: one method, once.

    Rows: the method at its own ``c = ±1`` (``unit``; default for trained methods and prompting,
    which has no continuous dose) and at each budget. ``folder`` is held for this run only, so runs
    in parallel processes can share a results folder; ``result.json`` marks it done, and a
    finished run gains a missing budget without refitting. Metrics are re-derived from the
    stored scores on every read, so a record follows the current metric definitions.
    With ``off_texts`` (:func:`off_concept_texts`), every row also holds :data:`OFF_KEYS`, the KL
    the method spends at its ``±c`` on text unrelated to the concept (added to a finished run's
    rows on resume; prompting, which rewrites the prompt, has none).
    """
    folder = Path(folder)
    seed = spec.train.seed
    unit = (spec.trained or spec.method == "prompt") if unit is None else unit
    amounts = {} if spec.method == "prompt" else {budget_key(b, budget_kind): float(b) for b in budgets}
    keys = ([NO_BUDGET] if unit or spec.method == "prompt" else []) + list(amounts)
    weight_hash = backend_of(model).weight_hash
    with run_lock(folder):
        check_run_config(folder, spec.record(), absent_means=ADDED_SETTINGS)
        done = folder / RESULT
        record = read_json_file(done, "a run record", RECOMPUTE) if done.is_file() else None
        if record is not None:
            _check_weights(record, folder, weight_hash)
            for row in record["rows"]:  # never stale: from the stored scores
                row.update(_scored_row(measure, load_dataset(scores_path(folder, row["budget"])), row["budget"], row["coeff"],
                                       row["reached"], seed))
        missing = [k for k in keys if record is None or not row_of(record, k)]
        selective = off_texts is not None and spec.method != "prompt"
        unmeasured = [r for r in record["rows"] if "off_kl" not in r] if record and selective else []
        if not missing and not unmeasured:
            return record
        t0 = time.perf_counter()
        method, training = fit_method(model, spec, measure, splits["calibration"], folder, progress=progress)
        try:
            off_cost = coherence_cost(model, method, *off_texts, kind="kl") if selective else None
            for row in unmeasured:  # a run finished before selectivity was measured: its stored strengths, read again
                row.update(_off_kl(off_cost, row["coeff"]))
            rows = list(record["rows"]) if record else []
            for key in missing:
                coeff, reached = 1.0, True
                if key != NO_BUDGET:
                    strength = calibrate_method_strength(model, method, measure, splits["calibration"], amounts[key],
                                                         kind=budget_kind, n_texts=n_cost_texts, c_max=c_max)
                    coeff, reached = float(strength), bool(strength.reached)
                ds = measure.score(model, method, splits[split], (-coeff, 0.0, coeff), progress=progress, seed=seed, base=base)
                write_netcdf(ds, scores_path(folder, key))
                rows.append(_scored_row(measure, ds, key, coeff, reached, seed) | (_off_kl(off_cost, coeff) if selective else {}))
        finally:
            if hasattr(method, "detach"):
                method.detach()
        record = record or {
            "method": spec.method, "label": spec.name, "seed": seed, "split": split, "n_items": len(splits[split]),
            "measure": measure.label, "weight_hash": weight_hash, "orientation": int(method.orientation),
            "calibration": method.calibration, "config": method.config(),
            "training": {"seconds": training.get("seconds", np.nan), "gaps": training.get("metrics", {}),
                         "n_sites": len(getattr(method, "sites", getattr(method, "vectors", ()))),
                         "fit_seconds": round(time.perf_counter() - t0, 1)},
        }
        record["rows"] = rows
        write_text(done, json.dumps(record, indent=1, default=str))
        return record
