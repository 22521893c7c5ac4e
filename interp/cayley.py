"""The Cayley map from skew-symmetric matrices to rotations, and its checks.

``cayley(A) = (I - A/2)^{-1} (I + A/2)`` is orthogonal for any skew-symmetric ``A``
(``Aᵀ = -A``), equals ``I`` at ``A = 0``, and ``cayley(-A) = cayley(A)ᵀ``: scaling ``A``
by a steering coefficient ``c`` gives rotations with ``R(0) = I`` and ``R(-c) = R(c)⁻¹``,
which is what makes an InnerPiSSA adapter exactly reversible. ``I - A/2`` is always
invertible (the eigenvalues of ``A`` are imaginary), so a linear solve is safe; it is
also cheaper and more accurate than forming the inverse.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def skew(theta: Float[Tensor, "*b r r"]) -> Float[Tensor, "*b r r"]:
    """The skew-symmetric part ``theta - thetaᵀ`` (an unconstrained parametrisation)."""
    return theta - theta.transpose(-1, -2)


def soft_clamp(a: Float[Tensor, "*b r r"], max_angle: float | None) -> Float[Tensor, "*b r r"]:
    """``max_angle · tanh(a / max_angle)`` elementwise (odd, so skew symmetry survives).

    Bounds each generator entry, so a long training run cannot wind a rotation far
    from the identity; ``None`` leaves ``a`` unchanged.
    """
    if max_angle is None:
        return a
    if not max_angle > 0:
        raise ValueError(f"max_angle must be positive or None, got {max_angle}")
    return max_angle * torch.tanh(a / max_angle)


def cayley(a: Float[Tensor, "*b r r"]) -> Float[Tensor, "*b r r"]:
    """``(I - a/2)^{-1} (I + a/2)`` by ``torch.linalg.solve``; ``a`` skew-symmetric, batched."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    half = a / 2
    return torch.linalg.solve(eye - half, eye + half)


def orthogonality_error(r: Float[Tensor, "*b n n"]) -> float:
    """``max |RᵀR - I|`` over all entries (and batch): 0 for an exact rotation."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    return float((r.transpose(-1, -2) @ r - eye).abs().max())
