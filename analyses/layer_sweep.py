"""At which depth does an InnerPiSSA adapter steer honesty best? (the README's main job)

For each depth fraction (default 0.1, 0.2, ..., 0.9 of the layers) an adapter is trained
with ReprPO at that one layer (``mlp.out`` by default, the loss read at the same layer),
its sign calibrated on the *calibration* split of DailyDilemmas, and it is scored on
the *validation* split at ``-c, 0, +c``: depth is a setting being chosen, so the test
split stays untouched (:mod:`interp.protocol`). Per depth the stored metrics are
Δ target (Virtue/Truthfulness), Δ other values, ΔNLL, the dose-response p-value, the
main metric (t / (1 + ΔNLL)), the normalised gain and the training's validation
separation. The method's write-up found effects peaking near 0.3-0.5 depth on Qwen3-4B;
this asks whether that holds here.

    python -m analyses.layer_sweep                 # embedded default model, ~9 depths
    python -m analyses.layer_sweep --quick         # 2 depths, short training, few dilemmas
    python -m analyses.layer_sweep --depths 0.3,0.5 --steps 20 --n-eval 64
    python -m analyses.layer_sweep --concept sentiment --band 0.4 --modules attn.o,mlp.out

Two modes: one site per depth (the default: ``--modules`` at the layer of that depth, the
loss read there), or ``--band W``: a band of layers ``W`` wide (a depth fraction) centred at
each depth, the loss read at the layer just after it, so the question becomes where a band
of fixed width should sit. ``--concept`` chooses the measure (:mod:`interp.measures`):
DailyDilemmas truthfulness (de-biased) for honesty, held-out continuation margins for
sentiment; the floor check of the base model on the validation split heads the table.
``--recipe`` adds other training settings (``field=value;...``, see
:mod:`analyses.recipe_search`).

Every depth is a run folder ``<out>/depth_0.30/`` (training log and checkpoint, the
saved adapter, ``eval.nc`` and ``eval.json``); a killed sweep resumes from what is on
disk (finished depths are skipped, a half-trained one continues from its checkpoint).
The sweep is stored as ``<out>/layer_sweep.nc`` (dim ``depth``, provenance attrs) and a
markdown table; the figure ``<figures>/layer_sweep.html`` is drawn from the stored file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from analyses._io import load_dataset, load_or_compute, resumable_run, write_html, write_netcdf, write_text
from interp.provenance import provenance
from interp.sites import LINEAR_MODULES, depth_spec, depth_to_layer, n_layers as layer_count
from interp.models import DEFAULT_MODEL
from interp.train import TrainConfig

DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
QUICK_DEPTHS: tuple[float, ...] = (0.3, 0.6)
METRICS: tuple[str, ...] = (
    "delta_target", "delta_target_low", "delta_target_high", "delta_target_neg", "delta_target_balanced", "answer_bias",
    "delta_target_single", "delta_other", "delta_nll", "delta_nll_neg", "p_value",
    "main_metric", "normalized_gain", "val_separation", "layer", "orientation", "sign_flipped",
)


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep depends on (stored in the dataset's attrs)."""

    model: str = DEFAULT_MODEL
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    modules: tuple[str, ...] = ("mlp.out",)
    steps: int = TrainConfig.steps
    n_pairs: int = TrainConfig.n_pairs
    coeff: float = 1.0
    n_eval: int = 128
    n_calibration: int = 64
    concept: str = "honesty"
    band: float | None = None  # width of a band of layers (depth fraction) centred at each depth; None: one site
    recipe: str = ""  # further TrainConfig overrides, "field=value;..."
    seed: int = 0
    min_pmass: float = 0.1
    dilemmas: str | None = None

    def __post_init__(self) -> None:
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be fractions in [0, 1], got {self.depths}")
        bad = [m for m in self.modules if m not in LINEAR_MODULES]
        if bad:
            raise ValueError(f"unknown module(s) {bad}; valid modules: {list(LINEAR_MODULES)}")
        for name in ("steps", "n_pairs", "n_eval", "n_calibration"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.coeff > 0:
            raise ValueError(f"coeff must be positive, got {self.coeff}")
        if self.band is not None and not 0 < self.band <= 1:
            raise ValueError(f"band must be a depth fraction in (0, 1], got {self.band}")

    def train_config(self, depth: float, n_layers: int | None = None) -> TrainConfig:
        """The training settings at ``depth`` (a band needs ``n_layers`` to place the loss just after it)."""
        from interp.train import parse_recipe

        layers, loss_layer = depth_spec(depth), None
        if self.band is not None:
            if n_layers is None:
                raise ValueError("a band's loss layer needs the model's n_layers")
            lo, hi = max(0.0, depth - self.band / 2), min(1.0, depth + self.band / 2)
            layers = f"{depth_spec(lo)}:{depth_spec(hi)}"
            loss_layer = min(depth_to_layer(hi, n_layers) + 1, n_layers - 1)
        base = replace(TrainConfig(), model=self.model, layers=layers, modules=self.modules, steps=self.steps,
                       n_pairs=self.n_pairs, concept=self.concept, seed=self.seed, loss_layer=loss_layer)
        return base.with_(**parse_recipe(self.recipe))


def run_dir(out: Path, depth: float) -> Path:
    return out / f"depth_{depth:.2f}"


def run_depth(model, depth: float, config: SweepConfig, splits: dict, out: Path, *, progress: bool = True,
              base=None, measure=None) -> dict:
    """Train (or resume, or load), calibrate the sign, score one depth; returns its metrics.

    The metrics are also written to ``<run>/eval.json``, which marks the depth as done.
    """
    from interp.evaluate import EvalConfig
    from interp.protocol import fit_adapter, score_method, scored_metrics

    eval_config = EvalConfig(min_pmass=config.min_pmass, seed=config.seed)
    folder = run_dir(out, depth)
    done = folder / "eval.json"
    if done.is_file():
        record = json.loads(done.read_text())
        # metrics re-derived from the stored scores (cheap; never stale)
        row = scored_metrics(load_dataset(folder / "eval.nc"), config.coeff, eval_config, measure)
        return {**record, **{k: row[k] for k in METRICS if k in row}}
    n_layers = layer_count(model)
    adapter, training = fit_adapter(model, config.train_config(depth, n_layers), folder, calibration=splits["calibration"],
                                    coeff=config.coeff, progress=progress, config=eval_config, measure=measure)
    try:
        ds, row = score_method(model, adapter, splits["validation"], coeff=config.coeff, progress=progress,
                               config=eval_config, base=base, measure=measure)
    finally:
        adapter.detach()
    write_netcdf(ds, folder / "eval.nc")
    gaps = training.get("metrics", {})
    record = {
        "depth": depth,
        "layer": depth_to_layer(depth, n_layers),
        "n_sites": len(adapter.sites),
        **{k: row.get(k, float("nan")) for k in METRICS if k in row},
        "val_separation": float(gaps.get("gap@+1", np.nan) - gaps.get("gap@-1", np.nan)),
        "orientation": int(adapter.orientation),
        "sign_flipped": bool(adapter.calibration.get("sign", {}).get("flipped", False)),
        "train_seconds": float(training.get("seconds", np.nan)),
        "split": "validation",
        "n_dilemmas": int(ds.sizes.get("dilemma", ds.sizes.get("item", 0))),
    }
    write_text(done, json.dumps(record, indent=2, default=float))
    return record


def sweep_dataset(records: Sequence[dict], model, config: SweepConfig) -> xr.Dataset:
    """Per-depth metrics as a Dataset with dim ``depth`` and provenance attrs."""
    records = sorted(records, key=lambda r: r["depth"])
    depth = [r["depth"] for r in records]
    data = {k: ("depth", np.array([float(r.get(k, np.nan)) for r in records])) for k in METRICS}
    ds = xr.Dataset(data, coords={"depth": depth})
    from interp.measures import measure_of

    measure = measure_of(config.concept)
    units = {"delta_target": measure.effect_units, "delta_nll": "nats/token",
             "main_metric": "t / (1 + ΔNLL)", "normalized_gain": "%", "val_separation": "gap units"}
    for k, u in units.items():
        ds[k].attrs["units"] = u
    ds.attrs.update(provenance(model, config=asdict(config), seed=config.seed,
                               question=f"layer depth of an InnerPiSSA adapter ({'band' if config.band else 'one site'}) "
                                        f"vs {measure.label}",
                               split="validation", target=measure.label))
    return ds


def figure(ds: xr.Dataset):
    """Main metric (bars) and ΔNLL (line, right axis) against depth, from the stored dataset."""
    import plotly.graph_objects as go

    depth = ds["depth"].values
    layer = ds["layer"].values
    fig = go.Figure()
    fig.add_bar(x=depth, y=ds["main_metric"].values, name="main metric (t / (1 + ΔNLL))",
                customdata=np.stack([layer, ds["delta_target"].values, ds["p_value"].values], -1),
                hovertemplate="depth %{x:.2f} (layer %{customdata[0]:.0f})<br>main %{y:.2f}"
                              "<br>Δ target %{customdata[1]:+.4f}, p=%{customdata[2]:.3g}<extra></extra>")
    fig.add_scatter(x=depth, y=ds["delta_nll"].values, name="ΔNLL at +c (nats/token)", yaxis="y2", mode="lines+markers")
    fig.update_layout(
        title=f"Layer-depth sweep: {ds.attrs.get('model_spec', '')} (validation split)",
        xaxis_title="depth fraction (layer / (n_layers - 1))",
        yaxis_title="main metric: t-statistic / (1 + ΔNLL)",
        yaxis2=dict(title="ΔNLL (nats/token)", overlaying="y", side="right"),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def markdown(ds: xr.Dataset, floor: dict | None = None) -> str:
    import pandas as pd

    from interp.floor import floor_line
    from interp.tables import shown

    keys = ("delta_target_neg", "delta_target_balanced", "answer_bias", "delta_target_single", "delta_other", "p_value",
            "delta_nll", "delta_nll_neg", "normalized_gain", "main_metric")
    df = shown(pd.DataFrame({
        "depth": ds["depth"].values, "layer": ds["layer"].values.astype(int),
        "delta_target": [f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]" for m, lo, hi in
                         zip(ds["delta_target"].values, ds["delta_target_low"].values, ds["delta_target_high"].values)],
        **{k: ds[k].values for k in keys if not np.isnan(ds[k].values).all()},  # none the measure lacks
        "val_separation": ds["val_separation"].values, "sign_flipped": ds["sign_flipped"].values.astype(bool),
    }), str(ds.attrs.get("target", "target")))
    config = json.loads(ds.attrs["config"])
    mode = f"band of width {config['band']:g}" if config.get("band") else "one site"
    head = (f"Layer sweep ({mode}) on {ds.attrs.get('model_spec', '')}, {ds.attrs.get('target', '')}, validation split, "
            f"c = ±{config['coeff']}\n\n")
    if floor is not None:
        head += floor_line(floor) + "\n\n"
    return head + df.to_markdown(index=False, floatfmt=".4g") + "\n"


def parse_args(argv: Sequence[str] | None = None) -> tuple[SweepConfig, argparse.Namespace]:
    from analyses._io import analysis_parser
    from interp.cli import fraction, positive_int

    d = SweepConfig()
    p = analysis_parser("layer_sweep", __doc__, writes="the depth run folders, layer_sweep.nc and the table",
                        quick="2 depths, 6 steps, 16 items: a smoke run", seed="training seed",
                        n_eval=f"validation items scored per depth (default {d.n_eval}; --quick: 16)",
                        layers=f"the depths swept: comma-separated depth fractions (default {','.join(map(str, d.depths))})")
    p.add_argument("--modules", default=",".join(d.modules), help=f"comma-separated, from {list(LINEAR_MODULES)}")
    p.add_argument("--steps", type=positive_int, default=None, help=f"training steps per depth (default {d.steps}; --quick: 6)")
    p.add_argument("--n-calibration", type=positive_int, default=None, help=f"calibration dilemmas for the sign (default {d.n_calibration}; --quick: 16)")
    p.add_argument("--coeff", type=float, default=d.coeff)
    p.add_argument("--concept", default=d.concept, help="concept whose own measure judges (honesty: DailyDilemmas; sentiment: margins)")
    p.add_argument("--band", type=float, default=None, help="sweep a band of layers this wide (depth fraction) instead of one site")
    p.add_argument("--recipe", default=d.recipe, help="further training settings, 'field=value;...'")
    p.add_argument("--min-pmass", type=fraction, default=d.min_pmass, help="rows with p(Yes)+p(No) below this are NaN")
    p.add_argument("--dilemmas", default=None, help="DailyDilemmas folder (default: $INTERP_DILEMMAS_DIR or ../shared/data/daily_dilemmas)")
    args = p.parse_args(argv)
    args.error = p.error
    quick = args.quick
    try:
        depths = tuple(float(x) for x in args.layers.split(",")) if args.layers else (QUICK_DEPTHS if quick else d.depths)
        config = SweepConfig(
            model=args.model, depths=depths, modules=tuple(m.strip() for m in args.modules.split(",") if m.strip()),
            steps=args.steps or (6 if quick else d.steps), n_pairs=200 if quick else d.n_pairs, coeff=args.coeff,
            n_eval=args.n_eval or (16 if quick else d.n_eval),
            n_calibration=args.n_calibration or (16 if quick else d.n_calibration),
            seed=args.seed, min_pmass=args.min_pmass, dilemmas=args.dilemmas, concept=args.concept, band=args.band,
            recipe=args.recipe,
        )
    except ValueError as err:
        p.error(str(err))
    return config, args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run (or resume) the sweep; returns the paths written (``dataset``, ``table``, ``figure``)."""
    config, args = parse_args(argv)
    from interp.cli import model_from_args
    from interp.evaluate import EvalConfig
    from interp.measures import measure_of, measure_splits, stored_floor
    from interp.protocol import ProtocolConfig, base_scores, dilemma_splits

    # more depths only add work; other settings must match the folder's
    from analyses._io import result_folder

    default = result_folder("layer_sweep", config.model, args.quick)  # honesty, one site: the main job's folder
    suffix = ("" if config.concept == "honesty" else f"-{Path(config.concept).stem}") + (f"-band{config.band:g}" if config.band else "")
    with resumable_run(args.out or (str(default) + suffix if suffix else None), "layer_sweep", config, quick=args.quick, ignore=("depths",),
                       error=args.error) as out:
        progress = not args.no_progress
        model = model_from_args(args)
        measure = measure_of(config.concept)
        eval_config = EvalConfig(min_pmass=config.min_pmass, seed=config.seed, target=measure.target)
        if measure.kind == "dailydilemmas":
            splits = dilemma_splits(ProtocolConfig(n_calibration=config.n_calibration,
                                                   n_validation=config.n_eval, dilemmas=config.dilemmas))
            base = load_or_compute(out / "base_scores.nc",
                                   lambda: base_scores(model, splits["validation"], progress=progress, config=eval_config))
        else:
            splits = measure_splits(measure)
            splits["validation"] = splits["validation"].head(config.n_eval)
            base = None
        floor = stored_floor(model, measure, splits["validation"], out / "floor_validation.json", base=base,
                             progress=progress)
        records = []
        bar = tqdm(config.depths, desc="depths", disable=not progress)
        for depth in bar:
            bar.set_postfix(depth=f"{depth:.2f}")
            record = run_depth(model, depth, config, splits, out, progress=progress, base=base, measure=measure)
            records.append(record)
            tqdm.write(f"depth {depth:.2f} (layer {record['layer']}): Δtarget {record.get('delta_target', float('nan')):+.4f} "
                       f"p={record.get('p_value', float('nan')):.3g} ΔNLL {record.get('delta_nll', float('nan')):.4f} "
                       f"main {record.get('main_metric', float('nan')):.3f}")
        written = {"dataset": write_netcdf(sweep_dataset(records, model, config), out / "layer_sweep.nc")}
        stored = load_dataset(written["dataset"])
        written["table"] = write_text(out / "layer_sweep.md", markdown(stored, floor))
        if args.figures:  # '' writes no figure
            written["figure"] = write_html(figure(stored), Path(args.figures) / "layer_sweep.html")
        print(markdown(stored, floor))
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
