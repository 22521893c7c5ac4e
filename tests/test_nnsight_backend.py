"""nnsight backend parity with the TransformerBridge (interp.backends.nnsight).

Both backends execute the same edits (interp.interventions) through interp.backends.run.
Tolerances: activations and logits through nnsight equal the bridge's to atol 1e-5
(fp32; on this machine they are bit-identical: same HF modules, eager attention on both),
compared at real (unpadded) positions only.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from interp.adapters.base import AdapterSet, DeltaLayer
from interp.backends import backend_of, run
from interp.backends.nnsight_sites import LLAMA_MODULES
from interp.backends.nnsight import (
    NNsightBackend,
    RemoteUnavailable,
    check_remote,
    load_nnsight,
    module_of,
    nnsight_trace,
    resolve,
)
from interp.baselines import VectorSteering
from interp.interventions import AtHook
from interp.sites import LINEAR_MODULES, Site
from interp.backends import linear_of
from interp.sites import site_hook

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


class HandLayer(DeltaLayer):
    """ΔW(c) = c·A + c²·B: not linear in c, so a per-row coefficient needs one ΔW per row."""

    def __init__(self, site, shape, gen):
        super().__init__()
        self.site = site
        self.A = nn.Parameter(0.05 * torch.randn(*shape, generator=gen))
        self.B = nn.Parameter(0.02 * torch.randn(*shape, generator=gen))

    def delta_weight(self, coeff):
        return float(coeff) * self.A.detach() + float(coeff) ** 2 * self.B.detach()

    def delta(self, x, coeff):
        if isinstance(coeff, torch.Tensor) and coeff.ndim == 1:
            dw = torch.stack([self.delta_weight(float(c)) for c in coeff])
            return torch.einsum("bpi,boi->bpo", x, dw)
        return x @ self.delta_weight(float(coeff)).T


class HandAdapter(AdapterSet):
    """A hand-made adapter on the shared API (same parameters on any model for one seed)."""

    name = "hand"

    def __init__(self, model, sites: list[Site], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        super().__init__(model, sites, [HandLayer(s, tuple(linear_of(model, s).weight.shape), gen) for s in sites])


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
    with torch.no_grad():
        got, ref = run(nn_tiny, tokens, mask, read=hooks), run(tiny, tokens, mask, read=hooks)
    for h in hooks:
        assert got.states[h].shape == ref.states[h].shape, h
        _close_real(got.states[h], ref.states[h], mask)
    _close_real(got.logits, ref.logits, mask)
    assert backend_of(nn_tiny).weight_hash == backend_of(tiny).weight_hash


def test_store_through_nnsight_equals_bridge_store(tiny, nn_tiny, batch, tmp_path):
    pytest.importorskip("h5py")
    from interp.store import collect, open_store

    tokens, mask = batch
    vs = VectorSteering({1: torch.randn(64, generator=torch.Generator().manual_seed(1))})
    kw = dict(method=vs, coeffs=(-1.0, 0.0, 1.0), positions="all", chunk_size=3, progress=False)
    a = open_store(collect(tiny, tmp_path / "bridge", tokens, mask, ["blocks.2.hook_resid_post", "blocks.2.mlp.out.hook_in"], **kw))
    b = open_store(collect(nn_tiny, tmp_path / "nn", tokens, mask, ["blocks.2.hook_resid_post", "blocks.2.mlp.out.hook_in"], **kw))
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
        with torch.no_grad():
            _close_real(run(nn_tiny, tokens, mask, vs.edits(coeff)).logits, run(tiny, tokens, mask, vs.edits(coeff)).logits,
                        mask)
    assert vs.edits(0.0) == () and vs.edits(torch.zeros(4)) == ()  # c = 0: nothing to install


@pytest.mark.parametrize("coeff", [1.0, -1.0, "rows"])
def test_hand_adapter_delta_matches_forward_hook(tiny, nn_tiny, batch, coeff):
    tokens, mask = batch
    sites = [Site(1, "mlp.out"), Site(2, "attn.o"), Site(2, "mlp.in")]
    on_bridge, on_nn = HandAdapter(tiny, sites), HandAdapter(nn_tiny, sites)
    try:
        c = torch.tensor([1.0, -1.0, 0.0, 1.0]) if coeff == "rows" else coeff
        with torch.no_grad():
            got = run(nn_tiny, tokens, mask, on_nn.edits(c)).logits
            want = run(tiny, tokens, mask, on_bridge.edits(c)).logits
            base = run(tiny, tokens, mask).logits
        _close_real(got, want, mask)
        assert (got - base).abs().max() > 1e-2  # the adapter changes the output
        # an edit runs only on the model its adapter is attached to
        with pytest.raises(ValueError, match="not attached to this model"):
            run(nn_tiny, tokens, mask, on_bridge.edits(c))
        with pytest.raises(ValueError, match="not attached to this model"):
            run(tiny, tokens, mask, on_nn.edits(c))
    finally:
        on_bridge.detach()
        on_nn.detach()


def test_innerpissa_adapter_matches_bridge(tiny, nn_tiny, batch, tmp_path):
    from interp.adapters.innerpissa import InnerPiSSAConfig, attach
    from interp.adapters.io import load_adapter, save_adapter

    tokens, mask = batch
    sites = [Site(1, "mlp.out"), Site(2, "attn.o")]
    adapter = attach(tiny, sites, InnerPiSSAConfig(rank=8))
    loaded = None
    try:
        with torch.no_grad():
            for p in adapter.parameters():
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        save_adapter(adapter, tmp_path / "a")
        loaded = load_adapter(nn_tiny, tmp_path / "a")  # rebuilt on nnsight's own weights
        for c in (1.0, -1.0, torch.tensor([1.0, -1.0, 0.0, 1.0])):
            with torch.no_grad():
                got = run(nn_tiny, tokens, mask, loaded.edits(c)).logits
                want = run(tiny, tokens, mask, adapter.edits(c)).logits
            _close_real(got, want, mask, atol=1e-4)
    finally:
        adapter.detach()
        if loaded is not None:
            loaded.detach()


def test_remote_local_path_runs_inline_steering(nn_tiny, batch):
    """remote='local' serialises the trace as NDIF would: the inline maths must survive it."""
    tokens, mask = batch
    adapter = HandAdapter(nn_tiny, [Site(1, "mlp.out")])
    try:
        edits = (*adapter.edits(1.0), *VectorSteering({2: torch.ones(64)}).edits(1.0))
        with torch.no_grad():
            _close_real(NNsightBackend(nn_tiny, remote="local").run(tokens, mask, edits).logits,
                        run(nn_tiny, tokens, mask, edits).logits, mask)
    finally:
        adapter.detach()


def test_nnsight_refuses_edits_it_cannot_run(nn_tiny, batch):
    tokens, mask = batch
    with pytest.raises(TypeError, match="AtHook"):
        run(nn_tiny, tokens, mask, (AtHook("unembed.hook_out", lambda x: x),))
    with pytest.raises(ValueError, match="out of range"):
        run(nn_tiny, tokens, mask, VectorSteering({9: torch.ones(64)}).edits(1.0))


# --------------------------------------------------------------------------- remote


def test_remote_without_key_fails_fast(nn_tiny, batch, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    tokens, mask = batch
    start = time.perf_counter()
    with pytest.raises(RemoteUnavailable, match="NDIF_API_KEY"):
        NNsightBackend(nn_tiny, remote=True).run(tokens, mask)
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
    with torch.no_grad():
        got, ref = run(nn_smol, tokens, mask, read=hooks), run(smol, tokens, mask, read=hooks)
    for h in hooks:
        _close_real(got.states[h], ref.states[h], mask, atol=1e-4)
    on_bridge, on_nn = HandAdapter(smol, [Site(14, "mlp.out")]), HandAdapter(nn_smol, [Site(14, "mlp.out")])
    try:
        for c in (1.0, -1.0):
            with torch.no_grad():
                _close_real(run(nn_smol, tokens, mask, on_nn.edits(c)).logits, run(smol, tokens, mask, on_bridge.edits(c)).logits,
                            mask, atol=1e-4)
    finally:
        on_bridge.detach()
        on_nn.detach()


def test_evaluate_remote_without_key_says_why_before_building_anything(monkeypatch, capsys):
    from nnsight import CONFIG

    from interp.cli import evaluate
    from interp.backends import nnsight as backend

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the key was checked")

    monkeypatch.setattr(backend, "load_nnsight", never)
    with pytest.raises(SystemExit):
        evaluate.main(["--remote", "--model", "meta-llama/Llama-3.1-8B", "--n-eval", "2"])
    assert "NDIF_API_KEY" in capsys.readouterr().err
