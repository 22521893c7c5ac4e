"""How far do trained InnerPiSSA adapters rotate, per site and depth, and does it track the effect?

Reads run folders (each with ``metrics.jsonl`` from :mod:`interp.train` and a saved
``adapter/``), e.g. the layer sweep's ``results/layer_sweep/<model>/depth_*``. From the
saved parameters alone (no model needed) it computes per site: ``‖R_v(1) − I‖_F``,
``‖R_u(1) − I‖_F``, the rotation-angle spectrum of ``R_v(1)`` (eigenvalue phases, radians,
sorted) and the singular-value scale factors ``g(1)`` (``S ⊙ g / S``); from the training log,
the same norms over training steps; from ``result.json`` (if the run was scored), the
DailyDilemmas effect, and from the adapter json the validation separation.

    python -m analyses.rotation_norms --runs results/layer_sweep/smollm2-135m

Without ``--runs`` (and no sweep output) or with ``--train`` it first trains small adapters
(``--model``, ``--depths``, ``--steps``) into ``<out>/runs/depth_*``, so it also works alone.

Stored as ``<out>/rotation_norms.nc`` (dims ``run`` (with coord ``depth``), ``site``, ``step``,
``angle_rank``, ``sv``; every variable has ``description`` and ``units`` attrs; provenance attrs); figures ``<figures>/rotation_norms.html`` (norm and effect vs depth) and
``<figures>/rotation_norms_steps.html`` (norm over training), from the stored file only.
"""

from __future__ import annotations

from dataclasses import replace

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from analyses._io import locked, load_dataset, result_folder, write_html, write_netcdf
from interp.adapters.io import read_adapter_config, read_tensors
from interp.adapters.innerpissa import InnerPiSSAConfig, generator, scaled_values
from interp.cayley import cayley
from interp.provenance import provenance
from interp.sites import depth_spec
from interp.protocol import NO_BUDGET, RESULT, row_of
from interp.cli import model_from_args
from interp.protocol import fit_adapter
from interp.train import TrainConfig
from analyses._io import analysis_parser
from interp.cli import positive_int
from interp.measures import measure_of
from interp.tables import label as metric_label
from interp.files import RECOMPUTE, read_json_file

# Per-step diagnostics (interp.train's "diagnostics" records) kept over training.
STEP_KEYS = ("rot_v_norm", "rot_u_norm", "angle_v_max", "scale_min", "scale_max")
# Effect measures copied from a scored run's result.json (the layer sweep writes it).
EFFECT_KEYS = ("delta_target", "delta_nll", "main_metric")
VARIABLES = {
    # All at layer coefficient +1 (before orientation); norms and angles are the same at -1 (R(-1) = R(1)ᵀ).
    "rot_v_norm": "‖R_v(1) − I‖_F of the saved adapter (Frobenius norm)",
    "rot_u_norm": "‖R_u(1) − I‖_F of the saved adapter (Frobenius norm; 0 when U is not rotated)",
    "angles_v": "rotation angles of R_v(1): |phase| of its eigenvalues, sorted descending (radians; pairs repeat)",
    "scale": "g(1): scaled / original singular value, per singular-value index (ratio)",
    "delta_target": "Δ target at +1 from result.json: the runs' concept's own measure (NaN when unscored)",
    "delta_nll": "prompt-span ΔNLL at ±1 from result.json (nats; NaN when unscored)",
    "main_metric": "layer sweep main metric from result.json (NaN when unscored)",
    "val_separation": "training validation gap@+1 − gap@-1 from the adapter json (loss units)",
    "orientation": "the adapter's calibrated orientation (+1/-1; steering +c applies layer coefficient orientation·c)",
    "site_name": "hook-site name of each site slot (sites are indexed by position within a run)",
    **{f"{k}_by_step": f"{k} of the training diagnostics at each logged step (NaN where not logged)" for k in STEP_KEYS},
}
UNITS = {"rot_v_norm": "Frobenius norm", "rot_u_norm": "Frobenius norm", "angles_v": "radians", "scale": "ratio",
         "delta_nll": "nats", "val_separation": "loss units",
         "rot_v_norm_by_step": "Frobenius norm", "rot_u_norm_by_step": "Frobenius norm",
         "angle_v_max_by_step": "radians", "scale_min_by_step": "ratio", "scale_max_by_step": "ratio"}


def depth_of(folder: Path, effect: dict) -> float:
    """The run's depth fraction: its record's ``depth``, else parsed from a ``depth_0.30`` folder name, else NaN."""
    if "depth" in effect:
        return float(effect["depth"])
    m = re.fullmatch(r"depth_([0-9.]+)", folder.name)
    return float(m.group(1)) if m else float("nan")


def rotation_summary(theta: torch.Tensor | None, config: InnerPiSSAConfig) -> tuple[float, np.ndarray]:
    """``(‖R(1) − I‖_F, sorted |angles| of R(1))`` for a generator parameter (identity if None)."""
    if theta is None:
        return 0.0, np.zeros(config.rank)
    r = cayley(generator(theta.double(), config))
    angles = torch.linalg.eigvals(r).angle().abs().sort(descending=True).values.numpy()
    return float(torch.linalg.matrix_norm(r - torch.eye(config.rank, dtype=r.dtype))), angles


def scale_factors(lam: torch.Tensor | None, s: torch.Tensor | None, config: InnerPiSSAConfig) -> np.ndarray:
    """``g(1)`` as a factor on each singular value."""
    if lam is None or s is None or config.scaling == "none":
        return np.ones(config.rank)
    s = s.double()
    return (scaled_values(s, lam.double(), config.scaling, torch.ones(1, dtype=s.dtype))[0] / s).numpy()


def run_summary(folder: Path) -> dict:
    """Per-site rotation norms, angle spectra and scale factors of one saved run."""
    cfg = read_adapter_config(folder / "adapter")
    if cfg["class"] != "innerpissa":
        raise ValueError(f"{folder}: rotation norms need an InnerPiSSA adapter, got {cfg['class']!r}")
    config = InnerPiSSAConfig(**cfg["options"])
    tensors = read_tensors(folder / "adapter", cfg)
    sites = []
    for name in cfg["sites"]:
        key = name.replace(".", "_")
        nv, angles = rotation_summary(tensors.get(f"{key}.theta_v"), config)
        nu, _ = rotation_summary(tensors.get(f"{key}.theta_u"), config)
        g = scale_factors(tensors.get(f"{key}.lam"), tensors.get(f"{key}.S"), config)
        sites.append({"site": name, "rot_v_norm": nv, "rot_u_norm": nu, "angles_v": angles, "scale": g})
    history = []
    log = folder / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "diagnostics" in rec:
                history.append((rec["step"], {d["site"]: d for d in rec["diagnostics"]}))
    record = read_json_file(folder / RESULT, "a run record", RECOMPUTE) if (folder / RESULT).is_file() else {}
    effect = row_of(record, NO_BUDGET) if record else {}
    gaps = cfg.get("training", {}).get("metrics", {})
    return {"name": folder.name, "sites": sites, "history": history, "effect": effect,
            "depth": depth_of(folder, effect), "rank": config.rank, "orientation": int(cfg.get("orientation", 1)),
            "concept": cfg.get("training", {}).get("config", {}).get("concept", "honesty"),
            "model_spec": cfg.get("model_spec", ""), "weight_hash": cfg.get("weight_hash", ""),
            "model_weight_hash": record.get("weight_hash", ""),
            "val_separation": float(gaps.get("gap@+1", np.nan) - gaps.get("gap@-1", np.nan))}


def norms_dataset(runs: Sequence[dict]) -> xr.Dataset:
    """Runs -> Dataset (dims run, site, step, angle_rank, sv). Sites are indexed by position."""
    n_site = max(len(r["sites"]) for r in runs)
    rank = max(r["rank"] for r in runs)
    steps = sorted({s for r in runs for s, _ in r["history"]})
    shape = (len(runs), n_site)
    out = {k: np.full(shape, np.nan) for k in ("rot_v_norm", "rot_u_norm")}
    angles, scale = np.full((*shape, rank), np.nan), np.full((*shape, rank), np.nan)
    over_steps = {k: np.full((len(runs), n_site, len(steps)), np.nan) for k in STEP_KEYS}
    site_names = np.full(shape, "", dtype=object)
    for i, r in enumerate(runs):
        for j, s in enumerate(r["sites"]):
            site_names[i, j] = s["site"]
            out["rot_v_norm"][i, j], out["rot_u_norm"][i, j] = s["rot_v_norm"], s["rot_u_norm"]
            angles[i, j, : len(s["angles_v"])], scale[i, j, : len(s["scale"])] = s["angles_v"], s["scale"]
        for step, diag in r["history"]:
            for j, s in enumerate(r["sites"]):
                for k in STEP_KEYS:
                    if k in diag.get(s["site"], {}):
                        over_steps[k][i, j, steps.index(step)] = diag[s["site"]][k]
    ds = xr.Dataset(
        {
            "rot_v_norm": (("run", "site"), out["rot_v_norm"]),
            "rot_u_norm": (("run", "site"), out["rot_u_norm"]),
            "angles_v": (("run", "site", "angle_rank"), angles),
            "scale": (("run", "site", "sv"), scale),
            **{f"{k}_by_step": (("run", "site", "step"), v) for k, v in over_steps.items()},
            "site_name": (("run", "site"), site_names.astype(str)),
            **{k: ("run", np.array([float(r["effect"].get(k, np.nan)) for r in runs])) for k in EFFECT_KEYS},
            "val_separation": ("run", np.array([r["val_separation"] for r in runs])),
            "orientation": ("run", np.array([r["orientation"] for r in runs], dtype=int)),
        },
        coords={"run": [r["name"] for r in runs], "depth": ("run", np.array([float(r["depth"]) for r in runs])),
                "site": np.arange(n_site), "step": np.array(steps, dtype=int), "angle_rank": np.arange(rank), "sv": np.arange(rank)},
    )
    for k, text in VARIABLES.items():
        ds[k].attrs["description"] = text
        if k in UNITS:
            ds[k].attrs["units"] = UNITS[k]
    concepts = sorted({r.get("concept", "honesty") for r in runs})
    if len(concepts) == 1:  # the effect's label and unit are the concept's own measure's

        measure = measure_of(concepts[0])
        ds.attrs["target"] = measure.label
        ds["delta_target"].attrs["units"] = measure.unit
    ds.attrs["concept"] = ",".join(concepts)
    ds["depth"].attrs.update(description="adapted depth fraction of the run (NaN when unknown)", units="fraction of n_layers")
    ds["step"].attrs["description"] = "training step of a diagnostics record"
    ds["angle_rank"].attrs["description"] = "position in the descending angle spectrum"
    ds["sv"].attrs["description"] = "singular-value index (0 = largest)"
    return ds


def figure_depth(ds: xr.Dataset):
    """‖R_v(1) − I‖ (mean over sites) and the effect against depth."""
    import plotly.graph_objects as go

    x = ds["depth"].values if np.isfinite(ds["depth"].values).all() else np.arange(ds.sizes["run"])
    fig = go.Figure()
    fig.add_scatter(x=x, y=ds["rot_v_norm"].mean("site").values, mode="lines+markers", name="‖R_v(1) − I‖_F")
    if np.isfinite(ds["delta_target"].values).any():

        effect, label = ds["delta_target"].values, f"{metric_label('delta_target', str(ds.attrs.get('target', 'target')))} at +1"
    else:  # unscored runs: the training validation separation is the only effect measure
        effect, label = ds["val_separation"].values, "validation separation gap@+1 − gap@-1 (loss units)"
    fig.add_scatter(x=x, y=effect, mode="lines+markers", name=label.split(" (")[0], yaxis="y2", line=dict(dash="dot"))
    fig.update_layout(title="Rotation norm and effect by depth", xaxis_title="depth (fraction of layers; run index if unknown)",
                      yaxis_title="‖R_v(1) − I‖_F (Frobenius norm)",
                      yaxis2=dict(title=label, overlaying="y", side="right"))
    return fig


def figure_steps(ds: xr.Dataset):
    """‖R_v(1) − I‖ over training steps, one line per run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for run in ds["run"].values:
        r = ds["rot_v_norm_by_step"].sel({"run": run}).mean("site")
        fig.add_scatter(x=ds["step"].values, y=r.values, mode="lines+markers", name=str(run))
    fig.update_layout(title="Rotation norm during training", xaxis_title="training step",
                      yaxis_title="‖R_v(1) − I‖_F (Frobenius norm)")
    return fig


def _train_runs(args, depths: Sequence[float], steps: int, out: Path) -> list[Path]:
    """Small standalone runs (when no sweep output exists): one adapter per depth."""
    model_spec, progress = args.model, not args.no_progress
    model = model_from_args(args)
    folders = []
    for depth in tqdm(depths, desc="train depths", disable=not progress):
        folder = out / "runs" / f"depth_{depth:.2f}"
        if not (folder / "adapter" / "adapter.json").is_file():
            # Small validation / calibration sets: their forward passes (full-vocab NLL) dominate short runs.
            config = replace(TrainConfig(), model=model_spec, layers=depth_spec(depth), modules=("mlp.out",), loss_layer=None, seed=args.seed,
                             steps=steps, n_pairs=200,
                             n_validation=8, n_calibration=8, diagnostics_every=max(1, steps // 4))
            fit_adapter(model, config, folder, calibrate=False, progress=progress)[0].detach()
        folders.append(folder)
    return folders


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:

    p = analysis_parser("rotation_norms", __doc__, writes="rotation_norms.nc", quick="with --train: one depth, 3 steps",
                        seed="training seed of --train's adapters",
                        layers="with --train: the depths (fractions in (0, 1]) of the small adapters (default 0.3,0.6)")
    p.add_argument("--runs", default=None, help="folder of run folders (default: the layer sweep's results, else --train)")
    p.add_argument("--train", action="store_true", help="train small adapters here first (no sweep needed)")
    p.add_argument("--steps", type=positive_int, default=20, help="with --train: training steps")
    args = p.parse_args(argv)
    out = Path(args.out or result_folder("rotation_norms", args.model, args.quick))
    with locked(out, p.error):
        if args.runs is not None and not Path(args.runs).is_dir():
            p.error(f"--runs {args.runs}: not a folder (give the layer sweep's output folder, or use --train)")
        runs_dir = Path(args.runs or result_folder("layer_sweep", args.model))
        if args.train or not runs_dir.is_dir():
            if not args.train:
                print(f"no run folders at {runs_dir}; training small adapters into {out / 'runs'}")
            spec = args.layers or ("0.5" if args.quick else "0.3,0.6")
            try:
                depths = [float(d) for d in spec.split(",")]
            except ValueError:
                p.error(f"--layers {spec!r}: give comma-separated depth fractions in (0, 1], e.g. 0.3,0.6")
            if not all(0 < d <= 1 for d in depths):
                p.error(f"--layers {spec!r}: every depth must be a fraction in (0, 1]")
            folders = _train_runs(args, depths, 3 if args.quick else args.steps, out)
        else:
            folders = sorted(f for f in runs_dir.iterdir() if (f / "adapter" / "adapter.json").is_file())
        if not folders:
            p.error(f"no run folders with a saved adapter under {runs_dir}")
        runs = [run_summary(f) for f in tqdm(folders, desc="runs", disable=args.no_progress)]
        models = sorted({r["model_spec"] for r in runs} | {r["model_weight_hash"] for r in runs if r["model_weight_hash"]})
        if len({r["model_spec"] for r in runs}) > 1 or len({r["model_weight_hash"] for r in runs if r["model_weight_hash"]}) > 1:
            p.error(f"--runs {runs_dir}: the runs were made on different models or weights ({', '.join(models)}); "
                    "pool the runs of one model (one sweep folder)")
        ds = norms_dataset(runs)
        hashes = sorted({r["weight_hash"] for r in runs})
        ds.attrs.update(provenance(None, config=vars(args), runs=[str(f) for f in folders],
                                   sites=sorted({s["site"] for r in runs for s in r["sites"]}),
                                   weight_hash=",".join(hashes),
                                   question="rotation norms of InnerPiSSA adapters by depth and training step"))
        ds.attrs["model_spec"] = ",".join(sorted({r["model_spec"] for r in runs}))  # from the adapters (no model loaded)
        written = {"dataset": write_netcdf(ds, out / "rotation_norms.nc")}
        stored = load_dataset(written["dataset"])
        if args.figures:  # '' writes no figure
            written["figure"] = write_html(figure_depth(stored), Path(args.figures) / "rotation_norms.html")
            written["figure_steps"] = write_html(figure_steps(stored), Path(args.figures) / "rotation_norms_steps.html")
        for run in stored["run"].values:
            r = stored.sel({"run": run})
            print(f"{run}: |R_v(1)-I| {float(r['rot_v_norm'].mean()):.4f}, max angle {float(r['angles_v'].max()):.4f} rad, "
                  f"scale [{float(r['scale'].min()):.3f}, {float(r['scale'].max()):.3f}], Δtarget {float(r['delta_target']):+.4f}")
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
