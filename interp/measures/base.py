"""What every measure offers: one interface, one class per kind of measure.

A *measure* says how "+c = more of the concept" is checked: its items and their one
calibration / validation / test split (:data:`interp.splits.SPLIT_SEED`), how a steering
method is scored on an item set at some coefficients (a labelled dataset) and tabulated
(one metrics row per coefficient, keys :data:`interp.tables.METRIC_KEYS` and the measure's
own extras), the per-item values sign calibration reads, the floor check, the fixed texts
on which coherence costs are measured, its label and unit, and its prompting baseline.

The protocol (:mod:`interp.protocol`), the analyses and the command lines call this
interface and never ask which kind a measure is; adding a measure is adding one subclass
(registered in :data:`interp.measures.KINDS`) and one concept file that names it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr
from jaxtyping import Int
from torch import Tensor

from interp.backends import backend_of
from interp.baselines import PromptSteering, PromptWording
from interp.calibrate import SignCalibration, calibrate_sign
from interp.files import RECOMPUTE, read_json_file, write_text
from interp.floor import FloorCheck, floor_verdict, unavailable
from interp.splits import SPLIT_SEED
from interp.steering import SteeringMethod
from interp.tables import metrics_at

Items = Any  # a measure's item set: Dilemmas, ContinuationItems, ... (each supports len, head, ids)


def ids_digest(ids: Sequence | np.ndarray) -> str:
    """Which items a stored result was computed on, from their ids (order aside), short enough to record."""
    return hashlib.sha256(json.dumps(sorted(str(i) for i in np.asarray(ids).tolist())).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Measure(ABC):
    """How one concept is measured (see the module docstring). Subclasses are frozen dataclasses."""

    concept: str
    prompting: tuple[tuple[str, str], ...] = ()  # PromptWording fields from the concept file

    name: ClassVar[str] = "measure"  # the kind, as concept files and --measure name it
    chance: ClassVar[float] = 0.0  # the per-item value of a model without the preference

    # ------------------------------------------------------------------ what it is

    unit: ClassVar[str] = ""  # the unit of its effect (Δ target)
    effect_template: ClassVar[str] = "Δ {label} ({unit})"  # a dataset's Δ-target units attribute, from label and unit

    @property
    @abstractmethod
    def label(self) -> str:
        """What tables call the measured quantity."""

    @property
    def effect_units(self) -> str:
        """The ``units`` attribute of a dataset's Δ target: what is measured, in which unit."""
        return self.effect_template.format(label=self.label, unit=self.unit)

    @property
    def axis_title(self) -> str:
        """A figure axis for the effect at +c."""
        return f"Δ {self.label} at +c ({self.unit})"

    @property
    def key(self) -> str:
        """A folder-safe name of concept and measure (``honesty-facts``)."""
        return f"{Path(self.concept).stem}-{self.name}"

    # ------------------------------------------------------------------ items

    @abstractmethod
    def splits(self, split_seed: int = SPLIT_SEED) -> dict[str, Items]:
        """``{"calibration", "validation", "test"}`` -> disjoint item sets."""

    def scorable(self, items: Items) -> Items:
        """The items that carry the measure's target (all of them unless a kind says otherwise)."""
        return items

    item_dim: ClassVar[str] = "item"

    # ------------------------------------------------------------------ scoring

    @abstractmethod
    def score(self, model, method: SteeringMethod | None, items: Items, coeffs: Sequence[float], *,
              progress: bool = True, seed: int = 0, base: xr.Dataset | None = None) -> xr.Dataset:
        """``method`` (None: the base model) at ``coeffs`` on ``items`` -> dataset (dims method, coeff, item).

        ``base``: the same items scored before at c = 0 (reused: c = 0 is the base model for every method).
        """

    @abstractmethod
    def table(self, ds: xr.Dataset, seed: int = 0) -> pd.DataFrame:
        """One metrics row per method and non-zero coefficient of a scored dataset (``seed``: bootstrap)."""

    @abstractmethod
    def values(self, model, method: SteeringMethod, coeff: float, items: Items, *, seed: int = 0) -> np.ndarray:
        """Per-item values at one coefficient: what sign calibration compares at -c and +c."""

    @abstractmethod
    def cost_tokens(self, model, items: Items) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """``(tokens, attention_mask)`` of the items' unsteered prompts: the fixed texts coherence costs are measured on."""

    @abstractmethod
    def floor_values(self, prompted: xr.Dataset) -> tuple[np.ndarray, dict[float, np.ndarray]]:
        """From the prompting baseline scored at -1, 0, +1: the per-item values of the base model (c = 0) against
        chance, and the per-item values at each coefficient (what :func:`interp.floor.floor_verdict` decides on)."""

    def floor_items(self, items: Items) -> Items:
        """The items the floor check is made on (default: the scorable ones)."""
        return self.scorable(items)

    # ------------------------------------------------------------------ shared behaviour

    def base(self, model, items: Items, *, progress: bool = True, seed: int = 0) -> xr.Dataset:
        """The unsteered model on ``items`` at c = 0 (pass as ``base=`` to :meth:`score`)."""
        return self.score(model, None, items, (0.0,), progress=progress, seed=seed)

    def metrics_at(self, ds: xr.Dataset, coeff: float, seed: int = 0) -> dict[str, float]:
        """The ``+coeff`` metrics row of a scored dataset, with ``-coeff``'s effect and cost beside it."""
        return metrics_at(self.table(ds, seed), coeff)

    def prompt_method(self) -> PromptSteering:
        """The prompting baseline in the concept's own wording."""
        return PromptSteering(PromptWording(**dict(self.prompting))) if self.prompting else PromptSteering()

    def calibrate_sign(self, model, method: SteeringMethod, items: Items, coeff: float = 1.0, *, seed: int = 0,
                       split_seed: int = SPLIT_SEED) -> SignCalibration:
        """Flip ``method.orientation`` so that ``+coeff`` raises this measure on ``items`` (its calibration split)."""
        result = calibrate_sign(method, lambda m, c: self.values(model, m, c, items, seed=seed), coeff, seed=seed)
        method.calibration["sign"] = {**method.calibration["sign"], "measure": self.label, "split": "calibration",
                                      "split_seed": split_seed}
        return result

    def floor(self, model, items: Items, *, base: xr.Dataset | None = None, progress: bool = True,
              seed: int = 0) -> tuple[FloorCheck, xr.Dataset]:
        """The floor check of ``model`` on ``items`` -> ``(FloorCheck, prompted dataset)``: does the base model hold
        the preference, and does the prompting baseline move it (:mod:`interp.floor`)."""
        items = self.floor_items(items)
        prompted = self.score(model, self.prompt_method(), items, (-1.0, 0.0, 1.0), progress=progress, seed=seed,
                              base=None if base is None else self.restrict(base, items))
        zero, by_coeff = self.floor_values(prompted)
        return floor_verdict(zero, self.chance, by_coeff, measure=self.label, seed=seed), prompted

    def restrict(self, ds: xr.Dataset, items: Items) -> xr.Dataset:
        """A scored dataset cut to ``items`` (same order)."""
        return ds.sel({self.item_dim: np.asarray(items.ids)})

    def stored_floor(self, model, items: Items, path: str | Path, *, base: xr.Dataset | None = None,
                     progress: bool = True, seed: int = 0) -> dict:
        """The floor-check record of ``items`` kept in ``path`` (json): read if there, else computed and written;
        a selection too small to check gives :func:`interp.floor.unavailable`'s record."""
        path, here, digest = Path(path), backend_of(model).weight_hash, ids_digest(items.ids)
        if path.is_file():
            record = read_json_file(path, "a floor-check record", RECOMPUTE)
            made = record.get("weight_hash") or "not recorded"
            if made != here:
                raise ValueError(f"{path} is the floor check of other model weights (hash {made}, this model {here}); "
                                 "pass another --out, or delete it to check again")
            if record.get("items", digest) != digest:  # records before the digest: trusted
                raise ValueError(f"{path} is the floor check of other items (another --n-eval or --split?); pass another "
                                 "--out, or delete it to check again")
            return record
        try:
            check = self.floor(model, items, base=base, progress=progress, seed=seed)[0]
            record = check.to_dict()
            print(check.summary())
        except ValueError as err:  # too few scorable items
            record = unavailable(str(err), self.label)
        record["weight_hash"], record["items"] = here, digest
        write_text(path, json.dumps(record, indent=1))
        return record
