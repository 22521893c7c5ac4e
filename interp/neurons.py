"""Suppression and prediction neurons (Gurnee et al. 2024, "Universal Neurons in GPT2").

A neuron's *output weight* is the direction it writes to the residual stream: column ``i``
of the MLP down-projection (HF ``down_proj.weight[:, i]``, d_model). Composing it with the
unembedding gives, for every vocabulary token, the cosine between that direction and the
token's (normalised) unembedding column. Over the vocabulary these cosines form a
population; its moments classify the neuron:

* kurtosis > 10 and skew < 0: **suppression** (a few tokens pushed strongly *down*),
* kurtosis > 10 and skew > 0: **prediction** (a few tokens pushed strongly *up*),
* otherwise **neither** (a random direction gives a Gaussian-like population: kurtosis ≈ 3).

Kurtosis here is the plain fourth standardised moment (``scipy.stats.kurtosis(fisher=False)``),
not excess kurtosis. Moments are population moments (``bias=True``), as in the reference code
(``wesg52/universal-neurons``, ``utils.vector_moments``).

Processed weights. The reference runs on TransformerLens-processed weights (``fold_ln``,
centred unembedding; centred writing weights for LayerNorm models). The bridge here keeps the
raw HF weights, so the processing is done by hand on copies (never ``enable_compatibility_mode``,
which rewrites the model in place):

* fold the final norm's scale into the unembedding: ``W_U' = diag(g) W_U`` (``d_model x vocab``);
* centre ``W_U'`` over the vocabulary (softmax ignores a constant shift of all logits);
* centre the output weights over ``d_model`` only for LayerNorm models (LayerNorm removes the
  mean; RMSNorm does not, so centring would change what the model computes).

Sign. In a GELU MLP activations are (mostly) positive, so ``W_out[:, i]`` is what the neuron
adds. In a gated MLP (SwiGLU: ``silu(gate) * up``) the activation has no fixed sign, so the
output weight is multiplied by the sign of the neuron's mean activation over a set of prompts
(:func:`mean_neuron_activations` measures it on ``blocks.L.mlp.out.hook_in``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.sites import Site, parse_layers
from interp.backends import linear_of
from interp.backends import n_layers
from interp.backends import run

NEURON_CLASSES: tuple[str, ...] = ("neither", "suppression", "prediction")


@dataclass(frozen=True)
class NeuronConfig:
    """How neurons are scored and classified.

    ``kurtosis_threshold`` / ``skew_threshold``: the classification cut (Gurnee et al.: 10 and 0).
    ``vocab_chunk`` / ``neuron_chunk`` bound memory: one chunk of cosines is
    ``neuron_chunk x vocab_chunk`` floats. ``center_unembed`` centres ``W_U`` over the vocabulary;
    ``fold_norm`` folds the final norm's scale into ``W_U``; ``center_out`` centres output weights
    over ``d_model`` (``None``: only for LayerNorm models).
    """

    kurtosis_threshold: float = 10.0
    skew_threshold: float = 0.0
    vocab_chunk: int = 8192
    neuron_chunk: int = 2048
    fold_norm: bool = True
    center_unembed: bool = True
    center_out: bool | None = None

    def __post_init__(self) -> None:
        if self.vocab_chunk < 1 or self.neuron_chunk < 1:
            raise ValueError(f"chunk sizes must be positive, got vocab_chunk={self.vocab_chunk}, neuron_chunk={self.neuron_chunk}")
        if self.kurtosis_threshold <= 0:
            raise ValueError(f"kurtosis_threshold must be positive (a Gaussian has 3), got {self.kurtosis_threshold}")


# --------------------------------------------------------------------------- pure maths


def neuron_vocab_moments(
    W_out_neurons: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model vocab"],
    *,
    vocab_chunk: int = 8192,
    neuron_chunk: int = 2048,
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Skew and kurtosis (not excess) over the vocabulary of each neuron's cosine with ``W_U``'s columns.

    ``cos[i, v] = <w_i, u_v> / (|w_i| |u_v|)``; the moments are population moments over ``v``
    (as ``scipy.stats.skew`` / ``kurtosis(fisher=False)`` with ``bias=True``). The full
    ``n x vocab`` matrix is never held: the mean is exact from one matrix-vector product
    (``mean_v cos = ŵ · mean_v û_v``), then central power sums are accumulated over vocab
    chunks in float64. Returns float64 tensors.
    """
    if W_out_neurons.ndim != 2 or W_U.ndim != 2 or W_out_neurons.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"shapes must be W_out_neurons [n, d_model] and W_U [d_model, vocab]; got "
            f"{tuple(W_out_neurons.shape)} and {tuple(W_U.shape)}"
        )
    if W_U.shape[1] < 2:
        raise ValueError("need at least 2 vocabulary columns for moments")
    W = W_out_neurons.detach().float()
    U = W_U.detach().float()
    # Zero-norm columns/rows would divide by zero; their cosine is defined as 0.
    w_hat = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    u_hat = U / U.norm(dim=0, keepdim=True).clamp_min(1e-30)
    vocab = U.shape[1]
    mean = (w_hat.double() @ u_hat.double().mean(1))  # [n], exact mean of the cosines
    s2 = torch.zeros_like(mean)
    s3 = torch.zeros_like(mean)
    s4 = torch.zeros_like(mean)
    for n0 in range(0, W.shape[0], neuron_chunk):
        w_chunk = w_hat[n0 : n0 + neuron_chunk]
        mu = mean[n0 : n0 + neuron_chunk, None]
        for v0 in range(0, vocab, vocab_chunk):
            x = (w_chunk @ u_hat[:, v0 : v0 + vocab_chunk]).double() - mu
            x2 = x * x
            s2[n0 : n0 + neuron_chunk] += x2.sum(1)
            s3[n0 : n0 + neuron_chunk] += (x2 * x).sum(1)
            s4[n0 : n0 + neuron_chunk] += (x2 * x2).sum(1)
    m2, m3, m4 = s2 / vocab, s3 / vocab, s4 / vocab
    # A constant population has undefined moments: NaN, as scipy gives. The cosines are float32
    # (rounding ~1e-7), so a spread below 1e-6 is indistinguishable from none.
    safe = m2 > 1e-12
    skew = torch.where(safe, m3 / m2.clamp_min(1e-300) ** 1.5, torch.full_like(m2, float("nan")))
    kurt = torch.where(safe, m4 / m2.clamp_min(1e-300) ** 2, torch.full_like(m2, float("nan")))
    return skew, kurt


def classify(
    skew: Float[Tensor, "*shape"] | np.ndarray,
    kurt: Float[Tensor, "*shape"] | np.ndarray,
    *,
    kurtosis_threshold: float = 10.0,
    skew_threshold: float = 0.0,
) -> np.ndarray:
    """Class names (one of :data:`NEURON_CLASSES`) per neuron, same shape as the inputs.

    ``kurt > kurtosis_threshold`` and ``skew < -skew_threshold`` -> ``"suppression"``;
    ``kurt > kurtosis_threshold`` and ``skew > skew_threshold`` -> ``"prediction"``; else ``"neither"``
    (NaN moments are ``"neither"``).
    """
    s = np.asarray(skew.detach().cpu() if isinstance(skew, Tensor) else skew, dtype=float)
    k = np.asarray(kurt.detach().cpu() if isinstance(kurt, Tensor) else kurt, dtype=float)
    if s.shape != k.shape:
        raise ValueError(f"skew and kurtosis shapes differ: {s.shape} vs {k.shape}")
    if skew_threshold < 0:
        raise ValueError(f"skew_threshold must be >= 0 (it is applied as ±threshold), got {skew_threshold}")
    heavy = k > kurtosis_threshold
    out = np.full(s.shape, "neither", dtype=object)
    out[heavy & (s < -skew_threshold)] = "suppression"
    out[heavy & (s > skew_threshold)] = "prediction"
    return out.astype(str)


def activation_signs(mean_activations: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
    """±1 per neuron: the sign of its mean activation (0 counts as +1, so no output weight vanishes)."""
    return torch.where(mean_activations < 0, -1.0, 1.0).to(torch.float32)


def processed_unembed(
    W_U: Float[Tensor, "d_model vocab"],
    norm_scale: Float[Tensor, " d_model"] | None = None,
    *,
    center: bool = True,
) -> Float[Tensor, "d_model vocab"]:
    """``diag(norm_scale) W_U``, centred over the vocabulary (float32 copy; inputs untouched)."""
    U = W_U.detach().float().clone()
    if norm_scale is not None:
        if norm_scale.shape != (U.shape[0],):
            raise ValueError(f"norm_scale must be [d_model={U.shape[0]}], got {tuple(norm_scale.shape)}")
        U = U * norm_scale.detach().float()[:, None]
    if center:
        U = U - U.mean(1, keepdim=True)
    return U


def processed_out(
    W_down: Float[Tensor, "d_model d_mlp"],
    signs: Float[Tensor, " d_mlp"] | None = None,
    *,
    center: bool = False,
) -> Float[Tensor, "d_mlp d_model"]:
    """Neuron output directions from a raw HF down-projection weight: its columns, as rows.

    Multiplied by ``signs`` (gated MLPs) and centred over ``d_model`` if ``center`` (LayerNorm models).
    """
    W = W_down.detach().float().T.clone()
    if signs is not None:
        if signs.shape != (W.shape[0],):
            raise ValueError(f"signs must be [d_mlp={W.shape[0]}], got {tuple(signs.shape)}")
        W = W * signs.float()[:, None]
    if center:
        W = W - W.mean(1, keepdim=True)
    return W


# --------------------------------------------------------------------------- model shells


def _original(module):
    return getattr(module, "original_component", module)


def is_gated(model) -> bool:
    """Whether the model's MLP is gated (SwiGLU-style), i.e. activations have no fixed sign."""
    gated = getattr(getattr(model, "cfg", None), "gated_mlp", None)
    if gated is not None:
        return bool(gated)
    try:
        linear_of(model, Site(0, "mlp.gate"))
        return True
    except ValueError:
        return False


def _is_layernorm(model) -> bool:
    return str(getattr(model.cfg, "normalization_type", "RMS")).upper().startswith("LN")


def model_unembed(model, config: NeuronConfig = NeuronConfig()) -> Float[Tensor, "d_model vocab"]:
    """The processed unembedding of a bridge: final-norm scale folded in, centred over the vocabulary."""
    lm_head = _original(model.unembed)
    W_U = lm_head.weight.detach().T  # HF lm_head is [vocab, d_model]
    scale = None
    if config.fold_norm:
        norm = _original(model.ln_final)
        weight = getattr(norm, "weight", None)
        if weight is not None:
            scale = weight.detach().float()
            # Gemma's RMSNorm multiplies by (1 + weight): fold what the model actually applies.
            if "gemma" in type(norm).__name__.lower():
                scale = 1.0 + scale
    return processed_unembed(W_U, scale, center=config.center_unembed)


def layer_output_weights(
    model, layer: int, signs: Float[Tensor, " d_mlp"] | None = None, config: NeuronConfig = NeuronConfig()
) -> Float[Tensor, "d_mlp d_model"]:
    """Processed output directions of layer ``layer``'s MLP neurons (rows)."""
    center = _is_layernorm(model) if config.center_out is None else config.center_out
    return processed_out(linear_of(model, Site(layer, "mlp.out")).weight, signs, center=center)


@torch.no_grad()
def mean_neuron_activations(
    model,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Float[Tensor, "layer d_mlp"]:
    """Mean MLP activation per neuron over the real (unmasked) tokens, read at ``blocks.L.mlp.out.hook_in``.

    ``tokens`` are already chat-templated ids (no BOS is added). One forward pass per batch
    hooks every requested layer.
    """

    total = n_layers(model)
    layers = list(range(total)) if layers is None else parse_layers(list(layers), total)
    if tokens.shape != attention_mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape")
    sums: dict[int, Tensor] = {}
    count = 0.0
    hooks = {layer: f"blocks.{layer}.mlp.out.hook_in" for layer in layers}
    starts = range(0, tokens.shape[0], batch_size)
    for start in tqdm(starts, desc="mean activations", disable=not progress, leave=False):
        mask = attention_mask[start : start + batch_size]
        states = run(model, tokens[start : start + batch_size], mask, read=list(hooks.values())).states
        for layer, name in hooks.items():
            x = states[name]
            m = mask.to(x.device, torch.float64)[..., None]
            sums[layer] = sums.get(layer, 0) + (x.double() * m).sum((0, 1)).cpu()
        count += float(mask.sum())
    if count == 0:
        raise ValueError("no real tokens: the attention mask is all zeros")
    return torch.stack([(sums[layer] / count).float() for layer in layers])


@torch.no_grad()
def score_neurons(
    model,
    layers: Sequence[int] | None = None,
    *,
    mean_activations: Float[Tensor, "layer d_mlp"] | None = None,
    config: NeuronConfig = NeuronConfig(),
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Skew, kurtosis, class, sign and output-weight norm of every MLP neuron, layer by layer.

    ``mean_activations`` (rows aligned with ``layers``) fixes each neuron's sign (needed for
    gated MLPs; without it, gated models are scored on the raw output weights and the caller
    should say so). Returns numpy arrays ``[layer, neuron]`` keyed ``skew``, ``kurtosis``,
    ``class``, ``sign``, ``out_norm`` plus ``layer`` (the layer indices).
    """
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else parse_layers(list(layers), n_layers)
    if mean_activations is not None and mean_activations.shape[0] != len(layers):
        raise ValueError(f"mean_activations has {mean_activations.shape[0]} rows but {len(layers)} layers were asked for")
    W_U = model_unembed(model, config)
    skews, kurts, signs, norms = [], [], [], []
    for row, layer in enumerate(tqdm(layers, desc="neuron moments", disable=not progress)):
        sign = None if mean_activations is None else activation_signs(mean_activations[row])
        W = layer_output_weights(model, layer, sign, config)
        s, k = neuron_vocab_moments(W, W_U, vocab_chunk=config.vocab_chunk, neuron_chunk=config.neuron_chunk)
        skews.append(s.numpy())
        kurts.append(k.numpy())
        signs.append(np.ones(W.shape[0], np.float32) if sign is None else sign.numpy())
        norms.append(W.norm(dim=1).numpy())
    skew, kurt = np.stack(skews), np.stack(kurts)
    return {
        "layer": np.asarray(layers),
        "skew": skew,
        "kurtosis": kurt,
        "class": classify(skew, kurt, kurtosis_threshold=config.kurtosis_threshold, skew_threshold=config.skew_threshold),
        "sign": np.stack(signs),
        "out_norm": np.stack(norms),
    }


# --------------------------------------------------------------------------- overlap with a weight change


def orthonormal_basis(vectors: Float[Tensor, "d k"]) -> Float[Tensor, "d k"]:
    """An orthonormal basis of the columns' span (reduced QR; float64)."""
    Q, _ = torch.linalg.qr(vectors.double(), mode="reduced")
    return Q


def top_directions(delta_weight: Float[Tensor, "d_out d_in"], k: int) -> Float[Tensor, "d_out k"]:
    """Top-``k`` left singular vectors of a weight change (its output-space directions), float64 SVD."""
    if k < 1 or k > min(delta_weight.shape):
        raise ValueError(f"k must lie in 1..{min(delta_weight.shape)} for a {tuple(delta_weight.shape)} weight change, got {k}")
    U, _, _ = torch.linalg.svd(delta_weight.detach().double(), full_matrices=False)
    return U[:, :k]


def subspace_energy(
    vectors: Float[Tensor, "n d"], basis: Float[Tensor, "d k"]
) -> Float[Tensor, " n"]:
    """Fraction of each vector's squared norm inside ``span(basis)`` (basis orthonormalised first)."""
    if vectors.shape[-1] != basis.shape[0]:
        raise ValueError(f"vectors have width {vectors.shape[-1]} but the basis lives in {basis.shape[0]} dims")
    Q = orthonormal_basis(basis)
    v = vectors.double()
    return (v @ Q).pow(2).sum(1) / v.pow(2).sum(1).clamp_min(1e-300)


def max_abs_cosine(vectors: Float[Tensor, "n d"], directions: Float[Tensor, "d k"]) -> Float[Tensor, " n"]:
    """For each vector, the largest |cosine| with any of the ``k`` directions."""
    v = vectors.double()
    d = directions.double()
    cos = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)) @ (d / d.norm(dim=0, keepdim=True).clamp_min(1e-300))
    return cos.abs().max(1).values


def overlap_with_baseline(
    neurons: Float[Tensor, "n d"],
    pool: Float[Tensor, "N d"],
    directions: Float[Tensor, "d k"],
    *,
    draws: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """How much ``neurons``' output directions lie in ``span(directions)``, against random neurons.

    Returns the mean over ``neurons`` of the energy fraction (:func:`subspace_energy`) and of the
    max |cosine| (:func:`max_abs_cosine`), plus the mean and std of the same statistics over
    ``draws`` seeded samples of ``n`` neurons drawn without replacement from ``pool``, and
    ``energy_z`` (how many baseline stds the neurons lie above the baseline mean). ``n = 0``
    gives NaNs. The expected energy fraction of a random direction is ``k / d``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    n = neurons.shape[0]
    nan = float("nan")
    out = {"n_neurons": float(n), "energy": nan, "max_cos": nan, "energy_random_mean": nan,
           "energy_random_std": nan, "max_cos_random_mean": nan, "max_cos_random_std": nan, "energy_z": nan}
    if n == 0:
        return out
    if n > pool.shape[0]:
        raise ValueError(f"cannot draw {n} random neurons from a pool of {pool.shape[0]}")
    Q = orthonormal_basis(directions)
    out["energy"] = float(subspace_energy(neurons, Q).mean())
    out["max_cos"] = float(max_abs_cosine(neurons, Q).mean())
    rng = np.random.default_rng(seed)
    energies, cosines = [], []
    for _ in range(draws):
        pick = torch.as_tensor(rng.choice(pool.shape[0], size=n, replace=False))
        sample = pool[pick]
        energies.append(float(subspace_energy(sample, Q).mean()))
        cosines.append(float(max_abs_cosine(sample, Q).mean()))
    out["energy_random_mean"] = float(np.mean(energies))
    out["energy_random_std"] = float(np.std(energies))
    out["max_cos_random_mean"] = float(np.mean(cosines))
    out["max_cos_random_std"] = float(np.std(cosines))
    std = out["energy_random_std"]
    out["energy_z"] = (out["energy"] - out["energy_random_mean"]) / std if std > 0 else nan
    return out
