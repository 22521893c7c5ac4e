"""Continuation margins: a concept measure that an answer bias cannot fool.

An *item* is an everyday question, an assistant-turn prefix that is continued (not
closed), and two matched continuations, one per pole of the concept::

    user "How was the concert last night?"   assistant "The concert last night was"
    positive " wonderful"                    negative " terrible"

Prompt (the model's chat template): an optional system message, the user message and the
assistant prefix rendered with ``continue_final_message=True``; the continuation's text is
appended to that string. The *margin* of an item is, in nats/token,

    mean log p(positive tokens | prompt) - mean log p(negative tokens | prompt),

per-token means so that a two-token continuation is not penalised against a one-token
one. Both continuations of an item are scored under the same prompt, so a shift of the
model towards "answer with anything" or a constant added to every logit cancels; only
a preference for one pole over the other moves the margin.

Continuation tokens: prompt and continuation are tokenised together; the continuation's
tokens are those whose character offset starts at or after the prompt's end. A token that
straddles the boundary (``"the show" + "s"`` merges into ``" shows"``) is refused: the
continuation would not be scored on its own tokens. Continuations that start with a
space, as the shipped ones do, never merge with the prefix on SmolLM2's tokenizer (tested).

Coherence cost, in the same forward pass: the teacher-forced next-token NLL from the
start of the user message to the end of the assistant prefix (the continuation is not
scored; prompting's added system message lies before the span), as in
:mod:`interp.evaluate`: each item stores its mean ``nll`` and count ``nll_tokens``, and
ΔNLL(c) is their token-weighted mean difference (:func:`interp.stats.delta_nll_rows`).

Sign and orientation: as in :mod:`interp.evaluate`, ``c`` goes to ``method.messages`` and
``method.steer`` unchanged (the method applies its own orientation); sign calibration is
``calibrate_sign(method, lambda m, c: target_values(model, m, c, calibration_items))``.

Items live in a json file next to the concept (``interp/concepts/<concept>.json`` names it
under ``"measure": {"kind": "continuations", "file": ...}``); :func:`split_items` splits
them by item id with a split seed of its own, never a training seed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import xarray as xr
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends import backend_of, run
from interp.splits import three_way_split
from interp.stats import bootstrap_ci, delta_nll_rows, dose_response, main_metric
from interp.data import concepts_dir, encode_chats
from interp.provenance import provenance
from interp.steering import NoSteering, SteeringMethod

ITEM_KEYS: tuple[str, ...] = ("id", "user", "prefix", "positive", "negative")
# the table's columns (snake_case keys; interp.tables.shown gives their labels)
TABLE_COLUMNS = ("method", "coeff", "delta_target", "delta_target_low", "delta_target_high", "target_at_zero",
                 "target_at_coeff", "slope", "t", "p_value", "delta_nll", "delta_nll_neg", "main_metric", "n")
Chat = list[dict[str, str]]


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ContinuationItems:
    """Evaluation items: a frame with columns ``id, user, prefix, positive, negative`` (one row per item)."""

    frame: pd.DataFrame
    source: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> np.ndarray:
        return self.frame["id"].to_numpy(dtype=np.int64)

    def subset(self, ids: Sequence[int] | np.ndarray) -> ContinuationItems:
        """The items with these ids, in the order given."""
        index = pd.Index(self.frame["id"])
        pos = index.get_indexer(np.asarray(ids))
        if (pos < 0).any():
            missing = np.asarray(ids)[pos < 0].tolist()
            raise ValueError(f"item ids {missing[:10]} are not in {self.source or 'these items'}")
        return ContinuationItems(self.frame.iloc[pos].reset_index(drop=True), self.source)

    def head(self, n: int) -> ContinuationItems:
        """The first ``n`` items (quick runs, tests)."""
        return ContinuationItems(self.frame.head(n).reset_index(drop=True), self.source)


def validate_items(raw: object, source: str) -> pd.DataFrame:
    """The items of a parsed json document as a frame; ``ValueError`` naming ``source`` and the bad item.

    ``raw`` is ``{"items": [...]}`` (other top-level keys ignored) or a bare list. Each item
    needs the keys of :data:`ITEM_KEYS`, an integer id unique in the file, string texts,
    a non-empty user message and prefix, and non-empty, distinct continuations.
    """
    items = raw.get("items") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ValueError(f"{source}: expected {{'items': [{{{', '.join(ITEM_KEYS)}}}, ...]}} with at least one item")
    seen: set[int] = set()
    for k, item in enumerate(items):
        where = f"{source}: item {item.get('id', f'#{k} (no id)') if isinstance(item, dict) else f'#{k}'}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object with keys {list(ITEM_KEYS)}")
        missing = [key for key in ITEM_KEYS if key not in item]
        if missing:
            raise ValueError(f"{where} lacks key(s) {missing}; every item needs {list(ITEM_KEYS)}")
        if not isinstance(item["id"], int) or isinstance(item["id"], bool):
            raise ValueError(f"{where}: id must be an integer, got {item['id']!r}")
        if item["id"] in seen:
            raise ValueError(f"{where}: duplicate id (ids must be unique within the file)")
        seen.add(item["id"])
        for key in ITEM_KEYS[1:]:
            if not isinstance(item[key], str) or not item[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {item[key]!r}")
        if item["positive"] == item["negative"]:
            raise ValueError(f"{where}: positive and negative continuations are both {item['positive']!r}; they must differ")
    return pd.DataFrame([{key: item[key] for key in ITEM_KEYS} for item in items])


def items_path(path_or_concept: str | Path) -> Path:
    """The items file: a json path as given, or the file a concept names under ``"measure"``.

    A concept is a shipped name (``"sentiment"``) or a concept json path whose
    ``"measure": {"kind": "continuations", "file": ...}`` names the items file, relative to
    the concept file's folder.
    """
    path = Path(path_or_concept)
    if not (path.suffix == ".json" and path.is_file()):
        path = concepts_dir() / f"{path_or_concept}.json"
        if not path.is_file():
            raise ValueError(f"{str(path_or_concept)!r} is neither an items json file nor a shipped concept "
                             f"(looked for {path})")
    raw = _read_json(path)
    measure = raw.get("measure") if isinstance(raw, dict) else None
    if measure is None:
        return path  # an items file itself
    if (not isinstance(measure, dict) or measure.get("kind") != "continuations"
            or not isinstance(measure.get("file"), str) or not measure["file"].strip()):
        raise ValueError(f"{path}: 'measure' must be {{'kind': 'continuations', 'file': '<items>.json'}}, got {measure!r}")
    target = path.parent / measure["file"]
    if not target.is_file():
        raise ValueError(f"{path}: its measure file {str(target)!r} does not exist")
    return target


def load_items(path_or_concept: str | Path) -> ContinuationItems:
    """Items from a json file, or from the file a concept names (``load_items("sentiment")``)."""
    path = items_path(path_or_concept)
    return ContinuationItems(validate_items(_read_json(path), str(path)), str(path))


ITEMS_LAYOUT = "{'items': [{" + ", ".join(ITEM_KEYS) + "}, ...]} (or a concept json naming one under 'measure')"


def _read_json(path: Path) -> object:
    """A json file's content; ``ValueError`` naming the file (not UTF-8, not json) and the items layout."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); expected a UTF-8 json file "
                         f"holding {ITEMS_LAYOUT}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid json (line {err.lineno}, column {err.colno}: {err.msg}); "
                         f"expected {ITEMS_LAYOUT}") from err


def split_items(
    items: ContinuationItems, split_seed: int = 0, n_calibration: int = 48, validation_fraction: float = 0.3,
) -> dict[str, ContinuationItems]:
    """Disjoint ``calibration`` / ``validation`` / ``test`` items by id (:func:`interp.splits.three_way_split`).

    ``split_seed`` belongs to the item file, not to a training run: every seed of every
    method is judged on the same items.
    """
    parts = three_way_split(items.ids, split_seed, n_calibration, validation_fraction)
    return {name: items.subset(ids) for name, ids in parts.items()}


# --------------------------------------------------------------------------- prompts and tokens


def item_chats(items: ContinuationItems, system_prompt: str | None = None) -> list[Chat]:
    """One chat per item: optional system message, the user's question, the open assistant prefix."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [[*system, {"role": "user", "content": u}, {"role": "assistant", "content": p}]
            for u, p in zip(items.frame["user"], items.frame["prefix"])]


def masked_next_token_logp(
    logits: Float[Tensor, "row pos vocab"], tokens: Int[Tensor, "row pos"], pair: Bool[Tensor, "row pos_1"],
) -> tuple[Float[Tensor, " row"], Int[Tensor, " row"]]:
    """Per row: mean ``log p(token[t+1] | ..t)`` over positions ``t`` where ``pair[t]``, and their count.

    Only the selected positions go through log-softmax (memory: n_selected x vocab).
    """
    tokens, pair = tokens.to(logits.device), pair.to(logits.device)
    logp = -F.cross_entropy(logits[:, :-1][pair].float(), tokens[:, 1:][pair], reduction="none")
    sums = logp.new_zeros(len(tokens)).index_add_(0, pair.nonzero()[:, 0], logp)
    counts = pair.sum(-1)
    return sums / counts.clamp_min(1), counts


def read_rows(
    logits: Float[Tensor, "row pos vocab"], tokens: Int[Tensor, "row pos"],
    cont_mask: Bool[Tensor, "row pos"], nll_mask: Bool[Tensor, "row pos"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logp, nll, nll_tokens)`` per row.

    ``logp`` is the mean log-probability of the continuation's tokens (each predicted from
    the position before it); ``nll`` the mean next-token NLL over predictions whose position
    and target both lie in ``nll_mask`` (``calibrate.delta_nll``'s convention).
    """
    logp, _ = masked_next_token_logp(logits, tokens, cont_mask[:, 1:])
    neg_nll, counts = masked_next_token_logp(logits, tokens, nll_mask[:, :-1] & nll_mask[:, 1:])
    return tuple(t.detach().cpu().numpy() for t in (logp, -neg_nll, counts))


# --------------------------------------------------------------------------- scoring (model shells)


@torch.no_grad()
def _score_coeff(model, method: SteeringMethod, coeff: float, items: ContinuationItems,
                 system_prompt: str | None, batch_size: int, bar) -> np.ndarray:
    """``[5, item]``: logp_pos, logp_neg, nll, nll_tokens, margin at one coefficient.

    Each batch holds whole items: rows ``0..k-1`` positive, ``k..2k-1`` negative.
    """
    base = item_chats(items, system_prompt)
    pos, neg = items.frame["positive"].tolist(), items.frame["negative"].tolist()
    order = np.argsort([len(c[-2]["content"]) + len(c[-1]["content"]) for c in base], kind="stable")
    per_batch = max(1, batch_size // 2)
    out = np.zeros((5, len(items)))
    for i in range(0, len(items), per_batch):
        rows = order[i : i + per_batch]
        chats = [method.messages(base[r], coeff) for r in rows]
        enc = encode_chats(model.tokenizer, chats + chats, continuations=[pos[r] for r in rows] + [neg[r] for r in rows])
        logits = run(model, enc.tokens, enc.attention_mask, method.edits(coeff)).logits
        logp, nll, counts = read_rows(logits, enc.tokens, enc.continuation, enc.span)
        k = len(rows)
        # the prompt span is the same text in both rows: its NLL agrees up to padding noise
        out[:, rows] = np.stack([logp[:k], logp[k:], (nll[:k] + nll[k:]) / 2, counts[:k], logp[:k] - logp[k:]])
        bar.update(k)
    return out


def score_continuations(
    model, method: SteeringMethod | None, coeffs: Sequence[float], items: ContinuationItems, *,
    system_prompt: str | None = None, batch_size: int = 16, progress: bool = True, base: xr.Dataset | None = None,
) -> xr.Dataset:
    """Score ``method`` at each coefficient on ``items`` -> Dataset (dims method, coeff, item).

    Data variables: ``margin`` (nats/token, see the module docstring), ``logp_pos`` /
    ``logp_neg`` (per-token mean log-probabilities), ``nll`` / ``nll_tokens`` (coherence
    span); item texts as coordinates. ``batch_size`` counts rows per forward pass (two per
    item: both continuations of an item share a batch). ``base``: the same items scored
    before (any method) whose c = 0 rows are reused instead of recomputed. Attrs carry
    :func:`interp.provenance.provenance` plus the items' source and the system prompt.
    """
    method = method or NoSteering()
    coeffs = [float(c) for c in coeffs]
    if len(set(coeffs)) != len(coeffs):
        raise ValueError(f"coefficients must be distinct, got {coeffs}")
    if batch_size < 2:
        raise ValueError(f"batch_size counts rows (two per item) and must be >= 2, got {batch_size}")
    if not len(items):
        raise ValueError("no items to score")
    bar = tqdm(total=len(coeffs) * len(items), desc=f"continuations {method.name}", disable=not progress)
    values = np.stack([_base_rows(base, items, system_prompt) if c == 0.0 and base is not None
                       else _score_coeff(model, method, c, items, system_prompt, batch_size, bar) for c in coeffs])
    bar.close()
    dims = ("method", "coeff", "item")
    f = items.frame
    ds = xr.Dataset(
        {
            "margin": (dims, values[None, :, 4]),
            "logp_pos": (dims, values[None, :, 0]),
            "logp_neg": (dims, values[None, :, 1]),
            "nll": (dims, values[None, :, 2]),
            "nll_tokens": (dims, values[None, :, 3].astype(np.int32)),
        },
        coords={"method": [method.name], "coeff": coeffs, "item": items.ids,
                "user": ("item", f["user"].to_numpy(str)), "prefix": ("item", f["prefix"].to_numpy(str)),
                "positive": ("item", f["positive"].to_numpy(str)), "negative": ("item", f["negative"].to_numpy(str))},
    )
    ds["margin"].attrs.update(units="nats/token", description="mean log p(positive tokens) - mean log p(negative tokens)")
    ds["logp_pos"].attrs.update(units="nats/token", description="mean log p of the positive continuation's tokens")
    ds["logp_neg"].attrs.update(units="nats/token", description="mean log p of the negative continuation's tokens")
    ds["nll"].attrs.update(units="nats/token", description="mean next-token NLL from the user message to the prefix's end")
    ds["nll_tokens"].attrs["description"] = "predictions counted in nll (weights for ΔNLL)"
    ds.attrs.update(provenance(backend_of(model), config=method.config(), measure="continuations", items_source=items.source,
                               system_prompt=system_prompt if system_prompt is not None else ""))
    return ds


def _base_rows(base: xr.Dataset, items: ContinuationItems, system_prompt: str | None) -> np.ndarray:
    """``[5, item]`` at c = 0 from a dataset scored before (c = 0 is the base model for every method)."""
    if 0.0 not in [float(c) for c in base["coeff"].values]:
        raise ValueError("the base dataset has no c = 0 rows")
    if not np.array_equal(base["item"].values, items.ids):
        raise ValueError("base dataset scored other items (same ids in the same order needed)")
    if (base.attrs.get("system_prompt") or None) != system_prompt:
        raise ValueError("base dataset was scored with another system prompt")
    b = _at(base.isel(method=0), "coeff", 0.0)
    return np.stack([b[v].values for v in ("logp_pos", "logp_neg", "nll", "nll_tokens", "margin")])


def target_values(model, method: SteeringMethod | None, coeff: float, items: ContinuationItems, *,
                  system_prompt: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Per-item margins at one coefficient (the ScoreFn of :func:`interp.calibrate.calibrate_sign`).

    Use it as ``calibrate_sign(method, lambda m, c: target_values(model, m, c, calibration_items))``.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size counts rows (two per item) and must be >= 2, got {batch_size}")
    bar = tqdm(disable=True)
    return _score_coeff(model, method or NoSteering(), float(coeff), items, system_prompt, batch_size, bar)[4]


# --------------------------------------------------------------------------- metrics (pure)


def _at(obj, dim: str, value):
    values = [float(v) if dim == "coeff" else v for v in obj[dim].values.tolist()]
    if value not in values:
        raise KeyError(f"{dim}={value!r} not scored; have {values}")
    return obj.isel({dim: values.index(value)})


def continuation_metrics(ds: xr.Dataset, method: str, coeff: float, seed: int = 0) -> dict:
    """Metrics of ``method`` at ``coeff`` against its c = 0 rows (and ``-coeff`` where scored).

    ``Δ margin``: mean over items of ``margin(c) - margin(0)``, with a seeded bootstrap
    interval over items; ``slope`` / ``t`` / ``p-value``: the within-item dose-response of
    the margin over {-c, 0, +c} (:func:`interp.stats.dose_response`); ``Δ NLL`` at ``+c``
    and ``-c`` (NaN where ``-c`` was not scored).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = _at(ds, "method", method)
        coeffs = [float(c) for c in m["coeff"].values]
        zero, at = _at(m, "coeff", 0.0), _at(m, "coeff", float(coeff))
        paired = at["margin"].values - zero["margin"].values
        paired = paired[np.isfinite(paired)]
        low = high = math.nan
        if len(paired) >= 2:
            _, low, high = bootstrap_ci(paired, seed=seed)
        used = [c for c in (-coeff, 0.0, coeff) if c in coeffs]
        n_items = m.sizes["item"]
        margins = np.stack([_at(m, "coeff", c)["margin"].values for c in used])
        slope, t, p = dose_response(np.repeat(used, n_items), margins.ravel(), groups=np.tile(np.arange(n_items), len(used)))

        def d_nll(c: float) -> float:
            if c not in coeffs:
                return math.nan
            return delta_nll_rows(_at(m, "coeff", c)["nll"].values, zero["nll"].values, zero["nll_tokens"].values)

        delta = d_nll(float(coeff))
        return {"method": method, "coeff": float(coeff), "delta_target": float(paired.mean()) if len(paired) else math.nan,
                "delta_target_low": low, "delta_target_high": high, "target_at_zero": float(np.nanmean(zero["margin"].values)),
                "target_at_coeff": float(np.nanmean(at["margin"].values)), "slope": slope, "t": t, "p_value": p,
                "delta_nll": delta, "delta_nll_neg": d_nll(-float(coeff)), "main_metric": main_metric(t, delta),
                "n": int(len(paired))}


def continuation_table(ds: xr.Dataset, seed: int = 0) -> pd.DataFrame:
    """One row per method and non-zero coefficient (columns :data:`TABLE_COLUMNS`)."""
    rows = [continuation_metrics(ds, str(m), float(c), seed) for m in ds["method"].values
            for c in ds["coeff"].values if c != 0]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
