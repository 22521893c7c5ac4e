"""The Cayley map from skew-symmetric matrices to rotations, and its checks.

``cayley(A) = (I - A/2)^{-1} (I + A/2)`` is orthogonal for any skew-symmetric ``A``
(``Aᵀ = -A``), equals ``I`` at ``A = 0``, and ``cayley(-A) = cayley(A)ᵀ``: scaling ``A``
by a steering coefficient ``c`` gives rotations with ``R(0) = I`` and ``R(-c) = R(c)⁻¹``,
which is what makes an InnerPiSSA adapter exactly reversible. ``I - A/2`` is always
invertible (the eigenvalues of ``A`` are imaginary), so a linear solve is safe; it is
also cheaper and more accurate than forming the inverse.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def skew(theta: Float[Tensor, "*b r r"]) -> Float[Tensor, "*b r r"]:
    """The skew-symmetric part ``theta - thetaᵀ`` (an unconstrained parametrisation)."""
    return theta - theta.transpose(-1, -2)


def _check_bound(max_angle: float) -> None:
    if not max_angle > 0:
        raise ValueError(f"max_angle must be positive or None, got {max_angle}")


def soft_clamp(a: Float[Tensor, "*b r r"], max_angle: float | None) -> Float[Tensor, "*b r r"]:
    """``max_angle · tanh(a / max_angle)`` elementwise (odd, so skew symmetry survives).

    Bounds each generator *entry*, not the rotation: an ``r × r`` generator with all
    entries at the bound can still turn by far more than ``max_angle`` (about 1.4 rad was
    seen at r = 64 with entries bounded by 0.3). Kept for adapters trained with it; see
    :func:`soft_clamp_angle` for a bound on the angle itself. ``None`` leaves ``a`` unchanged.
    """
    if max_angle is None:
        return a
    _check_bound(max_angle)
    return max_angle * torch.tanh(a / max_angle)


def soft_clamp_angle(a: Float[Tensor, "*b r r"], max_angle: float | None) -> Float[Tensor, "*b r r"]:
    """Scale a skew-symmetric ``a`` so that every rotation angle of ``cayley(a)`` stays below ``max_angle``.

    The eigenvalues of ``a`` are ``±iλ`` and ``cayley(a)`` turns each plane by ``2·atan(λ/2)``,
    so the largest angle is set by the spectral norm ``ρ = max λ``. ``a`` is scaled by
    ``m·tanh(ρ/m)/ρ`` with ``m = 2·tan(max_angle/2)``: near the identity it is untouched, and
    no parameter value gets past the bound (smooth, so training does not stall at it).
    Scaling keeps ``a`` skew-symmetric, hence ``cayley(-a) = cayley(a)ᵀ`` still holds.
    """
    if max_angle is None:
        return a
    _check_bound(max_angle)
    if max_angle >= math.pi:
        raise ValueError(f"Cayley rotations turn by less than pi; max_angle must be below pi, got {max_angle}")
    m = 2 * math.tan(max_angle / 2)
    # svdvals' gradient is well defined even for the repeated singular values of a skew matrix
    rho = torch.linalg.svdvals(a)[..., :1].unsqueeze(-1)
    safe = rho.clamp_min(torch.finfo(a.dtype).tiny)
    factor = torch.where(rho > 0, m * torch.tanh(safe / m) / safe, torch.ones_like(rho))
    return a * factor


def cayley(a: Float[Tensor, "*b r r"]) -> Float[Tensor, "*b r r"]:
    """``(I - a/2)^{-1} (I + a/2)`` by ``torch.linalg.solve``; ``a`` skew-symmetric, batched."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    half = a / 2
    return torch.linalg.solve(eye - half, eye + half)


def orthogonality_error(r: Float[Tensor, "*b n n"]) -> float:
    """``max |RᵀR - I|`` over all entries (and batch): 0 for an exact rotation."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    return float((r.transpose(-1, -2) @ r - eye).abs().max())
