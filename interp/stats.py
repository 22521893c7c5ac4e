"""Statistics of steering results (pure): intervals, dose-response, cost-adjusted effects.

* :func:`bootstrap_ci` -- a seeded bootstrap interval over items (:func:`scipy.stats.bootstrap`);
* :func:`between_seed_spread` -- how a result varies across training seeds, reported
  beside (not merged into) the within-run interval;
* :func:`dose_response` -- the within-item linear fit of a measure on the coefficient;
* :func:`delta_nll_rows`, :func:`normalized_gain`, :func:`main_metric` -- the coherence
  cost of a steered pass and the effect per unit of it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

def bootstrap_ci(
    per_dilemma_values: Sequence[float] | np.ndarray,
    statistic: Callable = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    method: str = "BCa",
) -> tuple[float, float, float]:
    """``(statistic, low, high)``: a seeded ``1 - alpha`` bootstrap interval over dilemmas.

    Resamples dilemmas (the unit that is independent), so pass one value per dilemma.
    ``method`` is scipy's (``"BCa"``, ``"percentile"``, ``"basic"``); BCa falls back to
    percentile when it is undefined (e.g. all values equal).
    """
    values = np.asarray(per_dilemma_values, dtype=float).ravel()
    if len(values) < 2:
        raise ValueError(f"need at least 2 per-dilemma values, got {len(values)}")
    if not np.isfinite(values).all():
        raise ValueError("per-dilemma values contain NaN or inf")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    point = float(statistic(values))
    if np.ptp(values) == 0:
        return point, point, point
    kwargs = dict(n_resamples=int(n_boot), confidence_level=1 - alpha, random_state=np.random.default_rng(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((values,), statistic, method=method, **kwargs)
        low, high = res.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):
            low, high = stats.bootstrap((values,), statistic, method="percentile", **kwargs).confidence_interval
    return point, float(low), float(high)


def between_seed_spread(per_seed_values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Spread of one summary (e.g. the effect at c = 1) across training seeds.

    Reported beside, not merged into, the within-run bootstrap interval: that interval
    says how sure we are about one trained method on these dilemmas; this says how much
    retraining moves the answer. ``std`` uses ``ddof=1``; ``sem`` is ``std / sqrt(n)``.
    """
    values = np.asarray(per_seed_values, dtype=float).ravel()
    if len(values) < 1 or not np.isfinite(values).all():
        raise ValueError(f"need one or more finite per-seed values, got {values.tolist()}")
    n = len(values)
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    return {
        "n_seeds": n,
        "mean": float(values.mean()),
        "std": std,
        "sem": std / math.sqrt(n) if n > 1 else float("nan"),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def dose_response(coeffs: np.ndarray, values: np.ndarray, groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """``(slope, t, p)`` of a linear fit of values on the coefficient (NaNs dropped).

    With ``groups`` (one id per value, e.g. the dilemma) the fit is within groups: every
    group's own mean is removed (a fixed effect per dilemma), so between-dilemma spread does
    not swamp the dose-response, and the residual degrees of freedom lose one per group.
    The slope is scipy's ``linregress`` on the centred values; its standard error is rescaled
    to those degrees of freedom (``linregress`` alone would count the centred rows as free
    and overstate ``t`` by about sqrt(3/2) for three coefficients).
    """
    x, y = np.asarray(coeffs, float).ravel(), np.asarray(values, float).ravel()
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    extra = 0  # intercepts beyond the one linregress fits
    if groups is not None:
        _, group = np.unique(np.asarray(groups).ravel()[keep], return_inverse=True)
        size = np.bincount(group)
        x = x - (np.bincount(group, x) / size)[group]
        y = y - (np.bincount(group, y) / size)[group]
        extra = len(size) - 1
    dof = len(y) - 2 - extra
    if len(np.unique(x)) < 2 or dof < 1:
        return math.nan, math.nan, math.nan
    fit = stats.linregress(x, y)
    if fit.stderr == 0:
        return float(fit.slope), math.copysign(math.inf, fit.slope) if fit.slope else 0.0, 0.0 if fit.slope else 1.0
    t = float(fit.slope / (fit.stderr * math.sqrt((len(y) - 2) / dof)))
    return float(fit.slope), t, float(2 * stats.t.sf(abs(t), dof))


def delta_nll_rows(nll_at: np.ndarray, nll_zero: np.ndarray, n_tokens: np.ndarray | None = None) -> float:
    """Token-weighted mean of per-row ``NLL(c) - NLL(0)`` (rows with a NaN on either side dropped).

    With ``n_tokens`` (predictions per row) this is :func:`interp.calibrate.delta_nll` of
    the two passes; without, every row weighs the same.
    """
    diff = np.asarray(nll_at, float) - np.asarray(nll_zero, float)
    w = np.ones_like(diff) if n_tokens is None else np.asarray(n_tokens, float)
    keep = np.isfinite(diff) & (w > 0)
    return float((diff[keep] * w[keep]).sum() / w[keep].sum()) if keep.any() else math.nan


def normalized_gain(delta_target: float, delta_nll: float) -> float:
    """``100 Δ target / (1 + max(ΔNLL, 0))``."""
    return 100.0 * delta_target / (1.0 + max(delta_nll, 0.0))


def main_metric(t_stat: float, delta_nll: float) -> float:
    """``t / (1 + max(ΔNLL, 0))``."""
    return t_stat / (1.0 + max(delta_nll, 0.0))
