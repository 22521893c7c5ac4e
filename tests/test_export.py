"""Merged export: plain transformers loads the folder, its logits are the steered model's, and bad inputs destroy nothing."""

import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from interp.adapters import innerpissa, lora
from interp.adapters.io import save_adapter
from interp.cli.export import main
from interp.export import LOGIT_TOLERANCE, ExportError, check_out
from interp.export.base import check_logits
from interp.sites import Site
from conftest import randomised

TOKENS = [[1, 17, 300, 4000, 52, 9], [8, 8, 2000, 31, 600, 7]]

# Runs in a fresh interpreter that never imports the project: only transformers and safetensors.
LOAD_PLAIN = """
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tok = AutoTokenizer.from_pretrained(folder)
assert tok.chat_template, "the chat template was not exported"
with torch.no_grad():
    logits = model(torch.tensor({tokens})).logits
assert not any(name == "interp" or name.startswith("interp.") for name in sys.modules), "project code was imported"
save_file({{"logits": logits.contiguous()}}, out)
"""


def _plain_logits(folder, tmp_path) -> torch.Tensor:
    out = tmp_path / "plain_logits.safetensors"
    script = LOAD_PLAIN.format(tokens=TOKENS)
    done = subprocess.run([sys.executable, "-c", script, str(folder), str(out)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_file(out)["logits"]


def _save_random_adapter(model, path):
    adapter = randomised(innerpissa.attach(model, [Site(1, "mlp.out")]), 0.3)
    try:
        save_adapter(adapter, path)
    finally:
        adapter.detach()


def _export_and_compare(model, adapter, coeff, tmp_path, atol):
    save_adapter(adapter, tmp_path / "adapter")
    with torch.no_grad(), adapter.steer(model, coeff):
        steered = model(torch.tensor(TOKENS)).float()
    with torch.no_grad():
        base = model(torch.tensor(TOKENS)).float()
    adapter.detach()
    folder = main(["--adapter", str(tmp_path / "adapter"), "--coeff", str(coeff), "--out", str(tmp_path / "hf")])
    plain = _plain_logits(folder, tmp_path)
    assert (steered - base).abs().max() > 100 * atol  # the adapter does move the logits
    assert (plain - steered).abs().max() < atol
    return folder


@pytest.mark.parametrize("kind", ["innerpissa", "lora"])
def test_export_loads_in_plain_transformers_with_the_steered_logits(tiny, tmp_path, kind):
    module = {"innerpissa": innerpissa, "lora": lora}[kind]
    adapter = randomised(module.attach(tiny, [Site(1, "mlp.out"), Site(2, "attn.o"), Site(3, "attn.q")]), 0.3)
    adapter.orientation = -1  # the saved sign is applied: c = 0.7 merges the adapter's -0.7
    folder = _export_and_compare(tiny, adapter, 0.7, tmp_path, atol=1e-4)
    card = (folder / "README.md").read_text()
    info = json.loads((folder / "steering.json").read_text())
    assert "+0.7" in card and info["orientation"] == -1 and info["coeff"] == 0.7
    assert info["base_weight_hash"] != info["merged_weight_hash"]
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_export_refuses_an_adapter_made_for_another_model(tiny, tmp_path, capsys):
    _save_random_adapter(tiny, tmp_path / "adapter")
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--coeff", "1", "--out", str(tmp_path / "hf"),
              "--model", "tiny-random:1"])
    assert "weight hash" in capsys.readouterr().err  # through the parser: usage line, then the reason
    assert not (tmp_path / "hf").exists()


def test_export_refuses_to_overwrite_a_folder(tiny, tmp_path, capsys):
    _save_random_adapter(tiny, tmp_path / "adapter")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--coeff", "1", "--out", str(tmp_path / "hf")])
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_default_model_export_matches_the_steered_bridge(smol, tmp_path):
    adapter = randomised(innerpissa.attach(smol, [Site(5, "mlp.out"), Site(9, "attn.o")]), 0.05)
    folder = _export_and_compare(smol, adapter, 1.0, tmp_path, atol=2e-3)
    assert json.loads((folder / "steering.json").read_text())["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------- bad inputs destroy nothing


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_an_out_that_overlaps_the_adapter(tiny, tmp_path, capsys):
    _save_random_adapter(tiny, tmp_path / "run" / "adapter")
    before = _snapshot(tmp_path)
    for out, where in [(tmp_path / "run" / "adapter", "is the adapter folder"), (tmp_path / "run", "contains the adapter"),
                       (tmp_path / "run" / "adapter" / "merged", "is inside the adapter")]:
        with pytest.raises(SystemExit):
            main(["--adapter", str(tmp_path / "run" / "adapter"), "--coeff", "1", "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert where in err and "pick an --out outside it" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_export_only(tiny, tmp_path, capsys):
    _save_random_adapter(tiny, tmp_path / "adapter")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.jsonl").write_text("precious")
    args = ["--adapter", str(tmp_path / "adapter"), "--coeff", "1", "--overwrite"]
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "results")])
    assert "no export wrote" in capsys.readouterr().err
    assert (tmp_path / "results" / "metrics.jsonl").read_text() == "precious"
    folder = main([*args, "--out", str(tmp_path / "hf")])
    first = json.loads((folder / "steering.json").read_text())
    (folder / "stale.txt").write_text("from before")
    again = main([*args[:3], "-1", "--overwrite", "--out", str(tmp_path / "hf")])
    assert json.loads((again / "steering.json").read_text())["coeff"] == -1 != first["coeff"]
    assert not (again / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]  # no temporary folders left


def test_overwrite_of_a_held_folder_is_refused_naming_the_holder(tiny, tmp_path, hold_folder, capsys):
    _save_random_adapter(tiny, tmp_path / "adapter")
    folder = main(["--adapter", str(tmp_path / "adapter"), "--coeff", "1", "--out", str(tmp_path / "hf")])
    proc = hold_folder(folder)
    before = _snapshot(folder)
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--coeff", "-1", "--out", str(folder), "--overwrite"])
    err = capsys.readouterr().err
    assert f"pid {proc.pid}" in err and "live run" in err
    assert _snapshot(folder) == before
    with pytest.raises(ExportError, match="live run"):  # the library refuses too, a folder below held as well
        check_out(tmp_path, overwrite=True)


@pytest.mark.parametrize("kind", ["innerpissa", "lora"])
def test_an_absurd_coefficient_is_refused_naming_it(tiny, tmp_path, capsys, kind):
    module = {"innerpissa": innerpissa, "lora": lora}[kind]
    adapter = randomised(module.attach(tiny, [Site(1, "mlp.out")]), 0.3)
    try:
        save_adapter(adapter, tmp_path / "adapter")
    finally:
        adapter.detach()
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--coeff", "1e30", "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert "--coeff +1e+30" in err and "pick a coefficient of the size the adapter was trained at" in err
    assert "Traceback" not in err
    assert not (tmp_path / "hf").exists()


def test_float16_overflow_is_refused(tiny, tmp_path, capsys):
    adapter = randomised(lora.attach(tiny, [Site(1, "mlp.out")]), 0.3)
    try:
        save_adapter(adapter, tmp_path / "adapter")
    finally:
        adapter.detach()
    # finite in float32 (|ΔW| ~ 1e6), beyond float16's 65504
    args = ["--adapter", str(tmp_path / "adapter"), "--coeff", "1e6", "--out", str(tmp_path / "hf")]
    with pytest.raises(SystemExit):
        main([*args, "--dtype", "float16"])
    err = capsys.readouterr().err
    assert "overflow float16" in err and "--coeff +1e+06" in err and "--dtype float32" in err
    assert not (tmp_path / "hf").exists()


def test_logits_beyond_the_tolerance_warn_and_non_finite_ones_are_refused():
    steered = torch.zeros(1, 3, 5)
    tol = LOGIT_TOLERANCE[torch.float32]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_logits(steered + tol / 2, steered, 1.0, torch.float32, "here") == pytest.approx(tol / 2)
    with pytest.warns(UserWarning, match=r"differ from the steered model's by up to 0\.5 at --coeff \+2"):
        check_logits(steered + 0.5, steered, 2.0, torch.float32, "here")
    with pytest.raises(ExportError, match=r"--coeff \+3 computes non-finite logits"):
        check_logits(steered + float("nan"), steered, 3.0, torch.float32, "here")


def test_export_into_a_training_run_is_refused_while_it_trains(tiny, tmp_path, mini_concept, capsys):
    """Two processes: a real training holds its folder; an export --overwrite into it is refused and the run finishes."""
    _save_random_adapter(tiny, tmp_path / "adapter")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    train = subprocess.Popen([sys.executable, "-m", "interp.train", "--model", "tiny-random", "--concept", str(mini_concept),
                              "--layers", "1", "--steps", "3", "--n-pairs", "40", "--no-progress", "--no-calibrate",
                              "--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ((run / ".lock").is_file() and (run / ".lock").read_text().strip()):
            assert train.poll() is None, train.communicate()[1][-2000:]
            assert time.time() < deadline, "the training never took its folder"
            time.sleep(0.05)
        with pytest.raises(SystemExit):
            main(["--adapter", str(tmp_path / "adapter"), "--coeff", "1", "--out", str(run), "--overwrite"])
        err = capsys.readouterr().err
        assert f"pid {train.pid}" in err and "live run" in err
        assert train.poll() is None  # refused while the training still ran
        _, stderr = train.communicate(timeout=600)
    finally:
        if train.poll() is None:
            train.kill()
            train.wait()
    assert train.returncode == 0, stderr[-2000:]
    from interp.adapters.io import read_adapter_config

    assert read_adapter_config(run / "adapter")["model_spec"] == "tiny-random"
    assert (run / "checkpoint.pt").is_file() and (run / "metrics.jsonl").is_file()
