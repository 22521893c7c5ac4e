"""Activation store (interp.store) and provenance attrs (interp.provenance), on tiny-random."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="h5netcdf needs h5py to write netCDF4 (add h5py to the project dependencies)")

from interp import store as store_mod  # noqa: E402
from interp.interventions import AddToResidual  # noqa: E402
from interp.provenance import provenance, read_json_attr  # noqa: E402
from interp.steering import SteeringMethod  # noqa: E402
from interp.store import (  # noqa: E402
    StoreError,
    collect,
    meta_from_pair_batch,
    open_store,
    runner,
    site_array,
)

SITES = ["blocks.1.hook_resid_post", "blocks.2.mlp.out.hook_in", "blocks.3.attn.o"]


@pytest.fixture(scope="module")
def batch(tiny):
    texts = [f"prompt {i}: " + "word " * (1 + i % 4) for i in range(10)]
    enc = tiny.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    return texts, enc.input_ids, enc.attention_mask


class Noise(SteeringMethod):
    """Adds a vector drawn from the global RNG at one layer, scaled by c: shows that the seed fixes the data."""

    name = "noise"

    def edits(self, coeff):
        return (AddToResidual(0, torch.randn(64), self.effective(coeff)),)


def test_round_trip_keeps_values_dims_coords_attrs(tiny, batch, tmp_path):
    texts, tokens, mask = batch
    meta = meta_from_pair_batch(5, "honesty", texts)
    path = collect(tiny, tmp_path / "s", tokens, mask, SITES, coeffs=(0.0,), positions="all",
                   meta=meta, chunk_size=4, batch_size=3, progress=False)
    ds = open_store(path)
    ref = runner(tiny, [store_mod.site_hook(s) for s in SITES])(tokens, mask, 0.0)
    real = mask.bool().numpy()
    for site in SITES:
        hook = store_mod.site_hook(site)
        got = site_array(ds, site).sel(coeff=0.0).values
        want = ref[hook].numpy()
        # float32 stored as is; the only difference is batching (3 rows vs 10 per forward)
        np.testing.assert_allclose(got[real], want[real], rtol=0, atol=1e-6)
    assert ds["acts"].dims == ("sample", "coeff", "site", "pos", "d_model")
    assert list(ds["site"].values) == ["blocks.1.hook_resid_post", "blocks.3.attn.o.hook_out"]
    assert ds["acts_d128"].dims == ("sample", "coeff", "site_d128", "pos", "d128")
    np.testing.assert_array_equal(ds["mask"].values, mask.numpy())
    assert list(ds["text"].values) == texts
    assert list(ds["label"].values) == ["chosen"] * 5 + ["rejected"] * 5
    assert list(ds["pair_id"].values) == [0, 1, 2, 3, 4] * 2
    assert set(ds["concept"].values) == {"honesty"}
    assert "text" in ds.coords and "prompt_id" in ds.coords
    assert ds.attrs["model_spec"] == "tiny-random"
    assert ds.attrs["weight_hash"] == provenance(tiny)["weight_hash"]
    assert read_json_attr(ds.attrs, "sites") == [store_mod.site_hook(s) for s in SITES]
    assert ds.attrs["backend"] == "bridge" and ds.attrs["store_chunk_size"] == 4
    manifest = json.loads((path / "manifest.json").read_text())
    assert {k: ds.attrs[k] for k in manifest["attrs"]} == manifest["attrs"]


def test_last_positions_and_float16(tiny, batch, tmp_path):
    _, tokens, mask = batch
    path = collect(tiny, tmp_path / "s", tokens, mask, ["blocks.2.hook_resid_post"], dtype="float16",
                   chunk_size=16, progress=False)
    ds = open_store(path)
    assert ds["acts"].dims == ("sample", "coeff", "site", "d_model") and ds["acts"].dtype == np.float16
    full = runner(tiny, ["blocks.2.hook_resid_post"])(tokens, mask, 0.0)["blocks.2.hook_resid_post"]
    want = full[:, -1].numpy().astype(np.float16)  # left padding: the last position is the last real token
    np.testing.assert_array_equal(ds["acts"].values[:, 0, 0], want)
    assert (ds["last_index"].values == tokens.shape[1] - 1).all()
    assert "mask" not in ds


def test_same_seed_same_data_other_seed_differs(tiny, batch, tmp_path):
    _, tokens, mask = batch
    kw = dict(method=Noise(), coeffs=(0.0, 1.0), chunk_size=4, progress=False)
    a = open_store(collect(tiny, tmp_path / "a", tokens, mask, ["blocks.1.hook_resid_post"], seed=7, **kw))
    b = open_store(collect(tiny, tmp_path / "b", tokens, mask, ["blocks.1.hook_resid_post"], seed=7, **kw))
    c = open_store(collect(tiny, tmp_path / "c", tokens, mask, ["blocks.1.hook_resid_post"], seed=8, **kw))
    np.testing.assert_array_equal(a["acts"].values, b["acts"].values)
    assert not np.array_equal(a["acts"].sel(coeff=1.0).values, c["acts"].sel(coeff=1.0).values)
    # c = 0 adds nothing, whatever the seed
    np.testing.assert_array_equal(a["acts"].sel(coeff=0.0).values, c["acts"].sel(coeff=0.0).values)
    assert list(a["coeff"].values) == [0.0, 1.0]


def test_chunks_written_and_resume_after_kill(tiny, batch, tmp_path, monkeypatch):
    _, tokens, mask = batch
    written = []
    real_write = store_mod.write_netcdf

    def counting(ds, target):
        written.append((target.name, ds.sizes["sample"]))
        if len(written) == 2 and killed["on"]:
            raise KeyboardInterrupt("killed")  # dies before the third chunk is written
        real_write(ds, target)

    killed = {"on": True}
    monkeypatch.setattr(store_mod, "write_netcdf", counting)
    with pytest.raises(KeyboardInterrupt):
        collect(tiny, tmp_path / "s", tokens, mask, ["blocks.1.hook_resid_post"], chunk_size=4, progress=False)
    parts = sorted(p.name for p in (tmp_path / "s" / "parts").iterdir())
    assert parts == ["part-000000.nc"]  # the killed chunk left no file (not even a temp)
    with pytest.raises(StoreError, match="unfinished"):
        open_store(tmp_path / "s")
    killed["on"] = False
    written.clear()
    collect(tiny, tmp_path / "s", tokens, mask, ["blocks.1.hook_resid_post"], chunk_size=4, progress=False)
    # resumed: chunk 0 skipped; 10 samples in chunks of 4 -> parts 1 and 2 (4 and 2 samples)
    assert written == [("part-000001.nc", 4), ("part-000002.nc", 2)]
    resumed = open_store(tmp_path / "s")
    monkeypatch.setattr(store_mod, "write_netcdf", real_write)
    fresh = open_store(collect(tiny, tmp_path / "f", tokens, mask, ["blocks.1.hook_resid_post"], chunk_size=4, progress=False))
    np.testing.assert_array_equal(resumed["acts"].values, fresh["acts"].values)
    assert not (tmp_path / "s" / "parts").exists()
    # complete: a rerun writes nothing
    written.clear()
    monkeypatch.setattr(store_mod, "write_netcdf", counting)
    collect(tiny, tmp_path / "s", tokens, mask, ["blocks.1.hook_resid_post"], chunk_size=4, progress=False)
    assert written == []


def test_peak_chunk_is_bounded_by_chunk_size(tiny, batch, tmp_path, monkeypatch):
    """Memory does not grow with prompts: every in-memory chunk holds at most chunk_size samples."""
    _, tokens, mask = batch
    tokens, mask = tokens.repeat(3, 1), mask.repeat(3, 1)  # 30 prompts
    sizes = []
    real = store_mod._collect_chunk

    def spy(runner, t, m, config, d_model):
        ds = real(runner, t, m, config, d_model)
        sizes.append(ds["acts"].shape[0])
        return ds

    monkeypatch.setattr(store_mod, "_collect_chunk", spy)
    ds = open_store(collect(tiny, tmp_path / "s", tokens, mask, ["blocks.1.hook_resid_post"], chunk_size=8, progress=False))
    assert sizes == [8, 8, 8, 6] and ds.sizes["sample"] == 30


def test_other_inputs_at_same_path_and_bad_options(tiny, batch, tmp_path):
    _, tokens, mask = batch
    collect(tiny, tmp_path / "s", tokens, mask, ["blocks.1.hook_resid_post"], progress=False)
    with pytest.raises(StoreError, match="other inputs"):
        collect(tiny, tmp_path / "s", tokens, mask, ["blocks.2.hook_resid_post"], progress=False)
    with pytest.raises(ValueError, match="positions must be one of"):
        collect(tiny, tmp_path / "x", tokens, mask, ["blocks.1.hook_resid_post"], positions="first")
    with pytest.raises(ValueError, match="bfloat16"):
        collect(tiny, tmp_path / "x", tokens, mask, ["blocks.1.hook_resid_post"], dtype="bfloat16")
    with pytest.raises(ValueError, match="valid keys"):
        collect(tiny, tmp_path / "x", tokens, mask, ["blocks.1.hook_resid_post"], meta={"colour": ["r"] * 10})
    with pytest.raises(StoreError, match="no activation store"):
        open_store(tmp_path / "nothing")
    ds = open_store(tmp_path / "s")
    with pytest.raises(ValueError, match="stored sites"):
        site_array(ds, "blocks.0.hook_resid_post")


def test_provenance_attrs(tiny):
    from interp.models import load_hf

    p = provenance(tiny, sites=["blocks.1.mlp.out"], config={"rank": 4, "x": None}, seed=3, note={"a": [1]})
    assert all(isinstance(v, (str, int, float)) for v in p.values())
    assert p["model_spec"] == "tiny-random" and p["seed"] == 3
    assert json.loads(p["config"]) == {"rank": 4, "x": None}
    assert read_json_attr(p, "note") == {"a": [1]}
    assert p["package_version"] != "" and p["git_commit"] and p["created"]
    hf, _ = load_hf("tiny-random")
    # the bridge renames its HF model's entries; the hash is over HF names, so both agree
    assert provenance(hf)["weight_hash"] == p["weight_hash"]
    hf.model.layers[0].mlp.down_proj.weight.data[0, 0] += 1.0
    assert provenance(hf)["weight_hash"] != p["weight_hash"]
    assert provenance(seed=None)["seed"] == -1 and provenance()["weight_hash"] == ""


def test_run_config_recorded_then_checked(tmp_path):
    from interp.files import RUN_CONFIG, check_run_config, config_differences

    assert config_differences({"a": (1, 2), "b": None}, {"a": [1, 2], "b": None}) == {}  # as JSON stores them
    assert config_differences({"a": 1}, {"a": 2, "c": 3}) == {"a": (1, 2), "c": (None, 3)}
    # a setting added later: its absence from an old record stands for the value it had before it existed
    assert config_differences({"a": 1}, {"a": 1, "c": 0.0}, absent_means={"c": 0.0}) == {}
    assert config_differences({"a": 1}, {"a": 1, "c": 2.0}, absent_means={"c": 0.0}) == {"c": (0.0, 2.0)}
    assert config_differences({"a": 1, "c": 5}, {"a": 1, "c": 0.0}, absent_means={"c": 0.0}) == {"c": (5, 0.0)}
    check_run_config(tmp_path, {"steps": 6, "depths": (0.3,)}, ignore=("depths",))
    assert json.loads((tmp_path / RUN_CONFIG).read_text()) == {"steps": 6, "depths": [0.3]}
    check_run_config(tmp_path, {"steps": 6, "depths": (0.3, 0.6)}, ignore=("depths",))  # more work is fine
    with pytest.raises(ValueError, match="steps 6 there, 40 now"):
        check_run_config(tmp_path, {"steps": 40, "depths": (0.3,)}, ignore=("depths",))
    assert json.loads((tmp_path / RUN_CONFIG).read_text())["depths"] == [0.3, 0.6]  # a refused run writes nothing


# --------------------------------------------------------------------------- one writer per folder

@pytest.fixture()
def held_folder(tmp_path, hold_folder):
    """A results folder locked by another live process (killed at teardown)."""
    folder = tmp_path / "run"
    return folder, hold_folder(folder)


def test_a_second_writer_fails_at_once_naming_the_holder(held_folder):
    from interp.files import RunLocked, run_lock

    folder, proc = held_folder
    with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
        with run_lock(folder):
            pass


def test_a_dead_writers_lock_is_taken_over(held_folder):
    from interp.files import run_lock

    folder, proc = held_folder
    proc.kill()
    proc.wait()
    assert (folder / ".lock").is_file()  # the stale file is still there ...
    with run_lock(folder):  # ... and does not block
        assert "pid" in (folder / ".lock").read_text()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    import subprocess
    import sys

    from conftest import HOLD
    from interp.files import run_lock

    with run_lock(tmp_path / "r"):
        with run_lock(tmp_path / "r"):
            pass
        probe = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path / "r")],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "RunLocked" in probe.stderr  # still held after the inner block
    done = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_training_and_analyses_refuse_a_held_folder(held_folder, capsys):
    from analyses import compare_methods
    from interp.cli import train

    folder, proc = held_folder
    with pytest.raises(SystemExit):
        train.main(["--model", "tiny-random", "--out", str(folder), "--steps", "1", "--no-progress"])
    assert f"pid {proc.pid}" in capsys.readouterr().err  # through the parser, naming the holder
    with pytest.raises(SystemExit):
        compare_methods.main(["--model", "tiny-random", "--quick", "--out", str(folder), "--no-progress"])
    assert "another run" in capsys.readouterr().err
    assert not (folder / "run_config.json").exists()  # the settings check never ran: nothing written
    from analyses import space_compare

    with pytest.raises(SystemExit):
        space_compare.main(["--model", "tiny-random", "--quick", "--out", str(folder), "--no-progress"])
    assert f"pid {proc.pid}" in capsys.readouterr().err
