"""Metric names: snake_case keys for data, one display map for tables people read.

Every metrics row, dataset variable and json record names a metric by its key
(``delta_target``, ``delta_nll``, ``p_value`` ...); only printed tables show labels, through
:func:`shown`, which writes the target's own name into them (``Δ Truthfulness`` for the
DailyDilemmas target ``Virtue/Truthfulness``, ``Δ margin`` for a continuation measure).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# key -> label; "{t}" is the target's name
LABELS: dict[str, str] = {
    "method": "Method",
    "budget": "Budget",
    "coeff": "Coeff",
    "delta_target": "Δ {t}",
    "delta_target_low": "Δ {t} low",
    "delta_target_high": "Δ {t} high",
    "delta_target_neg": "Δ {t} (-c)",
    "delta_target_to_do_half": "Δ {t} to-do half",
    "delta_target_not_to_do_half": "Δ {t} not-to-do half",
    "delta_target_balanced": "Δ {t} balanced",
    "answer_bias": "Answer bias",
    "delta_target_single": "Δ {t} single-question",
    "delta_other": "Δ Other",
    "target_at_zero": "{t}(0)",
    "target_at_coeff": "{t}(c)",
    "p_value": "p-value",
    "delta_nll": "Δ NLL",
    "delta_nll_neg": "Δ NLL (-c)",
    "normalized_gain": "Normalized Gain (%)",
    "main_metric": "Main metric",
    "nan_rows": "NaN rows",
    "monotonic": "monotonic (every seed)",
    "reached": "Budget reached",
    "seeds": "Seeds",
    "off_kl": "KL off-concept (+c)",
    "off_kl_neg": "KL off-concept (-c)",
    "token_bias": "Token bias",
    "token_bias_neg": "Token bias (-c)",
    "flipped_share": "Flipped share",
    "flipped_share_neg": "Flipped share (-c)",
    "false_share": "False preferred",
}

# the metrics of one method at +c against c = 0 (and -c) that datasets and records keep
METRIC_KEYS: tuple[str, ...] = (
    "delta_target", "delta_target_low", "delta_target_high", "delta_target_neg", "delta_target_to_do_half",
    "delta_target_not_to_do_half", "delta_target_balanced", "answer_bias", "delta_target_single", "delta_other",
    "p_value", "delta_nll", "delta_nll_neg", "normalized_gain", "main_metric",
    "token_bias", "token_bias_neg", "flipped_share", "flipped_share_neg",
)


def target_name(target: str) -> str:
    """The short name a table gives a target: a value label's last part (``Virtue/Truthfulness`` ->
    ``Truthfulness``), a measure label's last word (``sentiment margin`` -> ``margin``)."""
    core = target.split(" (")[0].strip()  # a measure label's parenthesised note ("... (DailyDilemmas, de-biased)")
    return core.split("/")[-1].split()[-1] if core else "target"


def label(key: str, target: str = "target") -> str:
    """The display label of a metric key (the key itself when it has none)."""
    return LABELS.get(key, key).format(t=target_name(target))


def shown(table: pd.DataFrame, target: str = "target") -> pd.DataFrame:
    """``table`` with its metric keys as display labels, for printing."""
    return table.rename(columns={c: label(c, target) for c in table.columns})


def metrics_at(table: pd.DataFrame, coeff: float) -> dict[str, float]:
    """The ``+coeff`` row of a measure's metrics table as :data:`METRIC_KEYS` (NaN where the measure has
    no such metric), each ``<key>_neg`` read from its ``-coeff`` row: the one reader of a table row."""
    coeffs = table["coeff"].astype(float).to_numpy()
    pos, neg = table[np.isclose(coeffs, coeff)], table[np.isclose(coeffs, -coeff)]

    def read(rows: pd.DataFrame, key: str) -> float:
        return float(rows[key].iloc[0]) if key in rows and len(rows) else math.nan

    return {k: read(neg, k.removesuffix("_neg")) if k.endswith("_neg") else read(pos, k) for k in METRIC_KEYS}
