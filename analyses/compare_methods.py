"""Which steering method moves a concept most, at the same coherence cost?

The concept's own measure (:mod:`interp.measures`) judges: by default factual honesty (``--concept
honesty --measure facts``: true over false completions of simple facts, with the token bias and the
share of facts flipped beside it), which the embedded default model holds; ``--measure
dailydilemmas`` for the de-biased DailyDilemmas choice, the continuation margin for ``--concept
sentiment``. The floor check of the base model on the scored split runs first and heads the table;
where it fails the comparison stops before fitting anything, saying what to run instead (exit
status 3; ``--force`` compares anyway). ``--recipe`` sets the InnerPiSSA recipe (training
settings, as in :mod:`analyses.recipe_search`) for every trained method; steering vectors are
fitted at the recipe's layers.

Every method is fitted on the same contrastive pairs at the same layer (InnerPiSSA and
its ablations and LoRA trained with the same ReprPO loop; PCA, mean-difference and
random vectors fitted on the training pairs; prompting written by hand), then goes
through one protocol (:mod:`interp.protocol`): sign calibrated on the calibration split,
strength calibrated to each coherence budget (next-token KL, nats/token, on calibration
prompts), then scored once on the test split at ``-c, 0, +c`` for each budget.
Prompting has no continuous dose; it is scored at its strong wording (``c = ±1``) with
its measured cost, budget ``n/a``; trained adapters are scored at their own ``c = ±1`` as
well (budget ``n/a``), besides each budget.

    python -m analyses.compare_methods                             # every method, factual honesty, all 296 test facts
    python -m analyses.compare_methods --quick                     # every method, short
    python -m analyses.compare_methods --concept sentiment --methods innerpissa,pca,prompt --seeds 3

Methods a seed does not change (the mean-difference, PCA and S-space vectors, prompting) are fitted
once however many seeds are asked for; every fitted method's row also holds its selectivity, the KL
it spends at its strength on text unrelated to the concept (:func:`interp.protocol.off_concept_texts`).

Each (method, seed) is a folder ``<out>/<method>/seed_<s>/`` with ``result.json`` (which
marks it done; a re-run skips it), the scored ``eval_<budget>.nc`` datasets and, for
trained methods, the run and saved adapter. The comparison is stored as
``<out>/compare_methods.nc`` (dims method, seed, budget) with a markdown + CSV table
(mean ± std over seeds when there are several; bootstrap intervals over dilemmas for
one seed) and the figure ``<figures>/compare_methods.html``: Δ target against ΔNLL per
method and budget (the effect-vs-coherence frontier) with the budget lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from analyses._parallel import default_jobs, run_units
from analyses._io import analysis_parser, load_dataset, resumable_run, stop_unless_held, write_html, write_netcdf, write_text
from interp.backends import backend_of
from interp.cli import QUICK, add_measure_args, fraction, measure_from_args, model_from_args, positive_int
from interp.floor import floor_line
from interp.protocol import (base_scores, budget_amount, budget_key, METHODS, NO_BUDGET, OFF_KEYS, SEEDED, TRAINED, MethodSpec,
                             off_concept_texts, run_method)
from interp.calibrate import BUDGET_KINDS
from interp.tables import METRIC_KEYS, shown
from interp.provenance import provenance
from interp.models import DEFAULT_MODEL
from interp.train import TrainConfig, parse_recipe
from analyses.recipe_search import RECIPES



@dataclass(frozen=True)
class CompareConfig:
    """One comparison: model, layer, methods, seeds, budgets and scoring caps."""

    model: str = DEFAULT_MODEL
    layers: str | None = None  # None: the training default's band; given: those layers, loss at the deepest
    concept: str = "honesty"
    recipe: str = ""  # TrainConfig overrides "field=value;..." for every trained method (see analyses.recipe_search)
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    budgets: tuple[float, ...] = (0.1, 0.3, 1.0)
    budget_kind: str = "kl"  # the cost a budget limits: next-token KL ("kl") or the ΔNLL of the prompts' text ("nll")
    steps: int = TrainConfig.steps
    n_pairs: int = TrainConfig.n_pairs
    n_calibration: int | None = None  # calibration items of the measure's split (None: the measure's own)
    n_eval: int | None = None  # items of the scored split (None: all of them)
    split: str = "test"  # the scored split: "test" for the final table, "validation" while choosing
    seed: int = 0  # the first training / fitting seed
    n_cost_texts: int = 16
    c_max: float = 16.0
    measure: str | None = "facts"  # which of the concept's measures (None: its default); facts for honesty
    min_pmass: float | None = None  # DailyDilemmas: None keeps the measure's own
    dilemmas: str | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if self.seeds < 1 or self.steps < 1:
            raise ValueError("seeds and steps must be >= 1")
        if self.split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {self.split!r}")
        if not self.budgets or not all(b > 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive nats, got {self.budgets}")
        if self.budget_kind not in BUDGET_KINDS:
            raise ValueError(f"budget_kind must be one of {sorted(BUDGET_KINDS)}, got {self.budget_kind!r}")

    def train_config(self, seed: int) -> TrainConfig:
        """The recipe every method is fitted with (a method's own overrides: :class:`interp.protocol.MethodSpec`)."""
        base = replace(TrainConfig(), model=self.model, steps=self.steps, n_pairs=self.n_pairs, concept=self.concept, seed=seed)
        if self.layers is not None:
            base = replace(base, layers=self.layers, loss_layer=None)
        return base.with_(**parse_recipe(self.recipe))


# --------------------------------------------------------------------------- one method


def run_one(model, method: str, config: CompareConfig, seed: int, measure, splits: dict, out: Path,
            progress: bool = True, base: xr.Dataset | None = None, off_texts=None) -> dict:
    """One method and seed through the protocol (:func:`interp.protocol.run_method`) into ``<out>/<method>/seed_<s>/``.

    Trained adapters and prompting are also scored at their own ``c = ±1`` (budget ``n/a``).
    """
    return run_method(model, MethodSpec(method, config.train_config(seed)), measure, splits, out / method / f"seed_{seed}",
                      split=config.split, budgets=config.budgets, budget_kind=config.budget_kind, base=base,
                      n_cost_texts=config.n_cost_texts, c_max=config.c_max, progress=progress, off_texts=off_texts)


def finished(out: Path) -> list[tuple[str, int]]:
    """``(method, seed)`` of every finished run in ``out``, methods in registry order (``out/<method>/seed_<s>/result.json``)."""
    done = {(f.parent.parent.name, int(f.parent.name.removeprefix("seed_"))) for f in out.glob("*/seed_*/result.json")}
    return sorted(((m, s) for m, s in done if m in METHODS), key=lambda ms: (METHODS.index(ms[0]), ms[1]))


# --------------------------------------------------------------------------- storing and reporting


def compare_dataset(records: Sequence[dict], model, config: CompareConfig, measure) -> xr.Dataset:
    """Records -> Dataset with dims ``(method, seed, budget)`` and provenance attrs."""
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    seeds = sorted({r["seed"] for r in records})
    # the records' own keys ("1", not "1.0"; "nll0.2" for a ΔNLL budget)
    budgets = [budget_key(b, config.budget_kind) for b in config.budgets] + (
        [NO_BUDGET] if set(methods) & {"prompt", *TRAINED} else [])
    keys = ["coeff", "reached", *METRIC_KEYS, *OFF_KEYS]
    data = {k: np.full((len(methods), len(seeds), len(budgets)), np.nan) for k in keys}
    for r in records:
        i, j = methods.index(r["method"]), seeds.index(r["seed"])
        for row in r["rows"]:
            k = budgets.index(row["budget"])
            for key in keys:
                data[key][i, j, k] = float(row.get(key, np.nan))
    ds = xr.Dataset({k: (("method", "seed", "budget"), v) for k, v in data.items()},
                    coords={"method": methods, "seed": seeds, "budget": budgets})
    ds["delta_nll"].attrs["units"] = "nats/token"
    ds["delta_target"].attrs["units"] = measure.effect_units
    ds.attrs.update(provenance(backend_of(model), config=asdict(config), seed=seeds[0] if seeds else None,
                               split=config.split, target=measure.label, unit=measure.unit, axis_title=measure.axis_title,
                               budget_cost=f"{BUDGET_KINDS[config.budget_kind]} (nats/token)"))
    return ds


def results_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (method, budget): mean ± std over seeds, or mean [low, high] for one seed (display labels)."""
    rows = []
    for method in ds["method"].values:
        for budget in ds["budget"].values:
            r = ds.sel({"method": method, "budget": budget})  # dict form: sel(method=...) is the fill-method argument
            seeded = ~np.isnan(r["delta_target"].values)  # the seeds this row has (a seed-free method: its first only)
            if not seeded.any():
                continue
            several = seeded.sum() > 1

            def fmt(key: str, spec: str = "+.4f") -> str:
                v = r[key].values[seeded]
                if np.isnan(v).all():
                    return "nan"
                if several and key == "p_value":  # "p below x for every seed": the largest, not a mean of p-values
                    return f"{np.nanmax(v):{spec}} (largest)"
                if several:
                    return f"{np.nanmean(v):{spec}} ± {np.nanstd(v, ddof=1):.4f}"
                return f"{float(v[0]):{spec}}"

            truth = fmt("delta_target")
            if not several:
                low, high = (float(r[k].values[seeded][0]) for k in ("delta_target_low", "delta_target_high"))
                truth += f" [{low:+.4f}, {high:+.4f}]"
            neg, pos = r["delta_target_neg"].values[seeded], r["delta_target"].values[seeded]
            specs = {"delta_target_neg": "+.4f", "delta_target_to_do_half": "+.4f", "delta_target_not_to_do_half": "+.4f",
                     "delta_target_balanced": "+.4f", "answer_bias": "+.3f", "delta_target_single": "+.4f",
                     "delta_other": ".4f", "p_value": ".3g", "delta_nll": ".4f", "delta_nll_neg": ".4f",
                     "normalized_gain": ".3f", "main_metric": ".3f", "token_bias": "+.3f", "token_bias_neg": "+.3f",
                     "flipped_share": ".3f", "flipped_share_neg": ".3f", "off_kl": ".4f", "off_kl_neg": ".4f"}
            specs = {k: spec for k, spec in specs.items() if k in ds}  # a dataset stored before a metric existed
            rows.append({"method": method, "budget": budget if budget == NO_BUDGET else f"{budget_amount(budget):g} nats",
                         "coeff": fmt("coeff", ".3g"), "delta_target": truth,
                         **{k: fmt(k, spec) for k, spec in specs.items()},
                         "monotonic": bool(np.all((neg < 0) & (pos > 0))),
                         "reached": bool(np.all(r["reached"].values[seeded] > 0)), "seeds": int(seeded.sum())})
    table = pd.DataFrame(rows)
    # a measure without a column's quantity (no answer bias for margins): leave the column out
    empty = [c for c in table.columns if table[c].astype(str).str.match(r"^[+-]?nan").all()]
    return shown(table.drop(columns=empty), str(ds.attrs.get("target", "target")))


def figure(ds: xr.Dataset):
    """Δ measure at +c against ΔNLL per method (one point per budget: mean over seeds, error bars their std),
    with the budget lines; the effect axis in the measure's own unit."""
    import plotly.graph_objects as go  # optional at import: analyses without figures need no plotly

    mean, several = ds.mean("seed"), ds.sizes["seed"] > 1
    std = ds.std("seed", ddof=1) if several else None
    fig = go.Figure()
    for method in mean["method"].values:
        r = mean.sel({"method": method})
        keep = ~np.isnan(r["delta_target"].values)
        error = {}
        if several:
            s = std.sel({"method": method})
            error = dict(error_y=dict(type="data", array=s["delta_target"].values[keep]),
                         error_x=dict(type="data", array=s["delta_nll"].values[keep]))
        fig.add_scatter(x=r["delta_nll"].values[keep], y=r["delta_target"].values[keep], mode="lines+markers",
                        name=str(method), text=[str(b) for b in r["budget"].values[keep]], **error,
                        hovertemplate="%{fullData.name} budget %{text}<br>ΔNLL %{x:.4f}<br>Δ %{y:+.4f}<extra></extra>")
    for b in ds["budget"].values:
        if b != NO_BUDGET:
            fig.add_vline(x=budget_amount(b), line_dash="dot", line_color="grey", annotation_text=f"{budget_amount(b):g} nats budget")
    seeds = f", {ds.sizes['seed']} seeds (mean ± std)" if several else ""
    fig.update_layout(title=f"Effect vs coherence cost: {ds.attrs.get('model_spec', '')} ({ds.attrs.get('split', 'test')} split{seeds})",
                      xaxis_title="ΔNLL at +c (nats/token)", yaxis_title=str(ds.attrs.get("axis_title", "Δ measure at +c")))
    return fig


def parse_args(argv: Sequence[str] | None = None) -> tuple[CompareConfig, argparse.Namespace]:
    d = CompareConfig()
    p = analysis_parser("compare_methods", __doc__, writes="the method folders, table and compare_methods.nc",
                        quick="every method, short training, few items, one budget", seed="first training / fitting seed",
                        n_eval=f"items of the scored split (default {d.n_eval}; --quick: 16)",
                        layers="layers shared by every method (indices, depth fractions, bands 'a:b'; default: the training default's band)")
    add_measure_args(p)
    p.add_argument("--recipe", default=d.recipe, help="InnerPiSSA recipe, 'field=value;...' TrainConfig overrides, or a name "
                                                      "from analyses.recipe_search.RECIPES")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--seeds", type=positive_int, default=d.seeds, help="training / fitting seeds --seed, --seed + 1, ... "
                                                                        "(mean ± std in the table)")
    p.add_argument("--budgets", default=None, help="coherence budgets in nats (default 0.1,0.3,1.0; --quick: 0.3)")
    p.add_argument("--budget-kind", choices=sorted(BUDGET_KINDS), default=d.budget_kind,
                   help="the cost a budget limits on the calibration prompts: next-token KL (kl) or their own text's ΔNLL (nll)")
    p.add_argument("--steps", type=positive_int, default=None, help=f"training steps (default {d.steps}; --quick: 6)")
    p.add_argument("--split", choices=("validation", "test"), default=d.split,
                   help="scored split: test for the final table, validation while choosing (its own results folder)")
    p.add_argument("--n-calibration", type=positive_int, default=None,
                   help=f"calibration items of the measure's split (default: the measure's own; --quick: {QUICK.n_calibration})")
    p.add_argument("--dilemmas", default=None, help="DailyDilemmas folder")
    p.add_argument("--min-pmass", type=fraction, default=None, help="DailyDilemmas: rows with p(Yes)+p(No) below this are NaN")
    p.add_argument("--jobs", type=positive_int, default=default_jobs(),
                   help="methods x seeds run at once, in parallel processes (default: the free cores, at most 2)")
    p.add_argument("--force", action="store_true", help="compare even when the floor check fails")
    args = p.parse_args(argv)
    args.error = p.error
    q = args.quick
    if args.measure is None and args.concept != "honesty":
        d = replace(d, measure=None)
    try:
        config = CompareConfig(
            model=args.model, layers=args.layers, concept=args.concept, measure=args.measure or d.measure,
            recipe=_recipe_spec(args.recipe),
            methods=tuple(m.strip() for m in args.methods.split(",")) if args.methods else d.methods,
            seeds=args.seeds, seed=args.seed, split=args.split,
            budgets=tuple(float(b) for b in args.budgets.split(",")) if args.budgets else ((0.3,) if q else d.budgets),
            budget_kind=args.budget_kind,
            steps=args.steps or (QUICK.steps if q else d.steps), n_pairs=QUICK.n_pairs if q else d.n_pairs,
            n_eval=args.n_eval or (QUICK.n_eval if q else d.n_eval),
            n_calibration=args.n_calibration or (QUICK.n_calibration if q else d.n_calibration),
            n_cost_texts=8 if q else d.n_cost_texts, min_pmass=args.min_pmass, dilemmas=args.dilemmas,
        )
    except ValueError as err:
        p.error(str(err))
    return config, args


def _recipe_spec(recipe: str) -> str:

    return RECIPES.get(recipe, recipe)


def measure_of_config(config: CompareConfig, error):
    """The measure a comparison is judged on (errors through the parser)."""
    return measure_from_args(argparse.Namespace(concept=config.concept, measure=config.measure), error, dilemmas=config.dilemmas,
                             min_pmass=config.min_pmass, n_calibration=config.n_calibration)


def default_folder(config: CompareConfig, measure, quick: bool) -> Path:
    """``results/compare_methods/<model>-<concept>-<measure>[-validation][-quick]``."""
    return Path("results") / "compare_methods" / (f"{config.model.replace('/', '_')}-{measure.key}"
                                                 f"{'' if config.split == 'test' else f'-{config.split}'}{'-quick' if quick else ''}")


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run (or resume) the comparison; returns the paths written."""
    config, args = parse_args(argv)
    measure = measure_of_config(config, args.error)
    split = config.split
    # more methods or seeds only add work; other settings must match the folder's
    with resumable_run(args.out or default_folder(config, measure, args.quick), "compare_methods", config, quick=args.quick,
                       ignore=("methods", "seeds"), error=args.error) as out:
        progress = not args.no_progress
        model = model_from_args(args)
        splits = measure.splits()
        splits[split] = measure.scorable(splits[split])
        splits[split] = splits[split].head(config.n_eval) if config.n_eval else splits[split]
        base = base_scores(model, measure, splits[split], out / f"base_{split}.nc", progress=progress)
        floor = measure.stored_floor(model, splits[split], out / f"floor_{split}.json", base=base, progress=progress)
        stop_unless_held(floor, measure, force=args.force, action="compare")
        runs = [(m, s) for s in range(config.seed, config.seed + config.seeds) for m in config.methods
                if s == config.seed or m in SEEDED]  # a method the seed does not change is fitted once
        parallel = min(args.jobs, len(runs)) > 1
        off_texts = off_concept_texts(model, measure, config.n_cost_texts)
        units = [(m, config, s, measure, splits, out, progress and not parallel, base, off_texts) for m, s in runs]
        done = run_units(run_one, units, model=model, jobs=args.jobs, desc="methods", progress=progress,
                         model_args={"model": args.model, "dtype": args.dtype, "device": args.device})
        ran = {(r["method"], r["seed"]): r for r in done}
        # the table holds every finished method and seed of this folder (an earlier call's too: the settings are
        # the folder's, checked above); those not run now are read back through the protocol (weights checked)
        records = [ran.get((method, seed)) or run_one(model, method, config, seed, measure, splits, out, False, base, off_texts)
                   for method, seed in finished(out)]
        written = {"dataset": write_netcdf(compare_dataset(records, model, config, measure), out / "compare_methods.nc")}
        stored = load_dataset(written["dataset"])
        table = results_table(stored)
        written["csv"] = write_text(out / "compare_methods.csv", table.to_csv(index=False))
        header = (f"Methods on {stored.attrs.get('model_spec', '')}, concept {measure.concept} ({measure.label}, "
                  f"{measure.unit}), {split} split ({len(splits[split])} items), layers {config.train_config(0).layers}, "
                  f"recipe {config.recipe or 'default'}, seeds as the Seeds column counts them; budgets are {BUDGET_KINDS[config.budget_kind]} "
                  f"on calibration prompts\n\n{floor_line(floor)} ({split} split)\n\n")
        written["table"] = write_text(out / "compare_methods.md", header + table.to_markdown(index=False) + "\n")
        if args.figures:
            written["figure"] = write_html(figure(stored), Path(args.figures) / "compare_methods.html")
        print(header + table.to_markdown(index=False))
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
