"""InnerPiSSA adapter: decomposition, exactness at c = 0, reversibility, merge, per-row c, grads, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interp.adapters.innerpissa import InnerPiSSAConfig, InnerPiSSALayer, attach, top_svd
from interp.sites import Site
from interp.backends import linear_of

SITES = [Site(1, "mlp.out"), Site(2, "attn.o"), Site(3, "mlp.in")]


def _tokens(batch: int = 4, pos: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 5000, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _randomise(adapter, scale: float = 0.5, seed: int = 0) -> None:
    """Non-trivial parameters, far from the near-identity init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture
def adapter(tiny):
    a = attach(tiny, SITES, InnerPiSSAConfig(rank=16, rotate_u=True, scaling="mult"))
    _randomise(a)
    yield a
    a.detach()


def test_top_svd_reconstructs_and_residual_is_orthogonal(tiny):
    w = linear_of(tiny, SITES[0]).weight.detach()
    full = min(w.shape)
    u, s, v = top_svd(w, full)
    rec = (u * s) @ v.T
    assert float((rec - w.double()).norm() / w.double().norm()) < 1e-5
    u, s, v = top_svd(w, 16)
    res = w.double() - (u * s) @ v.T  # W_res
    assert float((u.T @ res).abs().max()) < 1e-10 and float((res @ v).abs().max()) < 1e-10
    s_all = torch.linalg.svdvals(w.double())
    assert math.isclose(float(torch.linalg.matrix_norm(res, ord=2)), float(s_all[16]), rel_tol=1e-8)
    # canonical signs: the largest |entry| of each U column is positive
    assert bool((u.gather(0, u.abs().argmax(0, keepdim=True)) > 0).all())


def test_stored_in_model_dtype_and_reconstructs_in_float32(tiny):
    layer = InnerPiSSALayer(SITES[0], linear_of(tiny, SITES[0]), InnerPiSSAConfig(rank=64))
    w = linear_of(tiny, SITES[0]).weight.detach()
    assert layer.U.dtype == w.dtype == torch.float32
    rec = (layer.U * layer.S) @ layer.V.T
    assert float((rec - w).norm() / w.norm()) < 1e-5


def test_c0_is_base_model_exactly(tiny, adapter):
    tokens = _tokens()
    adapter.detach()
    base = tiny(tokens)
    fresh = attach(tiny, SITES, InnerPiSSAConfig(rank=16, rotate_u=True, scaling="mult"))
    _randomise(fresh)
    try:
        with fresh.steer(tiny, 0.0):
            at_zero = tiny(tokens)
        outside = tiny(tokens)
        with fresh.steer(tiny, 1.0):
            at_one = tiny(tokens)
    finally:
        fresh.detach()
    assert torch.allclose(at_zero, base, atol=1e-5) and torch.equal(outside, base)
    assert float((at_one - base).abs().max().detach()) > 1e-2  # and the adapter does something


def test_middle_is_exactly_zero_at_c0(adapter):
    for layer in adapter.layers.values():
        assert torch.equal(layer.middle(torch.zeros(1)), torch.zeros(1, 16, 16))


@settings(max_examples=25, deadline=None)
@given(r=st.integers(1, 32), c=st.floats(-3, 3), seed=st.integers(0, 1000))
def test_rotations_and_mult_scaling_reverse(tiny, r, c, seed):
    lin = linear_of(tiny, SITES[0])
    layer = InnerPiSSALayer(SITES[0], lin, InnerPiSSAConfig(rank=r, rotate_u=True, scaling="mult", seed=seed, init_std=0.5))
    with torch.no_grad():
        for rot in (layer.rotation_v, layer.rotation_u):
            eye = torch.eye(r)
            assert torch.allclose(rot(c).T @ rot(c), eye, atol=1e-5)
            assert torch.allclose(rot(-c), rot(c).T, atol=1e-5)
        s = layer.S.float()
        # g(c) then g(-c): the singular values come back
        assert torch.allclose(layer.scale(c) / s * layer.scale(-c), s, rtol=1e-5)


def test_add_scaling_is_additive(tiny):
    layer = InnerPiSSALayer(SITES[0], linear_of(tiny, SITES[0]), InnerPiSSAConfig(rank=8, scaling="add", init_std=0.5))
    with torch.no_grad():
        expected = layer.S + 2.0 * torch.tanh(layer.lam)
        assert torch.allclose(layer.scale(2.0), expected, atol=1e-6)
        assert torch.allclose(layer.scale(1.0) + layer.scale(-1.0), 2 * layer.S, atol=1e-6)


def test_delta_weight_matches_delta(adapter):
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    layer = adapter.layers["blocks_1_attn_o"] if "blocks_1_attn_o" in adapter.layers else adapter.layers["blocks_2_attn_o"]
    with torch.no_grad():
        for c in (-1.5, 0.7):
            assert torch.allclose(layer.delta(x, c), x @ layer.delta_weight(c).T, atol=1e-5)


def test_detach_restores_module_and_logits_bit_for_bit(tiny):
    tokens = _tokens()
    base = tiny(tokens)
    lin = linear_of(tiny, SITES[0])
    weight = lin.weight.detach().clone()
    a = attach(tiny, SITES, InnerPiSSAConfig(rank=16))
    _randomise(a)
    with a.steer(tiny, 1.0):
        tiny(tokens)
    a.merge(-1.0)
    a.detach()
    assert linear_of(tiny, SITES[0]) is lin and not lin._forward_hooks
    assert torch.equal(lin.weight, weight)
    assert torch.equal(tiny(tokens), base)


@pytest.mark.parametrize("c", [-2.0, -1.0, 0.5, 1.0])
def test_merge_matches_unmerged_and_unmerge_is_exact(tiny, adapter, c):
    tokens = _tokens()
    weights = {s.name: linear_of(tiny, s).weight.detach().clone() for s in SITES}
    with torch.no_grad(), adapter.steer(tiny, c):
        steered = tiny(tokens)
    adapter.merge(c)
    with torch.no_grad():
        merged = tiny(tokens)
    adapter.unmerge()
    assert torch.allclose(merged, steered, atol=1e-4), float((merged - steered).abs().max())
    for s in SITES:
        assert torch.equal(linear_of(tiny, s).weight, weights[s.name])


def test_merge_guards(tiny, adapter):
    adapter.merge(1.0)
    with pytest.raises(ValueError, match="merged"):
        with adapter.steer(tiny, 1.0):
            pass
    with pytest.raises(ValueError, match="already merged"):
        adapter.merge(1.0)
    adapter.unmerge()


def test_orientation_flips_the_coefficient(tiny, adapter):
    tokens = _tokens()
    with torch.no_grad(), adapter.steer(tiny, -1.0):
        minus = tiny(tokens)
    adapter.orientation = -1
    with torch.no_grad(), adapter.steer(tiny, 1.0):
        flipped = tiny(tokens)
    assert torch.equal(flipped, minus)


def test_per_row_coefficients_match_separate_forwards(tiny, adapter):
    tokens = _tokens(batch=5)
    coeffs = torch.tensor([1.0, -1.0, 0.0, 1.0, 0.5])
    with torch.no_grad():
        with adapter.steer(tiny, coeffs):
            together = tiny(tokens)
        for i, c in enumerate(coeffs.tolist()):
            with adapter.steer(tiny, c):
                alone = tiny(tokens[i : i + 1])
            assert torch.allclose(together[i], alone[0], atol=1e-5), (i, c)


def test_per_row_length_mismatch_is_an_error(tiny, adapter):
    with pytest.raises(ValueError, match="coefficients for a batch"):
        with adapter.steer(tiny, torch.tensor([1.0, -1.0])):
            tiny(_tokens(batch=3))


def test_gradients_reach_only_adapter_parameters(tiny, adapter):
    tokens = _tokens()
    tiny.zero_grad(set_to_none=True)
    with adapter.steer(tiny, torch.tensor([1.0, 1.0, -1.0, -1.0])):
        tiny(tokens).logsumexp(-1).mean().backward()
    own = dict(adapter.layers.named_parameters())
    assert sorted(n.split(".")[-1] for n in own) == sorted(["theta_v", "theta_u", "lam"] * 3)
    for name, p in own.items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    ids = {id(p) for p in own.values()}
    assert all(p.grad is None for p in tiny.parameters() if id(p) not in ids)
    assert all(not b.requires_grad for layer in adapter.layers.values() for b in layer.buffers())
    for p in own.values():
        p.grad = None


def test_ablation_options_select_parameters(tiny):
    a = attach(tiny, SITES[:1], InnerPiSSAConfig(rank=4, rotate_v=False, rotate_u=False, scaling="mult"))
    try:
        assert [n.split(".")[-1] for n, _ in a.layers.named_parameters()] == ["lam"]
        d = a.diagnostics()[0]
        assert d["rot_v_norm"] == 0.0 and d["site"] == SITES[0].name and d["layer"] == 1
    finally:
        a.detach()


def test_diagnostics_report_rotation_and_scale(tiny, adapter):
    d = adapter.diagnostics()
    assert [x["site"] for x in d] == [s.name for s in SITES]
    layer = adapter.layers["blocks_1_mlp_out"]
    with torch.no_grad():
        expected = float(torch.linalg.matrix_norm(layer.rotation_v(1.0) - torch.eye(16)))
        factor = layer.scale(1.0) / layer.S
    assert math.isclose(d[0]["rot_v_norm"], expected, rel_tol=1e-6) and d[0]["rot_v_norm"] > 0.1
    assert d[0]["orth_error"] < 1e-5
    assert math.isclose(d[0]["scale_min"], float(factor.min()), rel_tol=1e-6)


def test_bad_input_is_rejected(tiny):
    with pytest.raises(ValueError, match="rank must lie in 1..64"):
        attach(tiny, SITES[:1], InnerPiSSAConfig(rank=65))
    with pytest.raises(ValueError, match="out of range"):
        attach(tiny, [Site(9, "mlp.out")], InnerPiSSAConfig(rank=4))
    with pytest.raises(ValueError, match="not a site name"):
        attach(tiny, ["blocks.0.mlp.nonsense"], InnerPiSSAConfig(rank=4))
    with pytest.raises(ValueError, match="unknown scaling"):
        InnerPiSSAConfig(scaling="cubic")
    a = attach(tiny, SITES[:1], InnerPiSSAConfig(rank=4))
    try:
        with pytest.raises(ValueError, match="already carries"):
            attach(tiny, SITES[:1], InnerPiSSAConfig(rank=4))
        for bad in (float("nan"), float("inf"), torch.tensor([1.0, float("nan")])):
            with pytest.raises(ValueError, match="finite"):
                with a.steer(tiny, bad):
                    pass
    finally:
        a.detach()
    again = attach(tiny, SITES[:1], InnerPiSSAConfig(rank=4))  # detach frees the site
    again.detach()


def test_init_is_seeded_per_site(tiny):
    a = attach(tiny, SITES[:2], InnerPiSSAConfig(rank=4, seed=7))
    first = {n: p.detach().clone() for n, p in a.layers.named_parameters()}
    a.detach()
    b = attach(tiny, SITES[:2], InnerPiSSAConfig(rank=4, seed=7))
    try:
        for n, p in b.layers.named_parameters():
            assert torch.equal(p, first[n])
        assert not torch.equal(first["blocks_1_mlp_out.lam"], first["blocks_2_attn_o.lam"])
        assert all(float(p.abs().min()) > 0 for p in first.values() if p.ndim == 1)  # λ non-zero
    finally:
        b.detach()


@pytest.mark.slow
def test_default_model_exact_at_zero_and_merge_parity(smol):
    sites = [Site(9, "mlp.out"), Site(15, "mlp.out"), Site(21, "attn.o")]
    tokens = torch.randint(0, 40000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = smol(tokens)
    a = attach(smol, sites, InnerPiSSAConfig(rank=64, rotate_u=True))
    try:
        for layer in a.layers.values():
            w = linear_of(smol, layer.site).weight
            u, s, v = top_svd(w, min(w.shape))
            assert float((((u * s) @ v.T) - w.double()).norm() / w.double().norm()) < 1e-5
        _randomise(a, scale=0.05)
        with torch.no_grad():
            with a.steer(smol, 0.0):
                assert torch.allclose(smol(tokens), base, atol=1e-5)
            with a.steer(smol, 1.0):
                steered = smol(tokens)
            a.merge(1.0)
            merged = smol(tokens)
            a.unmerge()
        assert float((steered - base).abs().max()) > 1e-3
        assert torch.allclose(merged, steered, atol=1e-3)
    finally:
        a.detach()
    with torch.no_grad():
        assert torch.equal(smol(tokens), base)


def test_data_selected_directions_are_chosen_by_the_pairs_and_saved(tiny, tmp_path):
    """select="diff" works in the singular directions through which chosen and rejected inputs differ most;
    the choice is saved and a reload rebuilds the same basis (and the same outputs)."""
    from interp.adapters.innerpissa import choose_directions, direction_scores, select_directions
    from interp.adapters.io import load_adapter, save_adapter
    from interp.data import make_pairs, tokenize_pairs
    from interp.geometry import svd_columns

    # known answer: a contrast only along direction 5 and a large common activity along 2
    a_cho, a_rej = torch.zeros(4, 8), torch.zeros(4, 8)
    a_cho[:, 5], a_cho[:, 2], a_rej[:, 2] = 1.0, 3.0, 3.0
    scores = direction_scores(a_cho, a_rej, torch.ones(8))
    assert choose_directions(scores, 1, "diff").tolist() == [5]
    assert {2, 5} <= set(choose_directions(scores, 3, "data").tolist())  # the activity leader and the contrast leader
    batch = tokenize_pairs(tiny.tokenizer, make_pairs(n_pairs=6, seed=0), system="")
    config = InnerPiSSAConfig(rank=4, select="diff", init_std=0.3)
    indices = select_directions(tiny, SITES, batch, config)
    assert {k: len(v) for k, v in indices.items()} == {s.name: 4 for s in SITES}
    assert any(v.tolist() != [0, 1, 2, 3] for v in indices.values())  # not simply the top directions
    with pytest.raises(ValueError, match="needs the directions"):
        attach(tiny, SITES, config)
    adapter = attach(tiny, SITES, config, indices)
    loaded = None
    try:
        layer = adapter.layers[SITES[0].name.replace(".", "_")]
        u, s, v = svd_columns(linear_of(tiny, SITES[0]).weight, indices[SITES[0].name])
        assert torch.allclose(layer.S.double(), s) and torch.allclose(layer.V.double(), v)
        x = torch.randn(2, 3, linear_of(tiny, SITES[0]).weight.shape[1])
        before = layer.delta(x, 1.0)
        save_adapter(adapter, tmp_path / "a")
        adapter.detach()
        loaded = load_adapter(tiny, tmp_path / "a")
        again = loaded.layers[SITES[0].name.replace(".", "_")]
        assert torch.equal(again.index, layer.index) and torch.allclose(again.delta(x, 1.0), before, atol=1e-6)
    finally:
        adapter.detach()
        if loaded is not None:
            loaded.detach()
