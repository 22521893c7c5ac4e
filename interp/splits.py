"""The one calibration / validation / test split of every analysis (pure).

Splits are made by item id (a dilemma's rows, a fact's swapped pair) with their own seed,
:data:`SPLIT_SEED`, never a training seed: every analysis and every training seed sees the
same test items, so no choice made on one run's validation items can touch another run's
test items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_SEED = 0  # the one calibration / validation / test split of every analysis
SPLITS: tuple[str, ...] = ("calibration", "validation", "test")

def three_way_split(
    ids: Sequence | np.ndarray,
    seed: int,
    n_calibration: int = 64,
    validation_fraction: float = 0.3,
) -> dict[str, np.ndarray]:
    """Split dilemma ids into disjoint ``calibration``, ``validation`` and ``test`` sets.

    ``ids`` may repeat (one per row); the split is over the unique ids, which are sorted
    first, so the result depends only on the set of ids and ``seed``. ``n_calibration``
    ids go to calibration; of the rest, ``round(validation_fraction * rest)`` to
    validation and the remainder to test. Each array is sorted.
    """
    unique = np.unique(np.asarray(ids))
    n = len(unique)
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    if not 0 <= n_calibration < n:
        raise ValueError(f"n_calibration must lie in [0, {n - 1}] for {n} unique dilemma ids, got {n_calibration}")
    order = np.random.default_rng(seed).permutation(n)
    rest = n - n_calibration
    n_validation = int(round(validation_fraction * rest))
    if rest - n_validation < 1:
        raise ValueError(f"no dilemmas left for the test split ({n} ids, {n_calibration} calibration, {n_validation} validation)")
    cal = unique[order[:n_calibration]]
    val = unique[order[n_calibration : n_calibration + n_validation]]
    test = unique[order[n_calibration + n_validation :]]
    return {"calibration": np.sort(cal), "validation": np.sort(val), "test": np.sort(test)}
