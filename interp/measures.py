"""A concept's own behavioural measure: what "+c = more of the concept" is checked on.

Each concept file names its measure (``"measure"`` in ``interp/concepts/<concept>.json``):

* ``{"kind": "dailydilemmas", "target": "Virtue/Truthfulness"}`` -- the de-biased
  DailyDilemmas choice (:mod:`interp.evaluate`), split by the protocol's one split;
* ``{"kind": "continuations", "file": "sentiment_eval.json"}`` -- the margin of matched
  positive over negative continuations of held-out prompts (:mod:`interp.continuations`),
  split by item id with the same split seed.

A concept file may also carry ``"prompting"`` wording (positive / negative, mild and
strong) for the prompting baseline; honesty's default wording is
:class:`interp.baselines.PromptWording`'s.

This module is the one dispatch on the measure's kind: the splits (:func:`measure_splits`),
sign calibration of a trained method (:func:`calibrate_concept_sign`), the floor check
(:func:`floor_check`) and scoring with its table (:func:`score_measure`). Every split
uses :data:`interp.protocol.SPLIT_SEED`, never a training seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import xarray as xr

from interp.data import DEFAULT_CONCEPT, concepts_dir
from interp.splits import SPLIT_SEED

KINDS: tuple[str, ...] = ("dailydilemmas", "continuations")


@dataclass(frozen=True)
class Measure:
    """How a concept is measured: its kind, and the target label or item file."""

    concept: str
    kind: str
    target: str | None = None  # dailydilemmas: the value label
    file: str | None = None  # continuations: the item file (next to the concept file, or a path)
    prompting: tuple[tuple[str, str], ...] = ()  # PromptWording fields from the concept file
    n_calibration: int | None = None  # continuations: items in the calibration split (None: the default)

    @property
    def label(self) -> str:
        """What tables call the measured quantity."""
        return f"{self.target} (DailyDilemmas, de-biased)" if self.kind == "dailydilemmas" else f"{self.concept} margin"

    @property
    def unit(self) -> str:
        """The unit of its effect (Δ target): a choice probability, or a margin in nats per token."""
        return "probability" if self.kind == "dailydilemmas" else "nats/token"

    @property
    def effect_units(self) -> str:
        """The ``units`` attribute of a dataset's Δ target: what is measured, in which unit."""
        return "Δ P(choice serves the target), de-biased" if self.kind == "dailydilemmas" else f"Δ margin ({self.unit})"


def _concept_file(concept: str | Path) -> Path:
    path = Path(concept)
    if path.suffix == ".json" and path.is_file():
        return path
    path = concepts_dir() / f"{concept}.json"
    if not path.is_file():
        from interp.data import available_concepts

        raise ValueError(f"unknown concept {str(concept)!r}; shipped concepts: {available_concepts()} (or pass a .json path)")
    return path


def measure_of(concept: str | Path = DEFAULT_CONCEPT) -> Measure:
    """The measure a concept file names (a concept without one is measured on DailyDilemmas truthfulness)."""
    from interp.dilemmas import TARGET

    path = _concept_file(concept)
    raw = json.loads(path.read_text(encoding="utf-8"))
    spec = raw.get("measure", {"kind": "dailydilemmas", "target": TARGET})
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{path}: measure kind {kind!r} is not one of {list(KINDS)}")
    file = spec.get("file")
    if kind == "continuations":
        if not file:
            raise ValueError(f"{path}: a continuations measure needs 'file' (the item json)")
        file = str(Path(file) if Path(file).is_absolute() else path.parent / file)
    wording = raw.get("prompting") or {}
    return Measure(concept=str(raw.get("concept", path.stem)), kind=kind, target=spec.get("target", TARGET),
                   file=file, prompting=tuple(sorted(wording.items())), n_calibration=spec.get("n_calibration"))


def prompt_method(measure: Measure):
    """The prompting baseline in the concept's own wording."""
    from interp.baselines import PromptSteering, PromptWording

    return PromptSteering(PromptWording(**dict(measure.prompting))) if measure.prompting else PromptSteering()


def measure_splits(measure: Measure, *, split_seed: int = SPLIT_SEED, dilemmas: str | None = None) -> dict:
    """``{"calibration", "validation", "test"}`` -> the measure's items (dilemmas or continuation items)."""
    if measure.kind == "dailydilemmas":
        from interp.protocol import ProtocolConfig, dilemma_splits

        return dilemma_splits(ProtocolConfig(split_seed=split_seed, dilemmas=dilemmas))
    from interp.continuations import load_items, split_items

    kw = {"n_calibration": measure.n_calibration} if measure.n_calibration else {}
    return split_items(load_items(measure.file), split_seed=split_seed, **kw)


def _eval_config(measure: Measure, seed: int = 0):
    from interp.evaluate import EvalConfig

    return EvalConfig(target=measure.target, seed=seed)


def score_fn(model, measure: Measure, items, *, seed: int = 0, config=None):
    """``(method, c) -> per-item values`` on ``items``: the ScoreFn of :func:`interp.calibrate.calibrate_sign`.

    ``config``: the DailyDilemmas :class:`interp.evaluate.EvalConfig` (default: the measure's target, ``seed``).
    """
    if measure.kind == "dailydilemmas":
        from interp.evaluate import target_score

        config = config or _eval_config(measure, seed)
        return lambda m, c: target_score(model, m, c, items, config)
    from interp.continuations import target_values

    return lambda m, c: target_values(model, m, c, items)


def calibrate_concept_sign(model, method, concept: str | Path | Measure, *, coeff: float = 1.0, seed: int = 0,
                           split_seed: int = SPLIT_SEED, dilemmas: str | None = None):
    """Flip ``method.orientation`` so that ``+coeff`` raises the concept's own measure on its calibration split.

    Returns the :class:`interp.calibrate.SignCalibration` (also recorded in ``method.calibration``).
    """
    from interp.protocol import calibrate_method_sign

    measure = concept if isinstance(concept, Measure) else measure_of(concept)
    calibration = measure_splits(measure, split_seed=split_seed, dilemmas=dilemmas)["calibration"]
    result = calibrate_method_sign(model, method, calibration, coeff, seed=seed, measure=measure)
    method.calibration["sign"]["split_seed"] = split_seed
    return result


def floor_check(model, measure: Measure, items, *, base: xr.Dataset | None = None, progress: bool = True, seed: int = 0):
    """The floor check (:mod:`interp.floor`) of ``model`` on ``items`` of this measure -> ``(FloorCheck, prompt dataset)``."""
    from interp.floor import dilemma_floor, floor_verdict

    prompt = prompt_method(measure)
    if measure.kind == "dailydilemmas":
        return dilemma_floor(model, items, _eval_config(measure, seed), prompt=prompt, base=base, progress=progress)
    from interp.continuations import score_continuations

    ds = score_continuations(model, prompt, (-1.0, 0.0, 1.0), items, progress=progress, base=base)
    margins = {float(c): ds["margin"].isel(method=0).sel(coeff=c).values for c in (-1.0, 0.0, 1.0)}
    return floor_verdict(margins[0.0], 0.0, margins, measure=measure.label, seed=seed), ds


def stored_floor(model, measure: Measure, items, path: str | Path, *, base: xr.Dataset | None = None,
                 progress: bool = True, seed: int = 0) -> dict:
    """The floor-check record of ``items`` kept in ``path`` (json): read if there, else computed and
    written; a selection too small to check gives :func:`interp.floor.unavailable`'s record."""
    from interp.floor import unavailable
    from interp.store import write_text

    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    try:
        check = floor_check(model, measure, items, base=base, progress=progress, seed=seed)[0]
        record = check.to_dict()
        print(check.summary())
    except ValueError as err:  # too few scorable items
        record = unavailable(str(err), measure.label)
    write_text(path, json.dumps(record, indent=1))
    return record


def score_measure(model, method, measure: Measure, items, coeffs: Sequence[float], *, progress: bool = True,
                  seed: int = 0, base: xr.Dataset | None = None) -> tuple[xr.Dataset, pd.DataFrame]:
    """Score ``method`` at ``coeffs`` on the measure's ``items`` -> ``(dataset, table)``."""
    if measure.kind == "dailydilemmas":
        from interp.evaluate import metrics_table, score_dilemmas

        config = _eval_config(measure, seed)
        ds = score_dilemmas(model, method, coeffs, items, config, progress=progress, base=base)
        return ds, metrics_table(ds, config)
    from interp.continuations import continuation_table, score_continuations

    ds = score_continuations(model, method, coeffs, items, progress=progress, base=base)
    return ds, continuation_table(ds, seed=seed)


def cost_tokens(model, measure: Measure | None, items):
    """``(tokens, attention_mask)`` of ``items``' unsteered prompts: the fixed text set on
    which coherence costs (next-token KL) are measured for strength calibration."""
    if measure is None or measure.kind == "dailydilemmas":
        from interp.evaluate import prompt_tokens

        return prompt_tokens(model, items)
    from interp.data import encode_chats
    from interp.continuations import item_chats

    batch = encode_chats(model.tokenizer, item_chats(items))
    return batch.tokens, batch.attention_mask
