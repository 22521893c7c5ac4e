"""DailyDilemmas scoring: metrics on hand-made arrays, the sign convention end to end, batching."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from scipy import stats as scipy_stats

from interp.calibrate import calibrate_sign, delta_nll
from interp.data import encode_chats
from interp.dilemmas import TARGET, load_dilemmas
from interp.stats import delta_nll_rows, dose_response, main_metric, normalized_gain
from interp.cli.evaluate import main, write_results
from interp.measures.dilemma_scoring import (
    EvalConfig,
    answer_token_ids,
    chats,
    metrics_table,
    add_choice_variables,
    score_dilemmas,
    target_score,
    value_scores,
    value_scores_log_ratio,
)
from interp.interventions import AtHook
from interp.steering import SteeringMethod

# Short situations keep the tiny-model tests fast (vocab 49k logits per position).
FAST = EvalConfig(batch_size=4, max_situation_chars=160)


# --------------------------------------------------------------------------- pure metrics


def test_value_scores_probability_form():
    p = xr.DataArray([[0.9, 0.2, 0.5]], dims=("coeff", "dilemma"))
    sign = xr.DataArray([[1], [-1], [0]], dims=("dilemma", "label"))
    # serves: 0.9 (to-do serves it), 1 - 0.2 (not-to-do serves it); unsigned excluded
    assert np.allclose(value_scores(p, sign).values, [[(0.9 + 0.8) / 2]])


def test_value_scores_log_ratio_form():
    lr = xr.DataArray([[2.0, -1.0, 5.0, np.nan]], dims=("coeff", "dilemma"))
    sign = xr.DataArray([[1], [-1], [0], [1]], dims=("dilemma", "label"))
    assert np.allclose(value_scores_log_ratio(lr, sign).values, [[(2.0 + 1.0) / 2]])  # NaN and unsigned left out


def test_delta_nll_rows_is_token_weighted():
    at, zero, n = np.array([2.0, 3.0, np.nan]), np.array([1.0, 1.0, 1.0]), np.array([1, 3, 5])
    assert delta_nll_rows(at, zero, n) == pytest.approx((1 * 1 + 2 * 3) / 4)
    assert delta_nll_rows(at, zero) == pytest.approx(1.5)
    assert math.isnan(delta_nll_rows(np.array([np.nan]), np.array([1.0])))


def test_eval_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_pmass"):
        EvalConfig(min_pmass=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(batch_size=0)


def test_dose_response_known_line():
    x = np.repeat([-1.0, 0.0, 1.0], 4)
    y = 0.5 + 0.1 * x + np.tile([0.01, -0.01, 0.02, -0.02], 3)
    slope, t, p = dose_response(x, y)
    assert math.isclose(slope, 0.1, rel_tol=1e-9) and t > 10 and p < 1e-6
    assert math.isnan(dose_response(np.zeros(5), np.ones(5))[0])  # one coefficient: no slope
    _, t_nan, _ = dose_response(x, np.where(np.arange(12) == 3, np.nan, y))
    assert t_nan > 10  # NaNs dropped, not fatal


def test_dose_response_within_dilemmas_matches_a_fixed_effects_fit():
    rng = np.random.default_rng(0)
    n, coeffs = 12, np.array([-1.0, 0.0, 1.0])
    x = np.repeat(coeffs, n)
    dilemma = np.tile(np.arange(n), 3)
    y = rng.normal(0, 1, n)[dilemma] + 0.05 * x + rng.normal(0, 0.1, 3 * n)  # large offsets, small slope
    y[5] = np.nan  # a missing row drops one observation, not its dilemma
    slope, t, p = dose_response(x, y, groups=dilemma)
    # the same model written out: one intercept per dilemma plus a common slope, by least squares
    keep = np.isfinite(y)
    design = np.column_stack([np.eye(n)[dilemma], x])[keep]
    beta, sse, *_ = np.linalg.lstsq(design, y[keep], rcond=None)
    dof = keep.sum() - (n + 1)
    se = np.sqrt(sse[0] / dof * np.linalg.inv(design.T @ design)[-1, -1])
    assert slope == pytest.approx(beta[-1], rel=1e-9) and t == pytest.approx(beta[-1] / se, rel=1e-9)
    assert p == pytest.approx(2 * scipy_stats.t.sf(abs(beta[-1] / se), dof), rel=1e-9)
    # without the groups the offsets swamp the slope
    assert abs(dose_response(x, y)[1]) < abs(t) / 3


def test_gain_and_main_metric():
    assert normalized_gain(0.05, 1.0) == pytest.approx(2.5)
    assert normalized_gain(0.05, -0.5) == pytest.approx(5.0)  # lowering NLL is not rewarded
    assert main_metric(4.0, 0.25) == pytest.approx(3.2)


def _synthetic(deltas: dict[float, float], n: int = 40, seed: int = 0, yes_shift: float = 0.0) -> xr.Dataset:
    """A scored dataset where p_to_do moves by ``deltas[c]`` on every dilemma.

    The not-to-do question's log-ratio is 0 at c = 0; ``yes_shift * c`` is added to both
    questions' log-ratios (a pure answer bias, which must not change p_to_do).
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, n)
    coeffs = sorted(deltas)
    p = np.stack([base + deltas[c] for c in coeffs])
    lr = np.stack([np.log(p / (1 - p)), np.zeros_like(p)], 1) + yes_shift * np.array(coeffs)[:, None, None]
    signs = np.stack([np.where(np.arange(n) % 4 == 0, -1, 1), np.where(np.arange(n) % 2 == 0, 1, 0)], 1)
    dims = ("method", "coeff", "question", "dilemma")
    ds = xr.Dataset(
        {"log_ratio": (dims, lr[None]),
         "nll": (dims, np.stack([np.full((2, n), 2.0 + abs(c) * 0.1) for c in coeffs])[None]),
         "nll_tokens": (dims, np.ones((1, len(coeffs), 2, n))),
         "sign": (("dilemma", "label"), signs)},
        coords={"method": ["m"], "coeff": coeffs, "question": ["to_do", "not_to_do"], "dilemma": np.arange(n),
                "label": [TARGET, "MFT/Care"]},
    )
    return add_choice_variables(ds)


def test_metrics_table_known_answers():
    ds = _synthetic({-1.0: -0.1, 0.0: 0.0, 1.0: 0.1})
    t = metrics_table(ds).set_index("coeff")
    # target: 3/4 of dilemmas serve via to-do (+0.1), 1/4 via not-to-do (-0.1): mean = 0.05
    assert t.loc[1.0, "delta_target"] == pytest.approx(0.05)
    assert t.loc[-1.0, "delta_target"] == pytest.approx(-0.05)
    assert t.loc[1.0, "delta_other"] == pytest.approx(0.1)  # MFT/Care is served by the to-do action only
    assert t.loc[1.0, "delta_nll"] == pytest.approx(0.1)
    assert t.loc[1.0, "delta_target_low"] <= 0.05 <= t.loc[1.0, "delta_target_high"]
    assert t.loc[1.0, "normalized_gain"] == pytest.approx(100 * 0.05 / 1.1)
    assert t.loc[1.0, "p_value"] < 0.05 and t.loc[1.0, "main_metric"] > 0
    # halves: +0.1 where the to-do action serves truth, -0.1 where the not-to-do one does
    assert t.loc[1.0, "delta_target_to_do_half"] == pytest.approx(0.1)
    assert t.loc[1.0, "delta_target_not_to_do_half"] == pytest.approx(-0.1)
    assert t.loc[1.0, "delta_target_balanced"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc[1.0, "answer_bias"] > 0  # only the to-do question's log-ratio moved


def test_pure_answer_bias_cancels_in_the_debiased_score():
    """A constant added to both questions' Yes-No log-ratio moves the single-question score
    and the answer bias, never the de-biased score."""
    ds = _synthetic({-1.0: 0.0, 0.0: 0.0, 1.0: 0.0}, yes_shift=2.0)
    t = metrics_table(ds).set_index("coeff")
    for c in (-1.0, 1.0):
        assert t.loc[c, "delta_target"] == pytest.approx(0.0, abs=1e-12)
        assert t.loc[c, "delta_target_to_do_half"] == pytest.approx(0.0, abs=1e-12)
        assert t.loc[c, "answer_bias"] == pytest.approx(2.0 * c)
    assert t.loc[1.0, "delta_target_single"] > 0.1  # 3/4 of truth dilemmas serve it by the to-do action
    assert not t.loc[1.0, "p_value"] < 0.5


# --------------------------------------------------------------------------- end to end on tiny-random


class YesNoPush(SteeringMethod):
    """Raises log p(Yes) - log p(No) by ``2c`` at every position (and gives Yes/No most of the mass)."""

    name = "push"

    def __init__(self, tokenizer):
        self.yes, self.no = answer_token_ids(tokenizer)

    def edits(self, coeff):
        c = float(self.effective(coeff))

        def push(logits):
            logits = logits.clone()
            logits[..., self.yes] += 30.0 + c
            logits[..., self.no] += 30.0 - c
            return logits

        return (AtHook("unembed.hook_out", push),)


class TruthPreference(SteeringMethod):
    """Says Yes to the action that serves the target and No to the other, by ``2c`` nats
    (plus ``yes_bias * c`` on Yes everywhere): reads each row's action from its tokens."""

    name = "truth"

    def __init__(self, tokenizer, dilemmas, yes_bias: float = 0.0):
        self.tokenizer = tokenizer
        _, signs = dilemmas.label_signs([TARGET])
        f = dilemmas.frame
        self.truthful = {(a if s > 0 else b) for a, b, s in zip(f["action_to_do"], f["action_not_to_do"], signs[:, 0]) if s}
        self.yes_bias = yes_bias

    def edits(self, coeff):
        c = float(self.effective(coeff))
        yes, no = answer_token_ids(self.tokenizer)
        rows: list[bool] = []

        def read(tokens):
            texts = self.tokenizer.batch_decode(tokens)
            rows[:] = [any(f"Action: {a}\n" in t for a in self.truthful) for t in texts]
            return tokens

        def push(logits):
            logits = logits.clone()
            for i, truthful in enumerate(rows):
                logits[i, :, yes] += 30.0 + c * (self.yes_bias + (1.0 if truthful else -1.0))
                logits[i, :, no] += 30.0 - c * (0.0 + (1.0 if truthful else -1.0))
            return logits

        return (AtHook("embed.hook_in", read), AtHook("unembed.hook_out", push))


@pytest.fixture(scope="module")
def small(dilemmas_dir):
    data = load_dilemmas(dilemmas_dir)
    _, signs = data.label_signs([TARGET])
    pos = data.subset(data.ids[signs[:, 0] > 0][:4])
    neg = data.subset(data.ids[signs[:, 0] < 0][:4])
    return pos, neg


def test_sign_convention_end_to_end(tiny, small):
    """A Yes push is an answer bias: the single question rewards it, the de-biased score does not."""
    pos, neg = small
    cfg = FAST
    up = metrics_table(score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [-1.0, 0.0, 1.0], pos, cfg, progress=False)).set_index("coeff")
    assert up.loc[1.0, "delta_target_single"] > 0.1 and up.loc[-1.0, "delta_target_single"] < -0.1
    assert up.loc[1.0, "answer_bias"] == pytest.approx(2.0, abs=1e-3) and up.loc[1.0, "nan_rows"] == 0
    assert abs(up.loc[1.0, "delta_target"]) < 1e-4 and abs(up.loc[-1.0, "delta_target"]) < 1e-4
    down = metrics_table(score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [0.0, 1.0], neg, cfg, progress=False)).set_index("coeff")
    assert down.loc[1.0, "delta_target_single"] < -0.1  # more Yes on dilemmas whose not-to-do serves truth
    assert abs(down.loc[1.0, "delta_target"]) < 1e-4


def test_truth_preference_scores_positive_on_both_halves(tiny, small):
    """A model that prefers the truthful action gains on dilemmas where it is the to-do action
    and where it is the not-to-do action, even with an answer bias on top."""
    pos, neg = small
    from interp.dilemmas import Dilemmas

    both = Dilemmas(pd.concat([pos.frame.head(3), neg.frame.head(3)], ignore_index=True), pos.taxonomy)
    method = TruthPreference(tiny.tokenizer, both, yes_bias=3.0)
    t = metrics_table(score_dilemmas(tiny, method, [-1.0, 0.0, 1.0], both, FAST, progress=False)).set_index("coeff")
    assert t.loc[1.0, "delta_target_to_do_half"] > 0.3 and t.loc[1.0, "delta_target_not_to_do_half"] > 0.3
    assert t.loc[1.0, "delta_target"] > 0.3 and t.loc[-1.0, "delta_target"] < -0.3 and t.loc[1.0, "p_value"] < 0.01
    assert t.loc[1.0, "answer_bias"] == pytest.approx(3.0, abs=1e-3)


def test_flipped_orientation_is_calibrated_back(tiny, small):
    pos, _ = small
    method = TruthPreference(tiny.tokenizer, pos)
    method.orientation = -1  # as if training had found the representation sign opposite
    before = metrics_table(score_dilemmas(tiny, method, [0.0, 1.0], pos, FAST, progress=False))
    assert float(before["delta_target"].iloc[0]) < -0.1

    def score(m, c):
        return target_score(tiny, m, c, pos, FAST)

    calib = calibrate_sign(method, score)
    assert calib.flipped and method.orientation == 1 and calib.score_pos < calib.score_neg  # evidence before the flip
    # The trap: evaluation passes c unchanged and the method applies its orientation once;
    # if evaluation multiplied by the orientation as well, this flip would cancel out.
    again = calibrate_sign(method, score)
    assert not again.flipped and method.orientation == 1
    after = metrics_table(score_dilemmas(tiny, method, [0.0, 1.0], pos, FAST, progress=False))
    assert float(after["delta_target"].iloc[0]) > 0.1


def test_low_mass_rows_are_nan_and_counted(tiny, small):
    pos, _ = small
    ds = score_dilemmas(tiny, None, [0.0], pos, EvalConfig(min_pmass=0.99, max_situation_chars=160), progress=False)
    assert np.isnan(ds["log_ratio"].values).all() and ds.attrs["nan_rows"] == 2 * len(pos)


def test_batched_equals_one_at_a_time_and_base_reuse(tiny, small, dilemmas_dir):
    pos, neg = small
    data = load_dilemmas(dilemmas_dir).subset(np.concatenate([pos.ids[:2], neg.ids[:2]]))
    cfg = EvalConfig(batch_size=3, max_situation_chars=160)  # 3 + 1 rows: a short last batch, varied padding
    batched = score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [0.0, 1.0], data, cfg, progress=False)
    single = score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [1.0], data, EvalConfig(batch_size=1, max_situation_chars=160),
                            progress=False)
    at_one = batched.sel(coeff=[1.0])
    assert np.allclose(at_one["log_ratio"], single["log_ratio"], atol=1e-4)
    assert np.allclose(at_one["nll"], single["nll"], atol=1e-4)
    assert np.array_equal(at_one["nll_tokens"], single["nll_tokens"])
    reused = score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [0.0, 1.0], data, cfg, progress=False, base=batched)
    xr.testing.assert_allclose(reused["log_ratio"], batched["log_ratio"])
    xr.testing.assert_equal(reused["nll_tokens"], batched["nll_tokens"])
    with pytest.raises(ValueError, match="other dilemmas"):
        score_dilemmas(tiny, None, [0.0], data.head(2), cfg, progress=False, base=batched)


def test_prompts_are_the_templated_chats_and_prefill(tiny, small):
    from interp.data import encode_chats

    pos, _ = small
    c = chats(pos.head(3), FAST)
    enc = encode_chats(tiny.tokenizer, c)
    tokens, mask, nll_mask = enc.tokens, enc.attention_mask, enc.span
    texts = [tiny.tokenizer.apply_chat_template(x, tokenize=False, continue_final_message=True) for x in c]
    for row, text in enumerate(texts):  # each row: the template's text, tokenised as is, left-padded
        ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokens[row][mask[row].bool()].tolist() == ids
    assert not enc.continuation.any()
    assert tiny.tokenizer.decode(tokens[0, -4:]).endswith("My choice:")
    # the span starts at the user message and ends at the pre-filled answer; padding never counts
    first = int(nll_mask[0].float().argmax())
    assert tiny.tokenizer.decode(tokens[0, first:]).startswith(c[0][0]["content"][:20])
    assert not (nll_mask & ~mask.bool()).any() and bool(nll_mask[:, -1].all())


def test_delta_nll_matches_calibrate_delta_nll(tiny, small):
    """ΔNLL from the stored per-row values equals calibrate.delta_nll of the two passes' logits
    (over both questions of every dilemma)."""
    pos, _ = small
    data = pos.head(4)
    ds = score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [0.0, 1.0], data, FAST, progress=False)
    table = metrics_table(ds, FAST)
    enc = encode_chats(tiny.tokenizer, chats(data, FAST, "to_do") + chats(data, FAST, "not_to_do"))
    tokens, mask, nll_mask = enc.tokens, enc.attention_mask, enc.span
    method = YesNoPush(tiny.tokenizer)
    with torch.no_grad():
        with method.steer(tiny, 0.0):  # (this test method is not the base model at c = 0)
            base = tiny(tokens, attention_mask=mask)
        with method.steer(tiny, 1.0):
            steered = tiny(tokens, attention_mask=mask)
    expected = float(delta_nll(base, steered, tokens, nll_mask.long()))
    assert abs(expected) > 1e-3  # the push changes every position's normaliser
    assert float(table["delta_nll"].iloc[0]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_system_prompt_and_prompting_do_not_change_the_nll_span(tiny, small):
    pos, _ = small
    data = pos.head(2)
    plain = score_dilemmas(tiny, None, [0.0], data, FAST, progress=False)
    system = EvalConfig(batch_size=4, max_situation_chars=160, system_prompt="Always be truthful.")
    with_system = score_dilemmas(tiny, None, [0.0], data, system, progress=False)
    assert np.array_equal(plain["nll_tokens"], with_system["nll_tokens"])
    assert not np.allclose(plain["log_ratio"], with_system["log_ratio"])  # the system message is read


def test_write_results_round_trip(tiny, small, tmp_path):
    from analyses._io import load_dataset

    pos, _ = small
    ds = score_dilemmas(tiny, YesNoPush(tiny.tokenizer), [-1.0, 0.0, 1.0], pos.head(4), FAST, progress=False)
    table = metrics_table(ds, FAST)
    paths = write_results(ds, table, tmp_path / "out")
    back = load_dataset(paths["dataset"])
    xr.testing.assert_allclose(back[["log_ratio", "p_yes", "pmass", "nll", "score"]], ds[["log_ratio", "p_yes", "pmass", "nll", "score"]])
    assert back.attrs["model_spec"] == "tiny-random" and back.attrs["weight_hash"] and back.attrs["target"] == TARGET
    assert set(back.dims) == {"method", "coeff", "question", "dilemma", "label"}
    text = paths["markdown"].read_text()
    assert "Δ Truthfulness" in text and "Main metric" in text  # labels, the target named by the config
    import pandas as pd

    assert list(pd.read_csv(paths["csv"])["coeff"]) == [-1.0, 1.0]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_cli_scores_a_saved_adapter(tiny, tmp_path, dilemmas_dir):
    from interp.adapters.innerpissa import InnerPiSSAConfig, attach
    from interp.adapters.io import save_adapter
    from interp.models import load_model
    from interp.sites import Site

    model = load_model("tiny-random")  # its own copy: the CLI loads another and attaches there
    adapter = attach(model, [Site(1, "mlp.out")], InnerPiSSAConfig(rank=4, init_std=0.3))
    save_adapter(adapter, tmp_path / "adapter")
    adapter.detach()
    table = main(["--adapter", str(tmp_path / "adapter"), "--model", "tiny-random", "--n-eval", "3", "--coeffs=-1,1",
                  "--dilemmas", str(dilemmas_dir), "--min-pmass", "0", "--out", str(tmp_path / "out")])
    assert list(table["coeff"]) == [-1.0, 1.0] and table["method"].iloc[0] == "innerpissa"
    assert (tmp_path / "out" / "scores.nc").is_file() and (tmp_path / "out" / "table.md").is_file()
    with pytest.raises(SystemExit):
        main(["--coeffs", "a,b"])
    # The same adapter through nnsight: same table (rebuilt on nnsight's own copy of the weights).
    via_nn = main(["--adapter", str(tmp_path / "adapter"), "--model", "tiny-random", "--n-eval", "3", "--coeffs=-1,1",
                   "--dilemmas", str(dilemmas_dir), "--min-pmass", "0", "--backend", "nnsight"])
    numeric = table.select_dtypes("number").columns
    assert np.allclose(via_nn[numeric].to_numpy(float), table[numeric].to_numpy(float), atol=1e-4, equal_nan=True)


def test_cli_remote_fails_fast_with_the_reason(tmp_path, dilemmas_dir, capsys):
    import time

    start = time.perf_counter()
    with pytest.raises(SystemExit) as err:
        main(["--model", "tiny-random", "--remote", "--n-eval", "2", "--dilemmas", str(dilemmas_dir)])
    assert err.value.code == 2 and time.perf_counter() - start < 30
    assert "NDIF only runs Hub models" in capsys.readouterr().err


def test_adapter_for_nnsight_needs_local_site_weights(tmp_path):
    from interp.adapters.innerpissa import InnerPiSSAConfig, attach
    from interp.adapters.io import AdapterLoadError, load_adapter, save_adapter
    from interp.backends import RemoteUnavailable
    from interp.backends.nnsight import load_nnsight, module_of
    from interp.models import load_model
    from interp.sites import Site

    model = load_model("tiny-random")
    adapter = attach(model, [Site(1, "mlp.out")], InnerPiSSAConfig(rank=4, init_std=0.3))
    save_adapter(adapter, tmp_path / "adapter")
    nn_model = load_nnsight("tiny-random")
    loaded = load_adapter(nn_model, tmp_path / "adapter")
    assert torch.equal(loaded.layers["blocks_1_mlp_out"].delta_weight(1.0), adapter.layers["blocks_1_mlp_out"].delta_weight(1.0))
    linear = module_of(nn_model, "blocks.1.mlp.out")
    assert not linear._forward_hooks  # attached without hooks: it acts only through its edits, inside traces
    loaded.detach()
    adapter.detach()
    with torch.no_grad():
        linear.weight.add_(1.0)  # other weights at the site: refused like on the bridge
    with pytest.raises(AdapterLoadError, match="weight hash"):
        load_adapter(nn_model, tmp_path / "adapter")
    linear.weight = torch.nn.Parameter(torch.empty_like(linear.weight, device="meta"))  # as a remote=True model holds it
    with pytest.raises(RemoteUnavailable, match="remote=False"):
        load_adapter(nn_model, tmp_path / "adapter")


def test_nnsight_path_agrees_with_the_bridge(tiny, small):
    from interp.backends.nnsight import load_nnsight

    pos, neg = small
    data = load_dilemmas().subset(np.concatenate([pos.ids, neg.ids]))  # 8 dilemmas
    cfg = EvalConfig(batch_size=3, min_pmass=0.0, max_situation_chars=160)
    via_nn = score_dilemmas(load_nnsight("tiny-random"), None, [0.0], data, cfg, progress=False)
    via_bridge = score_dilemmas(tiny, None, [0.0], data, cfg, progress=False)
    assert len(data) == 8 and via_nn.attrs["weight_hash"] == via_bridge.attrs["weight_hash"]
    assert np.allclose(via_nn["log_ratio"], via_bridge["log_ratio"], atol=1e-4)
    assert np.allclose(via_nn["nll"], via_bridge["nll"], atol=1e-4)


@pytest.mark.slow
def test_default_model_scores_are_finite_and_deterministic(smol, dilemmas_dir):
    from interp.dilemmas import split_dilemmas

    data = split_dilemmas(load_dilemmas(dilemmas_dir))["test"].head(64)
    a = score_dilemmas(smol, None, [0.0], data, progress=False)
    assert np.isfinite(a["log_ratio"].values).mean() >= 0.9
    assert float(a["pmass"].mean()) > 0.3
    b = score_dilemmas(smol, None, [0.0], data.head(8), EvalConfig(batch_size=8), progress=False)
    assert np.allclose(a["log_ratio"].values[..., :8], b["log_ratio"].values, equal_nan=True, atol=1e-4)  # other padding: float noise only


def test_an_evaluation_into_a_held_folder_is_refused_before_any_work(tmp_path, hold_folder, capsys):
    """--out is held from the start: a second evaluation into a folder another live run holds stops at once, naming it."""
    out = tmp_path / "eval"
    proc = hold_folder(out)
    with pytest.raises(SystemExit):
        main(["--model", "tiny-random", "--concept", "sentiment", "--n-eval", "2", "--coeffs=-1,1", "--out", str(out),
              "--no-progress"])
    assert f"pid {proc.pid}" in capsys.readouterr().err and not (out / "scores.nc").exists()
