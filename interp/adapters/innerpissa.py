"""InnerPiSSA: reversible steering in the singular-vector basis of a layer's own weight.

For a linear layer ``W`` (``d_out × d_in``) with top-``r`` SVD ``W = U S Vᵀ + W_res``:

    y(c) = x · V R_v(c) · diag(S ⊙ g(c)) · (U R_u(c))ᵀ + x · W_resᵀ + b

with ``R(c) = cayley(c · A)``, ``A`` a learnable skew-symmetric ``r × r`` generator (one for
``V``, one for ``U``; softly bounded so that no angle of ``R(1)`` exceeds ``max_angle``, see
:func:`interp.cayley.soft_clamp_angle`) and ``g`` the
scaling of singular values: ``mult`` (``S · exp(c λ)``), ``add`` (``S + c · tanh λ``) or
``none``. ``R(0) = I`` and ``g(0) = S``, so ``c = 0`` is the base layer; ``R(-c) = R(c)ᵀ``
and (``mult``) ``exp(-cλ) = 1/exp(cλ)``, so ``-c`` undoes ``+c``.

It is computed in the delta form of :mod:`interp.adapters.base`: the base layer runs
untouched and the hook adds ``x V M(c) Uᵀ`` with the ``r × r`` middle

    M(c) = R_v(c) diag(S ⊙ g(c)) R_u(c)ᵀ − diag(S),

which is exactly zero at ``c = 0`` (no dense ``W_res`` is stored, and the cost is two thin
matmuls of rank ``r``). Per-row coefficients get one ``M`` per distinct value.

The SVD is taken once in float64 and stored in the model's dtype; the singular-vector
signs are canonicalised (largest entry of each ``U`` column positive) so that learned
generators mean the same thing on every machine. Parameters stay float32 whatever the
model dtype: rotations near the identity need the precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.adapters.base import ConfiguredAdapter, DeltaLayer, layer_key, site_seed
from interp.cayley import cayley, orthogonality_error, skew, soft_clamp, soft_clamp_angle
from interp.geometry import svd_columns, top_svd
from interp.sites import Site
from interp.backends import linear_of
from interp.backends import run

SCALINGS: tuple[str, ...] = ("mult", "add", "none")
# which r singular directions of a site the adapter works in (see select_directions)
SELECTS: tuple[str, ...] = ("top", "data", "diff")
CLAMPS = {"angle": soft_clamp_angle, "entry": soft_clamp}


@dataclass(frozen=True)
class InnerPiSSAConfig:
    """Adapter options: rank, which sides rotate, singular-value scaling, clamp, init, seed."""

    rank: int = 64
    rotate_v: bool = True
    rotate_u: bool = False
    scaling: Literal["mult", "add", "none"] = "add"
    max_angle: float | None = 0.3
    # "angle": the largest rotation angle of R(1) stays below max_angle (radians);
    # "entry": each generator entry below max_angle (looser: a rank-r rotation can turn much further).
    clamp: Literal["angle", "entry"] = "angle"
    init_std: float = 1e-3
    seed: int = 0
    # "top": the r largest singular values (PiSSA); "data" / "diff": chosen from the whole spectrum by
    # what the concept's pairs put through each direction (select_directions; saved with the adapter)
    select: str = "top"

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise ValueError(f"unknown select {self.select!r}; choose one of {list(SELECTS)}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {self.scaling!r}; choose one of {list(SCALINGS)}")
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank}")
        if self.max_angle is not None and not self.max_angle > 0:
            raise ValueError(f"max_angle must be positive or None, got {self.max_angle}")
        if self.clamp not in CLAMPS:
            raise ValueError(f"unknown clamp {self.clamp!r}; choose one of {list(CLAMPS)}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive (a zero init makes +c and -c identical at the start), got {self.init_std}")
        if not (self.rotate_v or self.rotate_u or self.scaling != "none"):
            raise ValueError("nothing to learn: enable rotate_v, rotate_u or a scaling")


# The ablations of the comparison table: each a variant that differs from the default adapter
# (rank 64, V rotated, U fixed, additive scaling), as InnerPiSSAConfig keyword arguments.
ABLATIONS: dict[str, dict] = {
    "no_v_rotation": {"rotate_v": False},
    "with_u_rotation": {"rotate_u": True},
    "no_s_scaling": {"scaling": "none"},
    "multiplicative_scaling": {"scaling": "mult"},
    "rank_8": {"rank": 8},
    "rank_32": {"rank": 32},
    "rank_128": {"rank": 128},
}


def generator(theta: Float[Tensor, "*b r r"], config: InnerPiSSAConfig) -> Float[Tensor, "*b r r"]:
    """The clamped skew-symmetric generator ``A`` of a rotation parameter (``R(c) = cayley(c·A)``)."""
    return CLAMPS[config.clamp](skew(theta), config.max_angle)


def scaled_values(
    s: Float[Tensor, " r"], lam: Float[Tensor, " r"] | None, scaling: str, coeff: Float[Tensor, " k"]
) -> Float[Tensor, "k r"]:
    """``S ⊙ g(c)`` per coefficient: ``S·exp(cλ)`` (mult), ``S + c·tanh λ`` (add), ``S`` (none)."""
    s = s.expand(coeff.shape[0], -1)
    if lam is None or scaling == "none":
        return s
    c = coeff.view(-1, 1).to(s.dtype)
    if scaling == "mult":
        return s * torch.exp(c * lam)
    return s + c * torch.tanh(lam)


class InnerPiSSALayer(DeltaLayer):
    """One site: frozen ``U, S, V`` buffers (and ``index``, which singular directions they are),
    learnable ``theta_v``, ``theta_u``, ``lam``."""

    def __init__(self, site: Site, linear: nn.Linear, config: InnerPiSSAConfig = InnerPiSSAConfig(),
                 index: Tensor | None = None):
        super().__init__()
        self.site = site
        self.config = config
        w = linear.weight
        self.use_basis(w, index)
        r = config.rank
        gen = torch.Generator().manual_seed(site_seed(config.seed, site))
        init = lambda *shape: nn.Parameter((torch.randn(*shape, generator=gen, device="cpu") * config.init_std).to(w.device))  # noqa: E731
        # Drawn in a fixed order whatever the options, so ablations share their initial values.
        theta_v, theta_u, lam = init(r, r), init(r, r), init(r)
        self.theta_v = theta_v if config.rotate_v else None
        self.theta_u = theta_u if config.rotate_u else None
        self.lam = lam if config.scaling != "none" else None

    @property
    def saves_index(self) -> bool:
        """Whether the basis was chosen from data (then its ``index`` is saved with the adapter)."""
        return self.config.select != "top"

    def use_basis(self, weight: Float[Tensor, "d_out d_in"], index: Tensor | None = None) -> None:
        """Work in the singular directions ``index`` of ``weight`` (default: the top ``rank``)."""
        try:
            if index is None:
                u, s, v = top_svd(weight, self.config.rank)
                index = torch.arange(self.config.rank)
            else:
                if len(index) != self.config.rank:
                    raise ValueError(f"{len(index)} singular directions for an adapter of rank {self.config.rank}")
                u, s, v = svd_columns(weight, index)
        except ValueError as err:
            raise ValueError(f"{self.site.name}: {err}") from None
        self.register_buffer("U", u.to(weight.device, weight.dtype))
        self.register_buffer("S", s.to(weight.device, weight.dtype))
        self.register_buffer("V", v.to(weight.device, weight.dtype))
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).to(weight.device))

    # ------------------------------------------------------------------ pieces

    def _rotation(self, theta: Tensor | None, coeff: Float[Tensor, " k"]) -> Float[Tensor, "k r r"] | None:
        if theta is None:
            return None
        a = generator(theta, self.config)
        return cayley(coeff.view(-1, 1, 1) * a)

    def rotation_v(self, coeff: float) -> Float[Tensor, "r r"]:
        """``R_v(c)`` (the identity when V does not rotate)."""
        r = self._rotation(self.theta_v, torch.tensor([float(coeff)], device=self.S.device))
        return torch.eye(self.config.rank, device=self.S.device) if r is None else r[0]

    def rotation_u(self, coeff: float) -> Float[Tensor, "r r"]:
        """``R_u(c)`` (the identity when U does not rotate)."""
        r = self._rotation(self.theta_u, torch.tensor([float(coeff)], device=self.S.device))
        return torch.eye(self.config.rank, device=self.S.device) if r is None else r[0]

    def _scaled(self, coeff: Float[Tensor, " k"]) -> Float[Tensor, "k r"]:
        return scaled_values(self.S.float(), self.lam, self.config.scaling, coeff)

    def scale(self, coeff: float) -> Float[Tensor, " r"]:
        """The scaled singular values ``S ⊙ g(c)``."""
        return self._scaled(torch.tensor([float(coeff)], device=self.S.device))[0]

    def middle(self, coeff: Float[Tensor, " k"]) -> Float[Tensor, "k r r"]:
        """``M(c) = R_v diag(S g) R_uᵀ − diag(S)`` for each coefficient (zero at ``c = 0``)."""
        coeff = coeff.to(self.S.device, torch.float32)
        m = torch.diag_embed(self._scaled(coeff))
        r_v, r_u = self._rotation(self.theta_v, coeff), self._rotation(self.theta_u, coeff)
        if r_v is not None:
            m = r_v @ m
        if r_u is not None:
            m = m @ r_u.transpose(-1, -2)
        return m - torch.diag(self.S.float())

    # ------------------------------------------------------------------ DeltaLayer

    def delta(
        self, x: Float[Tensor, "batch pos d_in"], coeff: float | Float[Tensor, " batch"]
    ) -> Float[Tensor, "batch pos d_out"]:
        h = (x @ self.V).float()
        if isinstance(coeff, Tensor) and coeff.ndim == 1:
            values, inverse = torch.unique(coeff.detach().float(), return_inverse=True)
            m = self.middle(values)[inverse.to(self.S.device)]
            h = torch.einsum("bpr,brs->bps", h, m)
        else:
            h = h @ self.middle(torch.tensor([float(coeff)], device=self.S.device))[0]
        return h.to(x.dtype) @ self.U.T

    def delta_weight(self, coeff: float) -> Float[Tensor, "d_out d_in"]:
        m = self.middle(torch.tensor([float(coeff)], device=self.S.device))[0]
        return (self.U.float() @ m.T @ self.V.float().T).to(self.U.dtype)

    def diagnostics(self) -> dict[str, float]:
        eye = torch.eye(self.config.rank, device=self.S.device)
        r_v, r_u = self.rotation_v(1.0), self.rotation_u(1.0)
        factor = self.scale(1.0) / self.S.float()

        def max_angle(r: Tensor) -> float:
            # Rotation angles are the phases of R's eigenvalues (pairs ±φ).
            return float(torch.linalg.eigvals(r.double()).angle().abs().max())

        return {
            "rot_v_norm": float(torch.linalg.matrix_norm(r_v - eye)),
            "rot_u_norm": float(torch.linalg.matrix_norm(r_u - eye)),
            "angle_v_max": max_angle(r_v),
            "angle_u_max": max_angle(r_u),
            "orth_error": max(orthogonality_error(r_v), orthogonality_error(r_u)),
            "scale_mean": float(factor.mean()),
            "scale_min": float(factor.min()),
            "scale_max": float(factor.max()),
            "delta_norm": float(torch.linalg.matrix_norm(self.middle(torch.ones(1, device=self.S.device))[0])),
        }


class InnerPiSSA(ConfiguredAdapter):
    """InnerPiSSA layers at several sites of one model (see the module docstring)."""

    name = "innerpissa"
    layer_class = InnerPiSSALayer
    config_class = InnerPiSSAConfig


def direction_scores(a_cho: Float[Tensor, "n R"], a_rej: Float[Tensor, "n R"], S: Float[Tensor, " R"]) -> dict[str, Tensor]:
    """What the pairs put through each singular direction of a weight, weighted by its singular value.

    ``a = x V`` are the inputs' coordinates on all ``R`` right singular vectors (one row per pair):
    ``cho`` / ``rej`` is ``S · mean |a|`` over the chosen / rejected rows (how much of either flows
    through the direction: Wanda's weight-times-activation), ``diff`` is ``S · |mean(a_cho - a_rej)|``
    (how much of the concept's contrast does).
    """
    S = S.double()
    return {"cho": S * a_cho.double().abs().mean(0), "rej": S * a_rej.double().abs().mean(0),
            "diff": S * (a_cho.double() - a_rej.double()).mean(0).abs()}


def choose_directions(scores: dict[str, Tensor], rank: int, how: str) -> Tensor:
    """``rank`` direction indices: ``"diff"`` the top of the contrast score; ``"data"`` round-robin over the
    chosen, rejected and contrast rankings (a third each, no repeats), as the method's later code does."""
    if how == "diff":
        return scores["diff"].argsort(descending=True)[:rank]
    orders = [scores[k].argsort(descending=True).tolist() for k in ("cho", "rej", "diff")]
    chosen: list[int] = []
    pos = [0, 0, 0]
    while len(chosen) < rank:
        for k in range(3):
            while pos[k] < len(orders[k]) and orders[k][pos[k]] in chosen:
                pos[k] += 1
            if pos[k] < len(orders[k]) and len(chosen) < rank:
                chosen.append(orders[k][pos[k]])
    return torch.tensor(chosen, dtype=torch.long)


@torch.no_grad()
def select_directions(model, sites: Sequence[Site], batch, config: InnerPiSSAConfig) -> dict[str, Tensor]:
    """Per site, the ``config.rank`` singular directions ``config.select`` picks from the pairs in ``batch``
    (an :class:`interp.data.PairBatch`): the inputs of every site are read at each row's last token
    in one unsteered forward pass and scored by :func:`direction_scores`."""

    n = batch.n_pairs
    states = run(model, batch.tokens, batch.attention_mask, read=[s.hook_in for s in sites]).states
    out = {}
    for site in sites:
        x = states[site.hook_in]
        x = x.flatten(2) if x.ndim == 4 else x  # attention outputs come per head: [batch, pos, heads, d_head]
        x = x[torch.arange(x.shape[0], device=x.device), batch.last.to(x.device)].double().cpu()
        weight = linear_of(model, site).weight
        _, S, V = top_svd(weight, min(weight.shape))
        a = x @ V
        out[site.name] = choose_directions(direction_scores(a[:n], a[n:], S), config.rank, config.select)
    return out


def attach(model, sites: Sequence[Site | str], config: InnerPiSSAConfig = InnerPiSSAConfig(),
           indices: dict[str, Tensor] | None = None) -> InnerPiSSA:
    """Attach an InnerPiSSA adapter to ``model`` at ``sites`` (c = 0 until steered).

    ``indices`` (site name -> singular-direction indices, e.g. from :func:`select_directions`)
    sets each site's basis; without it every site uses its top ``rank`` directions.
    """
    if config.select != "top" and indices is None:
        raise ValueError(f"select={config.select!r} needs the directions: attach(..., indices=select_directions(model, sites, "
                         "pair_batch, config))")
    adapter = InnerPiSSA(model, sites, config)
    for site in adapter.sites:
        if indices and site.name in indices:
            adapter.layers[layer_key(site)].use_basis(adapter._linears[site.name].weight, indices[site.name])
    return adapter
