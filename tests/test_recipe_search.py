"""Recipe search: recipes parse into training settings; a tiny end-to-end search trains, calibrates and scores."""

import json

import pytest

from analyses._io import load_dataset
from analyses.recipe_search import RECIPES, finished_records, main, parse_recipe, recipe_config, search_table
from interp.train import TrainConfig


def test_recipes_parse_into_train_configs():
    c = recipe_config(TrainConfig(), RECIPES["band_logsig"], seed=3)
    assert c.layers == "0.1:0.5" and c.modules == ("attn.o", "mlp.out") and c.loss_layer == 0.55
    assert c.loss == "logsigmoid" and c.seed == 3
    assert parse_recipe("lr=0.02;steps=5;rotate_u=true;loss_layer=none") == {
        "lr": 0.02, "steps": 5, "rotate_u": True, "loss_layer": None}
    for name, spec in RECIPES.items():
        recipe_config(TrainConfig(), spec, 0)  # every named recipe is a valid config
    with pytest.raises(ValueError, match="TrainConfig field"):
        parse_recipe("learning_rate=0.1")
    with pytest.raises(ValueError, match="field=value"):
        parse_recipe("lr")


def test_search_end_to_end_and_resume(mini_concept, tmp_path):
    out = tmp_path / "out"
    args = ["--model", "tiny-random", "--concept", str(mini_concept), "--recipes", "single",
            "--recipe", "band=layers=1:2;modules=attn.o,mlp.out;loss_layer=3", "--steps", "2", "--out", str(out),
            "--no-progress", "--figures", str(tmp_path / "fig")]
    written = main(args)
    table = search_table(finished_records(out, "validation"))
    assert written["figure"].stat().st_size > 1000 and set(load_dataset(written["dataset"])["recipe"].values) == {"single", "band"}
    assert list(table["recipe"]) == ["single", "band"] and list(table["n_sites"]) == [1, 4]
    record = json.loads((out / "band" / "seed_0" / "result.json").read_text())
    assert record["split"] == "validation" and record["sign"]["split"] == "calibration"
    assert record["sign"]["measure"] == "sentiment margin"
    floor = json.loads((out / "floor_validation.json").read_text())
    assert set(floor) >= {"base", "prompt_p", "passes"}
    assert "Floor check" in (out / "table_validation.md").read_text()
    # resumed: nothing retrained, same table
    main(args)
    assert search_table(finished_records(out, "validation")).equals(table)
    # the same recipe name with other settings is refused
    with pytest.raises(ValueError, match="other settings"):
        main([*args[:6], "--recipe", "band=layers=1:3;modules=attn.o,mlp.out;loss_layer=3", *args[8:]])
