"""GGUF export: plain transformers reads the file, its logits are the steered model's (c = +1) and the
source's (c = 0), and it keeps the source file's metadata and tokenizer."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interp.adapters import innerpissa
from interp.adapters.io import save_adapter
from interp.cli.export import main
from interp.export import LOGIT_TOLERANCE
from interp.sites import Site
from conftest import randomised

gguf = pytest.importorskip("gguf")

TOKENS = [[1, 17, 30, 200, 52, 9], [8, 8, 100, 31, 60, 7]]
SITES = [Site(0, "attn.q"), Site(1, "attn.k"), Site(1, "attn.o"), Site(0, "mlp.out")]  # q and k: llama.cpp permutes them
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"

# Runs in a fresh interpreter that never imports the project: only transformers and safetensors.
LOAD_GGUF = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
out, files = sys.argv[1], sys.argv[2:]
logits = {{}}
for i, f in enumerate(files):
    f = Path(f)
    model = AutoModelForCausalLM.from_pretrained(f.parent, gguf_file=f.name).eval()
    tok = AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)
    assert tok.chat_template, "the chat template was not kept"
    with torch.no_grad():
        logits[str(i)] = model(torch.tensor({tokens})).logits.contiguous()
assert not any(name == "interp" or name.startswith("interp.") for name in sys.modules), "project code was imported"
save_file(logits, out)
"""


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path) -> None:
    """A 2-layer llama (hidden 64, 4 heads, 2 KV heads) from a seeded random ``LlamaConfig`` model, float32,
    with a byte-level BPE tokenizer and a chat template: what llama.cpp's converter would write."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "Ġ t"]
    tokens = specials + list(bytes_to_unicode().values()) + ["he", "ll", "Ġt"]
    heads, kv_heads, layers = 4, 2, 2
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for name, value in model.state_dict().items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        value = value.numpy().astype(np.float32)
        if gname.endswith("attn_q.weight"):
            value = _permute(value, heads)
        elif gname.endswith("attn_k.weight"):
            value = _permute(value, kv_heads)
        w.add_tensor(gname, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "tiny-llama.gguf"
    write_tiny_llama_gguf(path)
    return path


@pytest.fixture(scope="module")
def gguf_model(tiny_gguf):
    from interp.models import load_model

    return load_model(str(tiny_gguf))


def _plain_logits(files, tmp_path) -> list[torch.Tensor]:
    out = tmp_path / "plain_logits.safetensors"
    done = subprocess.run([sys.executable, "-c", LOAD_GGUF.format(tokens=TOKENS), str(out), *map(str, files)],
                          capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    logits = load_file(out)
    return [logits[str(i)] for i in range(len(files))]


def _steered_and_base(model, sites, scale, adapter_dir, config=None):
    """Save a random InnerPiSSA adapter (orientation -1) and return (steered logits at c = +1, base logits)."""
    adapter = randomised(innerpissa.attach(model, sites, config or innerpissa.InnerPiSSAConfig()), scale)
    adapter.orientation = -1  # the saved sign is applied: c = +1 merges the adapter's -1
    try:
        save_adapter(adapter, adapter_dir)
        with torch.no_grad(), adapter.steer(model, 1.0):
            steered = model(torch.tensor(TOKENS)).float()
        with torch.no_grad():
            base = model(torch.tensor(TOKENS)).float()
    finally:
        adapter.detach()
    return steered, base


def _tensors(path) -> dict[str, tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, np.array(t.data)) for t in reader.tensors}


def _field(path, key):
    field = gguf.GGUFReader(path).fields.get(key)
    return None if field is None else field.contents()


def test_gguf_export_is_the_steered_model_at_c1_and_the_source_at_c0(gguf_model, tiny_gguf, tmp_path):
    steered, base = _steered_and_base(gguf_model, SITES, 0.5, tmp_path / "adapter", innerpissa.InnerPiSSAConfig(rank=8))
    args = ["--adapter", str(tmp_path / "adapter"), "--format", "gguf"]
    at1 = main([*args, "--coeff", "1", "--out", str(tmp_path / "c1")])
    at0 = main([*args, "--coeff", "0", "--out", str(tmp_path / "c0")])
    assert at1 == (tmp_path / "c1" / "c1.gguf").resolve() and at1.is_file()
    plain1, plain0 = _plain_logits([at1, at0], tmp_path)
    d1, d0 = float((plain1 - steered).abs().max()), float((plain0 - base).abs().max())
    print(f"tiny llama GGUF export, max abs logit difference: c=+1 vs steered {d1:.3g}, c=0 vs source {d0:.3g}")
    assert (steered - base).abs().max() > 1e-2  # the adapter does move the logits
    assert d1 < 1e-4 and d0 < 1e-4

    # known answer on the file itself: c = 0 is the source bit for bit; c = +1 changes the adapted sites only
    source, zero, one = _tensors(tiny_gguf), _tensors(at0), _tensors(at1)
    assert list(zero) == list(source) and list(one) == list(source)
    assert all(np.array_equal(zero[k][1], source[k][1]) for k in source)
    changed = {k for k in source if not np.array_equal(one[k][1], source[k][1])}
    assert changed == {"blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.attn_output.weight", "blk.0.ffn_down.weight"}
    assert {t for t, _ in one.values()} == {"F32"}

    # the source's metadata and tokenizer, and the provenance
    for key in ("general.name", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template",
                "llama.attention.head_count_kv"):
        assert _field(at1, key) == _field(tiny_gguf, key), key
    assert _field(at1, "innerpissa.coefficient") == 1.0 and _field(at1, "innerpissa.orientation") == -1
    assert _field(at1, "innerpissa.sites") == [s.name for s in SITES]
    assert "merged at c = +1" in _field(at1, "general.description")
    info = json.loads((at1.parent / "steering.json").read_text())
    assert info["format"] == "gguf" and info["file"] == "c1.gguf" and info["check"]["max_abs_logit_diff"] < 1e-4
    assert info["merged_weight_hash"] == _field(at1, "innerpissa.merged_weight_hash") != info["base_weight_hash"]
    assert "gguf_file=\"c1.gguf\"" in (at1.parent / "README.md").read_text()


def test_gguf_export_in_float16_keeps_1d_tensors_in_float32(gguf_model, tmp_path):
    _steered_and_base(gguf_model, SITES[:2], 0.5, tmp_path / "adapter", innerpissa.InnerPiSSAConfig(rank=8))
    path = main(["--adapter", str(tmp_path / "adapter"), "--format", "gguf", "--coeff", "1", "--dtype", "float16",
                 "--out", str(tmp_path / "f16")])
    types = {name: (kind, arr.ndim) for name, (kind, arr) in _tensors(path).items()}
    assert {kind for kind, ndim in types.values() if ndim == 1} == {"F32"}
    assert {kind for kind, ndim in types.values() if ndim > 1} == {"F16"}
    assert _field(path, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_F16)
    check = json.loads((path.parent / "steering.json").read_text())["check"]
    assert 0 < check["max_abs_logit_diff"] < LOGIT_TOLERANCE[torch.float16]


def test_gguf_export_of_a_model_not_loaded_from_gguf_says_what_to_do(tiny, tmp_path, capsys):
    adapter = innerpissa.attach(tiny, [Site(1, "mlp.out")])
    try:
        save_adapter(adapter, tmp_path / "adapter")
    finally:
        adapter.detach()
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--format", "gguf", "--coeff", "1", "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert "'tiny-random' was not loaded from one" in err and "--format hf" in err and "convert_hf_to_gguf.py" in err
    assert "Traceback" not in err and not (tmp_path / "g").exists()
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--format", "gguf", "--coeff", "1", "--out", str(tmp_path / "g.gguf")])
    assert f"pass --out {tmp_path / 'g'}" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_gguf_export_matches_the_steered_and_the_source_model(smol, tmp_path):
    sites = [Site(3, "attn.q"), Site(3, "attn.k"), Site(5, "mlp.out"), Site(9, "attn.o")]
    steered, base = _steered_and_base(smol, sites, 0.05, tmp_path / "adapter")
    args = ["--adapter", str(tmp_path / "adapter"), "--format", "gguf"]
    at1 = main([*args, "--coeff", "1", "--out", str(tmp_path / "c1")])
    at0 = main([*args, "--coeff", "0", "--out", str(tmp_path / "c0")])
    plain1, plain0 = _plain_logits([at1, at0], tmp_path)
    d1, d0 = float((plain1 - steered).abs().max()), float((plain0 - base).abs().max())
    print(f"default model GGUF export, max abs logit difference: c=+1 vs steered {d1:.3g}, c=0 vs source {d0:.3g}, "
          f"steering moves logits by {float((steered - base).abs().max()):.3g}")
    assert (steered - base).abs().max() > 0.1
    assert d1 < 1e-3 and d0 < 1e-3  # measured 2.5e-5 and 3.4e-5
    assert _field(at1, "tokenizer.chat_template") == _field(at0, "tokenizer.chat_template")
    assert json.loads((at1.parent / "steering.json").read_text())["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
