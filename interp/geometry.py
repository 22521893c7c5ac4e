"""Geometry of contrastive hidden-state differences: raw space (dHS) vs a weight's singular basis (dHS@U).

Pure functions on tensors. Notation: ``h_cho``, ``h_rej`` are last-token hidden states of the
chosen / rejected rows of ``n`` pairs at one layer; ``D = h_cho − h_rej`` (``n x d``) are the
per-pair differences; ``U_r`` (``d x r``) are the top-r left singular vectors of a site weight
that writes to the residual stream (HF ``mlp.down_proj.weight`` is ``[d_model, d_mlp]``, so its
left singular vectors live in d_model).

Questions each function answers for one layer:

* :func:`energy_fraction` -- how much of the differences' energy lies in ``span(U_r)``? A random
  r-dim subspace holds ``r / d`` in expectation (:func:`random_energy_fraction`).
* :func:`pc1_explained` -- how one-dimensional are the differences?
* :func:`mean_cosine_to_mean` -- how consistently does each pair point along the mean difference?
* :func:`probe_auroc` -- can a linear probe tell chosen from rejected (cross-validated, seeded,
  pairs kept whole within a fold)?

:func:`space_metrics` evaluates all of them in three spaces: ``"dHS"`` (raw, d dims), ``"dHS@U"``
(coordinates ``h @ U_r``) and ``"random"`` (coordinates on a seeded random r-dim orthonormal basis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

SPACES: tuple[str, ...] = ("dHS", "dHS@U", "random")
METRICS: tuple[str, ...] = (
    "energy_fraction", "energy_fraction_std", "mean_diff_energy", "pc1_explained", "mean_cos_to_mean",
    "probe_auroc", "probe_auroc_std",
)


@dataclass(frozen=True)
class GeometryConfig:
    """``draws``: random subspaces for the energy baseline; ``folds``: probe cross-validation folds;
    ``center``: centre differences before PC1 (default off: the mean difference *is* the signal)."""

    draws: int = 20
    folds: int = 5
    seed: int = 0
    center: bool = False

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")


def orthonormal(basis: Float[Tensor, "d r"]) -> Float[Tensor, "d r"]:
    """Orthonormal basis of the columns' span (reduced QR, float64)."""
    if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
        raise ValueError(f"basis must be [d, r] with r <= d, got {tuple(basis.shape)}")
    return torch.linalg.qr(basis.double(), mode="reduced").Q


def top_svd(weight: Float[Tensor, "d_out d_in"], rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 top-``rank`` SVD ``(U [d_out, r], S [r], V [d_in, r])`` of a raw weight, on the CPU.

    Singular vectors are defined only up to a joint sign per pair; the sign is canonical
    (each ``U`` column's largest entry positive), so a basis means the same on every machine.
    The one SVD of a site's weight in the project (adapters, loss spaces, baselines, analyses).
    """
    d_out, d_in = weight.shape
    if not 1 <= rank <= min(d_out, d_in):
        raise ValueError(f"rank must lie in 1..{min(d_out, d_in)} for a {d_out}x{d_in} weight, got {rank}")
    return svd_columns(weight, torch.arange(rank))


def svd_columns(weight: Float[Tensor, "d_out d_in"], index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`top_svd`'s float64 ``(U, S, V)`` restricted to the singular directions ``index`` (any order)."""
    index = torch.as_tensor(index, dtype=torch.long, device="cpu")
    full = min(weight.shape)
    if index.ndim != 1 or len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= full:
        raise ValueError(f"singular-direction indices must lie in 0..{full - 1}, got {index.tolist()[:8]}...")
    u, s, vh = torch.linalg.svd(weight.detach().to("cpu", torch.float64), full_matrices=False)
    flip = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))
    flip[flip == 0] = 1
    u, v = u * flip, vh.T * flip
    return u[:, index], s[index], v[:, index]


def left_singular_basis(weight: Float[Tensor, "d_out d_in"], rank: int) -> Float[Tensor, "d_out r"]:
    """Top-``rank`` left singular vectors of a raw weight (:func:`top_svd`'s ``U``; the adapter's ``U``)."""
    return top_svd(weight, rank)[0]


def random_basis(d: int, r: int, seed: int = 0) -> Float[Tensor, "d r"]:
    """A seeded uniformly random r-dim orthonormal basis of R^d (QR of a Gaussian matrix)."""
    if not 1 <= r <= d:
        raise ValueError(f"need 1 <= r <= d, got r={r}, d={d}")
    g = torch.Generator().manual_seed(int(seed))
    return orthonormal(torch.randn(d, r, generator=g, dtype=torch.float64))


def energy_fraction(D: Float[Tensor, "n d"], basis: Float[Tensor, "d r"]) -> float:
    """``Σ_i |P D_i|² / Σ_i |D_i|²`` with ``P`` the projector on ``span(basis)`` (basis orthonormalised)."""
    if D.shape[-1] != basis.shape[0]:
        raise ValueError(f"differences have width {D.shape[-1]} but the basis lives in {basis.shape[0]} dims")
    D = D.double().reshape(-1, D.shape[-1])
    total = float(D.pow(2).sum())
    if total == 0:
        return float("nan")
    return float((D @ orthonormal(basis)).pow(2).sum()) / total


def random_energy_fraction(D: Float[Tensor, "n d"], r: int, *, draws: int = 20, seed: int = 0) -> tuple[float, float]:
    """Mean and std of :func:`energy_fraction` over ``draws`` seeded random r-dim subspaces (≈ r/d)."""
    values = [energy_fraction(D, random_basis(D.shape[-1], r, seed + i)) for i in range(draws)]
    return float(np.mean(values)), float(np.std(values))


def pc1_explained(D: Float[Tensor, "n k"], *, center: bool = False) -> float:
    """Share of the differences' (uncentred unless ``center``) energy on their first principal component."""
    D = D.double()
    if center:
        D = D - D.mean(0, keepdim=True)
    s = torch.linalg.svdvals(D)
    total = float(s.pow(2).sum())
    return float(s[0] ** 2) / total if total > 0 else float("nan")


def mean_cosine_to_mean(D: Float[Tensor, "n k"]) -> float:
    """Mean over pairs of ``cos(D_i, mean_j D_j)`` (1: every pair points the same way)."""
    D = D.double()
    m = D.mean(0)
    if float(m.norm()) == 0:
        return float("nan")
    cos = (D @ m) / (D.norm(dim=1) * m.norm()).clamp_min(1e-300)
    return float(cos.mean())


def probe_auroc(
    X_cho: Float[Tensor, "n k"], X_rej: Float[Tensor, "n k"], *, folds: int = 5, seed: int = 0
) -> tuple[float, float]:
    """Cross-validated ROC AUC (mean, std over folds) of a logistic-regression probe, chosen vs rejected.

    The two rows of a pair share a group, so a pair is never split between train and test
    (its shared suffix would leak). Features are standardised inside each fold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if X_cho.shape != X_rej.shape:
        raise ValueError(f"chosen {tuple(X_cho.shape)} and rejected {tuple(X_rej.shape)} features differ in shape")
    n = X_cho.shape[0]
    if n < folds:
        raise ValueError(f"need at least folds={folds} pairs for the probe, got {n}")
    X = torch.cat([X_cho, X_rej]).double().numpy()
    y = np.r_[np.ones(n), np.zeros(n)]
    groups = np.r_[np.arange(n), np.arange(n)]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(probe, X, y, groups=groups, cv=cv, scoring="roc_auc")
    return float(np.mean(scores)), float(np.std(scores))


def space_metrics(
    h_cho: Float[Tensor, "n d"],
    h_rej: Float[Tensor, "n d"],
    U_r: Float[Tensor, "d r"],
    config: GeometryConfig = GeometryConfig(),
) -> dict[str, dict[str, float]]:
    """Every metric of :data:`METRICS` in every space of :data:`SPACES` for one layer.

    ``energy_fraction`` is the share of the raw differences' energy kept by the space (1 for
    ``dHS``; mean over ``config.draws`` subspaces for ``random``, with ``energy_fraction_std``);
    ``mean_diff_energy`` the same for the mean difference alone. The other metrics are computed
    on the space's coordinates (``h``, ``h @ U_r``, ``h @ Q_random``).
    """
    if h_cho.shape != h_rej.shape or h_cho.ndim != 2:
        raise ValueError(f"h_cho and h_rej must both be [n, d]; got {tuple(h_cho.shape)} and {tuple(h_rej.shape)}")
    d, r = h_cho.shape[1], U_r.shape[1]
    if U_r.shape[0] != d:
        raise ValueError(f"U_r must be [d={d}, r], got {tuple(U_r.shape)}")
    h_cho, h_rej = h_cho.double(), h_rej.double()
    D = h_cho - h_rej
    mean_d = D.mean(0, keepdim=True)
    Q_u = orthonormal(U_r)
    Q_rand = random_basis(d, r, config.seed)
    rand_mean, rand_std = random_energy_fraction(D, r, draws=config.draws, seed=config.seed)
    rand_mean_d, _ = random_energy_fraction(mean_d, r, draws=config.draws, seed=config.seed)
    energy = {
        "dHS": (1.0, 0.0, 1.0),
        "dHS@U": (energy_fraction(D, Q_u), 0.0, energy_fraction(mean_d, Q_u)),
        "random": (rand_mean, rand_std, rand_mean_d),
    }
    basis = {"dHS": None, "dHS@U": Q_u, "random": Q_rand}
    out: dict[str, dict[str, float]] = {}
    for space in SPACES:
        B = basis[space]
        xc, xr = (h_cho, h_rej) if B is None else (h_cho @ B, h_rej @ B)
        Dk = xc - xr
        auc, auc_std = probe_auroc(xc, xr, folds=config.folds, seed=config.seed)
        e, e_std, e_mean = energy[space]
        out[space] = {
            "energy_fraction": e,
            "energy_fraction_std": e_std,
            "mean_diff_energy": e_mean,
            "pc1_explained": pc1_explained(Dk, center=config.center),
            "mean_cos_to_mean": mean_cosine_to_mean(Dk),
            "probe_auroc": auc,
            "probe_auroc_std": auc_std,
        }
    return out
