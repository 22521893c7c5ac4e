"""interp.geometry on planted data: energy in span(U_r) = 1, random subspaces ≈ r/d, PC1, cosines, probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.geometry import (
    METRICS,
    SPACES,
    GeometryConfig,
    energy_fraction,
    left_singular_basis,
    mean_cosine_to_mean,
    pc1_explained,
    probe_auroc,
    random_basis,
    random_energy_fraction,
    space_metrics,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_difference_inside_span_has_energy_one_and_outside_zero():
    g = _gen()
    d, r = 40, 5
    W = torch.randn(d, 30, generator=g)
    U = left_singular_basis(W, r)
    inside = torch.randn(12, r, generator=g, dtype=torch.float64) @ U.T
    assert energy_fraction(inside, U) == pytest.approx(1.0)
    full = torch.linalg.svd(W.double()).U
    outside = torch.randn(12, d - r, generator=g, dtype=torch.float64) @ full[:, r:].T
    assert energy_fraction(outside, U) == pytest.approx(0.0, abs=1e-12)
    # energy adds: half inside, half outside (equal norms per row) -> 0.5
    a = inside / inside.norm(dim=1, keepdim=True)
    b = outside / outside.norm(dim=1, keepdim=True)
    assert energy_fraction(a + b, U) == pytest.approx(0.5)
    # a non-orthonormal spanning set gives the same answer
    assert energy_fraction(a + b, U @ torch.randn(r, r, generator=g, dtype=torch.float64)) == pytest.approx(0.5)


def test_random_subspace_holds_r_over_d_on_average():
    g = _gen(1)
    d, r = 64, 8
    D = torch.randn(50, d, generator=g)
    mean, std = random_energy_fraction(D, r, draws=200, seed=3)
    assert mean == pytest.approx(r / d, abs=3 * std / np.sqrt(200) + 0.005)
    assert 0 < std < 0.05
    assert random_energy_fraction(D, r, draws=5, seed=3) == random_energy_fraction(D, r, draws=5, seed=3)
    Q = random_basis(d, r, 0)
    assert torch.allclose(Q.T @ Q, torch.eye(r, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(Q, random_basis(d, r, 1))


def test_pc1_and_mean_cosine():
    v = torch.tensor([3.0, 4.0, 0.0])
    D = torch.stack([v, 2 * v, 0.5 * v])
    assert pc1_explained(D) == pytest.approx(1.0)
    assert mean_cosine_to_mean(D) == pytest.approx(1.0)
    E = torch.eye(4)  # four orthogonal unit differences
    assert pc1_explained(E) == pytest.approx(0.25)
    assert mean_cosine_to_mean(E) == pytest.approx(0.5)  # each e_i vs (1,1,1,1)/4: cos = 1/2
    assert np.isnan(mean_cosine_to_mean(torch.stack([v, -v])))


def test_probe_separates_planted_direction_and_not_noise():
    g = _gen(2)
    n, d = 40, 10
    base = torch.randn(n, d, generator=g)
    shift = torch.zeros(d)
    shift[0] = 3.0
    auc, _ = probe_auroc(base + shift, base - shift + 0.1 * torch.randn(n, d, generator=g), folds=5, seed=0)
    assert auc > 0.95
    auc_null, _ = probe_auroc(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), folds=5, seed=0)
    assert 0.2 < auc_null < 0.8
    assert probe_auroc(base + shift, base, seed=4) == probe_auroc(base + shift, base, seed=4)
    with pytest.raises(ValueError, match="at least folds"):
        probe_auroc(base[:3], base[:3], folds=5)


def test_space_metrics_planted_in_span():
    """Differences planted in span(U_r): energy 1 in dHS@U, ≈ r/d in a random space; the probe works in both."""
    g = _gen(3)
    n, d, r = 30, 48, 6
    U = left_singular_basis(torch.randn(d, 64, generator=g), r)
    common = torch.randn(n, d, generator=g, dtype=torch.float64)
    direction = U[:, 0] * 4.0
    diffs = direction + 0.2 * (torch.randn(n, r, generator=g, dtype=torch.float64) @ U.T)
    h_cho, h_rej = common + diffs / 2, common - diffs / 2
    out = space_metrics(h_cho, h_rej, U, GeometryConfig(draws=30, folds=5, seed=0))
    assert list(out) == list(SPACES) and all(list(v) == list(METRICS) for v in out.values())
    assert out["dHS"]["energy_fraction"] == 1.0
    assert out["dHS@U"]["energy_fraction"] == pytest.approx(1.0)
    assert out["dHS@U"]["mean_diff_energy"] == pytest.approx(1.0)
    assert out["random"]["energy_fraction"] == pytest.approx(r / d, abs=0.08)
    assert out["dHS@U"]["pc1_explained"] == pytest.approx(out["dHS"]["pc1_explained"])  # rotation-invariant inside span
    assert out["dHS@U"]["pc1_explained"] > 0.9 and out["dHS@U"]["mean_cos_to_mean"] > 0.9
    assert out["dHS@U"]["probe_auroc"] > 0.95
    with pytest.raises(ValueError, match="U_r"):
        space_metrics(h_cho, h_rej, U[:10])
    with pytest.raises(ValueError, match="folds"):
        GeometryConfig(folds=1)


def test_left_singular_basis_errors_and_orthonormality():
    W = torch.randn(6, 4, generator=_gen(4))
    U = left_singular_basis(W, 3)
    assert U.shape == (6, 3) and torch.allclose(U.T @ U, torch.eye(3, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="rank must lie"):
        left_singular_basis(W, 5)
