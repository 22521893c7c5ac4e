"""Suppression / prediction neuron scores: planted neurons, scipy parity, sign correction, model shells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from interp.neurons import (
    NeuronConfig,
    activation_signs,
    classify,
    max_abs_cosine,
    mean_neuron_activations,
    model_unembed,
    neuron_vocab_moments,
    processed_out,
    processed_unembed,
    score_neurons,
    subspace_energy,
    top_directions,
)


def _orthogonal_unembed(d: int = 32, vocab: int = 400, t: int = 7, seed: int = 0) -> torch.Tensor:
    """W_U whose column t is e_0 and every other column lies in span(e_1..e_{d-1})."""
    g = torch.Generator().manual_seed(seed)
    W_U = torch.randn(d, vocab, generator=g)
    W_U[0, :] = 0.0
    W_U[:, t] = 0.0
    W_U[0, t] = 1.0
    return W_U


def test_planted_one_hot_suppression_and_prediction():
    t = 7
    W_U = _orthogonal_unembed(t=t)
    w = -W_U[:, t]  # suppresses token t, orthogonal to every other token
    rand = torch.randn(1, W_U.shape[0], generator=torch.Generator().manual_seed(1))
    W = torch.stack([w, -w, 3.0 * w]).float()
    W = torch.cat([W, rand])
    skew, kurt = neuron_vocab_moments(W, W_U)
    classes = classify(skew, kurt)
    # population: one -1 among 399 zeros: skew = -(V-2)/sqrt(V-1), kurtosis = V-3+1/(V-1)... just check regime
    assert kurt[0] > 100 and skew[0] < -10
    assert list(classes) == ["suppression", "prediction", "suppression", "neither"]
    # scale-invariance: cosines do not depend on the output-weight norm
    assert torch.allclose(skew[0], skew[2]) and torch.allclose(kurt[0], kurt[2])
    # a one-hot population has closed-form moments
    V = W_U.shape[1]
    x = np.zeros(V)
    x[t] = -1.0
    assert kurt[0].item() == pytest.approx(stats.kurtosis(x, fisher=False), rel=1e-9)
    assert skew[0].item() == pytest.approx(stats.skew(x), rel=1e-9)


def test_planted_on_gaussian_unembedding():
    """Realistic: random Gaussian W_U; a neuron writing -u_t stands out; a random direction is Gaussian (kurtosis ~ 3)."""
    g = torch.Generator().manual_seed(0)
    d, vocab = 128, 1000
    W_U = torch.randn(d, vocab, generator=g)
    W = torch.stack([-W_U[:, 3], W_U[:, 3], torch.randn(d, generator=g)])
    skew, kurt = neuron_vocab_moments(W, W_U)
    assert list(classify(skew, kurt)) == ["suppression", "prediction", "neither"]
    assert abs(kurt[2].item() - 3.0) < 0.5  # kurtosis, not excess: a Gaussian population gives 3
    assert abs(skew[2].item()) < 0.3


def test_moments_match_scipy_with_chunking():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(13, 20, generator=g)
    W_U = torch.randn(20, 97, generator=g) + 0.3  # a non-zero mean cosine exercises the centring
    skew, kurt = neuron_vocab_moments(W, W_U, vocab_chunk=10, neuron_chunk=4)
    cos = (W / W.norm(dim=1, keepdim=True)) @ (W_U / W_U.norm(dim=0, keepdim=True))
    ref_s = stats.skew(cos.double().numpy(), axis=1)
    ref_k = stats.kurtosis(cos.double().numpy(), axis=1, fisher=False)
    np.testing.assert_allclose(skew.numpy(), ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kurt.numpy(), ref_k, rtol=1e-5, atol=1e-6)
    # chunk size does not change the answer (beyond float32 matmul rounding)
    s2, k2 = neuron_vocab_moments(W, W_U)
    np.testing.assert_allclose(skew.numpy(), s2.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kurt.numpy(), k2.numpy(), rtol=1e-5, atol=1e-6)


def test_constant_population_is_nan_and_neither():
    W_U = torch.ones(4, 10)
    skew, kurt = neuron_vocab_moments(torch.randn(2, 4), W_U)
    assert torch.isnan(skew).all() and torch.isnan(kurt).all()
    assert list(classify(skew, kurt)) == ["neither", "neither"]


def test_classify_thresholds_and_errors():
    skew = np.array([-1.0, 1.0, -1.0, 0.0, 0.5])
    kurt = np.array([11.0, 11.0, 9.0, 50.0, 20.0])
    assert list(classify(skew, kurt)) == ["suppression", "prediction", "neither", "neither", "prediction"]
    assert list(classify(skew, kurt, kurtosis_threshold=5.0, skew_threshold=0.6)) == [
        "suppression", "prediction", "suppression", "neither", "neither"
    ]
    with pytest.raises(ValueError, match="shapes differ"):
        classify(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="W_out_neurons"):
        neuron_vocab_moments(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="chunk"):
        NeuronConfig(vocab_chunk=0)


def test_sign_correction_flips_the_class():
    """A gated neuron whose mean activation is negative adds -W_out[:, i]: suppression becomes prediction."""
    t = 5
    W_U = _orthogonal_unembed(d=16, vocab=300, t=t)
    W_down = torch.stack([-W_U[:, t], -W_U[:, t]], dim=1)  # HF layout [d_model, d_mlp]
    signs = activation_signs(torch.tensor([0.2, -0.3]))
    assert signs.tolist() == [1.0, -1.0]
    assert activation_signs(torch.tensor([0.0])).tolist() == [1.0]
    W = processed_out(W_down, signs)
    assert W.shape == (2, 16)
    assert list(classify(*neuron_vocab_moments(W, W_U))) == ["suppression", "prediction"]


def test_processed_unembed_folds_scale_and_centres():
    g = torch.Generator().manual_seed(0)
    W_U = torch.randn(6, 50, generator=g)
    scale = torch.rand(6, generator=g) + 0.5
    out = processed_unembed(W_U, scale)
    assert torch.allclose(out.mean(1), torch.zeros(6), atol=1e-6)
    expected = W_U * scale[:, None]
    assert torch.allclose(out, expected - expected.mean(1, keepdim=True), atol=1e-6)
    assert torch.equal(processed_unembed(W_U, None, center=False), W_U)
    with pytest.raises(ValueError, match="norm_scale"):
        processed_unembed(W_U, torch.ones(5))
    centred = processed_out(torch.randn(6, 4, generator=g), center=True)
    assert torch.allclose(centred.mean(1), torch.zeros(4), atol=1e-6)


def test_overlap_helpers():
    d = 10
    basis = torch.zeros(d, 2)
    basis[0, 0] = 2.0  # not orthonormal on purpose: the helper orthonormalises
    basis[1, 1] = 1.0
    basis[0, 1] = 1.0
    inside = torch.tensor([[3.0, -4.0] + [0.0] * (d - 2)])
    outside = torch.zeros(1, d)
    outside[0, 5] = 1.0
    half = torch.zeros(1, d)
    half[0, 0] = 1.0
    half[0, 9] = 1.0
    e = subspace_energy(torch.cat([inside, outside, half]), basis)
    assert e.tolist() == pytest.approx([1.0, 0.0, 0.5])
    cos = max_abs_cosine(torch.cat([inside, outside]), torch.eye(d)[:, :2])
    assert cos.tolist() == pytest.approx([0.8, 0.0])
    a, b = torch.randn(8), torch.randn(5)
    top = top_directions(torch.outer(a, b), 1)
    assert abs(float(top[:, 0] @ (a / a.norm()).double())) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must lie"):
        top_directions(torch.outer(a, b), 6)


def test_model_unembed_and_scores_on_tiny(tiny):
    W_U = model_unembed(tiny)
    lm = tiny.unembed.original_component.weight.detach().T
    g = tiny.ln_final.original_component.weight.detach()
    expected = lm * g[:, None]
    assert torch.allclose(W_U, expected - expected.mean(1, keepdim=True), atol=1e-6)
    out = score_neurons(tiny, layers=[0, 3], config=NeuronConfig(vocab_chunk=5000), progress=False)
    assert out["skew"].shape == out["kurtosis"].shape == out["class"].shape == (2, int(tiny.cfg.d_mlp))
    assert out["layer"].tolist() == [0, 3]
    assert set(np.unique(out["class"])) <= {"neither", "suppression", "prediction"}
    # random init: near-Gaussian populations, kurtosis close to 3, no neuron crosses 10
    assert np.all(np.abs(out["kurtosis"] - 3.0) < 1.0)
    # same moments as the pure function on the hand-built weights
    W = tiny.blocks[3].mlp.out.original_component.weight.detach().T
    s, k = neuron_vocab_moments(W, W_U)
    np.testing.assert_allclose(out["kurtosis"][1], k.numpy(), rtol=1e-6)


def test_mean_activations_match_manual(tiny):
    tokens = torch.tensor([[0, 5, 9, 11], [7, 8, 2, 3]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    acts = mean_neuron_activations(tiny, tokens, mask, layers=[2], batch_size=1, progress=False)
    assert acts.shape == (1, int(tiny.cfg.d_mlp))
    seen = []
    with tiny.hooks(fwd_hooks=[("blocks.2.mlp.out.hook_in", lambda x, hook: seen.append(x.detach()) or x)]):
        tiny(tokens, attention_mask=mask)
    x = seen[0]
    manual = (x * mask[..., None]).sum((0, 1)) / mask.sum()
    assert torch.allclose(acts[0], manual, atol=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_neuron_activations(tiny, tokens, mask[:, :3], progress=False)


def test_overlap_with_baseline_planted():
    """Neurons writing inside the weight change's span score energy 1; random neurons ~ k/d."""
    from interp.neurons import overlap_with_baseline

    g = torch.Generator().manual_seed(0)
    d, k = 64, 4
    directions = torch.linalg.qr(torch.randn(d, k, generator=g)).Q
    inside = torch.randn(6, k, generator=g) @ directions.T
    pool = torch.randn(2000, d, generator=g)
    res = overlap_with_baseline(inside, pool, directions, draws=30, seed=1)
    assert res["energy"] == pytest.approx(1.0)
    assert res["energy_random_mean"] == pytest.approx(k / d, abs=0.02)
    assert res["energy_z"] > 10
    assert res["max_cos"] > res["max_cos_random_mean"]
    again = overlap_with_baseline(inside, pool, directions, draws=30, seed=1)
    assert again == res  # seeded
    empty = overlap_with_baseline(torch.zeros(0, d), pool, directions)
    assert empty["n_neurons"] == 0 and np.isnan(empty["energy"])
    with pytest.raises(ValueError, match="draws"):
        overlap_with_baseline(inside, pool, directions, draws=0)


@pytest.mark.slow
def test_default_model_final_layer_holds_suppression_and_prediction_neurons(smol):
    """Gurnee et al.: suppression / prediction neurons sit in the last layers. Measured on SmolLM2-135M
    (sign-corrected, 64 pairs): 63 suppression and 56 prediction neurons in layer 29, none before layer 22."""
    from interp.data import make_pairs, tokenize_pairs

    batch = tokenize_pairs(smol.tokenizer, make_pairs(n_pairs=8, seed=0), padding_side="left")
    layers = [5, 29]
    acts = mean_neuron_activations(smol, batch.tokens, batch.attention_mask, layers, progress=False)
    out = score_neurons(smol, layers, mean_activations=acts, progress=False)
    counts = {name: (out["class"] == name).sum(1).tolist() for name in ("suppression", "prediction")}
    assert counts["suppression"][0] == 0 and counts["prediction"][0] == 0
    assert counts["suppression"][1] >= 30 and counts["prediction"][1] >= 30
    assert abs(float(np.median(out["kurtosis"][0])) - 3.0) < 0.3  # early layer: Gaussian-like populations
