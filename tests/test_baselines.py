"""Baseline steering methods: direction recovery on planted data, c = 0 exactness, per-row coefficients."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from conftest import tokenize_chats
from interp.baselines import (
    MeanDiff,
    PCASteering,
    PromptSteering,
    RandomDirection,
    VectorSteering,
    last_token_hidden,
    last_token_index,
    mean_diff_direction,
    pca_direction,
    random_direction,
)


def planted(n: int = 200, d: int = 64, seed: int = 0, spread: float = 1.0, offset: float = 2.0):
    """Chosen = rejected + a_i * u + noise with a_i ~ N(offset, spread^2): u is the planted direction."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    h_rej = torch.randn(n, d, generator=gen) * 3
    a = offset + spread * torch.randn(n, 1, generator=gen)
    h_cho = h_rej + a * u + 0.05 * torch.randn(n, d, generator=gen)
    return h_cho, h_rej, u


def cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_mean_diff_recovers_planted_direction():
    h_cho, h_rej, u = planted()
    v = mean_diff_direction(h_cho, h_rej)
    assert cos(v, u) >= 0.99
    # Its norm is the mean gap along u (offset 2).
    assert abs(float(v.norm()) - float(((h_cho - h_rej) @ u).mean())) < 0.05


@pytest.mark.parametrize("center", [True, False])
def test_pca_recovers_planted_direction_with_sign(center):
    h_cho, h_rej, u = planted()
    v = pca_direction(h_cho, h_rej, center=center)
    assert cos(v, u) >= 0.99  # the sign is fixed toward chosen, so cosine is positive
    assert abs(float(v.norm()) - 1) < 1e-5
    # Swapping chosen and rejected flips the direction.
    assert cos(pca_direction(h_rej, h_cho, center=center), u) <= -0.99


def test_centred_pca_ignores_a_constant_offset_uncentred_does_not():
    # Diffs = constant along u + variance along w: repeng's centred pca_diff follows w.
    gen = torch.Generator().manual_seed(1)
    d = 32
    u, w = torch.linalg.qr(torch.randn(d, 2, generator=gen))[0].T
    h_rej = torch.randn(300, d, generator=gen)
    h_cho = h_rej + 5 * u + torch.randn(300, 1, generator=gen) * w
    assert abs(cos(pca_direction(h_cho, h_rej, center=True), w)) >= 0.99
    assert cos(pca_direction(h_cho, h_rej, center=False), u) >= 0.99


def test_random_direction_norm_and_seed():
    a = random_direction(576, 3.5, seed=7)
    assert abs(float(a.norm()) - 3.5) < 1e-5
    assert torch.equal(a, random_direction(576, 3.5, seed=7))
    assert not torch.equal(a, random_direction(576, 3.5, seed=8))
    with pytest.raises(ValueError, match="norm"):
        random_direction(4, -1.0, 0)


def test_scales_are_comparable_across_vector_methods():
    h_cho, h_rej, _ = planted()
    hc, hr = {1: h_cho, 3: h_cho * 2}, {1: h_rej, 3: h_rej * 2}
    md, pca, rnd = (cls.from_hidden(hc, hr) for cls in (MeanDiff, PCASteering, RandomDirection))
    for L in (1, 3):
        assert abs(pca.norms()[L] - md.norms()[L]) < 1e-4 * md.norms()[L]
        assert abs(rnd.norms()[L] - pca.norms()[L]) < 1e-4 * pca.norms()[L]
    assert abs(cos(rnd.vectors[1], rnd.vectors[3])) < 0.5  # layers get different seeds
    assert pca.config()["layers"] == [1, 3] and pca.config()["name"] == "pca"


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        mean_diff_direction(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        pca_direction(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="must match"):
        MeanDiff.from_hidden({1: torch.zeros(3, 2)}, {2: torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="1-d"):
        VectorSteering({0: torch.zeros(2, 3)})


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [3, 2, 3]
    with pytest.raises(ValueError, match="all zeros"):
        last_token_index(torch.tensor([[0, 0]]))


# ----------------------------------------------------------------------------- on tiny-random


def pairs(model):
    honest = [[{"role": "user", "content": f"Pretend you are an honest person. Fact {i}: the sky is"}] for i in range(6)]
    liar = [[{"role": "user", "content": f"Pretend you are a dishonest person. Fact {i}: the sky is"}] for i in range(6)]
    return tokenize_chats(model, honest), tokenize_chats(model, liar)


@pytest.fixture(scope="module")
def fitted(tiny):
    cho, rej = pairs(tiny)
    layers = [1, 2]
    h_cho = last_token_hidden(tiny, *cho, layers, batch_size=4, progress=False)
    h_rej = last_token_hidden(tiny, *rej, layers, batch_size=4, progress=False)
    return {
        "mean_diff": MeanDiff.from_hidden(h_cho, h_rej, model_spec=tiny.spec),
        "pca": PCASteering.from_hidden(h_cho, h_rej, model_spec=tiny.spec),
        "random": RandomDirection.from_hidden(h_cho, h_rej, model_spec=tiny.spec, seed=3),
    }


def test_last_token_hidden_ignores_padding(tiny):
    (ids, mask), _ = pairs(tiny)
    short = tokenize_chats(tiny, [[{"role": "user", "content": "hi"}]])
    # "hi" alone, and "hi" left-padded inside a batch with longer rows, give the same state.
    both_ids = torch.cat([torch.full((1, ids.shape[1] - short[0].shape[1]), tiny.tokenizer.pad_token_id), short[0]], 1)
    both_mask = torch.cat([torch.zeros(1, ids.shape[1] - short[1].shape[1], dtype=torch.long), short[1]], 1)
    alone = last_token_hidden(tiny, *short, [2], progress=False)[2]
    batched = last_token_hidden(tiny, torch.cat([ids[:1], both_ids]), torch.cat([mask[:1], both_mask]), [2], progress=False)[2]
    assert torch.allclose(alone[0], batched[1], atol=1e-4)
    assert alone.shape == (1, 64)


def test_fit_from_tokens_matches_from_hidden(tiny, fitted):
    cho, rej = pairs(tiny)
    md = MeanDiff.fit(tiny, cho, rej, [1, 2], batch_size=4)
    for L in (1, 2):
        assert torch.allclose(md.vectors[L], fitted["mean_diff"].vectors[L], atol=1e-5)


def test_fit_pairs_on_a_pair_batch(tiny, fitted):
    from interp.data import PairBatch

    (ci, cm), (ri, rm) = pairs(tiny)
    width = max(ci.shape[1], ri.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (width - t.shape[1], 0))  # noqa: E731  (left padding)
    ids, mask = torch.cat([pad(ci), pad(ri)]), torch.cat([pad(cm), pad(rm)])
    batch = PairBatch(tokens=ids, attention_mask=mask, last=torch.zeros(12, dtype=torch.long), suffix_mask=mask.bool())
    pca = PCASteering.fit_pairs(tiny, batch, [1, 2], batch_size=4)
    for L in (1, 2):
        assert torch.allclose(pca.vectors[L], fitted["pca"].vectors[L], atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        MeanDiff.fit_pairs(tiny, PairBatch(ids[:3], mask[:3], ids[:3, 0], mask[:3].bool()), [1])


@pytest.mark.parametrize("name", ["mean_diff", "pca", "random"])
def test_vector_methods_c0_exact_and_per_row(tiny, fitted, name):
    method = fitted[name]
    ids, mask = pairs(tiny)[0]
    ids, mask = ids[:3], mask[:3]
    with torch.no_grad():
        base = tiny(ids, attention_mask=mask)
        with method.steer(tiny, 0.0):
            at0 = tiny(ids, attention_mask=mask)
        with method.steer(tiny, torch.zeros(3)):
            at0_rows = tiny(ids, attention_mask=mask)
        assert torch.equal(at0, base) and torch.equal(at0_rows, base)
        coeffs = torch.tensor([1.0, -1.0, 0.0])
        with method.steer(tiny, coeffs):
            rows = tiny(ids, attention_mask=mask)
        for i, c in enumerate(coeffs.tolist()):
            with method.steer(tiny, c):
                single = tiny(ids[i : i + 1], attention_mask=mask[i : i + 1])
            assert torch.allclose(rows[i], single[0], atol=1e-4)
        # Steering does change the model, and orientation flips the sign.
        assert not torch.allclose(rows[0], base[0], atol=1e-3)
        method.orientation = -1
        try:
            with method.steer(tiny, -1.0):
                flipped = tiny(ids[:1], attention_mask=mask[:1])
        finally:
            method.orientation = 1
        assert torch.allclose(flipped[0], rows[0], atol=1e-4)
    # Hooks are gone after the block.
    with torch.no_grad():
        assert torch.equal(tiny(ids, attention_mask=mask), base)


def test_steering_moves_projection_toward_chosen(tiny, fitted):
    rej = pairs(tiny)[1]
    method = fitted["mean_diff"]
    v = method.vectors[2]
    base = last_token_hidden(tiny, *rej, [2], progress=False)[2] @ v
    with method.steer(tiny, 1.0):
        up = last_token_hidden(tiny, *rej, [2], progress=False)[2] @ v
    assert (up > base).all()


def test_prompt_steering_wording_and_c0(tiny):
    method = PromptSteering()
    chat = [{"role": "user", "content": "Should I return the wallet?"}]
    assert method.messages(chat, 0.0) == chat
    assert method.messages(chat, 0.5)[0] == {"role": "system", "content": method.wording.positive}
    assert method.messages(chat, 1.0)[0]["content"] == method.wording.positive_strong
    assert method.messages(chat, -0.5)[0]["content"] == method.wording.negative
    assert method.messages(chat, -2.0)[0]["content"] == method.wording.negative_strong
    with_system = [{"role": "system", "content": "Answer briefly."}, *chat]
    out = method.messages(with_system, 1.0)
    assert len(out) == 2 and out[0]["content"].endswith("Answer briefly.") and with_system[0]["content"] == "Answer briefly."
    method.orientation = -1
    assert method.messages(chat, 1.0)[0]["content"] == method.wording.negative_strong
    # steer is a no-op: logits at any c equal the base model's.
    ids, mask = tokenize_chats(tiny, [chat])
    with torch.no_grad():
        base = tiny(ids, attention_mask=mask)
        with method.steer(tiny, 1.0):
            assert torch.equal(tiny(ids, attention_mask=mask), base)
    assert method.config()["wording"]["positive"] == method.wording.positive


def test_ablations_are_the_non_default_variants():
    from interp.adapters.innerpissa import ABLATIONS, InnerPiSSAConfig

    default = asdict(InnerPiSSAConfig())
    assert ABLATIONS["no_v_rotation"] == {"rotate_v": False} and ABLATIONS["no_s_scaling"] == {"scaling": "none"}
    assert ABLATIONS["multiplicative_scaling"] == {"scaling": "mult"}
    assert sorted(c["rank"] for k, c in ABLATIONS.items() if k.startswith("rank_")) == [8, 32, 128]
    for name, kwargs in ABLATIONS.items():
        config = asdict(InnerPiSSAConfig(**kwargs))  # each builds ...
        assert config != default, name  # ... and differs from the default adapter

def test_default_model_pca_steering_moves_rejected_toward_chosen(smol):
    from interp.data import make_pairs, tokenize_pairs

    batch = tokenize_pairs(smol.tokenizer, make_pairs(n_pairs=8, seed=0), system="")
    method = PCASteering.fit_pairs(smol, batch, [14], batch_size=8)
    n = batch.n_pairs
    rej = (batch.tokens[n:], batch.attention_mask[n:])
    v = method.vectors[14]
    with torch.no_grad():
        base_logits = smol(rej[0], attention_mask=rej[1])
        with method.steer(smol, 0.0):
            assert torch.equal(smol(rej[0], attention_mask=rej[1]), base_logits)
    base = last_token_hidden(smol, *rej, [14], progress=False)[14] @ v
    with method.steer(smol, 1.0):
        up = last_token_hidden(smol, *rej, [14], progress=False)[14] @ v
    assert (up > base).all()
    # c = 1 shifts each projection by exactly |v|^2 at the steered layer itself.
    assert torch.allclose(up - base, torch.full_like(base, float(v @ v)), rtol=1e-3)


def test_s_space_mean_diff_is_the_mean_diff_within_the_writer_basis(tiny, fitted):
    from interp.baselines import SSpaceMeanDiff
    from interp.sites import Site
    from interp.backends import linear_of

    cho, rej = pairs(tiny)
    full = SSpaceMeanDiff.fit(tiny, cho, rej, [1, 2], batch_size=4, rank=64)  # full rank: the basis spans d_model
    low = SSpaceMeanDiff.fit(tiny, cho, rej, [1, 2], batch_size=4, rank=4)
    for L in (1, 2):
        md = fitted["mean_diff"].vectors[L]
        assert torch.allclose(full.vectors[L], md, atol=1e-4)
        U = torch.linalg.svd(linear_of(tiny, Site(L, "mlp.out")).weight.detach().double(), full_matrices=False).U[:, :4]
        v = low.vectors[L].double()
        assert torch.allclose(U @ (U.T @ v), v, atol=1e-5)  # lies in span(U_4)
        assert float(v @ md.double()) == pytest.approx(float(v.norm() ** 2), rel=1e-4)  # an orthogonal projection of md
        assert v.norm() < md.norm()
    assert low.options == {"rank": 4, "module": "mlp.out"} and low.name == "s_mean_diff"
    with pytest.raises(ValueError, match="residual stream"):
        SSpaceMeanDiff.fit(tiny, cho, rej, [1], module="mlp.in")


def test_last_token_hidden_matches_a_plain_forward(tiny):
    from interp.data import make_pairs, tokenize_pairs

    batch = tokenize_pairs(tiny.tokenizer, make_pairs(n_pairs=3, seed=0), padding_side="left")
    states = last_token_hidden(tiny, batch.tokens, batch.attention_mask, [1, 3], batch_size=2, progress=False)
    assert set(states) == {1, 3} and states[3].shape == (6, 64)
    seen = []
    with torch.no_grad(), tiny.hooks(fwd_hooks=[("blocks.3.hook_resid_post", lambda x, hook: seen.append(x.detach()) or x)]):
        tiny(batch.tokens[4:5], attention_mask=batch.attention_mask[4:5])
    assert torch.allclose(states[3][4], seen[0][0, batch.last[4]], atol=1e-4)
