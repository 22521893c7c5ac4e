"""Where in the network does an InnerPiSSA adapter steer a concept best? (the README's main job)

For each depth fraction (default 0.1, 0.2, ..., 0.9) an adapter is trained with the training
default's recipe on a band of residual writers (``attn.o`` + ``mlp.out``) ``--band`` wide
(a depth fraction, default 0.4 as in ``python -m interp.train``) centred at that depth, the
loss read just after the band; ``--single`` trains one ``mlp.out`` site per depth instead.
Each adapter goes through the protocol (:mod:`interp.protocol`): sign calibrated on the
measure's calibration split, scored on the *validation* split at ``-c, 0, +c`` (depth is a
setting being chosen: the test split stays untouched).

The judge is the concept's own measure (:mod:`interp.measures`); the default is factual
honesty (``--concept honesty --measure facts``: does the model state the true completion of a
simple fact), which the embedded default model holds. The floor check of the base model on
the validation split runs *first*: where the model does not hold the preference and prompting
cannot move it, the sweep stops within minutes with the verdict and what to run instead
(``--force`` sweeps anyway).

    python -m analyses.layer_sweep                          # embedded default, facts, 9 band positions
    python -m analyses.layer_sweep --quick                  # 2 depths, 6 steps, 16 items
    python -m analyses.layer_sweep --concept sentiment      # the continuation-margin measure
    python -m analyses.layer_sweep --concept honesty --measure dailydilemmas   # stops: the default model fails its floor

Independent depths run in parallel processes (``--jobs``, default one per free core, one torch
thread each). Every depth is a run folder ``<out>/depth_0.30/`` (training log and checkpoint,
the saved adapter, ``eval_none.nc`` and ``result.json``, which marks it done); a killed sweep
resumes from what is on disk, and a folder made with other weights is refused. The sweep is
stored as ``<out>/layer_sweep.nc`` (dim ``depth``, provenance attrs) and a markdown table; the
figure ``<figures>/layer_sweep.html`` (+ PNG/SVG) is drawn from the stored file.
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

from analyses._parallel import default_jobs, run_units
from analyses._io import analysis_parser, load_dataset, resumable_run, stop_unless_held, write_html, write_netcdf, write_text
from interp.backends import backend_of
from interp.cli import QUICK, add_measure_args, fraction, measure_from_args, model_from_args, positive_int
from interp.floor import floor_line
from interp.measures import Measure
from interp.models import DEFAULT_MODEL
from interp.protocol import base_scores, NO_BUDGET, MethodSpec, row_of, run_method
from interp.provenance import provenance
from interp.sites import LINEAR_MODULES, depth_spec, depth_to_layer
from interp.tables import shown
from interp.train import TrainConfig, parse_recipe

DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_BAND = 0.4  # the training default's band (layers 0.1:0.5) is 0.4 deep
METRICS: tuple[str, ...] = (
    "delta_target", "delta_target_low", "delta_target_high", "delta_target_neg", "delta_target_balanced", "answer_bias",
    "delta_target_single", "delta_other", "delta_nll", "delta_nll_neg", "p_value", "main_metric", "normalized_gain",
    "token_bias", "token_bias_neg", "flipped_share", "flipped_share_neg",
    "val_separation", "layer", "n_sites", "orientation", "sign_flipped", "train_seconds",
)


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep depends on (stored in the dataset's attrs and checked on resume)."""

    model: str = DEFAULT_MODEL
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    band: float | None = DEFAULT_BAND  # width of the band of layers (depth fraction) centred at each depth; None: one site
    modules: tuple[str, ...] = ("attn.o", "mlp.out")
    steps: int = TrainConfig.steps
    n_pairs: int = TrainConfig.n_pairs
    coeff: float = 1.0
    n_eval: int | None = None  # validation items scored per depth (None: all)
    concept: str = "honesty"
    measure: str | None = "facts"  # None: the concept's default measure
    recipe: str = ""  # further TrainConfig overrides, "field=value;..."
    seed: int = 0
    min_pmass: float | None = None  # DailyDilemmas: None keeps the measure's own
    dilemmas: str | None = None
    n_calibration: int | None = None  # calibration items (groups) of the measure's split; None: the measure's own

    def __post_init__(self) -> None:
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be fractions in [0, 1], got {self.depths}")
        bad = [m for m in self.modules if m not in LINEAR_MODULES]
        if bad:
            raise ValueError(f"unknown module(s) {bad}; valid modules: {list(LINEAR_MODULES)}")
        for name in ("steps", "n_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_eval is not None and self.n_eval < 2:
            raise ValueError(f"n_eval must be >= 2, got {self.n_eval}")
        if not 0 < self.coeff < float("inf"):
            raise ValueError(f"coeff must be positive and finite, got {self.coeff}")
        if self.band is not None and not 0 < self.band <= 1:
            raise ValueError(f"band must be a depth fraction in (0, 1], got {self.band}")

    def train_config(self, depth: float, n_layers: int) -> TrainConfig:
        """The training settings at ``depth``: the band (or one site) there, the loss read just after it."""
        if self.band is None:
            layers, loss_layer = depth_spec(depth), None
        else:
            lo, hi = max(0.0, depth - self.band / 2), min(1.0, depth + self.band / 2)
            layers = f"{depth_spec(lo)}:{depth_spec(hi)}"
            loss_layer = min(depth_to_layer(hi, n_layers) + 1, n_layers - 1)
        base = replace(TrainConfig(), model=self.model, layers=layers, modules=self.modules, steps=self.steps,
                       n_pairs=self.n_pairs, concept=self.concept, seed=self.seed, loss_layer=loss_layer)
        return base.with_(**parse_recipe(self.recipe))


def run_dir(out: Path, depth: float) -> Path:
    return out / f"depth_{depth:.2f}"


def run_depth(model, depth: float, config: SweepConfig, measure: Measure, splits: dict, out: Path, progress: bool = True,
              base: xr.Dataset | None = None) -> dict:
    """Train (or resume, or load), calibrate the sign and score one depth (:func:`interp.protocol.run_method`);
    returns its flat record."""
    n_layers = backend_of(model).n_layers
    spec = MethodSpec("innerpissa", config.train_config(depth, n_layers), label=f"depth {depth:.2f}")
    record = run_method(model, spec, measure, splits, run_dir(out, depth), split="validation", unit=True, base=base,
                        progress=progress)
    row, training = row_of(record, NO_BUDGET), record.get("training", {})
    gaps = training.get("gaps", {})
    return {"depth": depth, "layer": depth_to_layer(depth, n_layers), "n_sites": training.get("n_sites", np.nan),
            **{k: row.get(k, np.nan) for k in METRICS if k in row},
            "val_separation": float(gaps.get("gap@+1", np.nan) - gaps.get("gap@-1", np.nan)),
            "orientation": int(record["orientation"]),
            "sign_flipped": bool((record.get("calibration") or {}).get("sign", {}).get("flipped", False)),
            "train_seconds": float(training.get("seconds", np.nan)), "n_items": record["n_items"]}


# --------------------------------------------------------------------------- parallel depths


def sweep_depths(model, args: argparse.Namespace, config: SweepConfig, measure: Measure, splits: dict, out: Path,
                 base: xr.Dataset | None, progress: bool) -> list[dict]:
    """Every depth, in ``args.jobs`` processes when more than one (:mod:`analyses._parallel`)."""
    parallel = min(args.jobs, len(config.depths)) > 1
    units = [(d, config, measure, splits, out, progress and not parallel, base) for d in config.depths]
    return run_units(run_depth, units, model=model, model_args={"model": args.model, "dtype": args.dtype, "device": args.device},
                     jobs=args.jobs, desc="depths", progress=progress)


# --------------------------------------------------------------------------- storing and reporting


def sweep_dataset(records: Sequence[dict], model, config: SweepConfig, measure: Measure) -> xr.Dataset:
    """Per-depth metrics as a Dataset with dim ``depth`` and provenance attrs (units from the measure)."""
    records = sorted(records, key=lambda r: r["depth"])
    data = {k: ("depth", np.array([float(r.get(k, np.nan)) for r in records])) for k in METRICS}
    ds = xr.Dataset(data, coords={"depth": [r["depth"] for r in records]})
    units = {"delta_target": measure.effect_units, "delta_target_neg": measure.effect_units, "delta_nll": "nats/token",
             "main_metric": "t / (1 + ΔNLL)", "normalized_gain": "%", "val_separation": "gap units"}
    for k, u in units.items():
        ds[k].attrs["units"] = u
    mode = f"band of width {config.band:g}" if config.band else "one site"
    ds.attrs.update(provenance(backend_of(model), config=asdict(config), seed=config.seed,
                               question=f"layer depth of an InnerPiSSA adapter ({mode}) vs {measure.label}",
                               split="validation", target=measure.label, unit=measure.unit, axis_title=measure.axis_title,
                               n_items=int(records[0]["n_items"]) if records else 0))
    return ds


def figure(ds: xr.Dataset):
    """Δ measure at +c and -c (bars, the measure's own unit) and ΔNLL (line, right axis) against depth."""
    import plotly.graph_objects as go  # optional at import: analyses without figures need no plotly

    depth = ds["depth"].values
    fig = go.Figure()
    for key, name in (("delta_target", "at +c"), ("delta_target_neg", "at -c")):
        low = ds["delta_target_low"].values if key == "delta_target" else None
        high = ds["delta_target_high"].values if key == "delta_target" else None
        error = dict(type="data", symmetric=False, array=high - ds[key].values, arrayminus=ds[key].values - low) \
            if low is not None and np.isfinite(low).any() else None
        fig.add_bar(x=depth, y=ds[key].values, name=f"Δ {name}", error_y=error,
                    customdata=np.stack([ds["layer"].values, ds["p_value"].values], -1),
                    hovertemplate="depth %{x:.2f} (layer %{customdata[0]:.0f})<br>Δ %{y:+.3f}, p=%{customdata[1]:.3g}<extra></extra>")
    fig.add_scatter(x=depth, y=ds["delta_nll"].values, name="ΔNLL at +c (nats/token)", yaxis="y2", mode="lines+markers")
    fig.update_layout(
        title=f"Layer-depth sweep: {ds.attrs.get('model_spec', '')}, {ds.attrs.get('target', '')} (validation split)",
        xaxis_title="depth fraction of the band's centre (layer / (n_layers - 1))", barmode="group",
        yaxis_title=f"Δ {ds.attrs.get('target', 'measure')} vs c = 0 ({ds.attrs.get('unit', '')})",
        yaxis2=dict(title="ΔNLL (nats/token)", overlaying="y", side="right"), legend=dict(orientation="h", y=-0.2))
    return fig


def markdown(ds: xr.Dataset, floor: dict | None = None) -> str:
    """The sweep's table (quantities the measure lacks left out), headed by the floor check."""
    keys = ("delta_target_neg", "flipped_share", "flipped_share_neg", "token_bias", "delta_target_balanced", "answer_bias",
            "delta_other", "p_value", "delta_nll", "delta_nll_neg", "main_metric")
    df = shown(pd.DataFrame({
        "depth": ds["depth"].values, "layer": ds["layer"].values.astype(int),
        "delta_target": [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in
                         zip(ds["delta_target"].values, ds["delta_target_low"].values, ds["delta_target_high"].values)],
        **{k: ds[k].values for k in keys if not np.isnan(ds[k].values).all()},
        "val_separation": ds["val_separation"].values, "sign_flipped": ds["sign_flipped"].values.astype(bool),
    }), str(ds.attrs.get("target", "target")))
    config = json.loads(ds.attrs["config"])
    mode = f"band of width {config['band']:g}" if config.get("band") else "one site"
    head = (f"Layer sweep ({mode}) on {ds.attrs.get('model_spec', '')}, {ds.attrs.get('target', '')} "
            f"({ds.attrs.get('unit', '')}), validation split ({ds.attrs.get('n_items', '?')} items), c = ±{config['coeff']}\n\n")
    if floor is not None:
        head += floor_line(floor) + "\n\n"
    return head + df.to_markdown(index=False, floatfmt=".4g") + "\n"


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> tuple[SweepConfig, argparse.Namespace]:
    d = SweepConfig()
    p = analysis_parser("layer_sweep", __doc__, writes="the depth run folders, layer_sweep.nc and the table",
                        quick=f"{len(QUICK.depths)} depths, {QUICK.steps} steps, {QUICK.n_eval} items: a smoke run",
                        seed="training seed", n_eval="validation items scored per depth (default: all; --quick: "
                                                     f"{QUICK.n_eval})",
                        layers=f"the depths swept: comma-separated depth fractions (default {','.join(map(str, d.depths))})")
    add_measure_args(p, measure_help="which of the concept's measures (default: facts for honesty, the concept's own otherwise)")
    p.add_argument("--band", type=fraction, default=d.band, help="width of the band of layers centred at each depth")
    p.add_argument("--single", action="store_true", help="one site per depth (--modules, default mlp.out) instead of a band")
    p.add_argument("--modules", default=None, help=f"comma-separated, from {list(LINEAR_MODULES)} (default: attn.o,mlp.out; "
                                                   "--single: mlp.out)")
    p.add_argument("--steps", type=positive_int, default=None, help=f"training steps per depth (default {d.steps})")
    p.add_argument("--coeff", type=float, default=d.coeff)
    p.add_argument("--n-calibration", type=positive_int, default=None,
                   help="calibration items of the measure's split (sign calibration; default: the measure's own)")
    p.add_argument("--recipe", default=d.recipe, help="further training settings, 'field=value;...'")
    p.add_argument("--min-pmass", type=fraction, default=None, help="DailyDilemmas: rows with p(Yes)+p(No) below are NaN")
    p.add_argument("--dilemmas", default=None, help="DailyDilemmas folder (default: $INTERP_DILEMMAS_DIR or ../shared/data/daily_dilemmas)")
    p.add_argument("--jobs", type=positive_int, default=default_jobs(),
                   help="depths trained at once, in parallel processes (default: the free cores, at most 2)")
    p.add_argument("--force", action="store_true", help="sweep even when the floor check fails")
    args = p.parse_args(argv)
    args.error = p.error
    if args.measure is None and args.concept != "honesty":
        d = replace(d, measure=None)
    try:
        depths = tuple(float(x) for x in args.layers.split(",")) if args.layers else (QUICK.depths if args.quick else d.depths)
        modules = args.modules or ("mlp.out" if args.single else ",".join(d.modules))
        config = SweepConfig(
            model=args.model, depths=depths, band=None if args.single else args.band,
            modules=tuple(m.strip() for m in modules.split(",") if m.strip()),
            steps=args.steps or (QUICK.steps if args.quick else d.steps), n_pairs=QUICK.n_pairs if args.quick else d.n_pairs,
            coeff=args.coeff, n_eval=args.n_eval or (QUICK.n_eval if args.quick else None), concept=args.concept,
            measure=args.measure or d.measure, recipe=args.recipe, seed=args.seed, min_pmass=args.min_pmass,
            dilemmas=args.dilemmas, n_calibration=args.n_calibration)
    except ValueError as err:
        p.error(str(err))
    return config, args


def default_folder(config: SweepConfig, measure: Measure, quick: bool) -> Path:
    """``results/layer_sweep/<model>-<concept>-<measure>[-single][-quick]``."""
    mode = "" if config.band == DEFAULT_BAND else ("-single" if config.band is None else f"-band{config.band:g}")
    return Path("results") / "layer_sweep" / f"{config.model.replace('/', '_')}-{measure.key}{mode}{'-quick' if quick else ''}"


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run (or resume) the sweep; returns the paths written (``floor``, and unless it failed ``dataset``, ``table``, ``figure``).

    A floor check that fails stops the run (exit status 3) unless ``--force``.
    """
    config, args = parse_args(argv)
    measure = measure_from_args(argparse.Namespace(concept=config.concept, measure=config.measure), args.error,
                                dilemmas=config.dilemmas, min_pmass=config.min_pmass, n_calibration=config.n_calibration)
    folder = args.out or default_folder(config, measure, args.quick)
    with resumable_run(folder, "layer_sweep", config, quick=args.quick, ignore=("depths",), error=args.error) as out:
        progress = not args.no_progress
        model = model_from_args(args)
        splits = measure.splits()
        splits["validation"] = measure.scorable(splits["validation"])
        if config.n_eval:
            splits["validation"] = splits["validation"].head(config.n_eval)
        base = base_scores(model, measure, splits["validation"], out / "base_validation.nc", progress=progress)
        written = {"floor": out / "floor_validation.json"}
        floor = measure.stored_floor(model, splits["validation"], written["floor"], base=base, progress=progress)
        stop_unless_held(floor, measure, force=args.force, action="sweep")
        records = sweep_depths(model, args, config, measure, splits, out, base, progress)
        written["dataset"] = write_netcdf(sweep_dataset(records, model, config, measure), out / "layer_sweep.nc")
        stored = load_dataset(written["dataset"])
        written["table"] = write_text(out / "layer_sweep.md", markdown(stored, floor))
        if args.figures:  # '' writes no figure
            written["figure"] = write_html(figure(stored), Path(args.figures) / "layer_sweep.html")
        print(markdown(stored, floor))
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
