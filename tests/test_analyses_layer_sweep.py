"""analyses.layer_sweep end to end on tiny-random: dataset, figure, saved adapters, resume."""

import json

import pytest

from analyses import layer_sweep
from analyses._io import FLOOR_FAILED, load_dataset

# one mlp.out site per depth judged on DailyDilemmas; tiny-random holds no preference, so --force sweeps past the floor check
ARGS = ["--model", "tiny-random", "--quick", "--layers", "0.3,0.6", "--steps", "2", "--n-eval", "8", "--single",
        "--measure", "dailydilemmas", "--n-calibration", "8", "--min-pmass", "0", "--no-progress", "--force"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, dilemmas_dir):
    out = tmp_path_factory.mktemp("sweep")
    written = layer_sweep.main([*ARGS, "--out", str(out / "res"), "--figures", str(out / "fig"), "--dilemmas", str(dilemmas_dir)])
    return out, written


def test_dataset_dims_attrs_and_figure(sweep):
    out, written = sweep
    ds = load_dataset(written["dataset"])
    assert list(ds["depth"].values) == [0.3, 0.6] and set(layer_sweep.METRICS) <= set(ds.data_vars)
    assert list(ds["layer"].values) == [1, 2]  # round(depth * (4 - 1))
    assert ds.attrs["model_spec"] == "tiny-random" and ds.attrs["weight_hash"] and ds.attrs["split"] == "validation"
    assert json.loads(ds.attrs["config"])["depths"] == [0.3, 0.6]
    assert ds["delta_nll"].attrs["units"] == "nats/token"
    assert written["figure"].stat().st_size > 1000 and "Layer sweep" in written["table"].read_text()
    for d in ("0.30", "0.60"):
        record = json.loads((out / "res" / f"depth_{d}" / "result.json").read_text())
        assert record["n_items"] == 8 and record["split"] == "validation"


def test_adapters_are_saved_with_training_and_sign(sweep):
    out, _ = sweep
    from interp.adapters.io import read_adapter_config

    cfg = read_adapter_config(out / "res" / "depth_0.30" / "adapter")
    assert cfg["sites"] == ["blocks.1.mlp.out"] and cfg["training"]["config"]["steps"] == 2
    assert cfg["calibration"]["sign"]["flipped"] in (True, False)
    assert cfg["orientation"] in (1, -1)


def test_resume_skips_finished_depths_and_reuses_adapters(sweep, dilemmas_dir):
    out, written = sweep
    res = out / "res"
    done = res / "depth_0.30" / "result.json"
    log = res / "depth_0.60" / "metrics.jsonl"
    kept, log_time = done.stat().st_mtime_ns, log.stat().st_mtime_ns
    (res / "depth_0.60" / "result.json").unlink()  # as if killed while scoring depth 0.6
    again = layer_sweep.main([*ARGS, "--out", str(res), "--figures", str(out / "fig"), "--dilemmas", str(dilemmas_dir)])
    assert done.stat().st_mtime_ns == kept  # finished depth untouched
    assert log.stat().st_mtime_ns == log_time  # saved adapter loaded, not retrained
    a, b = load_dataset(written["dataset"]), load_dataset(again["dataset"])
    assert a["delta_target"].values.tolist() == pytest.approx(b["delta_target"].values.tolist(), nan_ok=True)


def test_resume_with_other_settings_is_refused(sweep, dilemmas_dir, capsys):
    out, _ = sweep
    argv = [*ARGS, "--out", str(out / "res"), "--figures", str(out / "fig"), "--dilemmas", str(dilemmas_dir)]
    argv[argv.index("--steps") + 1] = "3"  # finished depths were trained for 2 steps
    with pytest.raises(SystemExit):
        layer_sweep.main(argv)
    assert "steps 2 there, 3 now" in capsys.readouterr().err


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="depths"):
        layer_sweep.SweepConfig(depths=(1.5,))
    with pytest.raises(ValueError, match="unknown module"):
        layer_sweep.SweepConfig(modules=("mlp.nope",))
    with pytest.raises(SystemExit):
        layer_sweep.parse_args(["--layers", "0.5,2"])


def test_quick_first_depth_on_the_default_model(tmp_path):
    """The main job as the README writes it (factual honesty, a band of residual writers): its floor check passes on
    the embedded default and the quick sweep's first depth runs in CI (a few minutes on one thread)."""
    written = layer_sweep.main(["--quick", "--layers", "0.5", "--steps", "4", "--n-eval", "16", "--jobs", "1",
                                "--no-progress", "--out", str(tmp_path / "res"), "--figures", str(tmp_path / "fig")])
    assert json.loads(written["floor"].read_text())["passes"] is True  # the default model holds simple facts
    ds = load_dataset(written["dataset"])
    assert ds.sizes["depth"] == 1 and int(ds["layer"].values[0]) == 14  # round(0.5 * 29), half to even
    assert "fact margin" in ds.attrs["target"] and ds.attrs["unit"] == "nats/token"
    assert abs(float(ds["delta_nll"].values[0])) < 0.5  # a short run stays coherent


def test_a_floor_that_fails_stops_before_training(tmp_path, capsys):
    """tiny-random holds no facts: the sweep stops after the floor check (exit status 3), names what to run
    instead, trains nothing; --force sweeps anyway (the tests above)."""
    out = tmp_path / "res"
    with pytest.raises(SystemExit) as stopped:
        layer_sweep.main(["--model", "tiny-random", "--quick", "--n-eval", "8", "--no-progress", "--out", str(out),
                          "--figures", ""])
    assert stopped.value.code == FLOOR_FAILED
    err = capsys.readouterr().err
    assert "does not hold the preference" in err and "--concept sentiment" in err and "--force" in err
    assert json.loads((out / "floor_validation.json").read_text())["passes"] is False
    assert not list(out.glob("depth_*"))  # nothing trained


def test_bands_at_the_ends_of_the_network_stay_inside_it():
    from interp.sites import parse_layers

    config = layer_sweep.SweepConfig(band=0.4, modules=("attn.o", "mlp.out"))
    top, bottom = config.train_config(0.9, 30), config.train_config(0.1, 30)
    assert parse_layers(top.layers, 30) == list(range(20, 30)) and top.loss_layer == 29  # 0.7 .. 1.0, not "0.7:1"
    assert parse_layers(bottom.layers, 30) == list(range(0, 10)) and bottom.loss_layer == 10  # 0 .. 0.3 (round(0.3 * 29) = 9)


def test_band_mode_on_a_continuation_concept(mini_concept, tmp_path):
    """A band of fixed width centred at each depth, the loss read just after it, judged by the concept's margin."""
    from interp.adapters.io import read_adapter_config

    written = layer_sweep.main(["--model", "tiny-random", "--concept", str(mini_concept), "--band", "0.5", "--layers", "0.25",
                                "--modules", "attn.o,mlp.out", "--steps", "2", "--n-eval", "6", "--no-progress", "--force",
                                "--out", str(tmp_path / "res"), "--figures", str(tmp_path / "fig")])
    ds = load_dataset(written["dataset"])
    assert "margin" in ds.attrs["target"] and "band" in ds.attrs["question"]
    cfg = read_adapter_config(tmp_path / "res" / "depth_0.25" / "adapter")
    # depth 0.25 ± 0.25 of 4 layers: layers 0..2 (round(0.5 * 3) = 2), loss at layer 3
    assert cfg["sites"] == [f"blocks.{i}.{m}" for i in range(3) for m in ("attn.o", "mlp.out")]
    assert cfg["training"]["config"]["loss_layer"] == 3 and cfg["calibration"]["sign"]["measure"] == "sentiment margin"
    assert "band of width 0.5" in written["table"].read_text() and "Floor check" in written["table"].read_text()
    assert "Answer bias" not in written["table"].read_text()  # a margin has no answer bias: no column of nan
