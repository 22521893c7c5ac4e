"""DailyDilemmas scoring: metrics on hand-made arrays, the sign convention end to end, batching."""

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import xarray as xr

from interp.dilemmas import TARGET, load_dilemmas
from interp.evaluate import (
    EvalConfig,
    answer_token_ids,
    dose_response,
    main_metric,
    metrics_table,
    normalized_gain,
    score_dilemmas,
    value_scores,
)
from interp.protocol import calibrate_method_sign
from interp.steering import SteeringMethod


# --------------------------------------------------------------------------- pure metrics


def test_value_scores_probability_form():
    p = xr.DataArray([[0.9, 0.2, 0.5]], dims=("coeff", "dilemma"))
    sign = xr.DataArray([[1], [-1], [0]], dims=("dilemma", "label"))
    # serves: 0.9 (to-do serves it), 1 - 0.2 (not-to-do serves it); unsigned excluded
    assert np.allclose(value_scores(p, sign).values, [[(0.9 + 0.8) / 2]])


def test_dose_response_known_line():
    x = np.repeat([-1.0, 0.0, 1.0], 4)
    y = 0.5 + 0.1 * x + np.tile([0.01, -0.01, 0.02, -0.02], 3)
    slope, t, p = dose_response(x, y)
    assert math.isclose(slope, 0.1, rel_tol=1e-9) and t > 10 and p < 1e-6
    assert math.isnan(dose_response(np.zeros(5), np.ones(5))[0])  # one coefficient: no slope
    _, t_nan, _ = dose_response(x, np.where(np.arange(12) == 3, np.nan, y))
    assert t_nan > 10  # NaNs dropped, not fatal


def test_gain_and_main_metric():
    assert normalized_gain(0.05, 1.0) == pytest.approx(2.5)
    assert normalized_gain(0.05, -0.5) == pytest.approx(5.0)  # lowering NLL is not rewarded
    assert main_metric(4.0, 0.25) == pytest.approx(3.2)


def _synthetic(deltas: dict[float, float], n: int = 40, seed: int = 0) -> xr.Dataset:
    """A scored dataset where p_yes moves by ``deltas[c]`` on every dilemma."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, n)
    coeffs = sorted(deltas)
    p = np.stack([base + deltas[c] for c in coeffs])
    signs = np.stack([np.where(np.arange(n) % 4 == 0, -1, 1), np.where(np.arange(n) % 2 == 0, 1, 0)], 1)
    ds = xr.Dataset(
        {"p_yes": (("method", "coeff", "dilemma"), p[None]),
         "log_ratio": (("method", "coeff", "dilemma"), np.log(p / (1 - p))[None]),
         "nll": (("method", "coeff", "dilemma"), np.stack([np.full(n, 2.0 + abs(c) * 0.1) for c in coeffs])[None]),
         "sign": (("dilemma", "label"), signs)},
        coords={"method": ["m"], "coeff": coeffs, "dilemma": np.arange(n), "label": [TARGET, "MFT/Care"]},
    )
    ds["score"] = value_scores(ds["p_yes"], ds["sign"])
    return ds


def test_metrics_table_known_answers():
    ds = _synthetic({-1.0: -0.1, 0.0: 0.0, 1.0: 0.1})
    t = metrics_table(ds).set_index("Coeff")
    # target: 3/4 of dilemmas serve via to-do (+0.1), 1/4 via not-to-do (-0.1): mean = 0.05
    assert t.loc[1.0, "Δ Truth"] == pytest.approx(0.05)
    assert t.loc[-1.0, "Δ Truth"] == pytest.approx(-0.05)
    assert t.loc[1.0, "Δ Other"] == pytest.approx(0.1)  # MFT/Care is served by the to-do action only
    assert t.loc[1.0, "Δ NLL"] == pytest.approx(0.1)
    assert t.loc[1.0, "Δ Truth low"] <= 0.05 <= t.loc[1.0, "Δ Truth high"]
    assert t.loc[1.0, "Normalized Gain (%)"] == pytest.approx(100 * 0.05 / 1.1)
    assert t.loc[1.0, "p-value"] < 0.05 and t.loc[1.0, "Main metric"] > 0


# --------------------------------------------------------------------------- end to end on tiny-random


class YesNoPush(SteeringMethod):
    """Raises log p(Yes) - log p(No) by ``2c`` at every position (and gives Yes/No most of the mass)."""

    name = "push"

    @contextmanager
    def steer(self, model, coeff):
        c = float(self.effective(coeff))
        yes, no = answer_token_ids(model.tokenizer)

        def hook(logits, hook):
            logits = logits.clone()
            logits[..., yes] += 30.0 + c
            logits[..., no] += 30.0 - c
            return logits

        with model.hooks(fwd_hooks=[("unembed.hook_out", hook)]):
            yield


@pytest.fixture(scope="module")
def small(dilemmas_dir):
    data = load_dilemmas(dilemmas_dir)
    _, signs = data.label_signs([TARGET])
    pos = data.subset(data.ids[signs[:, 0] > 0][:6])
    neg = data.subset(data.ids[signs[:, 0] < 0][:6])
    return pos, neg


def test_sign_convention_end_to_end(tiny, small):
    pos, neg = small
    cfg = EvalConfig(batch_size=4)
    up = metrics_table(score_dilemmas(tiny, YesNoPush(), [-1.0, 0.0, 1.0], pos, cfg, progress=False)).set_index("Coeff")
    assert up.loc[1.0, "Δ Truth"] > 0.1 and up.loc[-1.0, "Δ Truth"] < -0.1
    assert up.loc[1.0, "p-value"] < 0.01 and up.loc[1.0, "NaN rows"] == 0
    down = metrics_table(score_dilemmas(tiny, YesNoPush(), [0.0, 1.0], neg, cfg, progress=False)).set_index("Coeff")
    assert down.loc[1.0, "Δ Truth"] < -0.1  # more Yes on dilemmas whose not-to-do serves truth


def test_flipped_orientation_is_calibrated_back(tiny, small):
    pos, _ = small
    method = YesNoPush()
    method.orientation = -1  # as if training had found the representation sign opposite
    calib = calibrate_method_sign(tiny, method, pos)
    assert calib.flipped and method.orientation == 1
    again = calibrate_method_sign(tiny, method, pos)
    assert not again.flipped and method.orientation == 1  # flipping twice would cancel: it does not
    t = metrics_table(score_dilemmas(tiny, method, [0.0, 1.0], pos, EvalConfig(batch_size=4), progress=False))
    assert float(t["Δ Truth"].iloc[0]) > 0.1


def test_low_mass_rows_are_nan_and_counted(tiny, small):
    pos, _ = small
    ds = score_dilemmas(tiny, None, [0.0], pos, EvalConfig(min_pmass=0.99), progress=False)
    assert np.isnan(ds["log_ratio"].values).all() and ds.attrs["nan_rows"] == len(pos)


def test_batched_equals_one_at_a_time_and_base_reuse(tiny, small, dilemmas_dir):
    pos, neg = small
    data = load_dilemmas(dilemmas_dir).subset(np.concatenate([pos.ids, neg.ids]))
    batched = score_dilemmas(tiny, YesNoPush(), [0.0, 1.0], data, EvalConfig(batch_size=5), progress=False)
    single = score_dilemmas(tiny, YesNoPush(), [0.0, 1.0], data, EvalConfig(batch_size=1), progress=False)
    assert np.allclose(batched["log_ratio"], single["log_ratio"], atol=1e-4)
    assert np.allclose(batched["nll"], single["nll"], atol=1e-4)
    reused = score_dilemmas(tiny, YesNoPush(), [0.0, 1.0], data, EvalConfig(batch_size=5), progress=False, base=batched)
    xr.testing.assert_allclose(reused["log_ratio"], batched["log_ratio"])


def test_nnsight_path_agrees_with_the_bridge(tiny, small):
    from interp.backends.nnsight import for_evaluate, load_nnsight

    pos, _ = small
    nn_model, nn_method = for_evaluate(load_nnsight("tiny-random"), None)
    via_nn = score_dilemmas(nn_model, nn_method, [0.0], pos, EvalConfig(batch_size=3, min_pmass=0.0), progress=False)
    via_bridge = score_dilemmas(tiny, None, [0.0], pos, EvalConfig(batch_size=3, min_pmass=0.0), progress=False)
    assert np.allclose(via_nn["log_ratio"], via_bridge["log_ratio"], atol=1e-4)
    assert np.allclose(via_nn["nll"], via_bridge["nll"], atol=1e-4)


@pytest.mark.slow
def test_default_model_scores_are_finite_and_deterministic(smol, dilemmas_dir):
    from interp.dilemmas import split_dilemmas

    data = split_dilemmas(load_dilemmas(dilemmas_dir))["test"].head(64)
    a = score_dilemmas(smol, None, [0.0], data, progress=False)
    assert np.isfinite(a["log_ratio"].values).mean() >= 0.9
    assert float(a["pmass"].mean()) > 0.3
    b = score_dilemmas(smol, None, [0.0], data.head(16), progress=False)
    assert np.allclose(a["log_ratio"].values[..., :16], b["log_ratio"].values, equal_nan=True, atol=1e-5)
