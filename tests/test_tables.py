"""Metric keys and their one display map (interp.tables)."""

import pandas as pd

from interp.tables import LABELS, METRIC_KEYS, label, shown, target_name


def test_labels_name_the_configured_target():
    assert target_name("Virtue/Truthfulness") == "Truthfulness" and target_name("sentiment margin") == "margin"
    assert target_name("Virtue/Truthfulness (DailyDilemmas, de-biased)") == "Truthfulness"
    assert label("delta_target", "Virtue/Fairness") == "Δ Fairness"
    assert label("delta_target_to_do_half", "Virtue/Truthfulness") == "Δ Truthfulness to-do half"
    assert label("p_value") == "p-value" and label("slope") == "slope"  # a key without a label shows as itself
    table = shown(pd.DataFrame({"coeff": [1.0], "delta_target": [0.1], "delta_nll": [0.2]}), "sentiment margin")
    assert list(table.columns) == ["Coeff", "Δ margin", "Δ NLL"]


def test_every_metric_key_is_snake_case_and_labelled():
    for key in METRIC_KEYS:
        assert key == key.lower() and " " not in key and key in LABELS
