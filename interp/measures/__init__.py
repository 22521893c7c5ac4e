"""Measures: how a concept's "+c = more of the concept" is checked, one class per kind.

* :class:`DailyDilemmasMeasure` (``dailydilemmas``): the de-biased DailyDilemmas choice of a value label;
* :class:`ContinuationMeasure` (``continuations``): the margin of matched positive / negative continuations;
* :class:`FactsMeasure` (``facts``): the true-over-false margin of simple facts, with token bias and flips.

A concept file (``interp/concepts/<concept>.json``) names its default measure under
``"measure"`` and may offer others under ``"measures"`` (``{name: spec}``, each spec may carry
its own ``"prompting"`` wording); a concept without one is measured on DailyDilemmas truthfulness. :func:`measure_of` reads it; everything above
this package calls the :class:`Measure` interface and never asks which kind it is.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from interp.data import CONCEPT_LAYOUT, DEFAULT_CONCEPT, available_concepts, concepts_dir
from interp.files import read_json_file
from interp.dilemmas import TARGET
from interp.measures.base import Measure, ids_digest
from interp.measures.dailydilemmas import DailyDilemmasMeasure
from interp.measures.facts import FactsMeasure
from interp.measures.margins import ContinuationMeasure

KINDS: dict[str, type[Measure]] = {cls.name: cls for cls in (DailyDilemmasMeasure, ContinuationMeasure, FactsMeasure)}
_DEFAULT_SPEC = {"kind": "dailydilemmas", "target": TARGET}

__all__ = ["KINDS", "ContinuationMeasure", "DailyDilemmasMeasure", "FactsMeasure", "Measure", "concept_measures", "ids_digest",
           "unrelated_measure", "measure_of"]


def _concept_file(concept: str | Path) -> Path:
    path = Path(concept)
    if path.suffix == ".json" and path.is_file():
        return path
    path = concepts_dir() / f"{concept}.json"
    if not path.is_file():
        raise ValueError(f"unknown concept {str(concept)!r}; shipped concepts: {available_concepts()} (or pass a .json path)")
    return path


def _read_concept(path: Path) -> dict:
    raw = read_json_file(path, f"a concept: {CONCEPT_LAYOUT}")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a concept file is a json object with 'templates' (and optionally 'measure')")
    return raw


def _offered(raw: dict) -> dict[str, dict]:
    default = raw.get("measure", _DEFAULT_SPEC)
    offered = {default.get("kind", "?"): default}
    for name, spec in (raw.get("measures") or {}).items():
        offered.setdefault(name, spec)
    return offered


def concept_measures(concept: str | Path = DEFAULT_CONCEPT) -> dict[str, dict]:
    """``{measure name: spec}`` a concept offers, its default first."""
    return _offered(_read_concept(_concept_file(concept)))


def measure_of(concept: str | Path = DEFAULT_CONCEPT, measure: str | None = None, **overrides) -> Measure:
    """The measure ``measure`` (default: the concept's default) of a concept, with settings ``overrides``
    (e.g. ``dilemmas=`` for DailyDilemmas' folder; settings a kind lacks are ignored)."""
    path = _concept_file(concept)
    raw = _read_concept(path)
    offered = _offered(raw)
    name = measure or next(iter(offered))
    if name not in offered:
        raise ValueError(f"concept {raw.get('concept', path.stem)!r} has no measure {name!r}; it offers {list(offered)}")
    spec = dict(offered[name])
    kind = spec.pop("kind", name)
    wording = spec.pop("prompting", None) or raw.get("prompting") or {}  # a measure's own prompting, else the concept's
    if kind not in KINDS:
        raise ValueError(f"{path}: measure kind {kind!r} is not one of {list(KINDS)}")
    cls = KINDS[kind]
    if "file" in spec:
        file = Path(spec["file"])
        spec["file"] = str(file if file.is_absolute() else path.parent / file)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{path}: measure {name!r} has unknown setting(s) {unknown}; {kind} takes {sorted(known - {'concept', 'prompting'})}")
    settings = {**spec, **{k: v for k, v in overrides.items() if k in known and v is not None}}
    return cls(concept=str(raw.get("concept", path.stem)), prompting=tuple(sorted(wording.items())), **settings)


def unrelated_measure(measure: Measure) -> Measure:
    """The measure whose prompts are text unrelated to ``measure``'s concept, where a method's selectivity is read
    (the KL it spends off its concept): sentiment's neutral prompts for factual honesty, simple factual statements
    for everything else (sentiment, DailyDilemmas, a user's concept)."""
    return measure_of("sentiment") if measure.key == "honesty-facts" else measure_of("honesty", "facts")
