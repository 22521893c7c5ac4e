"""The one experiment protocol: run_method fits, calibrates, scales, scores, writes and resumes, once.

Known answers on tiny-random with the mini sentiment concept: a finished run is read back without
refitting; a new budget is added to it; a record, base scores or floor check made with other weights
(tiny-random:1) is refused on reuse, naming both hashes and the file.
"""

import json

import pytest

from interp.models import load_model
from interp.protocol import METHODS, NO_BUDGET, MethodSpec, base_scores, row_of, run_method
from interp.measures import measure_of
from interp.train import TrainConfig


@pytest.fixture(scope="module")
def other():
    return load_model("tiny-random:1")  # the same architecture, other weights


def spec(mini_concept, method="mean_diff"):
    return MethodSpec(method, TrainConfig(model="tiny-random", concept=str(mini_concept), layers="1:2", steps=2, n_pairs=200))


def test_a_finished_run_is_reused_and_gains_a_budget_without_refitting(tiny, mini_concept, tmp_path):
    measure = measure_of(mini_concept)
    splits = measure.splits()
    record = run_method(tiny, spec(mini_concept), measure, splits, tmp_path / "run", budgets=(0.001,), progress=False)
    assert [r["budget"] for r in record["rows"]] == ["0.001"] and record["split"] == "validation"
    assert record["weight_hash"] and record["calibration"]["sign"]["split"] == "calibration"
    done = tmp_path / "run" / "result.json"
    stamp = done.stat().st_mtime_ns
    again = run_method(tiny, spec(mini_concept), measure, splits, tmp_path / "run", budgets=(0.001,), progress=False)
    assert done.stat().st_mtime_ns == stamp and again["rows"][0]["delta_target"] == record["rows"][0]["delta_target"]
    more = run_method(tiny, spec(mini_concept), measure, splits, tmp_path / "run", budgets=(0.001, 0.002), unit=True,
                      progress=False)
    assert {r["budget"] for r in more["rows"]} == {"0.001", "0.002", NO_BUDGET}
    assert row_of(more, "0.002")["coeff"] > row_of(more, "0.001")["coeff"] > 0  # a larger budget: a larger strength
    assert (tmp_path / "run" / "eval_none.nc").is_file() and (tmp_path / "run" / "eval_0.002.nc").is_file()


def test_selectivity_is_the_kl_off_the_concept_and_a_finished_run_gains_it_unrescored(tiny, mini_concept, tmp_path):
    """With off-concept texts every row holds the KL the method spends there at +c and -c: positive for a vector
    (it adds the same everywhere), larger at a larger strength; prompting has none. A run finished without it gains
    it on resume, from its stored strength, without being scored again."""
    from interp.measures import unrelated_measure
    from interp.protocol import off_concept_texts

    measure = measure_of(mini_concept)
    assert unrelated_measure(measure).key == "honesty-facts"  # sentiment-like concepts are judged off on facts
    assert unrelated_measure(measure_of("honesty", "facts")).key == "sentiment-continuations"
    splits, off = measure.splits(), off_concept_texts(tiny, measure, 4)
    assert off[0].shape[0] == 4
    folder = tmp_path / "run"
    record = run_method(tiny, spec(mini_concept), measure, splits, folder, budgets=(0.001, 0.01), progress=False, off_texts=off)
    small, large = row_of(record, "0.001"), row_of(record, "0.01")
    assert 0 < small["off_kl"] < large["off_kl"] and 0 < small["off_kl_neg"] < large["off_kl_neg"]
    stripped = json.loads((folder / "result.json").read_text())
    for row in stripped["rows"]:
        del row["off_kl"], row["off_kl_neg"]
    (folder / "result.json").write_text(json.dumps(stripped))
    scored = (folder / "eval_0.01.nc").stat().st_mtime_ns
    again = run_method(tiny, spec(mini_concept), measure, splits, folder, budgets=(0.001, 0.01), progress=False, off_texts=off)
    assert row_of(again, "0.01")["off_kl"] == pytest.approx(large["off_kl"], rel=1e-5)
    assert (folder / "eval_0.01.nc").stat().st_mtime_ns == scored
    prompted = run_method(tiny, spec(mini_concept, "prompt"), measure, splits, tmp_path / "prompt", progress=False, off_texts=off)
    assert "off_kl" not in prompted["rows"][0]


def test_a_record_made_with_other_weights_is_refused(tiny, other, mini_concept, tmp_path):
    measure = measure_of(mini_concept)
    splits = measure.splits()
    run_method(other, spec(mini_concept), measure, splits, tmp_path / "run", budgets=(0.001,), progress=False)
    made = json.loads((tmp_path / "run" / "result.json").read_text())["weight_hash"]
    with pytest.raises(ValueError, match=rf"result.json was made with other model weights \(hash {made}"):
        run_method(tiny, spec(mini_concept), measure, splits, tmp_path / "run", budgets=(0.001,), progress=False)


def test_base_scores_and_floor_checks_of_other_weights_are_refused(tiny, other, mini_concept, tmp_path):
    measure = measure_of(mini_concept)
    items = measure.splits()["validation"]
    base_scores(other, measure, items, tmp_path / "base.nc", progress=False)
    assert base_scores(other, measure, items, tmp_path / "base.nc", progress=False).sizes["item"] == len(items)
    with pytest.raises(ValueError, match="base.nc holds scores of other model weights"):
        base_scores(tiny, measure, items, tmp_path / "base.nc", progress=False)
    measure.stored_floor(other, items, tmp_path / "floor.json", progress=False)
    with pytest.raises(ValueError, match="floor.json is the floor check of other model weights"):
        measure.stored_floor(tiny, items, tmp_path / "floor.json", progress=False)


def test_base_scores_and_floor_checks_of_other_items_are_refused(tiny, mini_concept, tmp_path):
    measure = measure_of(mini_concept)
    items = measure.splits()["validation"]
    assert len(items) > 2
    base_scores(tiny, measure, items.head(2), tmp_path / "base.nc", progress=False)
    assert base_scores(tiny, measure, items.head(2), tmp_path / "base.nc", progress=False).sizes["item"] == 2
    with pytest.raises(ValueError, match=rf"base.nc holds base scores of other items \(2 there, {len(items)} asked for"):
        base_scores(tiny, measure, items, tmp_path / "base.nc", progress=False)
    measure.stored_floor(tiny, items, tmp_path / "floor.json", progress=False)
    assert measure.stored_floor(tiny, items, tmp_path / "floor.json", progress=False)["items"]
    with pytest.raises(ValueError, match="floor.json is the floor check of other items"):
        measure.stored_floor(tiny, items.head(2), tmp_path / "floor.json", progress=False)


def test_the_registry_names_every_method_and_refuses_others():
    assert {"innerpissa", "lora", "mean_diff", "pca", "s_mean_diff", "random", "prompt"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        MethodSpec("nope")
    assert MethodSpec("loss_dHS@U").fit_config().space == "dHS@U" and MethodSpec("lora").trained


def test_steering_vectors_are_values_with_arithmetic(tiny):
    import torch

    from interp.baselines import MeanDiff

    v = MeanDiff({1: torch.tensor([1.0, 2.0]), 2: torch.tensor([0.0, 1.0])})
    w = MeanDiff({1: torch.tensor([1.0, 0.0])})
    assert torch.equal((v * 3).vectors[1], torch.tensor([3.0, 6.0])) and torch.equal((2 * v).vectors[2], torch.tensor([0.0, 2.0]))
    assert torch.equal((-v).vectors[1], torch.tensor([-1.0, -2.0]))
    assert torch.equal((v + w).vectors[1], torch.tensor([2.0, 2.0])) and torch.equal((v + w).vectors[2], v.vectors[2])
    assert torch.equal((v - v).vectors[1], torch.zeros(2))
    v.orientation = -1  # a calibrated flip is part of the value
    assert torch.equal((v * 1).vectors[1], torch.tensor([-1.0, -2.0])) and (v * 1).orientation == 1
