"""Continuation margins: a concept held in which of two matched continuations the model prefers.

Items (:mod:`interp.continuations`) are an everyday question, an open assistant prefix and
a positive / negative continuation; the per-item value is the margin ``mean log p(positive
tokens) - mean log p(negative tokens)`` in nats/token (chance 0), so an answer-token bias
cannot meet it. Splits are by item id, or by ``group`` where the item file has one (items
that must stay together, e.g. a fact and its swapped twin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from interp.continuations import (ContinuationItems, continuation_table, item_chats, load_items, score_continuations,
    split_items, target_values)
from interp.data import encode_chats
from interp.measures.base import Measure
from interp.splits import SPLIT_SEED
from interp.steering import SteeringMethod


@dataclass(frozen=True)
class ContinuationMeasure(Measure):
    """The margin of a concept's matched continuations (items in ``file``)."""

    file: str = ""
    n_calibration: int = 48  # items (or groups) in the calibration split

    name: ClassVar[str] = "continuations"
    chance: ClassVar[float] = 0.0
    unit: ClassVar[str] = "nats/token"
    effect_template: ClassVar[str] = "Δ margin ({unit})"

    def __post_init__(self) -> None:
        if not self.file:
            raise ValueError(f"a {self.name} measure needs 'file' (the item json)")
        if self.n_calibration < 1:
            raise ValueError(f"n_calibration must be >= 1, got {self.n_calibration}")

    @property
    def label(self) -> str:
        return f"{self.concept} margin"


    def splits(self, split_seed: int = SPLIT_SEED) -> dict[str, ContinuationItems]:
        return split_items(load_items(self.file), split_seed=split_seed, n_calibration=self.n_calibration)

    def score(self, model, method: SteeringMethod | None, items: ContinuationItems, coeffs: Sequence[float], *,
              progress: bool = True, seed: int = 0, base: xr.Dataset | None = None) -> xr.Dataset:
        return score_continuations(model, method, coeffs, items, progress=progress, base=base)

    def table(self, ds: xr.Dataset, seed: int = 0) -> pd.DataFrame:
        return continuation_table(ds, seed=seed)

    def values(self, model, method: SteeringMethod, coeff: float, items: ContinuationItems, *, seed: int = 0) -> np.ndarray:
        return target_values(model, method, coeff, items)

    def cost_tokens(self, model, items: ContinuationItems):
        batch = encode_chats(model.tokenizer, item_chats(items))
        return batch.tokens, batch.attention_mask

    def floor_values(self, prompted: xr.Dataset) -> tuple[np.ndarray, dict[float, np.ndarray]]:
        margins = {float(c): prompted["margin"].isel(method=0).sel(coeff=c).values for c in (-1.0, 0.0, 1.0)}
        return margins[0.0], margins
