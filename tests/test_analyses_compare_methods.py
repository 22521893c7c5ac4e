"""analyses.compare_methods on tiny-random: every kind of method through one protocol, skip finished, seeds."""

import json

import pytest

from analyses import compare_methods
from analyses._io import load_dataset

# judged on DailyDilemmas; tiny-random holds no preference, so --force compares past the floor check
BASE = ["--model", "tiny-random", "--quick", "--steps", "2", "--n-eval", "8", "--n-calibration", "8",
        "--measure", "dailydilemmas", "--min-pmass", "0", "--no-progress", "--force"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, dilemmas_dir):
    out = tmp_path_factory.mktemp("compare")
    argv = [*BASE, "--methods", "innerpissa,lora,pca,prompt", "--out", str(out / "res"), "--figures", str(out / "fig"),
            "--dilemmas", str(dilemmas_dir)]
    return out, argv, compare_methods.main(argv)


def test_table_dataset_and_figure(run):
    out, _, written = run
    ds = load_dataset(written["dataset"])
    assert list(ds["method"].values) == ["innerpissa", "lora", "pca", "prompt"]
    assert list(ds["budget"].values) == ["0.3", "n/a"] and ds.attrs["split"] == "test"
    table = written["csv"].read_text().splitlines()
    assert table[0].startswith("Method,Budget,Coeff,Δ Truthfulness,Δ Truthfulness (-c)") and len(table) == 1 + 6  # innerpissa and lora at 0.3 nats and at c = ±1, pca, prompt
    # every calibrated strength is a positive coefficient; prompting is scored at its strong wording
    assert (ds["coeff"].sel({"budget": "0.3"}).values[:3] > 0).all()
    assert float(ds["coeff"].sel({"method": "prompt", "budget": "n/a"}).values[0]) == 1.0
    assert float(ds["coeff"].sel({"method": "innerpissa", "budget": "n/a"}).values[0]) == 1.0  # its own c = ±1
    assert written["figure"].stat().st_size > 1000


def test_results_carry_calibration_and_provenance(run):
    out, _, _ = run
    record = json.loads((out / "res" / "pca" / "seed_0" / "result.json").read_text())
    assert record["split"] == "test" and "sign" in record["calibration"] and "strength" in record["calibration"]
    from interp.adapters.io import read_adapter_config

    cfg = read_adapter_config(out / "res" / "innerpissa" / "seed_0" / "adapter")
    assert "sign" in cfg["calibration"] and cfg["training"]["pairs_hash"] and cfg["weight_hash"]


def test_rerun_skips_finished_methods_and_rederives_metrics(run):
    out, argv, written = run
    done = out / "res" / "lora" / "seed_0" / "result.json"
    stale = json.loads(done.read_text())
    stale["rows"][0]["p_value"] = -1.0  # as if written by an older metric definition
    done.write_text(json.dumps(stale))
    before = done.stat().st_mtime_ns
    again = compare_methods.main(argv)
    assert done.stat().st_mtime_ns == before  # not refitted or rescored
    a, b = load_dataset(written["dataset"]), load_dataset(again["dataset"])
    assert float(b["p_value"].sel({"method": "lora", "budget": "0.3"}).values[0]) == pytest.approx(
        float(a["p_value"].sel({"method": "lora", "budget": "0.3"}).values[0]))  # from the stored scores
    assert (out / "res" / "prompt" / "seed_0" / "eval_none.nc").is_file()


def test_rerun_with_other_settings_is_refused(run, capsys):
    out, argv, _ = run
    argv = [*argv, "--budgets", "0.1"]  # finished methods were calibrated to 0.3 nats only
    with pytest.raises(SystemExit):
        compare_methods.main(argv)
    assert "budgets" in capsys.readouterr().err  # through the parser, naming the setting


def test_seeds_give_mean_and_std_and_a_seed_free_method_is_fitted_once(tmp_path, dilemmas_dir):
    written = compare_methods.main([*BASE, "--methods", "random,mean_diff", "--seeds", "2", "--out", str(tmp_path / "res"),
                                    "--figures", str(tmp_path / "fig"), "--dilemmas", str(dilemmas_dir)])
    ds = load_dataset(written["dataset"])
    assert list(ds["seed"].values) == [0, 1]
    assert (tmp_path / "res" / "random" / "seed_1" / "result.json").is_file()
    assert not (tmp_path / "res" / "mean_diff" / "seed_1").exists()  # the mean difference does not depend on the seed
    rows = {r["Method"]: r for r in compare_methods.results_table(ds).to_dict("records")}
    assert "±" in rows["random"]["Δ Truthfulness"] and rows["random"]["Seeds"] == 2
    assert "[" in rows["mean_diff"]["Δ Truthfulness"] and rows["mean_diff"]["Seeds"] == 1  # its one value, with its interval


def test_a_floor_that_fails_stops_before_fitting(tmp_path, capsys):
    """The default judge is factual honesty, which tiny-random does not hold: the comparison stops after the floor
    check (exit status 3) and names what to run instead; nothing is fitted."""
    from analyses._io import FLOOR_FAILED

    out = tmp_path / "res"
    with pytest.raises(SystemExit) as stopped:
        compare_methods.main(["--model", "tiny-random", "--quick", "--n-eval", "8", "--no-progress", "--out", str(out),
                              "--figures", ""])
    assert stopped.value.code == FLOOR_FAILED
    err = capsys.readouterr().err
    assert "does not hold the preference" in err and "--force to compare" in err
    assert json.loads((out / "floor_test.json").read_text())["passes"] is False
    assert not list(out.glob("*/seed_*"))


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods.CompareConfig(methods=("innerpissa", "steering-by-magic"))


def test_a_continuation_concept_with_a_recipe(mini_concept, tmp_path):
    """Sentiment's margin judges every method (tiny-random holds no sentiment: --force); the recipe sets the trained
    adapter's sites; every fitted method but prompting has its selectivity."""
    from interp.adapters.io import read_adapter_config

    written = compare_methods.main([
        "--model", "tiny-random", "--concept", str(mini_concept), "--recipe", "layers=1:2;modules=attn.o,mlp.out;loss_layer=3",
        "--methods", "innerpissa,mean_diff,prompt", "--steps", "2", "--budgets", "0.3", "--no-progress", "--force",
        "--out", str(tmp_path / "res"), "--figures", str(tmp_path / "fig")])
    ds = load_dataset(written["dataset"])
    assert "margin" in ds.attrs["target"] and list(ds["method"].values) == ["innerpissa", "mean_diff", "prompt"]
    record = json.loads((tmp_path / "res" / "innerpissa" / "seed_0" / "result.json").read_text())
    assert record["calibration"]["sign"]["measure"] == "sentiment margin"
    assert len(read_adapter_config(tmp_path / "res" / "innerpissa" / "seed_0" / "adapter")["sites"]) == 4
    assert record["rows"][0]["off_kl"] > 0 and not (ds["off_kl"].sel({"method": "prompt"}).notnull().any())
    text = written["table"].read_text()
    assert "KL off-concept (+c)" in text and "Floor check" in text and "sentiment" in text and (tmp_path / "res" / "floor_test.json").is_file()


@pytest.mark.parametrize("argv, says", [
    (["--n-eval", "0"], "--n-eval: must be >= 1"),
    (["--steps", "-2"], "--steps: must be >= 1"),
    (["--min-pmass", "1.5"], "--min-pmass: must lie in"),
])
def test_out_of_range_numbers_are_refused_by_the_parser(argv, says, capsys, tmp_path):
    with pytest.raises(SystemExit):
        compare_methods.main(["--model", "tiny-random", "--out", str(tmp_path / "x"), *argv])
    assert says in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_table_over_seeds_reports_the_largest_p_and_skips_empty_columns():
    import numpy as np
    import xarray as xr

    from analyses.compare_methods import results_table

    keys = ["coeff", "delta_target", "delta_target_neg", "delta_target_to_do_half", "delta_target_not_to_do_half",
            "delta_target_balanced", "answer_bias", "delta_target_single", "delta_other", "p_value", "delta_nll",
            "delta_nll_neg", "normalized_gain", "main_metric", "reached"]
    values = {k: np.full((1, 3, 1), np.nan) for k in keys}
    values["coeff"][:] = 1.0
    values["reached"][:] = 1.0
    values["delta_target"][0, :, 0] = [1.0, 2.0, 3.0]
    values["delta_target_neg"][0, :, 0] = [-1.0, -2.0, -3.0]
    values["p_value"][0, :, 0] = [1e-5, 1e-3, 1e-4]
    ds = xr.Dataset({k: (("method", "seed", "budget"), v) for k, v in values.items()},
                    coords={"method": ["m"], "seed": [0, 1, 2], "budget": ["0.3"]}, attrs={"target": "sentiment margin"})
    row = results_table(ds).iloc[0]
    assert row["p-value"] == "0.001 (largest)"  # every seed's p is at most this
    assert row.filter(like="Δ margin").iloc[0] == "+2.0000 ± 1.0000"
    assert not any("Answer bias" in c for c in row.index)  # all-NaN quantities are left out, not printed as nan


@pytest.mark.parametrize("kind, keys", [("kl", ["0.1", "1"]), ("nll", ["nll0.1", "nll1"])])
def test_the_dataset_reads_every_budget_by_its_records_key(tiny, kind, keys):
    """A budget of 1.0 nats is recorded as "1" (and a ΔNLL budget as "nll1"): the table finds both."""
    from types import SimpleNamespace

    config = compare_methods.CompareConfig(methods=("mean_diff",), budgets=(0.1, 1.0), budget_kind=kind)
    rows = [{"budget": k, "coeff": 1.0 + i, "reached": True, "delta_target": 0.5 + i, "delta_target_neg": -0.5 - i}
            for i, k in enumerate(keys)]
    records = [{"method": "mean_diff", "seed": 0, "rows": rows}]
    measure = SimpleNamespace(effect_units="nats/token", label="fact margin", unit="nats/token", axis_title="Δ")
    ds = compare_methods.compare_dataset(records, tiny, config, measure)
    assert list(ds["budget"].values) == keys
    assert float(ds["delta_target"].sel({"method": "mean_diff", "budget": keys[1]}).values[0]) == 1.5
    assert list(compare_methods.results_table(ds)["Budget"]) == ["0.1 nats", "1 nats"]
