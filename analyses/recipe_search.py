"""Which InnerPiSSA recipe moves a concept itself? A search on the validation split.

A *recipe* is a set of training settings (:class:`interp.train.TrainConfig` fields: layer
band, modules, where the loss is read, loss kind, lr, steps, rank, ...). For each recipe
and seed an adapter is trained on the concept's pairs, its sign calibrated on the
calibration split of the concept's own measure (:mod:`interp.measures`), and it is scored
on the *validation* split at ``c = -1, 0, +1``: de-biased DailyDilemmas for honesty
(with the answer bias beside it; only dilemmas where the target label has a sign, as the
target score reads no others), the continuation margin for sentiment. The test split
is never touched here: it is for the final measurement of the recipe chosen.

Before any row, the floor check (:mod:`interp.floor`) of the base model on that split is
stored; a measure below the floor is reported as such and its rows say so.

    python -m analyses.recipe_search --concept sentiment --recipes default,band
    python -m analyses.recipe_search --concept sentiment --recipe 'mine=layers=0.2:0.6;loss_layer=0.7;lr=0.02'

Every (recipe, seed) is a run folder ``<out>/<recipe>/seed_<s>/`` (training log and
checkpoint, the saved adapter, ``result.json``); a killed search resumes, and a recipe
whose settings changed under the same name is refused. The table (``table_<split>_<budget>.md`` + csv, every
finished run in the folder, e.g. ``table_validation_0.3.md``) is rewritten after every finished run,
and ``recipe_search_<split>_<budget>.nc`` (dims recipe, seed) at the end (without a budget: ``<split>``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from analyses._io import analysis_parser, write_html, write_netcdf, write_text
from interp.backends import backend_of
from interp.cli import QUICK, add_measure_args, measure_from_args, model_from_args, positive_float, positive_int
from interp.files import RunLocked, RECOMPUTE, read_json_file
from interp.floor import floor_line
from interp.protocol import base_scores, NO_BUDGET, TRAINED, MethodSpec, budget_key, off_concept_texts, row_of, run_method
from interp.provenance import provenance
from interp.calibrate import BUDGET_KINDS
from interp.train import TrainConfig, parse_recipe

# Named recipes: TrainConfig overrides as "field=value;field=value" (see parse_recipe).
# Every recipe names what it changes from the earlier single-site default, so the names keep
# their meaning whatever TrainConfig's defaults become ("default" is today's TrainConfig).
_SINGLE = "layers=0.5;modules=mlp.out;loss=proj;loss_layer=none;max_angle=0.3"
_BAND = "layers=0.1:0.5;modules=attn.o,mlp.out;loss_layer=0.55"
RECIPES: dict[str, str] = {
    "default": "",
    # one mlp.out site at depth 0.5, loss read there (the default before this search)
    "single": _SINGLE,
    "single_loss0.7": f"{_SINGLE};loss_layer=0.7",
    "single_angle1": f"{_SINGLE};max_angle=1.0;lr=0.02",
    # a band of residual writers, loss read just after it
    "band": f"{_BAND};loss=proj;max_angle=0.3",
    "band_logsig": f"{_BAND};loss=logsigmoid;max_angle=0.3",
    "band_loss0.8": "layers=0.1:0.5;modules=attn.o,mlp.out;loss_layer=0.8;loss=proj;max_angle=0.3",
    "band_lr0.02": f"{_BAND};loss=proj;lr=0.02;max_angle=0.3",
    "band_mid": "layers=0.3:0.7;modules=attn.o,mlp.out;loss_layer=0.75;loss=proj;max_angle=0.3",
    "band_wide": "layers=0.1:0.8;modules=attn.o,mlp.out;loss_layer=0.85;loss=proj;max_angle=0.3",
    # the rotation bound: 0.3 rad at |c| = 1 saturates within 40 steps
    "band_angle1": f"{_BAND};loss=proj;max_angle=1.0",
    # the band moves the margin by +6 / -3.5 nats/token but costs 1.6 nats of NLL: bound it
    "band_angle0.1": f"{_BAND};loss=proj;max_angle=0.1",
    "band_coh": f"{_BAND};loss=proj;coherence_weight=10;tau=0.05;max_angle=0.3",
    "band_narrow": "layers=0.2:0.4;modules=attn.o,mlp.out;loss_layer=0.45;loss=proj;max_angle=0.3",
    "band_antisym": f"{_BAND};loss=antisym;margin=1.0;max_angle=0.3",
}
# One change each to the default (band 0.1:0.5 of attn.o + mlp.out, loss read at 0.55, 0.1 rad),
# compared at a matched KL budget with the mean-difference and PCA vectors: the README's search table.
SEARCH: dict[str, str] = {
    "loss0.8": "loss_layer=0.8",  # loss read deeper
    "band0.2-0.6": "layers=0.2:0.6;loss_layer=0.62",  # the band one step deeper (the layer sweep's best +1 side)
    "last3": "last_tokens=3",  # the preference read on the last 3 tokens, not only the last
    "shift": "target=shift",  # each side moves from the base (not only the +1 / -1 gap)
    "both": "target=both",
    "antisym_a0.1": "loss=antisym;margin=1.0",  # +1 and -1 shifts anti-parallel, normalised
    "antisym_a0.3": "loss=antisym;margin=1.0;max_angle=0.3",  # ... with the looser bound it was best at before
    "shift_antisym": "target=shift;loss=antisym;margin=1.0",
    "kl10": "kl_weight=10",  # coherence as a KL barrier on the whole sequence
    "kl10_a0.3": "kl_weight=10;max_angle=0.3",
    "kl10_sys": "kl_weight=10;system=none;max_length=96",  # ... without the persona system prompt
    "kl30_sys": "kl_weight=30;system=none;max_length=96",
    "kl10_prompt": "kl_weight=10;kl_span=prompt;system=none;max_length=96",  # ... on the prompt's tokens only
    "kl30_prompt": "kl_weight=30;kl_span=prompt;system=none;max_length=96",
    "sel_data": "select=data",  # singular directions chosen from the pairs' activations
    "sel_diff": "select=diff",  # ... from the pairs' differences
    **{f"rank{r}": f"rank={r}" for r in (8, 16, 32, 128, 256)},
    "lr2e-3": "lr=0.002", "lr1.6e-2": "lr=0.016",
    "pairs50": "n_pairs=50", "pairs200": "n_pairs=200",
    "mod_mlp_in": "modules=mlp.in", "mod_attn": "modules=attn.q,attn.k,attn.v,attn.o",
}
RECIPES.update(SEARCH)
# objective x parameterisation: the same loop and budget, ReprPO or distillation, InnerPiSSA / LoRA / a trained vector
OBJECTIVES: dict[str, str] = {
    "distill": "objective=distill",
    "lora": "method=lora", "lora_distill": "method=lora;objective=distill",
    "vector": "method=trained_vector", "vector_distill": "method=trained_vector;objective=distill",
    # the next hypotheses after distillation beat ReprPO on the -c side: a looser rotation bound, the band one step deeper
    "distill_a0.3": "objective=distill;max_angle=0.3", "distill_band0.2-0.6": "objective=distill;layers=0.2:0.6",
    # the preference objective (paired completions of the two personas, c drawn from [-1, 1], a KL barrier)
    "preference": "objective=preference", "lora_preference": "method=lora;objective=preference",
    "vector_preference": "method=trained_vector;objective=preference",
    # the next hypothesis after InnerPiSSA trails the trained vector under every objective: its rotation bound (0.1 rad)
    "preference_a0.3": "objective=preference;max_angle=0.3",
}
RECIPES.update(OBJECTIVES)


def method_of(spec: str, error=None) -> tuple[str, str]:
    """``(method, the rest of the spec)``: a recipe may name the trained parameterisation it fits
    (``method=lora`` / ``method=trained_vector``; default ``innerpissa``) beside its training settings.
    A method that is not a trained one is reported through ``error`` (default: ``ValueError``)."""
    parts = [part for part in spec.split(";") if part.strip()]
    named = [part.split("=", 1)[1].strip() for part in parts if part.split("=", 1)[0].strip() == "method"]
    method = named[-1] if named else "innerpissa"
    if method not in TRAINED:
        message = f"recipe {spec!r}: method {method!r} is not a trained method; choose from {list(TRAINED)}"
        if error is None:
            raise ValueError(message)
        error(message)
    return method, ";".join(part for part in parts if part.split("=", 1)[0].strip() != "method")


def recipe_config(base: TrainConfig, spec: str, seed: int) -> TrainConfig:
    """``base`` with the recipe's overrides and the seed (a ``method=`` part names the parameterisation, not a setting)."""
    return base.with_(**parse_recipe(method_of(spec)[1]), seed=seed)


# --------------------------------------------------------------------------- one run


def run_recipe(model, name: str, config: TrainConfig, measure, splits: dict, folder: Path, *, method: str = "innerpissa",
               split: str = "validation", base=None, budget: float | None = None, budget_kind: str = "kl",
               progress: bool = True, off_texts=None) -> dict:
    """One recipe (or a baseline ``method`` fitted at the recipe's layers) through the protocol
    (:func:`interp.protocol.run_method`): scored at ``c = ±1`` and, with ``budget``, scaled to that cost.

    ``folder`` is held for this run only, so searches in parallel processes can share one results
    folder; a finished run gains a missing budget without retraining.
    """
    spec = MethodSpec(method, config, label=name)
    return run_method(model, spec, measure, splits, folder, split=split, unit=True, base=base, budget_kind=budget_kind,
                      budgets=() if budget is None else (budget,), progress=progress, off_texts=off_texts)


# --------------------------------------------------------------------------- table


TABLE = ("delta_target", "delta_target_neg", "monotonic", "p_value", "delta_nll", "delta_nll_neg", "answer_bias",
         "delta_target_single", "flipped_share", "flipped_share_neg", "token_bias", "off_kl", "off_kl_neg")
# the matched-cost columns: the run scaled to a budget
AT_BUDGET = ("coeff", "reached", "delta_target", "delta_target_neg", "p_value", "delta_nll", "delta_nll_neg", "answer_bias",
             "flipped_share", "flipped_share_neg", "off_kl", "off_kl_neg")


def finished_records(out: Path, split: str) -> list[dict]:
    """The records of every finished run under ``out`` on ``split`` (oldest first): searches run
    in parallel processes into one folder share one table. Baselines (``out/baselines/``) come too."""
    paths = sorted([*out.glob("*/seed_*/result.json"), *out.glob("baselines/*/seed_*/result.json")],
                   key=lambda p: p.stat().st_mtime)
    return [r for r in (read_json_file(p, "a run record", RECOMPUTE) for p in paths) if r.get("split") == split and "rows" in r]


def flat_record(record: dict, budget: float | None = None, kind: str = "kl") -> dict:
    """A record's table fields: its c = ±1 row, and its ``budget`` row (if scored) as ``<field>_at_budget``."""
    unit, training = row_of(record, NO_BUDGET), record.get("training", {})
    row = {"recipe": record.get("label", record.get("method")), "seed": record["seed"], "n_items": record.get("n_items"),
           **{k: unit.get(k, math.nan) for k in TABLE}, "n_sites": training.get("n_sites", math.nan),
           "train_seconds": training.get("seconds", math.nan)}
    if budget is not None:
        at = row_of(record, budget_key(budget, kind))
        row.update({f"{k}_at_budget": at.get(k, math.nan) for k in AT_BUDGET})
    return row


def search_table(records: Sequence[dict], budget: float | None = None, kind: str = "kl") -> pd.DataFrame:
    """One row per (recipe, seed), in the order run; with ``budget``, the matched-cost columns too.
    Quantities the concept's measure does not have (no answer bias for margins) are left out."""
    return pd.DataFrame([flat_record(r, budget, kind) for r in records]).dropna(axis=1, how="all")


def search_dataset(records: Sequence[dict], attrs: dict, budget: float | None = None, kind: str = "kl") -> xr.Dataset:
    """Records -> Dataset with dims (recipe, seed)."""
    flat = [flat_record(r, budget, kind) for r in records]
    recipes = list(dict.fromkeys(f["recipe"] for f in flat))
    seeds = sorted({f["seed"] for f in flat})
    keys = [k for k in flat[0] if k not in ("recipe", "seed", "monotonic")] if flat else []
    data = {k: np.full((len(recipes), len(seeds)), np.nan) for k in keys}
    for f in flat:
        for k in keys:
            v = f.get(k)
            data[k][recipes.index(f["recipe"]), seeds.index(f["seed"])] = np.nan if v is None else float(v)
    ds = xr.Dataset({k: (("recipe", "seed"), v) for k, v in data.items()}, coords={"recipe": recipes, "seed": seeds})
    ds.attrs.update(attrs)
    if budget is not None:
        ds.attrs["budget"] = f"{float(budget):g} nats of {BUDGET_KINDS[kind]} on the calibration prompts (*_at_budget)"
    return ds


def figure(ds: xr.Dataset):
    """Effect at +1 and -1 and at the matched budget (bars, mean over seeds) per recipe, with ΔNLL at +1 on the right axis."""
    import plotly.graph_objects as go

    mean = ds.mean("seed")
    recipes = [str(r) for r in mean["recipe"].values]
    fig = go.Figure()
    fig.add_bar(x=recipes, y=mean["delta_target"].values, name="Δ at c = +1")
    fig.add_bar(x=recipes, y=mean["delta_target_neg"].values, name="Δ at c = -1")
    if "delta_target_at_budget" in mean:
        fig.add_bar(x=recipes, y=mean["delta_target_at_budget"].values, name="Δ at +c, matched KL budget")
        fig.add_bar(x=recipes, y=mean["delta_target_neg_at_budget"].values, name="Δ at -c, matched KL budget")
    fig.add_scatter(x=recipes, y=mean["delta_nll"].values, name="ΔNLL at +1 (nats/token)", yaxis="y2", mode="markers",
                    marker=dict(size=10, symbol="diamond"))
    fig.update_layout(title=f"Recipe search: {ds.attrs.get('model_spec', '')}, {ds.attrs.get('concept', '')} "
                            f"({ds.attrs.get('split', '')} split)",
                      yaxis_title=f"Δ {ds.attrs.get('target', 'measure')} vs c = 0 ({ds.attrs.get('unit', '')})", barmode="group",
                      yaxis2=dict(title="ΔNLL (nats/token)", overlaying="y", side="right"), legend=dict(orientation="h", y=-0.25))
    return fig


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None):
    p = analysis_parser("recipe_search", __doc__, writes="the run folders, table_<split>_<budget>.md/.csv and recipe_search_<split>_<budget>.nc",
                        default_out="results/recipe_search/<model>/<concept>", quick="6 steps, 16 items of the split",
                        seed="first training seed", n_eval="score at most this many items of the split (DailyDilemmas: "
                        "dilemmas with a target sign only)")
    add_measure_args(p, concept="sentiment")
    p.add_argument("--recipes", default="default,band", help=f"comma-separated names from {sorted(RECIPES)}")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=SPEC",
                   help="an extra recipe, e.g. 'mine=layers=0.2:0.6;loss_layer=0.7' (repeatable); 'method=lora' or "
                        "'method=trained_vector' fits that parameterisation instead of InnerPiSSA")
    p.add_argument("--baselines", default="", help=f"comma-separated baselines scored alike, from {list(BASELINES)}: "
                                                    "vectors fitted on the same pairs at the default recipe's layers")
    p.add_argument("--budget", type=positive_float, default=0.3,
                   help="also score every run scaled to this next-token KL (nats) on the calibration prompts: the "
                        "matched-cost comparison ('0' is refused; pass --no-budget to skip)")
    p.add_argument("--budget-kind", choices=sorted(BUDGET_KINDS), default="kl",
                   help="the cost the budget limits: next-token KL (kl) or the ΔNLL of the prompts' own text (nll)")
    p.add_argument("--no-budget", action="store_true", help="score at c = ±1 only")
    p.add_argument("--seeds", type=positive_int, default=1, help="training seeds --seed, --seed + 1, ...")
    p.add_argument("--steps", type=positive_int, default=None, help="override every recipe's steps")
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="scored split (test: only for the final measurement of a chosen recipe)")
    args = p.parse_args(argv)
    args.error = p.error
    if args.quick:
        args.steps, args.n_eval = args.steps or QUICK.steps, args.n_eval or QUICK.n_eval
    recipes: dict[str, str] = {}
    for name in filter(None, (n.strip() for n in args.recipes.split(","))):
        if name not in RECIPES:
            p.error(f"unknown recipe {name!r}; named recipes: {sorted(RECIPES)} (or --recipe NAME=SPEC)")
        recipes[name] = RECIPES[name]
    for extra in args.recipe:
        name, sep, spec = extra.partition("=")
        if not sep or not name.strip():
            p.error(f"--recipe needs NAME=SPEC, got {extra!r}")
        recipes[name.strip()] = spec
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = [b for b in args.baselines if b not in BASELINES]
    if bad:
        p.error(f"unknown baseline(s) {bad}; choose from {list(BASELINES)}")
    if args.no_budget:
        args.budget = None
    if args.n_eval is not None and args.n_eval < 2:
        p.error(f"--n-eval must be >= 2, got {args.n_eval}")
    try:
        seeds = list(range(args.seed, args.seed + args.seeds))
        base = replace(TrainConfig(), model=args.model, concept=args.concept,
                       **({"steps": args.steps} if args.steps else {}))
        args.methods = {name: method_of(spec, p.error)[0] for name, spec in recipes.items()}
        configs = {(name, s): recipe_config(base, spec, s) for name, spec in recipes.items() for s in seeds}
    except (ValueError, TypeError) as err:
        p.error(str(err))
    args.base_configs = {s: replace(base, seed=s) for s in seeds}
    return args, configs


BASELINES: tuple[str, ...] = ("mean_diff", "pca", "s_mean_diff", "random", "prompt")


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run (or resume) the search; returns the paths written (``dataset``, ``table``, ``figure``).

    Each run folder is held by its own process while it runs, so several processes may search
    into one results folder (different recipes or seeds) and share one table.
    """
    args, configs = parse_args(argv)
    measure = measure_from_args(args, args.error)
    out = Path(args.out or Path("results") / "recipe_search" / args.model.replace("/", "_") / measure.concept)
    if args.measure:
        out = Path(args.out or out.with_name(measure.key))
    progress = not args.no_progress
    model = model_from_args(args)
    splits = measure.splits()
    splits[args.split] = measure.scorable(splits[args.split])  # a search reads the target only
    if args.n_eval is not None:
        splits[args.split] = splits[args.split].head(args.n_eval)
    selection = f"{args.split}{'' if args.n_eval is None else f'_n{len(splits[args.split])}'}"  # names what was scored
    base = base_scores(model, measure, splits[args.split], out / f"base_{selection}.nc", progress=progress)
    floor = measure.stored_floor(model, splits[args.split], out / f"floor_{selection}.json", base=base, progress=progress)
    off_texts = off_concept_texts(model, measure)
    jobs = [(name, args.methods[name], seed, config, out / name / f"seed_{seed}") for (name, seed), config in configs.items()]
    jobs += [(f"[{b}]", b, seed, config, out / "baselines" / b / f"seed_{seed}")
             for b in args.baselines for seed, config in args.base_configs.items()]
    records = []
    header = (f"Recipe search, concept {measure.concept} ({measure.label}, {measure.unit}), {args.split} split, model {args.model}"
              + (f"; *_at_budget: scaled to {args.budget:g} nats of {BUDGET_KINDS[args.budget_kind]} on the calibration prompts"
                 if args.budget else "") + f".\n\n{floor_line(floor)}\n\n")
    # one table per budget, so a search at another budget (or kind) does not overwrite this one's table
    stem = f"{args.split}_{budget_key(args.budget, args.budget_kind)}" if args.budget is not None else args.split
    try:
        for name, method, seed, config, folder in tqdm(jobs, desc="recipes", disable=not progress):
            records.append(run_recipe(model, name, config, measure, splits, folder, method=method, split=args.split, base=base,
                                      budget=args.budget, budget_kind=args.budget_kind, progress=progress,
                                      off_texts=off_texts))
            table = search_table(finished_records(out, args.split), args.budget, args.budget_kind)  # every finished run here
            write_text(out / f"table_{stem}.md", header + table.to_markdown(index=False, floatfmt=".4g") + "\n")
            write_text(out / f"table_{stem}.csv", table.to_csv(index=False))
    except RunLocked as err:
        args.error(str(err))
    ds = search_dataset(records, provenance(backend_of(model), config={"recipes": {n: c.record() for (n, _), c in configs.items()},
                                                                        "baselines": args.baselines},
                                            concept=measure.concept, target=measure.label, unit=measure.unit,
                                            split=args.split, floor_check=json.dumps(floor)),
                        args.budget, args.budget_kind)
    written = {"dataset": write_netcdf(ds, out / f"recipe_search_{stem}.nc"), "table": out / f"table_{stem}.md"}
    if args.figures:
        written["figure"] = write_html(figure(ds), Path(args.figures) / "recipe_search.html")
    print(search_table(records, args.budget, args.budget_kind).to_markdown(index=False, floatfmt=".4g"))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
