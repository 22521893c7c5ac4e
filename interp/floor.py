"""The floor check: can this model be measured on this concept at all?

A steering effect means something only on a measure the model responds to. Before any
steering number, two questions are asked of the unsteered model on the split being
scored:

1. does it *hold* the preference at ``c = 0``: is its mean per-item value (the
   de-biased DailyDilemmas serve rate of the target label, or a concept's continuation
   margin) away from chance, by a bootstrap interval that excludes it;
2. does the strong *prompting* baseline move it: within-item dose-response of the
   prompted model over ``c = -1, 0, +1`` with ``p < alpha`` and a positive slope.

Where neither holds, the model does not carry the concept on this measure, and tables
say :data:`FLOOR_MESSAGE` instead of printing effects (on SmolLM2-135M the de-biased
DailyDilemmas truthfulness is at chance and an honest versus a dishonest system prompt
does not move it).

:func:`floor_verdict` is the decision on arrays (pure); each measure
(:meth:`interp.measures.Measure.floor`) scores its items for it. :func:`floor_line` and
:func:`floored_table` are the one rendering of a verdict above a table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from interp.stats import bootstrap_ci, dose_response
from interp.tables import shown

FLOOR_MESSAGE = "this model does not hold the preference: steering on this measure cannot be shown"


@dataclass(frozen=True)
class FloorCheck:
    """The floor check's evidence and verdict (see the module docstring)."""

    measure: str
    chance: float
    base: float  # mean per-item value at c = 0
    base_low: float
    base_high: float
    n: int
    prompt_delta: float  # half of mean(+1) - mean(-1) under the prompting baseline
    prompt_t: float
    prompt_p: float
    alpha: float = 0.05

    @property
    def base_holds(self) -> bool:
        """The base model's interval excludes chance."""
        return bool(self.base_low > self.chance or self.base_high < self.chance)

    @property
    def prompt_moves(self) -> bool:
        """Prompting moves the measure the prompted way, significantly."""
        return bool(math.isfinite(self.prompt_p) and self.prompt_p < self.alpha and self.prompt_delta > 0)

    @property
    def passes(self) -> bool:
        return self.base_holds or self.prompt_moves

    def summary(self) -> str:
        """One paragraph for a table's header."""
        verdict = "passes" if self.passes else f"FAILS: {FLOOR_MESSAGE}"
        return (f"floor check on {self.measure} ({self.n} items): base {self.base:+.4f} "
                f"[{self.base_low:+.4f}, {self.base_high:+.4f}] vs chance {self.chance:g} "
                f"({'holds' if self.base_holds else 'at chance'}); prompting moves it by {self.prompt_delta:+.4f} "
                f"(t {self.prompt_t:.2f}, p {self.prompt_p:.3g}: {'moves' if self.prompt_moves else 'does not move'}) "
                f"-> {verdict}")

    def to_dict(self) -> dict:
        return {**asdict(self), "base_holds": self.base_holds, "prompt_moves": self.prompt_moves, "passes": self.passes}


def unavailable(reason: str, measure: str = "") -> dict:
    """A floor-check record for a selection where it cannot be made (too few scorable items):
    it neither passes nor fails, and says why."""
    return {"measure": measure, "passes": None, "reason": reason, **dict.fromkeys(
        ("chance", "base", "base_low", "base_high", "prompt_delta", "prompt_t", "prompt_p"), math.nan)}


def floor_line(record: dict) -> str:
    """One line for a table header from a stored floor-check record (:meth:`FloorCheck.to_dict` or :func:`unavailable`)."""
    if record.get("passes") is None:
        return f"Floor check not made: {record.get('reason', 'unknown reason')}"
    return (f"Floor check: base {record['base']:+.4f} [{record['base_low']:+.4f}, {record['base_high']:+.4f}] vs chance "
            f"{record['chance']:g}; prompting {record['prompt_delta']:+.4f} (p {record['prompt_p']:.3g}): "
            + ("passes" if record["passes"] else f"FAILS: **{FLOOR_MESSAGE}**; the effects below are not evidence of steering"))


def floor_verdict(
    base_values: np.ndarray,
    chance: float,
    prompt_values: Mapping[float, np.ndarray],
    *,
    measure: str,
    alpha: float = 0.05,
    seed: int = 0,
) -> FloorCheck:
    """Decide the floor check from per-item values.

    ``base_values``: per item at c = 0 (NaNs dropped); ``prompt_values``: coefficient ->
    per-item values under the prompting baseline (the same items in the same order, c = 0
    included or not). The dose-response is fitted within items.
    """
    base = np.asarray(base_values, float)
    base = base[np.isfinite(base)]
    if len(base) < 2:
        raise ValueError(f"the floor check needs at least 2 scored items, got {len(base)}")
    mean, low, high = bootstrap_ci(base, seed=seed)
    coeffs = sorted(float(c) for c in prompt_values)
    if len(coeffs) < 2 or min(coeffs) >= 0 or max(coeffs) <= 0:
        raise ValueError(f"prompting needs a negative and a positive coefficient, got {coeffs}")
    arrays = [np.asarray(prompt_values[c], float) for c in coeffs]
    n_items = {len(a) for a in arrays}
    if len(n_items) != 1:
        raise ValueError(f"prompt values must score the same items at every coefficient, got lengths {sorted(n_items)}")
    n = n_items.pop()
    x = np.concatenate([np.full(n, c) for c in coeffs])
    _, t, p = dose_response(x, np.concatenate(arrays), groups=np.tile(np.arange(n), len(coeffs)))
    delta = 0.5 * (float(np.nanmean(arrays[-1])) - float(np.nanmean(arrays[0])))
    return FloorCheck(measure=measure, chance=float(chance), base=float(mean), base_low=float(low), base_high=float(high),
                      n=len(base), prompt_delta=delta, prompt_t=float(t), prompt_p=float(p), alpha=alpha)


def floored_table(table: pd.DataFrame, floor: FloorCheck | None = None, target: str = "target") -> str:
    """A metrics table as markdown (labels naming ``target``), headed by the floor check when one was made.

    Below the floor the effects are not printed as results: the header says the model
    does not hold the preference, and the table follows under a heading saying so.
    """
    body = shown(table, target).to_markdown(index=False, floatfmt=".4g") + "\n"
    if floor is None:
        return body
    if floor.passes:
        return f"{floor.summary()}\n\n{body}"
    return (f"**{FLOOR_MESSAGE}**\n\n{floor.summary()}\n\n"
            f"Effects measured anyway (not evidence of steering on this model):\n\n{body}")
