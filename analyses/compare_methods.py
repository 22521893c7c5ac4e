"""Which steering method moves a concept most, at the same coherence cost?

The concept's own measure (:mod:`interp.measures`) judges: de-biased DailyDilemmas
truthfulness for honesty (the default), the held-out continuation margin for sentiment
(``--concept sentiment``). ``--recipe`` sets the InnerPiSSA recipe (training settings, as
in :mod:`analyses.recipe_search`) for every trained method; steering vectors are fitted at
the recipe's layers. The floor check of the base model on the test split heads the table.

Every method is fitted on the same contrastive pairs at the same layer (InnerPiSSA and
its ablations and LoRA trained with the same ReprPO loop; PCA, mean-difference and
random vectors fitted on the training pairs; prompting written by hand), then goes
through one protocol (:mod:`interp.protocol`): sign calibrated on the calibration split,
strength calibrated to each coherence budget (next-token KL, nats/token, on calibration
prompts), then scored once on the test split at ``-c, 0, +c`` for each budget.
Prompting has no continuous dose; it is scored at its strong wording (``c = ±1``) with
its measured cost, budget ``n/a``; trained adapters are scored at their own ``c = ±1`` as
well (budget ``n/a``), besides each budget.

    python -m analyses.compare_methods --quick                     # every method, short
    python -m analyses.compare_methods --methods innerpissa,pca,prompt --seeds 3

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
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from analyses._io import load_dataset, load_or_compute, resumable_run, write_html, write_netcdf, write_text
from interp.adapters.innerpissa import ABLATIONS
from interp.protocol import ProtocolConfig
from interp.calibrate import BUDGET_KINDS
from interp.tables import METRIC_KEYS, shown
from interp.provenance import provenance
from interp.models import DEFAULT_MODEL
from interp.train import TrainConfig

# the InnerPiSSA ablations (interp.adapters.innerpissa.ABLATIONS) and the loss-space ablation
TRAINED: tuple[str, ...] = ("innerpissa", *ABLATIONS, "loss_dHS@U", "lora")
VECTORS: tuple[str, ...] = ("pca", "mean_diff", "s_mean_diff", "random")
METHODS: tuple[str, ...] = (*TRAINED, *VECTORS, "prompt")
NO_BUDGET = "n/a"


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
    n_calibration: int = 64
    n_eval: int | None = 200  # items of the scored split (None: all)
    split: str = "test"  # the scored split: "test" for the final table, "validation" while choosing
    seed: int = 0  # the first training / fitting seed
    n_cost_texts: int = 16
    c_max: float = 16.0
    min_pmass: float = 0.1
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

    def eval_config(self, seed: int):
        from interp.evaluate import EvalConfig

        return EvalConfig(min_pmass=self.min_pmass, seed=seed)

    def train_config(self, method: str, seed: int) -> TrainConfig:
        from interp.train import parse_recipe

        base = replace(TrainConfig(), model=self.model, steps=self.steps, n_pairs=self.n_pairs, concept=self.concept, seed=seed)
        if self.layers is not None:
            base = replace(base, layers=self.layers, loss_layer=None)
        base = base.with_(**parse_recipe(self.recipe))
        if method in ABLATIONS:
            return base.with_(**ABLATIONS[method])
        if method == "loss_dHS@U":
            return replace(base, space="dHS@U")
        return base


# --------------------------------------------------------------------------- fitting


def fit_method(model, method: str, config: CompareConfig, seed: int, folder: Path, calibration, *, progress: bool = True,
               measure=None):
    """A fitted, sign-calibrated steering method (trained ones are saved under ``folder``)."""
    from interp.measures import prompt_method
    from interp.protocol import calibrate_method_sign, fit_adapter, fit_vector_method

    train_config = config.train_config(method, seed)
    if method == "prompt":
        from interp.baselines import PromptSteering

        m = prompt_method(measure) if measure is not None else PromptSteering()
    elif method in TRAINED:
        return fit_adapter(model, train_config, folder, kind="lora" if method == "lora" else "innerpissa",
                           calibration=calibration, progress=progress, config=config.eval_config(seed), measure=measure)[0]
    else:
        m = fit_vector_method(model, method, train_config, seed)
    calibrate_method_sign(model, m, calibration, seed=seed, config=config.eval_config(seed), measure=measure)
    return m


# --------------------------------------------------------------------------- one method


def scores_path(folder: Path, budget) -> Path:
    """Where a method's test scores at one budget are stored (``eval_<budget>.nc``; ``eval_none.nc`` unbudgeted)."""
    return folder / f"eval_{'none' if budget == NO_BUDGET else budget}.nc"


def run_method(model, method: str, config: CompareConfig, seed: int, splits: dict, out: Path, *, progress: bool = True,
               base: xr.Dataset | None = None, measure=None) -> dict:
    """Fit, calibrate (sign, strength per budget) and score one method on the config's split."""
    from interp.protocol import calibrate_method_strength, score_method, scored_metrics

    folder = out / method / f"seed_{seed}"
    done = folder / "result.json"
    if done.is_file():
        record = json.loads(done.read_text())
        for row in record["rows"]:  # metrics re-derived from the stored scores (cheap; never stale)
            row.update(scored_metrics(load_dataset(scores_path(folder, row["budget"])), row["coeff"],
                                      config.eval_config(seed), measure))
        return record
    folder.mkdir(parents=True, exist_ok=True)
    m = fit_method(model, method, config, seed, folder, splits["calibration"], progress=progress, measure=measure)
    rows = []
    try:
        # prompting has no dose; a trained adapter is also scored at its own c = ±1 (what "+1" means after training)
        budgets = [NO_BUDGET] if method == "prompt" else ([NO_BUDGET] if method in TRAINED else []) + list(config.budgets)
        for budget in budgets:
            if budget == NO_BUDGET:
                coeff, reached = 1.0, True
            else:
                strength = calibrate_method_strength(model, m, splits["calibration"], float(budget), kind=config.budget_kind,
                                                     n_texts=config.n_cost_texts, c_max=config.c_max, measure=measure)
                coeff, reached = float(strength), bool(strength.reached)
            ds, row = score_method(model, m, splits[config.split], coeff=coeff, progress=progress,
                                   config=config.eval_config(seed), base=base, measure=measure)
            write_netcdf(ds, scores_path(folder, budget))
            rows.append({"budget": str(budget), "coeff": coeff, "reached": reached, **row})
    finally:
        if hasattr(m, "detach"):
            m.detach()
    record = {"method": method, "seed": seed, "split": config.split, "orientation": int(m.orientation),
              "calibration": getattr(m, "calibration", None), "config": m.config(), "rows": rows}
    write_text(done, json.dumps(record, indent=2, default=str))
    return record


# --------------------------------------------------------------------------- storing and reporting


def compare_dataset(records: Sequence[dict], model, config: CompareConfig) -> xr.Dataset:
    """Records -> Dataset with dims ``(method, seed, budget)`` and provenance attrs."""
    methods = [m for m in config.methods if any(r["method"] == m for r in records)]
    seeds = sorted({r["seed"] for r in records})
    budgets = [str(b) for b in config.budgets] + ([NO_BUDGET] if set(methods) & {"prompt", *TRAINED} else [])
    keys = ["coeff", "reached", *METRIC_KEYS]
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
    from interp.measures import measure_of

    measure = measure_of(config.concept)
    ds["delta_target"].attrs["units"] = measure.effect_units
    ds.attrs.update(provenance(model, config=asdict(config), seed=seeds[0] if seeds else None,
                               split=config.split, target=measure.label,
                               budget_cost=f"{BUDGET_KINDS[config.budget_kind]} (nats/token)"))
    return ds


def results_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (method, budget): mean ± std over seeds, or mean [low, high] for one seed (display labels)."""
    rows = []
    several = ds.sizes["seed"] > 1
    for method in ds["method"].values:
        for budget in ds["budget"].values:
            r = ds.sel({"method": method, "budget": budget})  # dict form: sel(method=...) is the fill-method argument
            if np.isnan(r["delta_target"].values).all():
                continue

            def fmt(key: str, spec: str = "+.4f") -> str:
                v = r[key].values
                if several and np.isnan(v).all():
                    return "nan"
                if several and key == "p_value":  # "p below x for every seed": the largest, not a mean of p-values
                    return f"{np.nanmax(v):{spec}} (largest)"
                if several:
                    return f"{np.nanmean(v):{spec}} ± {np.nanstd(v, ddof=1):.4f}"
                return f"{float(v[0]):{spec}}"

            truth = fmt("delta_target")
            if not several:
                truth += f" [{float(r['delta_target_low'].values[0]):+.4f}, {float(r['delta_target_high'].values[0]):+.4f}]"
            neg = r["delta_target_neg"].values
            specs = {"delta_target_neg": "+.4f", "delta_target_to_do_half": "+.4f", "delta_target_not_to_do_half": "+.4f",
                     "delta_target_balanced": "+.4f", "answer_bias": "+.3f", "delta_target_single": "+.4f",
                     "delta_other": ".4f", "p_value": ".3g", "delta_nll": ".4f", "delta_nll_neg": ".4f",
                     "normalized_gain": ".3f", "main_metric": ".3f"}
            rows.append({"method": method, "budget": budget if budget == NO_BUDGET else f"{float(budget):g} nats",
                         "coeff": fmt("coeff", ".3g"), "delta_target": truth,
                         **{k: fmt(k, spec) for k, spec in specs.items()},
                         "monotonic": bool(np.all((neg < 0) & (r["delta_target"].values > 0))),
                         "reached": bool(np.all(r["reached"].values > 0))})
    table = pd.DataFrame(rows)
    # a measure without a column's quantity (no answer bias for margins): leave the column out
    empty = [c for c in table.columns if table[c].astype(str).str.match(r"^[+-]?nan").all()]
    return shown(table.drop(columns=empty), str(ds.attrs.get("target", "target")))


def figure(ds: xr.Dataset):
    """Δ target vs ΔNLL per method (points per budget, mean over seeds) with the budget lines."""
    import plotly.graph_objects as go

    mean = ds.mean("seed")
    fig = go.Figure()
    for method in mean["method"].values:
        r = mean.sel({"method": method})
        keep = ~np.isnan(r["delta_target"].values)
        fig.add_scatter(x=r["delta_nll"].values[keep], y=r["delta_target"].values[keep], mode="lines+markers",
                        name=str(method), text=[str(b) for b in r["budget"].values[keep]],
                        hovertemplate="%{fullData.name} budget %{text}<br>ΔNLL %{x:.4f}<br>Δ truth %{y:+.4f}<extra></extra>")
    for b in ds["budget"].values:
        if b != NO_BUDGET:
            fig.add_vline(x=float(b), line_dash="dot", line_color="grey", annotation_text=f"{float(b):g} nats KL budget")
    fig.update_layout(title=f"Effect vs coherence cost: {ds.attrs.get('model_spec', '')} ({ds.attrs.get('split', 'test')} split)",
                      xaxis_title="ΔNLL at +c (nats/token)", yaxis_title="Δ Truthfulness score at +c (probability)")
    return fig


def parse_args(argv: Sequence[str] | None = None) -> tuple[CompareConfig, argparse.Namespace]:
    from analyses._io import analysis_parser
    from interp.cli import fraction, positive_int

    d = CompareConfig()
    p = analysis_parser("compare_methods", __doc__, writes="the method folders, table and compare_methods.nc",
                        quick="every method, short training, few items, one budget", seed="first training / fitting seed",
                        n_eval=f"items of the scored split (default {d.n_eval}; --quick: 16)",
                        layers="layers shared by every method (indices, depth fractions, bands 'a:b'; default: the training default's band)")
    p.add_argument("--concept", default=d.concept, help="concept whose own measure judges (honesty: DailyDilemmas; sentiment: margins)")
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
    p.add_argument("--n-calibration", type=positive_int, default=None, help="calibration dilemmas (default 64; --quick: 16)")
    p.add_argument("--dilemmas", default=None, help="DailyDilemmas folder")
    p.add_argument("--min-pmass", type=fraction, default=d.min_pmass, help="rows with p(Yes)+p(No) below this are NaN")
    args = p.parse_args(argv)
    args.error = p.error
    q = args.quick
    try:
        config = CompareConfig(
            model=args.model, layers=args.layers, concept=args.concept, recipe=_recipe_spec(args.recipe),
            methods=tuple(m.strip() for m in args.methods.split(",")) if args.methods else d.methods,
            seeds=args.seeds, seed=args.seed, split=args.split,
            budgets=tuple(float(b) for b in args.budgets.split(",")) if args.budgets else ((0.3,) if q else d.budgets),
            budget_kind=args.budget_kind,
            steps=args.steps or (6 if q else d.steps), n_pairs=200 if q else d.n_pairs,
            n_eval=args.n_eval or (16 if q else d.n_eval), n_calibration=args.n_calibration or (16 if q else d.n_calibration),
            n_cost_texts=8 if q else d.n_cost_texts, min_pmass=args.min_pmass, dilemmas=args.dilemmas,
        )
    except ValueError as err:
        p.error(str(err))
    return config, args


def _recipe_spec(recipe: str) -> str:
    from analyses.recipe_search import RECIPES

    return RECIPES.get(recipe, recipe)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run (or resume) the comparison; returns the paths written."""
    config, args = parse_args(argv)
    from interp.cli import model_from_args
    from interp.floor import floor_line
    from interp.measures import measure_of, measure_splits, stored_floor
    from interp.protocol import base_scores, dilemma_splits

    measure = measure_of(config.concept)
    split = config.split
    # more methods or seeds only add work; other settings must match the folder's
    folder = args.out
    if folder is None and (config.concept != "honesty" or split != "test"):  # the main table's folder is result_folder's
        name = (("" if config.concept == "honesty" else f"-{measure.concept}") + ("" if split == "test" else f"-{split}")
                + ("-quick" if args.quick else ""))
        folder = str(Path("results") / "compare_methods" / f"{config.model.replace('/', '_')}{name}")
    with resumable_run(folder, "compare_methods", config, quick=args.quick, ignore=("methods", "seeds"), error=args.error) as out:
        progress = not args.no_progress
        model = model_from_args(args)
        if measure.kind == "dailydilemmas":
            caps = {"n_test": config.n_eval} if split == "test" else {"n_validation": config.n_eval}
            splits = dilemma_splits(ProtocolConfig(n_calibration=config.n_calibration, dilemmas=config.dilemmas, **caps))
            base = load_or_compute(out / "base_scores.nc",
                                   lambda: base_scores(model, splits[split], progress=progress, config=config.eval_config(0)))
        else:
            from interp.continuations import score_continuations

            splits = measure_splits(measure)
            splits[split] = splits[split].head(config.n_eval) if config.n_eval else splits[split]
            base = load_or_compute(out / "base_scores.nc",
                                   lambda: score_continuations(model, None, (0.0,), splits[split], progress=progress))
        floor = stored_floor(model, measure, splits[split], out / f"floor_{split}.json", base=base, progress=progress)
        jobs = [(m, s) for s in range(config.seed, config.seed + config.seeds) for m in config.methods]
        records = []
        for method, seed in tqdm(jobs, desc="methods", disable=not progress):
            records.append(run_method(model, method, config, seed, splits, out, progress=progress, base=base,
                                      measure=measure))
        written = {"dataset": write_netcdf(compare_dataset(records, model, config), out / "compare_methods.nc")}
        stored = load_dataset(written["dataset"])
        table = results_table(stored)
        written["csv"] = write_text(out / "compare_methods.csv", table.to_csv(index=False))
        header = (f"Methods on {stored.attrs.get('model_spec', '')}, concept {measure.concept} ({measure.label}), {split} split "
                  f"({len(splits[split])} items), layers {config.train_config('innerpissa', 0).layers}, "
                  f"recipe {config.recipe or 'default'}, {config.seeds} seed(s); budgets are {BUDGET_KINDS[config.budget_kind]} on calibration "
                  f"prompts\n\n{floor_line(floor)} ({split} split)\n\n")
        written["table"] = write_text(out / "compare_methods.md", header + table.to_markdown(index=False) + "\n")
        if args.figures:
            written["figure"] = write_html(figure(stored), Path(args.figures) / "compare_methods.html")
        print(header + table.to_markdown(index=False))
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
