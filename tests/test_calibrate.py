"""Calibration maths on synthetic cases with known answers (and one shell test on tiny-random)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.calibrate import (
    CalibratedStrength,
    SignCalibration,
    calibrate_sign,
    calibrate_strength,
    coherence_cost,
    delta_nll,
    next_token_kl,
    record_strength,
)
from interp.splits import three_way_split
from interp.stats import between_seed_spread, bootstrap_ci
from interp.steering import SteeringMethod
from conftest import tokenize_chats

# ----------------------------------------------------------------------------- splits


def test_three_way_split_disjoint_covering_stable():
    ids = np.repeat(np.arange(500), 2)  # two rows per dilemma
    split = three_way_split(ids, seed=3)
    cal, val, test = split["calibration"], split["validation"], split["test"]
    assert len(cal) == 64 and len(val) == round(0.3 * 436) and len(test) == 436 - len(val)
    assert not (set(cal) & set(val) or set(cal) & set(test) or set(val) & set(test))
    assert set(cal) | set(val) | set(test) == set(range(500))
    # Stable for a seed (and the input order does not matter); another seed differs.
    again = three_way_split(np.random.default_rng(0).permutation(ids), seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(three_way_split(ids, seed=4)["calibration"], cal)


def test_three_way_split_string_ids_and_errors():
    split = three_way_split([f"d{i}" for i in range(10)], seed=0, n_calibration=2, validation_fraction=0.5)
    assert [len(split[k]) for k in ("calibration", "validation", "test")] == [2, 4, 4]
    with pytest.raises(ValueError, match="n_calibration"):
        three_way_split(range(10), seed=0, n_calibration=10)
    with pytest.raises(ValueError, match="validation_fraction"):
        three_way_split(range(10), seed=0, n_calibration=2, validation_fraction=1.0)


# ----------------------------------------------------------------------------- sign


class Linear(SteeringMethod):
    """A fake method whose true effect on the score is ``slope * effective(c)``."""

    name = "fake"

    def __init__(self, slope: float):
        self.slope = slope


def linear_score(method, c):
    return 0.5 + method.slope * method.effective(c)


def test_calibrate_sign_flips_only_when_plus_scores_lower():
    backwards = Linear(slope=-2.0)
    result = calibrate_sign(backwards, linear_score, coeff=1.0)
    assert result.flipped and backwards.orientation == -1 and result.orientation == -1
    assert (result.score_pos, result.score_neg) == (-1.5, 2.5)  # evidence from before the flip
    assert linear_score(backwards, 1.0) > linear_score(backwards, -1.0)  # now +c raises the score
    assert backwards.calibration["sign"]["flipped"] is True
    # Calibrating again is a fixed point.
    assert not calibrate_sign(backwards, linear_score).flipped and backwards.orientation == -1

    forwards = Linear(slope=1.0)
    assert not calibrate_sign(forwards, linear_score, coeff=0.5).flipped and forwards.orientation == 1


def test_calibrate_sign_with_per_dilemma_values_records_evidence():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=80)

    def per_dilemma(method, c):
        return noise - 0.3 * method.effective(c) + rng.normal(scale=0.01, size=80)

    method = Linear(0.0)
    result = calibrate_sign(method, per_dilemma)
    assert result.flipped and result.n == 80 and result.confident
    assert result.diff_high < 0  # +c minus -c, measured before the flip
    d = result.to_dict()
    assert d["kind"] == "sign" and d["n"] == 80 and d["orientation"] == -1 and d["coeff"] == 1.0
    assert SignCalibration(**{k: v for k, v in d.items() if k not in ("kind", "confident")}) == result
    with pytest.raises(ValueError, match="positive"):
        calibrate_sign(method, per_dilemma, coeff=-1.0)


def test_calibrated_adapter_saves_and_loads_orientation_and_strength(tiny, tmp_path):
    try:
        from interp.adapters.innerpissa import InnerPiSSAConfig, attach
        from interp.adapters.io import load_adapter, save_adapter
    except ImportError:
        pytest.skip("interp.adapters.innerpissa / io not landed yet")
    from interp.backends import select_sites

    adapter = attach(tiny, select_sites(tiny, layers=[1], modules=["mlp.out"]), InnerPiSSAConfig(rank=4))
    try:
        sign = calibrate_sign(adapter, lambda m, c: -m.effective(c))  # pretend +c lowers the score
        strength = CalibratedStrength(0.7, reached=True, budget=0.3, cost=0.3, c_max=16.0, evaluations=5)
        record_strength(adapter, strength)
        assert sign.flipped and adapter.orientation == -1
        path = save_adapter(adapter, tmp_path / "cal", extra={"calibration": adapter.calibration})
    finally:
        adapter.detach()
    loaded = load_adapter(tiny, path)
    try:
        assert loaded.orientation == -1
        assert loaded.metadata["calibration"]["sign"]["flipped"] is True
        assert loaded.metadata["calibration"]["strength"]["coeff"] == pytest.approx(0.7)
    finally:
        loaded.detach()


# ----------------------------------------------------------------------------- costs


def test_next_token_kl_known_values_and_mask():
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.9, 0.1]).log()
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    base = torch.stack([p, p]).view(1, 2, 2)
    steered = torch.stack([q, p + 100.0]).view(1, 2, 2)  # row 2: a shift of logits is no change
    assert float(next_token_kl(base, steered)) == pytest.approx(expected / 2, rel=1e-5)
    garbage = torch.stack([q, torch.tensor([50.0, -50.0])]).view(1, 2, 2)
    assert float(next_token_kl(base, garbage, torch.tensor([[1, 0]]))) == pytest.approx(expected, rel=1e-5)
    assert float(next_token_kl(base, base)) == 0.0
    with pytest.raises(ValueError, match="no positions"):
        next_token_kl(base, base, torch.zeros(1, 2))


def test_delta_nll_known_value():
    tokens = torch.tensor([[0, 1, 1]])
    base = torch.zeros(1, 3, 2)  # uniform: NLL log 2 everywhere
    steered = torch.zeros(1, 3, 2)
    steered[0, 0] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4 at position 0
    expected = (-math.log(0.75) - math.log(2.0)) / 2  # position 1 unchanged
    assert float(delta_nll(base, steered, tokens)) == pytest.approx(expected, rel=1e-5)
    assert float(delta_nll(base, steered, tokens, torch.tensor([[1, 1, 0]]))) == pytest.approx(-math.log(0.75) - math.log(2.0), rel=1e-5)


# ----------------------------------------------------------------------------- strength


@pytest.mark.parametrize("budget", [0.1, 0.3, 1.0])
def test_calibrate_strength_finds_the_budget(budget):
    c = calibrate_strength(lambda c: 0.2 * c**2, budget, tol=1e-6)
    assert isinstance(c, float) and c.reached
    assert float(c) == pytest.approx(math.sqrt(budget / 0.2), abs=1e-5)
    assert c.evaluations < 30 and c.to_dict()["coeff"] == float(c)


def test_calibrate_strength_symmetric_uses_the_costlier_side():
    cost = lambda c: c**2 if c > 0 else 4 * c**2  # noqa: E731
    assert float(calibrate_strength(cost, 1.0, tol=1e-6)) == pytest.approx(1.0, abs=1e-5)
    assert float(calibrate_strength(cost, 1.0, tol=1e-6, symmetric=True)) == pytest.approx(0.5, abs=1e-5)


def test_calibrate_strength_budget_never_reached():
    with pytest.warns(UserWarning, match="not reached"):
        c = calibrate_strength(lambda c: 1 - math.exp(-c), 1.0, c_max=8.0)
    assert float(c) == 8.0 and not c.reached and c.cost == pytest.approx(1 - math.exp(-8))
    with pytest.raises(ValueError, match="budget"):
        calibrate_strength(lambda c: c, 0.0)


def test_coherence_cost_shell_on_tiny(tiny):
    from interp.baselines import MeanDiff

    ids, mask = tokenize_chats(tiny, [[{"role": "user", "content": "The weather today is mild and"}]] * 2)
    method = MeanDiff({1: torch.ones(64) * 0.5})
    cost = coherence_cost(tiny, method, ids, mask, kind="kl")
    assert cost(0.0) == 0.0
    assert 0 < cost(1.0) < cost(4.0)
    c = calibrate_strength(cost, budget=0.5 * cost(4.0), c_max=4.0, tol=1e-3)
    assert c.reached and 0 < float(c) < 4.0 and c.cost == pytest.approx(0.5 * cost(4.0), rel=0.05)
    with pytest.raises(ValueError, match="kl\\+nll"):
        coherence_cost(tiny, method, ids, mask, kind="js")


# ----------------------------------------------------------------------------- uncertainty


def test_bootstrap_ci_covers_true_mean_at_nominal_rate():
    rng = np.random.default_rng(123)
    true_mean = 2.0  # exponential population with mean 2: skewed, like per-dilemma effects
    hits = 0
    for rep in range(200):
        sample = rng.exponential(true_mean, size=60)
        point, low, high = bootstrap_ci(sample, n_boot=1000, seed=rep)
        assert low <= point <= high
        hits += low <= true_mean <= high
    assert 0.9 <= hits / 200 <= 0.99


def test_bootstrap_ci_is_seeded_and_handles_constant_values():
    values = np.random.default_rng(0).normal(size=40)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    point, low, high = bootstrap_ci(values, statistic=np.median, method="percentile")
    assert point == pytest.approx(np.median(values)) and low < point < high
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci([1.0])


def test_between_seed_spread():
    out = between_seed_spread([1.0, 2.0, 3.0])
    assert out == {"n_seeds": 3, "mean": 2.0, "std": 1.0, "sem": pytest.approx(1 / math.sqrt(3)), "min": 1.0, "max": 3.0}
    assert math.isnan(between_seed_spread([4.0])["std"])
