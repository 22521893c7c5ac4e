import time

import pytest
import torch

from interp.models import ModelLoadError, load_hf, load_model
from interp.provenance import weight_hash


def _chat_tokens(model, question: str) -> torch.Tensor:
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return model.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def test_tiny_random_is_seeded_and_fast():
    start = time.perf_counter()
    a = load_model("tiny-random")
    elapsed = time.perf_counter() - start
    b = load_model("tiny-random:0")
    c = load_model("tiny-random:1")
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        la, lb, lc = a(tokens), b(tokens), c(tokens)
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)
    assert a.cfg.n_layers == 4 and a.cfg.d_model == 64
    assert elapsed < 60  # seconds, generous: it is "seconds" once the tokenizer cache exists
    assert a.spec == "tiny-random"


def test_loading_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-random:5")
    assert torch.equal(torch.rand(3), expected)


def test_bridge_matches_hf_model_logits(tiny):
    tokens = _chat_tokens(tiny, "Hello there")
    with torch.no_grad():
        bridge_logits = tiny(tokens)
        hf_logits = load_hf("tiny-random")[0](tokens).logits  # a fresh, un-bridged copy
    # The bridge runs the HF modules without compatibility mode: equal up to float32 noise.
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", ["", "no-such-model-xyz", "tiny-random:abc"])
def test_bad_specs_raise_clear_errors(spec):
    with pytest.raises(ModelLoadError) as err:
        load_model(spec)
    assert "smollm2-135m" in str(err.value) or "seed" in str(err.value)


def test_weight_hash_changes_with_weights(tiny):
    w = {"a": torch.ones(3), "b": torch.zeros(2)}
    h = weight_hash(w)
    assert h == weight_hash(dict(reversed(list(w.items()))))
    assert h != weight_hash({"a": torch.ones(3), "b": torch.full((2,), 1e-6)})


@pytest.mark.slow
def test_default_model_offline_and_sensible(smol, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert smol.cfg.n_layers == 30 and smol.cfg.d_model == 576 and smol.cfg.d_mlp == 1536
    tokens = _chat_tokens(smol, "What is the capital of France?")
    with torch.no_grad():
        logp = smol(tokens)[0, -1].log_softmax(-1)
        hf_logits = load_hf("smollm2-135m")[0](tokens).logits
        torch.testing.assert_close(smol(tokens), hf_logits, atol=1e-4, rtol=0)
    tok = smol.tokenizer

    def best(words):
        ids = {tok.encode(w, add_special_tokens=False)[0] for w in words}
        return max(logp[i].item() for i in ids)

    assert best([" Paris", "Paris"]) > best([" London", "London"]) + 2.0
