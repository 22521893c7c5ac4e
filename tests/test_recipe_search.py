"""Recipe search: recipes parse into training settings; a tiny end-to-end search trains, calibrates and scores."""

import json

import numpy as np
import pytest

from analyses._io import load_dataset
from analyses.recipe_search import RECIPES, SEARCH, finished_records, main, parse_recipe, recipe_config, search_table
from interp.train import TrainConfig


def test_recipes_parse_into_train_configs():
    c = recipe_config(TrainConfig(), RECIPES["band_logsig"], seed=3)
    assert c.layers == "0.1:0.5" and c.modules == ("attn.o", "mlp.out") and c.loss_layer == 0.55
    assert c.loss == "logsigmoid" and c.seed == 3
    assert parse_recipe("lr=0.02;steps=5;rotate_u=true;loss_layer=none") == {
        "lr": 0.02, "steps": 5, "rotate_u": True, "loss_layer": None}
    for name, spec in RECIPES.items():
        recipe_config(TrainConfig(), spec, 0)  # every named recipe is a valid config
    with pytest.raises(ValueError, match="TrainConfig or adapter field"):
        parse_recipe("learning_rate=0.1")
    with pytest.raises(ValueError, match="field=value"):
        parse_recipe("lr")


def test_each_search_row_changes_the_default_and_is_named():
    default = recipe_config(TrainConfig(), RECIPES["default"], 0)
    for name, spec in SEARCH.items():
        c = recipe_config(TrainConfig(), spec, 0)
        assert c != default, name  # a row that changed nothing would be a second "default"
        assert RECIPES[name] == spec
    assert recipe_config(TrainConfig(), SEARCH["rank128"], 0).adapter.rank == 128
    assert recipe_config(TrainConfig(), SEARCH["mod_attn"], 0).modules == ("attn.q", "attn.k", "attn.v", "attn.o")


def test_search_end_to_end_and_resume(mini_concept, tmp_path):
    out = tmp_path / "out"
    args = ["--model", "tiny-random", "--concept", str(mini_concept), "--recipes", "single",
            "--recipe", "band=layers=1:2;modules=attn.o,mlp.out;loss_layer=3", "--steps", "2", "--no-budget", "--out", str(out),
            "--no-progress", "--figures", str(tmp_path / "fig")]
    written = main(args)
    table = search_table(finished_records(out, "validation"))
    assert written["figure"].stat().st_size > 1000 and set(load_dataset(written["dataset"])["recipe"].values) == {"single", "band"}
    assert list(table["recipe"]) == ["single", "band"] and list(table["n_sites"]) == [1, 4]
    assert "answer_bias" not in table.columns and "delta_target" in table.columns  # a margin has no answer bias
    record = json.loads((out / "band" / "seed_0" / "result.json").read_text())
    assert record["split"] == "validation" and record["calibration"]["sign"]["split"] == "calibration"
    assert record["calibration"]["sign"]["measure"] == "sentiment margin"
    floor = json.loads((out / "floor_validation.json").read_text())
    assert set(floor) >= {"base", "prompt_p", "passes"}
    assert "Floor check" in (out / "table_validation.md").read_text()
    # resumed: nothing retrained, same table
    main(args)
    assert search_table(finished_records(out, "validation")).equals(table)
    # the same recipe name with other settings is refused
    with pytest.raises(ValueError, match="other settings"):
        main([*args[:6], "--recipe", "band=layers=1:3;modules=attn.o,mlp.out;loss_layer=3", *args[8:]])


def test_matched_budget_and_baselines_scored_alike(mini_concept, tmp_path):
    """Every run is also scaled to a KL budget on the calibration prompts and scored there; baselines
    (a vector and prompting) get the same columns; a finished run gains a new budget without retraining."""
    from interp.calibrate import coherence_cost
    from interp.measures import measure_of
    from interp.protocol import row_of
    from interp.models import load_model
    from interp.adapters.io import load_adapter

    out = tmp_path / "out"
    args = ["--model", "tiny-random", "--concept", str(mini_concept), "--recipes", "",
            "--recipe", "band=layers=1:2;modules=attn.o,mlp.out;loss_layer=3;max_angle=1.0", "--steps", "2",
            "--baselines", "mean_diff,prompt", "--budget", "0.001", "--out", str(out), "--no-progress", "--figures", ""]
    main(args)
    table = search_table(finished_records(out, "validation"), 0.001)
    assert list(table["recipe"]) == ["band", "[mean_diff]", "[prompt]"]
    assert (out / "table_validation_0.001.md").is_file()  # named by its budget: another budget's table is kept
    band, vector, prompt = (table.iloc[i] for i in range(3))
    for row in (band, vector):
        assert row["reached_at_budget"] and 0 < row["coeff_at_budget"] < 16 and row["n_items"] == 3
        assert np.isfinite(row["delta_target_at_budget"]) and np.isfinite(row["delta_nll_neg_at_budget"])
    assert np.isnan(prompt["coeff_at_budget"])  # prompting has no continuous dose
    # the coefficient found costs the budget: KL on the first calibration prompts, the larger of +c and -c
    model = load_model("tiny-random")
    measure = measure_of(mini_concept)
    tokens, mask = measure.cost_tokens(model, measure.splits()["calibration"].head(16))
    adapter = load_adapter(model, out / "band" / "seed_0" / "adapter")
    cost = coherence_cost(model, adapter, tokens, mask)
    c = band["coeff_at_budget"]
    assert max(cost(c), cost(-c)) == pytest.approx(0.001, rel=0.01)
    adapter.detach()
    # a second budget is added to the finished runs (adapter reused: its file is not rewritten)
    saved = (out / "band" / "seed_0" / "adapter" / "adapter.json").stat().st_mtime_ns
    main([*args[:-7], "--budget", "0.002", *args[-5:]])
    record = json.loads((out / "band" / "seed_0" / "result.json").read_text())
    assert {r["budget"] for r in record["rows"]} == {"n/a", "0.001", "0.002"} and row_of(record, "0.002")["coeff"] > c
    assert (out / "band" / "seed_0" / "adapter" / "adapter.json").stat().st_mtime_ns == saved
    # a ΔNLL budget: the coefficient found costs that much ΔNLL of the prompts' own text (the larger side)
    main([*args[:-7], "--budget", "0.001", "--budget-kind", "nll", *args[-5:]])
    record = json.loads((out / "band" / "seed_0" / "result.json").read_text())
    c_nll = row_of(record, "nll0.001")["coeff"]
    nll = coherence_cost(model, load_adapter(model, out / "band" / "seed_0" / "adapter"), tokens, mask, kind="nll")
    assert max(nll(c_nll), nll(-c_nll)) == pytest.approx(0.001, rel=0.01)


def test_parallel_searches_share_a_folder_but_not_a_run(mini_concept, tmp_path, hold_folder, capsys):
    out = tmp_path / "out"
    proc = hold_folder(out / "band" / "seed_0")
    base = ["--model", "tiny-random", "--concept", str(mini_concept), "--steps", "2", "--no-budget", "--out", str(out),
            "--no-progress", "--figures", ""]
    main([*base, "--recipes", "single"])  # another run in the same folder goes ahead
    assert (out / "single" / "seed_0" / "result.json").is_file()
    with pytest.raises(SystemExit):
        main([*base, "--recipes", "", "--recipe", "band=layers=1:2;modules=attn.o,mlp.out;loss_layer=3"])
    assert f"pid {proc.pid}" in capsys.readouterr().err


def test_a_recipe_may_name_its_parameterisation():
    from analyses.recipe_search import RECIPES, method_of

    def error(message):
        raise ValueError(message)

    assert method_of("method=lora;objective=distill", error) == ("lora", "objective=distill")
    assert method_of("layers=0.2:0.6", error) == ("innerpissa", "layers=0.2:0.6")
    assert method_of(RECIPES["vector_distill"], error) == ("trained_vector", "objective=distill")
    with pytest.raises(ValueError, match="'mean_diff' is not a trained method"):
        method_of("method=mean_diff", error)
