"""Cayley map: orthogonal, identity at 0, R(-c) = R(c)ᵀ, clamp keeps skew symmetry."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interp.cayley import cayley, orthogonality_error, skew, soft_clamp, soft_clamp_angle


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


def _max_angle(r: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(r.double()).angle().abs().max())


@pytest.mark.parametrize("n,bound", [(4, 0.3), (64, 0.3), (64, 1.0)])
def test_angle_clamp_bounds_the_rotation_itself(n, bound):
    big = skew(_theta(n, 7, 10.0))
    assert _max_angle(cayley(soft_clamp(big, bound))) > 2 * bound  # the entry clamp does not bound the angle
    clamped = soft_clamp_angle(big, bound)
    assert torch.allclose(clamped, -clamped.transpose(-1, -2))
    assert bound * 0.95 < _max_angle(cayley(clamped)) <= bound + 1e-12  # saturates at the bound, never past it
    small = skew(_theta(n, 3, 1e-5))
    assert torch.allclose(soft_clamp_angle(small, bound), small, rtol=1e-4)  # identity near 0
    assert soft_clamp_angle(big, None) is big and torch.equal(soft_clamp_angle(torch.zeros(3, 3), bound), torch.zeros(3, 3))
    batched = soft_clamp_angle(torch.stack([big, small]), bound)
    assert torch.allclose(batched[0], clamped) and torch.allclose(batched[1], soft_clamp_angle(small, bound))


def test_angle_clamp_has_finite_gradients():
    theta = _theta(8, 5, 1.0).requires_grad_(True)
    soft_clamp_angle(skew(theta), 0.3).sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="below pi"):
        soft_clamp_angle(skew(theta), 4.0)


def test_orthogonality_error_detects_non_rotation():
    assert orthogonality_error(torch.eye(3) * 1.1) > 0.2
