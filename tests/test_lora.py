"""LoRA baseline on the shared adapter interface: exactness at c = 0, per-row c, merge, init, training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


from interp.adapters.lora import LoRA, LoRAConfig, LoRALayer, attach
from interp.backends import linear_of, select_sites


@pytest.fixture()
def sites(tiny):
    return select_sites(tiny, layers=[1, 2], modules=["mlp.out", "attn.o"])


@pytest.fixture()
def batch(tiny):
    enc = tiny.tokenizer(
        ["The weather today is mild", "I found a wallet and", "Tell me the truth about"],
        return_tensors="pt",
        padding=True,
        padding_side="left",
        add_special_tokens=False,
    )
    return enc["input_ids"], enc["attention_mask"]


def logits(model, batch):
    with torch.no_grad():
        return model(batch[0], attention_mask=batch[1])


def test_c0_exact_per_row_and_detach(tiny, sites, batch):
    base = logits(tiny, batch)
    adapter = attach(tiny, sites, LoRAConfig(rank=4, init_std=0.3))
    try:
        assert isinstance(adapter, LoRA) and adapter.name == "lora"
        assert torch.equal(logits(tiny, batch), base)  # outside steer: c = 0
        with adapter.steer(tiny, 0.0):
            assert torch.allclose(logits(tiny, batch), base, atol=1e-6)
        coeffs = torch.tensor([1.0, -1.0, 0.0])
        with adapter.steer(tiny, coeffs):
            rows = logits(tiny, batch)
        assert not torch.allclose(rows[0], base[0], atol=1e-3)  # c = 1 does something
        for i, c in enumerate(coeffs.tolist()):
            with adapter.steer(tiny, c):
                single = logits(tiny, batch)
            assert torch.allclose(rows[i], single[i], atol=1e-4)
    finally:
        adapter.detach()
    assert torch.equal(logits(tiny, batch), base)


def test_delta_matches_delta_weight_and_is_linear_in_c(tiny, sites):
    adapter = attach(tiny, sites[:1], LoRAConfig(rank=4, alpha=8.0, init_std=0.1))
    try:
        layer = next(iter(adapter.layers.values()))
        assert isinstance(layer, LoRALayer)
        x = torch.randn(2, 5, linear_of(tiny, sites[0]).in_features)
        for c in (0.5, -2.0):
            dw = layer.delta_weight(c)
            assert dw.shape == linear_of(tiny, sites[0]).weight.shape
            assert torch.allclose(layer.delta(x, c), x @ dw.T, atol=1e-5)
            expected = c * (8.0 / 4) * (layer.lora_b @ layer.lora_a)
            assert torch.allclose(dw, expected, atol=1e-6)
        assert torch.allclose(layer.delta_weight(-1.0), -layer.delta_weight(1.0))
        per_row = layer.delta(x, torch.tensor([1.0, -2.0]))
        assert torch.allclose(per_row[1], layer.delta(x[1:], -2.0)[0], atol=1e-6)
        d = layer.diagnostics()
        assert d["rank"] == 4 and d["delta_norm"] > 0
    finally:
        adapter.detach()


def test_merge_matches_hooks_and_unmerge_restores(tiny, sites, batch):
    original = {s: linear_of(tiny, s).weight.detach().clone() for s in sites}
    adapter = attach(tiny, sites, LoRAConfig(rank=4, init_std=0.3))
    try:
        with adapter.steer(tiny, 1.5):
            hooked = logits(tiny, batch)
        adapter.merge(1.5)
        merged = logits(tiny, batch)
        adapter.unmerge()
        assert torch.allclose(hooked, merged, atol=1e-4)
        assert all(torch.equal(linear_of(tiny, s).weight, original[s]) for s in sites)
    finally:
        adapter.detach()


def test_init_modes_are_seeded(tiny, sites):
    def deltas(config):
        adapter = attach(tiny, sites, config)
        try:
            return [layer.delta_weight(1.0).detach().clone() for layer in adapter.layers.values()]
        finally:
            adapter.detach()

    a, b, other = deltas(LoRAConfig(seed=1)), deltas(LoRAConfig(seed=1)), deltas(LoRAConfig(seed=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.norm() > 0 for x in a) and not torch.equal(a[0], other[0])
    assert not torch.equal(a[0], a[1])  # sites draw different matrices
    assert all(float(x.norm()) == 0.0 for x in deltas(LoRAConfig(init="zero_b")))
    with pytest.raises(ValueError, match="zero_b"):
        LoRAConfig(init="gaussian")
    with pytest.raises(ValueError, match="rank"):
        attach(tiny, sites, LoRAConfig(rank=1000))


def test_only_adapter_params_and_config(tiny, sites):
    adapter = attach(tiny, sites, LoRAConfig(rank=4))
    try:
        params = list(adapter.parameters())
        assert len(params) == 2 * len(sites)
        assert {id(p) for p in params}.isdisjoint({id(p) for p in tiny.parameters()})
        cfg = adapter.config()
        assert cfg["name"] == "lora" and cfg["options"]["rank"] == 4
        assert len(adapter.diagnostics()) == len(sites)
    finally:
        adapter.detach()


def test_trains_through_the_reprpo_loop(tiny, tmp_path):
    import interp.train as train_mod
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    config = train_mod.TrainConfig.of(
        model="tiny-random", concept=str(Path(__file__).parent / "data" / "honesty_v1.json"), n_pairs=200, n_calibration=16, n_validation=16, rank=4, lr=0.05, steps=16,
        batch_size=4,
    )
    base = linear_of(tiny, sites[0]).weight.detach().clone()
    adapter = attach(tiny, sites, LoRAConfig(rank=4))
    before = {k: v.detach().clone() for k, v in adapter.layers.named_parameters()}
    try:
        result = train_mod.train(tiny, adapter, train_mod.build_pairs(config), config, progress=False)
    finally:
        adapter.detach()
    losses = [r["loss"] for r in result.history]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    after = dict(adapter.layers.named_parameters())
    assert all(not torch.equal(before[k], after[k].detach()) for k in before)
    assert torch.equal(linear_of(tiny, sites[0]).weight, base)
