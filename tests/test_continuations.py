"""Continuation margins: shipped items, token spans, a hand-computed margin, steering that must
(and must not) move the margin, metrics on hand-made arrays, bad item files."""

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

from interp.baselines import PromptSteering, PromptWording
from interp.continuations import (ContinuationItems, continuation_metrics, continuation_table, item_chats, load_items,
    score_continuations, split_items, target_values)
from interp.data import concepts_dir, encode_chats, load_concept
from interp.interventions import AtHook
from interp.steering import SteeringMethod


@pytest.fixture(scope="module")
def items():
    return load_items("sentiment")


@pytest.fixture(scope="module")
def few(items):
    """Four items (tiny-model tests: 49k-vocab logits per position)."""
    return items.head(4)


class LogitPush(SteeringMethod):
    """Adds ``shift * c`` to the logits of ``token_ids`` (all tokens when None) at every position."""

    name = "push"

    def __init__(self, token_ids=None, shift=5.0):
        self.token_ids, self.shift = token_ids, shift

    def edits(self, coeff):
        c = float(self.effective(coeff))

        def push(logits):
            logits = logits.clone()
            if self.token_ids is None:
                logits += self.shift * c
            else:
                logits[..., self.token_ids] += self.shift * c
            return logits

        return (AtHook("unembed.hook_out", push),)


# --------------------------------------------------------------------------- shipped files


def test_shipped_concept_and_items(items):
    concept = load_concept("sentiment")
    pairs = concept.persona_pairs()
    assert 20 <= len(pairs) <= 30 and 5 <= len(concept.templates) <= 8
    raw = json.loads((concepts_dir() / "sentiment.json").read_text())
    assert raw["measure"] == {"kind": "continuations", "file": "sentiment_eval.json"}
    assert set(raw["prompting"]) == {"positive", "negative", "positive_strong", "negative_strong"}
    PromptWording(**raw["prompting"])  # the fields the prompting baseline takes

    assert len(items) >= 200 and len(set(items.ids)) == len(items)
    f = items.frame
    assert f["user"].nunique() >= 20 and f["positive"].nunique() >= 10
    assert (f["positive"] != f["negative"]).all()
    # held out: no training template or slot word and no suffix reused in the items
    slot_words = {w.split()[-1].lower() for t in concept.templates for w in (*t.chosen, *t.rejected)}
    words = {w.strip().lower() for col in ("positive", "negative") for s in f[col] for w in s.split()}
    assert not (words - {"a", "really"}) & slot_words
    suffixes = [line.strip().lower() for line in (concepts_dir() / "suffixes.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.lower().startswith(s) or s.startswith(p.lower()) for p in set(f["prefix"]) for s in suffixes)


def test_split_is_disjoint_and_deterministic(items):
    a, b = split_items(items), split_items(items)
    assert {k: len(v) for k, v in a.items()} == {"calibration": 48, "validation": 58, "test": 134}
    ids = [set(a[k].ids) for k in ("calibration", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(items.ids)
    assert all(np.array_equal(a[k].ids, b[k].ids) for k in a)
    assert not np.array_equal(split_items(items, split_seed=1)["validation"].ids, a["validation"].ids)
    assert a["validation"].frame["id"].tolist() == a["validation"].ids.tolist()


def test_continuation_tokens_are_exactly_those_after_the_prefix(tiny, items):
    tok = tiny.tokenizer
    chats = item_chats(items.head(40))
    for col in ("positive", "negative"):
        conts = items.frame[col].head(40).tolist()
        enc = encode_chats(tok, chats, continuations=conts)
        tokens, cont, nll = enc.tokens, enc.continuation, enc.span
        for r, text in enumerate(conts):
            assert tokens[r][cont[r]].tolist() == tok.encode(text, add_special_tokens=False)
        # the coherence span: the user message through the prefix, nothing of the continuation
        assert not (cont & nll).any()
        assert tok.decode(tokens[0][nll[0]]).startswith(chats[0][-2]["content"])
        assert tok.decode(tokens[0][nll[0]]).endswith(chats[0][-1]["content"])


def test_a_token_straddling_the_prefix_end_is_refused(tiny):
    chat = [{"role": "user", "content": "Did you like it?"}, {"role": "assistant", "content": "I liked the show"}]
    with pytest.raises(ValueError, match="merges with the end of prefix"):
        encode_chats(tiny.tokenizer, [chat], continuations=["s"])


# --------------------------------------------------------------------------- the model


def test_margin_equals_a_hand_computation(tiny, few):
    ds = score_continuations(tiny, None, [0.0], few, progress=False)
    row = few.frame.iloc[2]
    tok = tiny.tokenizer
    chat = [{"role": "user", "content": row["user"]}, {"role": "assistant", "content": row["prefix"]}]
    prompt = tok.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    n_prompt = len(tok.encode(prompt, add_special_tokens=False))

    def mean_logp(cont):
        ids = torch.tensor([tok.encode(prompt + cont, add_special_tokens=False)])
        with torch.no_grad():
            logp = torch.log_softmax(tiny(ids).float(), -1)[0]
        return float(np.mean([logp[t - 1, ids[0, t]].item() for t in range(n_prompt, ids.shape[1])]))

    got = ds.sel(item=row["id"]).isel(method=0, coeff=0)
    assert float(got["logp_pos"]) == pytest.approx(mean_logp(row["positive"]), abs=1e-4)
    assert float(got["logp_neg"]) == pytest.approx(mean_logp(row["negative"]), abs=1e-4)
    assert float(got["margin"]) == pytest.approx(mean_logp(row["positive"]) - mean_logp(row["negative"]), abs=1e-4)


def test_batching_does_not_change_scores(tiny, few):
    one = score_continuations(tiny, None, [0.0], few, batch_size=2, progress=False)
    many = score_continuations(tiny, None, [0.0], few, batch_size=8, progress=False)
    for var in ("margin", "nll"):
        np.testing.assert_allclose(one[var].values, many[var].values, atol=1e-4)
    np.testing.assert_array_equal(one["nll_tokens"].values, many["nll_tokens"].values)


def test_steering_towards_a_positive_token_raises_the_margin(tiny, items):
    tok = tiny.tokenizer
    f = items.frame
    # items whose positive continuation holds a token their negative one lacks (" wonderful" vs " terrible")
    pick = items.subset(f.loc[f["positive"] == " wonderful", "id"].head(3))
    token = tok.encode(" wonderful", add_special_tokens=False)
    assert len(token) == 1 and token[0] not in tok.encode(" terrible", add_special_tokens=False)
    method = LogitPush(token, shift=3.0)
    ds = score_continuations(tiny, method, [-1.0, 0.0, 1.0], pick, progress=False)
    m = ds["margin"].isel(method=0)
    assert (m.sel(coeff=1.0) > m.sel(coeff=0.0) + 1.0).all() and (m.sel(coeff=-1.0) < m.sel(coeff=0.0) - 1.0).all()
    np.testing.assert_allclose(ds["logp_neg"].sel(coeff=1.0), ds["logp_neg"].sel(coeff=0.0), atol=0.05)
    row = continuation_metrics(ds, "push", 1.0)
    assert row["delta_target"] > 1.0 and row["delta_target_low"] > 0 and row["slope"] > 0 and row["n"] == 3
    # sign calibration reads the per-item margins; flipping the orientation flips them
    up = target_values(tiny, method, 1.0, pick)
    np.testing.assert_allclose(up, m.sel(coeff=1.0).values, atol=1e-5)
    method.orientation = -1
    np.testing.assert_allclose(target_values(tiny, method, 1.0, pick), m.sel(coeff=-1.0).values, atol=1e-5)


def test_c0_rows_are_the_unsteered_model(tiny, few):
    base = score_continuations(tiny, None, [0.0], few, progress=False)
    for method in (LogitPush(shift=7.0), PromptSteering()):
        ds = score_continuations(tiny, method, [0.0, 1.0], few, progress=False)
        for var in ("margin", "logp_pos", "logp_neg", "nll", "nll_tokens"):
            np.testing.assert_array_equal(ds[var].sel(coeff=0.0).values, base[var].isel(coeff=0).values)
    assert ds.attrs["config"] and ds.attrs["model_spec"] == "tiny-random" and ds.attrs["items_source"].endswith(".json")


def test_base_rows_are_reused_not_recomputed(tiny, few):
    base = score_continuations(tiny, None, [0.0], few, progress=False)
    fresh = score_continuations(tiny, LogitPush(shift=2.0), [0.0, 1.0], few, progress=False)
    reused = score_continuations(tiny, LogitPush(shift=2.0), [0.0, 1.0], few, progress=False, base=base)
    for var in ("margin", "logp_pos", "logp_neg", "nll", "nll_tokens"):
        np.testing.assert_array_equal(reused[var].values, fresh[var].values)
    with pytest.raises(ValueError, match="other items"):
        score_continuations(tiny, None, [0.0], few.head(2), progress=False, base=base)
    with pytest.raises(ValueError, match="system prompt"):
        score_continuations(tiny, None, [0.0], few, progress=False, base=base, system_prompt="Be kind.")


def test_a_constant_on_every_logit_leaves_margins_unchanged(tiny, few):
    ds = score_continuations(tiny, LogitPush(shift=4.0), [0.0, 1.0], few, progress=False)
    np.testing.assert_allclose(ds["margin"].sel(coeff=1.0), ds["margin"].sel(coeff=0.0), atol=1e-4)
    np.testing.assert_allclose(ds["nll"].sel(coeff=1.0), ds["nll"].sel(coeff=0.0), atol=1e-4)


def test_a_system_prompt_changes_rows_but_not_the_nll_span(tiny, few):
    plain = score_continuations(tiny, None, [0.0], few, progress=False)
    sys = score_continuations(tiny, None, [0.0], few, system_prompt="Be brief.", progress=False)
    np.testing.assert_array_equal(plain["nll_tokens"].values, sys["nll_tokens"].values)
    assert not np.allclose(plain["margin"].values, sys["margin"].values)
    assert sys.attrs["system_prompt"] == "Be brief."


# --------------------------------------------------------------------------- metrics (hand-made)


def _dataset(margins: np.ndarray, coeffs, nll: np.ndarray | None = None) -> xr.Dataset:
    n = margins.shape[1]
    nll = np.ones_like(margins) if nll is None else nll
    return xr.Dataset(
        {"margin": (("method", "coeff", "item"), margins[None]), "nll": (("method", "coeff", "item"), nll[None]),
         "nll_tokens": (("method", "coeff", "item"), np.full((1, len(coeffs), n), 10, np.int32))},
        coords={"method": ["m"], "coeff": list(coeffs), "item": np.arange(n)},
    )


def test_metrics_on_hand_made_margins():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 2, 30)  # item spread, which the within-item fit removes
    coeffs = [-1.0, 0.0, 1.0]
    margins = np.stack([base + 0.5 * c + rng.normal(0, 0.05, 30) for c in coeffs])
    nll = np.stack([np.full(30, 2.0 + 0.1 * abs(c) + 0.05 * c) for c in coeffs])
    row = continuation_metrics(_dataset(margins, coeffs, nll), "m", 1.0)
    assert row["delta_target"] == pytest.approx(float((margins[2] - margins[1]).mean()))
    assert row["delta_target_low"] < row["delta_target"] < row["delta_target_high"]
    assert row["slope"] == pytest.approx(0.5, abs=0.03) and row["p_value"] < 1e-10
    assert row["delta_nll"] == pytest.approx(0.15) and row["delta_nll_neg"] == pytest.approx(0.05)
    assert row["target_at_zero"] == pytest.approx(margins[1].mean()) and row["n"] == 30
    table = continuation_table(_dataset(margins, coeffs, nll))
    assert table["coeff"].tolist() == [-1.0, 1.0] and table.loc[0, "delta_target"] < 0


def test_metrics_without_minus_c_and_with_no_effect():
    margins = np.stack([np.arange(5.0), np.arange(5.0)])
    row = continuation_metrics(_dataset(margins, [0.0, 2.0]), "m", 2.0)
    assert row["delta_target"] == 0 and math.isnan(row["delta_nll_neg"]) and row["delta_nll"] == 0
    assert row["slope"] == 0 and not row["p_value"] < 1  # no dose-response (scipy gives NaN for a flat fit)


# --------------------------------------------------------------------------- bad files


def _write(tmp_path, items, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"items": items}))
    return path


GOOD = {"id": 0, "user": "How was it?", "prefix": "It was", "positive": " great", "negative": " bad"}


@pytest.mark.parametrize("items, message", [
    ([{k: v for k, v in GOOD.items() if k != "negative"}], r"item 0 lacks key\(s\) \['negative'\]"),
    ([GOOD, dict(GOOD)], "item 0: duplicate id"),
    ([{**GOOD, "id": 3, "negative": " great"}], "item 3: positive and negative"),
    ([{**GOOD, "id": 4, "positive": ""}], "item 4: 'positive' must be a non-empty string"),
    ([{**GOOD, "id": "5"}], "id must be an integer"),
    ([], "with at least one item"),
])
def test_bad_item_files_name_the_file_and_item(tmp_path, items, message):
    path = _write(tmp_path, items)
    with pytest.raises(ValueError, match=message) as err:
        load_items(path)
    assert str(path) in str(err.value)


def test_items_found_through_a_concept_file(tmp_path):
    _write(tmp_path, [GOOD, {**GOOD, "id": 1}], name="mood_eval.json")
    concept = tmp_path / "mood.json"
    concept.write_text(json.dumps({"concept": "mood", "templates": [{"text": "A {} day.", "chosen": ["good"], "rejected": ["bad"]}],
                                   "measure": {"kind": "continuations", "file": "mood_eval.json"}}))
    got = load_items(concept)
    assert isinstance(got, ContinuationItems) and got.ids.tolist() == [0, 1]
    concept.write_text(json.dumps({"measure": {"kind": "continuations", "file": "missing.json"}}))
    with pytest.raises(ValueError, match="missing.json"):
        load_items(concept)
    with pytest.raises(ValueError, match="neither an items json file nor a shipped concept"):
        load_items("no-such-concept")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid json"):
        load_items(tmp_path / "broken.json")
