"""DailyDilemmas, de-biased: the honesty headline on models that hold it.

Each dilemma is asked about both of its actions and the choice read as a de-biased
preference (:mod:`interp.measures.dilemma_scoring`); the measured quantity is the target
label's serve rate (``Virtue/Truthfulness`` by default), a probability with chance 0.5.
Splits are by dilemma id; only dilemmas where the target serves exactly one action carry
it (:meth:`DailyDilemmasMeasure.scorable`), and the floor check is made on those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from interp.dilemmas import TARGET, Dilemmas, load_dilemmas, split_dilemmas
from interp.measures.base import Measure
from interp.measures.dilemma_scoring import (EvalConfig, _pick, metrics_table, prompt_tokens, score_dilemmas, target_score,
    target_values)
from interp.splits import SPLIT_SEED
from interp.steering import SteeringMethod


@dataclass(frozen=True)
class DailyDilemmasMeasure(Measure):
    """The de-biased DailyDilemmas choice of ``target`` (a value label)."""

    target: str = TARGET
    dilemmas: str | None = None  # folder; None: $INTERP_DILEMMAS_DIR or ../shared/data/daily_dilemmas
    min_pmass: float = 0.1
    batch_size: int = 16
    max_situation_chars: int = 1200  # bounds prompt length (start cut); DailyDilemmas' longest is 508
    n_calibration: int = 64
    validation_fraction: float = 0.3

    name: ClassVar[str] = "dailydilemmas"
    chance: ClassVar[float] = 0.5
    unit: ClassVar[str] = "probability"
    effect_template: ClassVar[str] = "Δ P(choice serves the target), de-biased"
    item_dim: ClassVar[str] = "dilemma"

    def __post_init__(self) -> None:
        self.config()  # the scoring options check themselves (min_pmass, batch_size, prompt length)
        if self.n_calibration < 1:
            raise ValueError(f"n_calibration must be >= 1, got {self.n_calibration}")

    @property
    def label(self) -> str:
        return f"{self.target} (DailyDilemmas, de-biased)"

    def config(self, seed: int = 0) -> EvalConfig:
        """The scoring options of :mod:`interp.measures.dilemma_scoring` for this measure."""
        return EvalConfig(target=self.target, min_pmass=self.min_pmass, batch_size=self.batch_size,
                          max_situation_chars=self.max_situation_chars, seed=seed)

    def splits(self, split_seed: int = SPLIT_SEED) -> dict[str, Dilemmas]:
        return split_dilemmas(load_dilemmas(self.dilemmas), seed=split_seed, n_calibration=self.n_calibration,
                              validation_fraction=self.validation_fraction)

    def scorable(self, items: Dilemmas) -> Dilemmas:
        _, signs = items.label_signs([self.target])
        return items.subset(items.ids[signs[:, 0] != 0])

    def score(self, model, method: SteeringMethod | None, items: Dilemmas, coeffs: Sequence[float], *,
              progress: bool = True, seed: int = 0, base: xr.Dataset | None = None) -> xr.Dataset:
        return score_dilemmas(model, method, coeffs, items, self.config(seed), progress=progress, base=base)

    def table(self, ds: xr.Dataset, seed: int = 0) -> pd.DataFrame:
        return metrics_table(ds, self.config(seed))

    def values(self, model, method: SteeringMethod, coeff: float, items: Dilemmas, *, seed: int = 0) -> np.ndarray:
        return target_score(model, method, coeff, items, self.config(seed))

    def cost_tokens(self, model, items: Dilemmas):
        return prompt_tokens(model, items, self.config())

    def floor_items(self, items: Dilemmas) -> Dilemmas:
        items = self.scorable(items)
        if len(items) < 2:
            raise ValueError(f"the floor check needs at least 2 dilemmas with a sign for {self.target!r}, got {len(items)}")
        return items

    def floor_values(self, prompted: xr.Dataset) -> tuple[np.ndarray, dict[float, np.ndarray]]:
        """Base: the de-biased probability of choosing the action that serves the target (chance 0.5)."""
        tv = target_values(prompted.isel(method=0), self.target)
        p_to_do = prompted["p_to_do"].isel(method=0).sel(coeff=0.0).values
        serve = np.where(_pick(prompted["sign"], "label", self.target).values > 0, p_to_do, 1.0 - p_to_do)
        return serve, {c: tv.sel(coeff=c).values for c in (-1.0, 0.0, 1.0)}
