"""Merged export: plain transformers loads the folder, and its logits are the steered model's."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from interp.adapters import innerpissa, lora
from interp.adapters.io import save_adapter
from interp.export import main
from interp.sites import Site

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


def _randomised(adapter, scale: float):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return adapter


def _save_random_adapter(model, path):
    adapter = _randomised(innerpissa.attach(model, [Site(1, "mlp.out")]), 0.3)
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
    adapter = _randomised(module.attach(tiny, [Site(1, "mlp.out"), Site(2, "attn.o"), Site(3, "attn.q")]), 0.3)
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
    adapter = _randomised(innerpissa.attach(smol, [Site(5, "mlp.out"), Site(9, "attn.o")]), 0.05)
    folder = _export_and_compare(smol, adapter, 1.0, tmp_path, atol=2e-3)
    assert json.loads((folder / "steering.json").read_text())["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
