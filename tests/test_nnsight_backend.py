"""nnsight backend parity with the TransformerBridge (interp.backends.nnsight).

Tolerances: activations and logits through nnsight equal the bridge's to atol 1e-5
(fp32; on this machine they are bit-identical: same HF modules, eager attention on both),
compared at real (unpadded) positions only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from interp.backends.nnsight import (
    LLAMA_MODULES,
    NNSteering,
    RemoteUnavailable,
    check_remote,
    for_evaluate,
    load_nnsight,
    module_of,
    nnsight_logits,
    nnsight_trace,
    resolve,
    steering_from,
)
from interp.baselines import VectorSteering
from interp.sites import LINEAR_MODULES, Site, linear_of
from interp.steering import SteeringMethod
from interp.store import bridge_runner, site_hook

ATOL = 1e-5
SITES = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.mlp.out.hook_in",
         "blocks.2.attn.o", "blocks.3.mlp.gate.hook_out", "blocks.3.hook_out"]


@pytest.fixture(scope="module")
def nn_tiny():
    return load_nnsight("tiny-random")


@pytest.fixture(scope="module")
def batch(tiny):
    enc = tiny.tokenizer([f"row {i} " + "tok " * (1 + 2 * i) for i in range(4)], return_tensors="pt",
                         padding=True, padding_side="left")
    return enc.input_ids, enc.attention_mask


def _close_real(a, b, mask, atol=ATOL):
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=atol)


class HandAdapter(SteeringMethod):
    """A hand-made adapter on the shared API: ΔW(c) = c·A + c²·B (not linear in c), applied on the
    bridge by torch forward hooks on the raw nn.Linear, as interp.adapters does."""

    name = "hand"

    def __init__(self, model, sites: list[Site], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.sites = sites
        self.model_spec = model.spec
        self.layers = nn.ModuleDict()
        for site in sites:
            out_f, in_f = linear_of(model, site).weight.shape
            layer = nn.Module()
            layer.A = nn.Parameter(0.05 * torch.randn(out_f, in_f, generator=gen))
            layer.B = nn.Parameter(0.02 * torch.randn(out_f, in_f, generator=gen))
            layer.delta_weight = (lambda L: lambda c: float(c) * L.A.detach() + float(c) ** 2 * L.B.detach())(layer)
            self.layers[site.name.replace(".", "_")] = layer

    @contextmanager
    def steer(self, model, coeff):
        c = self.effective(coeff)
        handles = []
        for site, layer in zip(self.sites, self.layers.values()):
            def hook(mod, inputs, output, layer=layer):
                x = inputs[0]
                if isinstance(c, torch.Tensor) and c.ndim == 1:
                    dw = torch.stack([layer.delta_weight(float(ci)) for ci in c])
                    return output + torch.einsum("bpi,boi->bpo", x, dw)
                return output + x @ layer.delta_weight(float(c)).T
            handles.append(linear_of(model, site).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


# --------------------------------------------------------------------------- site map


def test_site_map_matches_bridge_linears(tiny, nn_tiny):
    for module in LINEAR_MODULES:
        site = Site(2, module)
        assert torch.equal(module_of(nn_tiny, site.name).weight, linear_of(tiny, site).weight), module
    assert set(LLAMA_MODULES) == set(LINEAR_MODULES)
    assert resolve("blocks.3.hook_resid_post") == resolve("blocks.3.hook_out")
    assert resolve("blocks.3.mlp.out.hook_in").path == "model.layers.3.mlp.down_proj"
    assert not resolve("blocks.3.mlp.out.hook_in").is_output
    with pytest.raises(ValueError, match="valid forms"):
        resolve("blocks.3.mlp.nowhere")
    with pytest.raises(ValueError, match="out of range"):
        nnsight_trace(nn_tiny, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long),
                      sites=["blocks.9.hook_resid_post"])


# --------------------------------------------------------------------------- parity


def test_activations_and_logits_match_bridge(tiny, nn_tiny, batch):
    tokens, mask = batch
    hooks = [site_hook(s) for s in SITES]
    logits, found = nnsight_trace(nn_tiny, tokens, mask, sites=hooks)
    ref = bridge_runner(tiny, hooks)(tokens, mask, 0.0)
    for h in hooks:
        assert found[h].shape == ref[h].shape, h
        _close_real(found[h], ref[h], mask)
    with torch.no_grad():
        _close_real(logits, tiny(tokens, attention_mask=mask), mask)


def test_store_through_nnsight_equals_bridge_store(tiny, nn_tiny, batch, tmp_path):
    pytest.importorskip("h5py")
    from interp.backends.nnsight import collect as nn_collect
    from interp.store import collect, open_store

    tokens, mask = batch
    vs = VectorSteering({1: torch.randn(64, generator=torch.Generator().manual_seed(1))})
    kw = dict(method=vs, coeffs=(-1.0, 0.0, 1.0), positions="all", chunk_size=3, progress=False)
    a = open_store(collect(tiny, tmp_path / "bridge", tokens, mask, ["blocks.2.hook_resid_post", "blocks.2.mlp.out.hook_in"], **kw))
    b = open_store(nn_collect(nn_tiny, tmp_path / "nn", tokens, mask, ["blocks.2.hook_resid_post", "blocks.2.mlp.out.hook_in"], **kw))
    assert a["acts"].dims == b["acts"].dims and a["acts_d128"].dims == b["acts_d128"].dims
    for name in ("site", "site_d128", "coeff", "prompt_id", "label"):
        assert list(a[name].values) == list(b[name].values)
    real = a["mask"].values.astype(bool)
    for var in ("acts", "acts_d128"):
        x, y = a[var].values.transpose(0, 3, 1, 2, 4), b[var].values.transpose(0, 3, 1, 2, 4)
        np.testing.assert_allclose(x[real], y[real], rtol=0, atol=ATOL)
    assert b.attrs["backend"] == "nnsight" and a.attrs["backend"] == "bridge"
    for key in ("model_spec", "weight_hash", "sites", "config", "store_coeffs"):
        assert a.attrs[key] == b.attrs[key], key
    # steering did something: c = +1 and -1 differ after layer 1
    assert not np.allclose(b["acts"].sel(coeff=1.0).values, b["acts"].sel(coeff=-1.0).values)


def test_vector_steering_matches_bridge_per_row(tiny, nn_tiny, batch):
    tokens, mask = batch
    gen = torch.Generator().manual_seed(0)
    vs = VectorSteering({1: torch.randn(64, generator=gen), 3: torch.randn(64, generator=gen)})
    vs.orientation = -1
    for coeff in (1.0, -1.0, torch.tensor([1.0, -1.0, 0.0, 2.0])):
        got = nnsight_logits(nn_tiny, tokens, mask, vs, coeff=coeff)
        with torch.no_grad(), vs.steer(tiny, coeff):
            want = tiny(tokens, attention_mask=mask)
        _close_real(got, want, mask)
    # a plain {layer: vector} dict steers the same as the method (orientation +1)
    vs.orientation = 1
    _close_real(nnsight_logits(nn_tiny, tokens, mask, vs.vectors, coeff=0.5),
                nnsight_logits(nn_tiny, tokens, mask, vs, coeff=0.5), mask)


@pytest.mark.parametrize("coeff", [1.0, -1.0, "rows"])
def test_hand_adapter_delta_matches_forward_hook(tiny, nn_tiny, batch, coeff):
    tokens, mask = batch
    adapter = HandAdapter(tiny, [Site(1, "mlp.out"), Site(2, "attn.o"), Site(2, "mlp.in")])
    c = torch.tensor([1.0, -1.0, 0.0, 1.0]) if coeff == "rows" else coeff
    got = nnsight_logits(nn_tiny, tokens, mask, adapter, coeff=c)
    with torch.no_grad(), adapter.steer(tiny, c):
        want = tiny(tokens, attention_mask=mask)
    _close_real(got, want, mask)
    with torch.no_grad():
        base = tiny(tokens, attention_mask=mask)
    assert (got - base).abs().max() > 1e-2  # the adapter changes the output


def test_innerpissa_adapter_matches_bridge(tiny, nn_tiny, batch):
    innerpissa = pytest.importorskip("interp.adapters.innerpissa", reason="adapter not landed yet")
    tokens, mask = batch
    sites = [Site(1, "mlp.out"), Site(2, "attn.o")]
    adapter = innerpissa.attach(tiny, sites, innerpissa.InnerPiSSAConfig(rank=8))
    try:
        with torch.no_grad():
            for p in adapter.parameters():
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        for c in (1.0, -1.0, torch.tensor([1.0, -1.0, 0.0, 1.0])):
            got = nnsight_logits(nn_tiny, tokens, mask, adapter, coeff=c)
            with torch.no_grad(), adapter.steer(tiny, c):
                want = tiny(tokens, attention_mask=mask)
            _close_real(got, want, mask, atol=1e-4)
    finally:
        adapter.detach()


def test_remote_local_path_runs_inline_steering(nn_tiny, batch):
    """remote='local' serialises the trace as NDIF would: the inline maths must survive it."""
    tokens, mask = batch
    st = NNSteering(deltas={"blocks.1.mlp.out": 0.05 * torch.ones(64, 128)}, vectors={2: torch.ones(64)})
    _close_real(nnsight_logits(nn_tiny, tokens, mask, st, remote="local"), nnsight_logits(nn_tiny, tokens, mask, st), mask)


def test_for_evaluate_gives_bridge_logits(tiny, nn_tiny, batch):
    tokens, mask = batch
    vs = VectorSteering({2: torch.randn(64, generator=torch.Generator().manual_seed(3))})
    model_like, method_like = for_evaluate(nn_tiny, vs)
    with method_like.steer(model_like, -1.0):
        got = model_like(tokens, attention_mask=mask)
    with torch.no_grad(), vs.steer(tiny, -1.0):
        want = tiny(tokens, attention_mask=mask)
    _close_real(got, want, mask)
    assert model_like.steering == NNSteering()  # reset after the block
    with pytest.raises(ValueError, match="no nnsight form"):
        steering_from(object(), 1.0)


# --------------------------------------------------------------------------- remote


def test_remote_without_key_fails_fast(nn_tiny, batch, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    tokens, mask = batch
    start = time.perf_counter()
    with pytest.raises(RemoteUnavailable, match="NDIF_API_KEY"):
        nnsight_logits(nn_tiny, tokens, mask, remote=True)
    assert time.perf_counter() - start < 5.0
    with pytest.raises(RemoteUnavailable, match="built locally"):
        load_nnsight("tiny-random", remote=True)


def test_remote_with_key_but_local_model_fails_fast(nn_tiny, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    start = time.perf_counter()
    with pytest.raises(RemoteUnavailable, match="local HF object"):
        check_remote(nn_tiny)
    assert time.perf_counter() - start < 5.0


def test_remote_unreachable_host_fails_fast(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "not-a-real-key")
    monkeypatch.setattr(CONFIG.API, "HOST", "https://127.0.0.1:9")  # discard port: refused at once
    start = time.perf_counter()
    with pytest.raises(RemoteUnavailable, match="cannot reach NDIF"):
        check_remote(None, timeout=2.0)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------- default model


@pytest.mark.slow
def test_default_model_parity(smol):
    nn_smol = load_nnsight("smollm2-135m")
    enc = smol.tokenizer(["The capital of France is", "Honesty means"], return_tensors="pt", padding=True,
                         padding_side="left")
    tokens, mask = enc.input_ids, enc.attention_mask
    hooks = ["blocks.14.hook_resid_post", "blocks.14.mlp.out.hook_in", "blocks.20.attn.o.hook_out"]
    logits, found = nnsight_trace(nn_smol, tokens, mask, sites=hooks)
    ref = bridge_runner(smol, hooks)(tokens, mask, 0.0)
    for h in hooks:
        _close_real(found[h], ref[h], mask, atol=1e-4)
    adapter = HandAdapter(smol, [Site(14, "mlp.out")])
    for c in (1.0, -1.0):
        got = nnsight_logits(nn_smol, tokens, mask, adapter, coeff=c)
        with torch.no_grad(), adapter.steer(smol, c):
            want = smol(tokens, attention_mask=mask)
        _close_real(got, want, mask, atol=1e-4)


def test_evaluate_remote_without_key_says_why_before_building_anything(monkeypatch, capsys):
    from nnsight import CONFIG

    from interp import evaluate
    from interp.backends import nnsight as backend

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the key was checked")

    monkeypatch.setattr(backend, "load_nnsight", never)
    with pytest.raises(SystemExit):
        evaluate.main(["--remote", "--model", "meta-llama/Llama-3.1-8B", "--limit", "2"])
    assert "NDIF_API_KEY" in capsys.readouterr().err
