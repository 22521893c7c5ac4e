"""Cayley map: orthogonal, identity at 0, R(-c) = R(c)ᵀ, clamp keeps skew symmetry."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interp.cayley import cayley, orthogonality_error, skew, soft_clamp


def _theta(r: int, seed: int, scale: float) -> torch.Tensor:
    return torch.randn(r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 24), c=st.floats(-4, 4), seed=st.integers(0, 2**16), scale=st.floats(0.01, 2.0))
def test_rotation_properties(r, c, seed, scale):
    a = skew(_theta(r, seed, scale))
    rot = cayley(c * a)
    assert orthogonality_error(rot) < 1e-10
    assert torch.allclose(cayley(-c * a), rot.T, atol=1e-10)
    assert torch.allclose(cayley(-c * a) @ rot, torch.eye(r, dtype=torch.float64), atol=1e-10)
    assert abs(float(torch.linalg.det(rot)) - 1.0) < 1e-8  # a proper rotation, never a reflection


def test_identity_at_zero_is_exact():
    a = skew(_theta(8, 0, 1.0)).float()
    assert torch.equal(cayley(0.0 * a), torch.eye(8))


def test_known_2d_angle():
    # A = [[0, -w], [w, 0]] maps to the rotation by 2 atan(w / 2).
    w = 0.7
    rot = cayley(torch.tensor([[0.0, -w], [w, 0.0]], dtype=torch.float64))
    phi = 2 * torch.atan(torch.tensor(w / 2, dtype=torch.float64))
    expected = torch.stack([torch.stack([phi.cos(), -phi.sin()]), torch.stack([phi.sin(), phi.cos()])])
    assert torch.allclose(rot, expected, atol=1e-12)


def test_batched_matches_loop():
    a = skew(torch.randn(5, 6, 6, generator=torch.Generator().manual_seed(1)))
    batched = cayley(a)
    for i in range(5):
        assert torch.allclose(batched[i], cayley(a[i]), atol=1e-6)


def test_soft_clamp_bounds_and_stays_skew():
    a = skew(_theta(6, 3, 10.0))
    clamped = soft_clamp(a, 0.3)
    assert clamped.abs().max() <= 0.3
    assert torch.allclose(clamped, -clamped.T)
    assert soft_clamp(a, None) is a
    small = skew(_theta(6, 3, 1e-4))
    assert torch.allclose(soft_clamp(small, 0.3), small, rtol=1e-6)


def test_orthogonality_error_detects_non_rotation():
    assert orthogonality_error(torch.eye(3) * 1.1) > 0.2
