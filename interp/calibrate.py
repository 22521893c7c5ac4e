"""Calibration maths: sign and strength.

Pure functions with thin shells around them:

* :func:`calibrate_sign` -- representation orientation does not fix the behavioural
  sign (see DESIGN.md), so score the method at ``-c`` and ``+c`` on the calibration
  split and flip ``method.orientation`` when ``+c`` scores lower. The decision and its
  evidence are a :class:`SignCalibration`, stored on ``method.calibration`` and meant for
  an adapter's saved json (``save_adapter(..., extra={"calibration": ...})``).
* :func:`calibrate_strength` -- the coefficient whose coherence cost (next-token KL
  and/or ΔNLL on a fixed text set, :func:`next_token_kl`, :func:`delta_nll`) matches a
  budget in nats, by bracket expansion then :func:`scipy.optimize.brentq`; when the
  budget is never reached up to ``c_max`` it returns ``c_max`` flagged ``reached=False``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy import optimize
from torch import Tensor

from interp.losses import token_kl
from interp.stats import bootstrap_ci
from interp.steering import SteeringMethod
from interp.backends import run

# --------------------------------------------------------------------------- sign


@dataclass(frozen=True)
class SignCalibration:
    """Evidence for a sign decision: scores at ``-coeff`` and ``+coeff`` (before any flip).

    ``flipped`` says whether the orientation was negated; ``orientation`` is the value
    after the decision. ``n`` is the number of dilemmas scored (None when the score
    function returned a plain number). ``diff_low``/``diff_high`` bound the paired
    per-dilemma difference (+c minus -c) by a bootstrap when per-dilemma values were given.
    """

    method: str
    coeff: float
    score_pos: float
    score_neg: float
    flipped: bool
    orientation: int
    n: int | None = None
    diff_low: float | None = None
    diff_high: float | None = None

    @property
    def confident(self) -> bool | None:
        """Whether the bootstrap interval of the difference excludes 0 (None without one)."""
        if self.diff_low is None or self.diff_high is None:
            return None
        return self.diff_low > 0 or self.diff_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": "sign", "confident": self.confident}


ScoreFn = Callable[[SteeringMethod, float], "float | Sequence[float] | np.ndarray"]


def calibrate_sign(method: SteeringMethod, score_fn: ScoreFn, coeff: float = 1.0, *, seed: int = 0) -> SignCalibration:
    """Flip ``method.orientation`` if the target score at ``+coeff`` is below that at ``-coeff``.

    ``score_fn(method, c)`` returns the target value score on the calibration split:
    either one number, or per-dilemma values (the same dilemmas in the same order at
    both coefficients), whose mean is the score and whose paired differences get a
    bootstrap interval as evidence. A tie keeps the orientation. The result is also
    stored in ``method.calibration["sign"]``.
    """
    if not (math.isfinite(coeff) and coeff > 0):
        raise ValueError(f"coeff must be a positive finite number, got {coeff}")
    pos, neg = score_fn(method, coeff), score_fn(method, -coeff)
    pos_arr, neg_arr = np.atleast_1d(np.asarray(pos, dtype=float)), np.atleast_1d(np.asarray(neg, dtype=float))
    per_dilemma = np.ndim(pos) > 0
    if per_dilemma and pos_arr.shape != neg_arr.shape:
        raise ValueError(f"score_fn gave {pos_arr.shape} values at +c but {neg_arr.shape} at -c; score the same dilemmas")
    score_pos, score_neg = float(pos_arr.mean()), float(neg_arr.mean())
    if not (math.isfinite(score_pos) and math.isfinite(score_neg)):
        raise ValueError(f"non-finite scores: +c -> {score_pos}, -c -> {score_neg}")
    low = high = None
    if per_dilemma and len(pos_arr) >= 2:
        _, low, high = bootstrap_ci(pos_arr - neg_arr, seed=seed)
    flipped = score_pos < score_neg
    if flipped:
        method.orientation = -int(method.orientation)
    result = SignCalibration(
        method=getattr(method, "name", type(method).__name__),
        coeff=float(coeff),
        score_pos=score_pos,
        score_neg=score_neg,
        flipped=flipped,
        orientation=int(method.orientation),
        n=len(pos_arr) if per_dilemma else None,
        diff_low=low,
        diff_high=high,
    )
    _record(method, "sign", result.to_dict())
    return result


def _record(method: SteeringMethod, key: str, value: dict) -> None:
    # An instance attribute, so that configs and saved adapters can carry it (extra={"calibration": ...}).
    calibration = dict(method.calibration or {})
    calibration[key] = value
    method.calibration = calibration


# --------------------------------------------------------------------------- coherence costs


def next_token_kl(
    logits_base: Float[Tensor, "batch pos vocab"],
    logits_steered: Float[Tensor, "batch pos vocab"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """Mean ``KL(base || steered)`` of next-token distributions over unmasked positions, in nats.

    ``KL(base || steered)`` is the extra nats per token the steered model pays on text
    the base model would write, which is what a coherence budget should limit.
    Computed in float32.
    """
    if logits_base.shape != logits_steered.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_base.shape)} vs {tuple(logits_steered.shape)}")
    return _masked_mean(token_kl(logits_base, logits_steered), mask)


def delta_nll(
    logits_base: Float[Tensor, "batch pos vocab"],
    logits_steered: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """Mean change in next-token NLL of the actual text (steered minus base), in nats.

    Position ``t`` predicts ``tokens[:, t + 1]``; a prediction counts when both positions
    are real tokens under ``mask``.
    """
    if logits_base.shape != logits_steered.shape or logits_base.shape[:2] != tokens.shape:
        raise ValueError(
            f"shapes must agree: logits {tuple(logits_base.shape)}, {tuple(logits_steered.shape)}, tokens {tuple(tokens.shape)}"
        )
    target = tokens[:, 1:].unsqueeze(-1)

    def nll(logits: Tensor) -> Tensor:
        return -torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target).squeeze(-1)

    pair_mask = None if mask is None else mask[:, :-1] * mask[:, 1:]
    return _masked_mean(nll(logits_steered) - nll(logits_base), pair_mask)


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {tuple(values.shape)}")
    m = mask.to(values.dtype)
    if m.sum() == 0:
        raise ValueError("the mask selects no positions")
    return (values * m).sum() / m.sum()


COST_KINDS: tuple[str, ...] = ("kl", "nll", "kl+nll")
# the costs a coherence budget of the analyses can limit, as tables name them
BUDGET_KINDS: dict[str, str] = {"kl": "next-token KL", "nll": "ΔNLL of the prompts' own text"}


def coherence_cost(
    model,
    method: SteeringMethod,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    kind: str = "kl",
) -> Callable[[float], float]:
    """Thin shell: ``cost(c)`` of ``method`` at ``c`` on a fixed, already tokenised text set.

    The base logits are computed once. ``kind`` is ``"kl"`` (:func:`next_token_kl`),
    ``"nll"`` (:func:`delta_nll`; can go negative) or ``"kl+nll"`` (their sum).
    """
    if kind not in COST_KINDS:
        raise ValueError(f"unknown cost kind {kind!r}; choose one of {list(COST_KINDS)}")

    with torch.no_grad():
        base = run(model, tokens, attention_mask).logits

    def cost(c: float) -> float:
        with torch.no_grad():
            steered = run(model, tokens, attention_mask, method.edits(float(c))).logits
        total = 0.0
        if "kl" in kind:
            total += float(next_token_kl(base, steered, attention_mask))
        if "nll" in kind:
            total += float(delta_nll(base, steered, tokens, attention_mask))
        return total

    return cost


# --------------------------------------------------------------------------- strength


class CalibratedStrength(float):
    """A coefficient (it *is* a float) carrying how it was found.

    ``reached`` is False when the cost stayed under ``budget`` all the way to ``c_max``
    (the value is then ``c_max``). ``cost`` is the cost at the value; ``evaluations``
    counts cost-function calls.
    """

    reached: bool
    budget: float
    cost: float
    c_max: float
    evaluations: int

    def __new__(cls, value: float, *, reached: bool, budget: float, cost: float, c_max: float, evaluations: int):
        obj = super().__new__(cls, value)
        obj.reached, obj.budget, obj.cost, obj.c_max, obj.evaluations = reached, budget, cost, c_max, evaluations
        return obj

    def to_dict(self) -> dict:
        return {
            "kind": "strength",
            "coeff": float(self),
            "reached": self.reached,
            "budget": self.budget,
            "cost": self.cost,
            "c_max": self.c_max,
            "evaluations": self.evaluations,
        }


def calibrate_strength(
    cost_fn: Callable[[float], float],
    budget: float,
    c_max: float = 16.0,
    tol: float = 1e-3,
    *,
    c_start: float = 0.5,
    symmetric: bool = False,
) -> CalibratedStrength:
    """The coefficient ``c > 0`` at which ``cost_fn(c)`` reaches ``budget`` (nats).

    The cost is assumed 0 at ``c = 0`` and to grow with ``c`` (it need not be monotone:
    the root found lies between the last coefficient under budget and the first over
    it). The bracket starts at ``[0, c_start]`` and doubles until the cost exceeds the
    budget or ``c_max`` is reached; :func:`scipy.optimize.brentq` then solves to ``tol``.
    ``symmetric=True`` uses ``max(cost(c), cost(-c))`` so the budget holds on both sides.
    If the budget is never reached, returns ``c_max`` with ``reached=False`` (and warns).
    """
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive number of nats, got {budget}")
    if not (0 < c_start < c_max and math.isfinite(c_max)):
        raise ValueError(f"need 0 < c_start < c_max < inf, got c_start={c_start}, c_max={c_max}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    seen: dict[float, float] = {}

    def cost(c: float) -> float:
        c = float(c)
        if c not in seen:
            value = max(cost_fn(c), cost_fn(-c)) if symmetric else cost_fn(c)
            if not math.isfinite(value):
                raise ValueError(f"cost_fn({c}) returned {value}")
            seen[c] = float(value)
        return seen[c]

    lo, hi = 0.0, c_start
    while cost(hi) < budget:
        if hi >= c_max:
            warnings.warn(f"coherence budget {budget} not reached by c_max={c_max} (cost {cost(hi):.4g}); returning c_max")
            return CalibratedStrength(c_max, reached=False, budget=budget, cost=cost(hi), c_max=c_max, evaluations=len(seen))
        lo, hi = hi, min(2 * hi, c_max)
    if cost(hi) == budget:
        root = hi
    else:
        # cost(lo) < budget: lo = 0 has cost 0 by assumption (not evaluated), later lo are checked above.
        root = optimize.brentq(lambda c: (cost(c) if c > 0 else 0.0) - budget, lo, hi, xtol=tol)
    return CalibratedStrength(root, reached=True, budget=budget, cost=cost(root), c_max=c_max, evaluations=len(seen))


def record_strength(method: SteeringMethod, strength: CalibratedStrength) -> None:
    """Store a strength calibration on ``method.calibration["strength"]`` (next to the sign)."""
    _record(method, "strength", strength.to_dict())
