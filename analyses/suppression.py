"""Suppression / prediction neurons per depth, and their overlap with a trained adapter's weight change.

Research question: does a steering adapter act by writing along the output directions
of the model's suppression (or prediction) neurons (Gurnee et al. 2024)?

Part 1 (always): score every MLP neuron (:mod:`interp.neurons`: skew and kurtosis over the
vocabulary of its output weight's cosine with the processed unembedding; sign-corrected by
its mean activation on chat prompts for gated MLPs) and store a Dataset with dims
``(layer, neuron)``; the figure shows the share of suppression and prediction neurons by depth.

Part 2 (``--adapter PATH``): for each adapted site that writes to the residual stream, the
top-k left singular directions of ``ΔW(1)`` (d_model space); for the suppression and the
prediction neurons (all layers pooled) the mean fraction of their output energy inside that
span and their mean max |cosine| with it, against random neurons of the same count (seeded
draws from all neurons -> mean / std). Stored with dims ``(site, kind)``.

    python -m analyses.suppression --model smollm2-135m   # -> results/suppression/smollm2-135m
    python -m analyses.suppression --adapter runs/honesty-smollm2-135m-s0/adapter

Results go to ``<out>/neurons.nc`` and ``<out>/overlap.nc`` (atomic writes); figures to
``<figures>/suppression_by_layer.html`` and ``<figures>/suppression_overlap.html``, drawn from
the stored files only (:func:`figure_by_layer`, :func:`figure_overlap`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from analyses._io import locked, analysis_parser, analysis_layers, load_dataset, result_folder, write_html, write_netcdf
from interp.neurons import (
    NEURON_CLASSES,
    NeuronConfig,
    is_gated,
    layer_output_weights,
    mean_neuron_activations,
    overlap_with_baseline,
    score_neurons,
    top_directions,
)
from interp.sites import Site, parse_layers
from interp.backends import backend_of
from interp.provenance import provenance
from interp.adapters.io import load_adapter
from interp.backends import n_layers as layer_count
from interp.cli import model_from_args
from interp.data import make_pairs, tokenize_pairs
from interp.provenance import read_json_attr

DEFAULT_FIGURES = "figures"
OVERLAP_KINDS: tuple[str, ...] = ("suppression", "prediction")


# --------------------------------------------------------------------------- part 1: neuron classes


def prompt_batch(model, n_pairs: int, seed: int = 0):
    """Chat-templated contrastive prompts (chosen and rejected rows) for measuring mean activations."""

    pairs = make_pairs(n_pairs=n_pairs, seed=seed)
    return tokenize_pairs(model.tokenizer, pairs, padding_side="left")


def neuron_dataset(
    model,
    layers: Sequence[int] | None = None,
    *,
    config: NeuronConfig = NeuronConfig(),
    n_prompts: int = 64,
    sign_correct: bool | None = None,
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Scores of every MLP neuron as a Dataset (dims ``layer``, ``neuron``) with provenance attrs.

    ``sign_correct=None`` corrects signs for gated MLPs only (their activations have no fixed sign);
    the mean activations come from ``n_prompts`` contrastive pairs (both rows of each pair).
    """
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else parse_layers(list(layers), n_layers)
    gated = is_gated(model)
    sign_correct = gated if sign_correct is None else sign_correct
    mean_acts = None
    if sign_correct:
        batch = prompt_batch(model, n_prompts, seed)
        mean_acts = mean_neuron_activations(model, batch.tokens, batch.attention_mask, layers, progress=progress)
    scores = score_neurons(model, layers, mean_activations=mean_acts, config=config, progress=progress)
    d_mlp = scores["skew"].shape[1]
    dims = ("layer", "neuron")
    ds = xr.Dataset(
        {k: (dims, scores[k].astype(str if k == "class" else np.float32)) for k in ("skew", "kurtosis", "class", "sign", "out_norm")},
        coords={"layer": np.asarray(layers), "neuron": np.arange(d_mlp),
                "depth": ("layer", np.asarray(layers) / max(n_layers - 1, 1))},
    )
    if mean_acts is not None:
        ds["mean_activation"] = (dims, mean_acts.numpy().astype(np.float32))
    ds["skew"].attrs["description"] = "population skew over the vocabulary of cos(neuron output weight, unembedding column)"
    ds["kurtosis"].attrs["description"] = "population kurtosis (not excess: a Gaussian gives 3) of the same cosines"
    ds["class"].attrs["description"] = f"one of {list(NEURON_CLASSES)}"
    sites = [Site(layer, "mlp.out") for layer in layers]
    ds.attrs.update(provenance(
        backend_of(model), sites=sites, config=asdict(config), seed=seed, analysis="suppression", n_layers_model=n_layers,
        gated_mlp=gated, sign_corrected=bool(sign_correct), n_prompts=n_prompts if sign_correct else 0,
        processing="W_U' = diag(final norm scale) W_U, centred over vocab; W_out columns (raw HF down_proj), "
        "sign-corrected by mean activation if sign_corrected; centred over d_model only for LayerNorm models"))
    return ds


def class_shares(ds: xr.Dataset) -> xr.Dataset:
    """Fraction of neurons per layer in each class (dims ``layer``; one variable per class)."""
    return xr.Dataset({name: (ds["class"] == name).mean("neuron") for name in NEURON_CLASSES})


def figure_by_layer(ds: xr.Dataset):
    """Share of suppression and prediction neurons by layer (drawn from the stored dataset only)."""
    import plotly.graph_objects as go

    shares = class_shares(ds)
    fig = go.Figure()
    for name in OVERLAP_KINDS:
        fig.add_trace(go.Scatter(x=ds["layer"].values, y=shares[name].values, mode="lines+markers", name=name))
    fig.update_layout(
        title=f"Suppression / prediction neurons by depth: {ds.attrs.get('model_spec', '')} "
        f"(kurtosis > {_threshold(ds)}, sign-corrected: {bool(ds.attrs.get('sign_corrected', 0))})",
        xaxis_title="layer",
        yaxis_title="share of MLP neurons",
        legend_title="class",
    )
    return fig


def _threshold(ds: xr.Dataset) -> float:

    cfg = read_json_attr(ds.attrs, "config") or {}
    return float(cfg.get("kurtosis_threshold", NeuronConfig().kurtosis_threshold))


# --------------------------------------------------------------------------- part 2: overlap with ΔW(1)


def _output_pool(model, ds: xr.Dataset, config: NeuronConfig) -> torch.Tensor:
    """Processed output directions of every scored neuron, stacked in (layer, neuron) order."""
    rows = []
    for layer in ds["layer"].values:
        sign = torch.as_tensor(ds["sign"].sel(layer=layer).values)
        rows.append(layer_output_weights(model, int(layer), sign, config))
    return torch.cat(rows)


def overlap_dataset(
    model,
    adapter,
    neurons: xr.Dataset,
    *,
    top_k: int = 8,
    draws: int = 20,
    seed: int = 0,
    coeff: float = 1.0,
    config: NeuronConfig = NeuronConfig(),
    progress: bool = True,
) -> xr.Dataset:
    """Overlap of each residual-writing site's ``ΔW(coeff)`` top-k directions with suppression /
    prediction neuron output directions vs random neurons (dims ``site``, ``kind``).

    ``adapter`` follows :class:`interp.adapters.base.AdapterSet` (``sites``, ``layers`` keyed by
    ``site.name`` with dots -> underscores, each with ``delta_weight(coeff)``). Sites whose
    output is not the residual stream (``d_out != d_model``) are skipped.
    """
    d_model = int(model.cfg.d_model)
    pool = _output_pool(model, neurons, config)
    classes = neurons["class"].values.reshape(-1)
    sites = [s for s in adapter.sites]
    kept: list[str] = []
    rows: list[list[dict]] = []
    for site in tqdm(sites, desc="overlap", disable=not progress):
        layer = adapter.layers[site.name.replace(".", "_")]
        with torch.no_grad():
            dW = layer.delta_weight(coeff).detach().float()
        if dW.shape[0] != d_model:
            continue  # writes to d_mlp / head space, not the residual stream the neurons write to
        k = min(top_k, min(dW.shape))
        directions = top_directions(dW, k)
        kept.append(site.name)
        rows.append([
            overlap_with_baseline(pool[torch.as_tensor(classes == kind)], pool, directions, draws=draws, seed=seed)
            for kind in OVERLAP_KINDS
        ])
    if not kept:
        raise ValueError(
            f"no adapted site writes to the residual stream (d_out = d_model = {d_model}); "
            f"sites: {[s.name for s in sites]}; adapt attn.o or mlp.out"
        )
    keys = list(rows[0][0])
    ds = xr.Dataset(
        {key: (("site", "kind"), np.array([[r[key] for r in row] for row in rows], dtype=np.float64)) for key in keys},
        coords={"site": kept, "kind": list(OVERLAP_KINDS), "site_layer": ("site", [Site.parse(s).layer for s in kept])},
    )
    ds["energy"].attrs["description"] = "mean fraction of a neuron's output energy inside span(top-k left singular vectors of ΔW)"
    ds["max_cos"].attrs["description"] = "mean over neurons of the max |cos| with the top-k ΔW directions"
    ds.attrs.update({"top_k": top_k, "draws": draws, "coeff": coeff, "expected_random_energy": top_k / d_model})
    return ds


def figure_overlap(ds: xr.Dataset):
    """Energy of suppression / prediction neurons in span(ΔW top-k) vs random neurons (mean ± std)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    sites = [str(s) for s in ds["site"].values]
    for kind in ds["kind"].values:
        sel = ds.sel(kind=kind)
        fig.add_trace(go.Bar(x=sites, y=sel["energy"].values, name=f"{kind} neurons"))
        fig.add_trace(go.Bar(
            x=sites, y=sel["energy_random_mean"].values, name=f"random neurons (same count as {kind})",
            error_y={"type": "data", "array": sel["energy_random_std"].values},
        ))
    fig.update_layout(
        barmode="group",
        title=f"Neuron output energy in span of ΔW({ds.attrs.get('coeff', 1.0)}) top-{ds.attrs.get('top_k', '')} directions: "
        f"{ds.attrs.get('model_spec', '')} (random direction: {ds.attrs.get('expected_random_energy', float('nan')):.3f})",
        xaxis_title="adapted site",
        yaxis_title="mean energy fraction in span",
        legend_title="neurons",
    )
    return fig


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = analysis_parser("suppression", __doc__, writes="neurons.nc, overlap.nc", figures=DEFAULT_FIGURES,
                        quick="few prompts, 5 baseline draws, at most 6 evenly spaced layers", seed="seed of the prompts and draws",
                        layers="layer indices / depth fractions / bands (default: all layers)")
    p.add_argument("--adapter", default=None, help="saved adapter folder (interp.adapters.io); without it only part 1 runs")
    p.add_argument("--n-prompts", type=int, default=64, help="contrastive pairs for the mean activations (sign correction)")
    p.add_argument("--sign-correct", choices=("auto", "yes", "no"), default="auto", help="auto: only for gated MLPs")
    p.add_argument("--kurtosis-threshold", type=float, default=NeuronConfig().kurtosis_threshold)
    p.add_argument("--skew-threshold", type=float, default=NeuronConfig().skew_threshold)
    p.add_argument("--top-k", type=int, default=8, help="ΔW(1) directions spanning the adapter's write space")
    p.add_argument("--draws", type=int, default=20, help="random-neuron baseline draws")
    args = p.parse_args(argv)
    args.error = p.error
    if args.n_prompts < 1 or args.top_k < 1 or args.draws < 1:
        p.error("--n-prompts, --top-k and --draws must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the analysis; returns the paths written (``neurons``, ``figure_layers`` and, with an adapter, ``overlap``, ``figure_overlap``)."""
    args = parse_args(argv)

    progress = not args.no_progress
    model = model_from_args(args)
    n_layers = layer_count(model)
    layers = analysis_layers(args.layers, n_layers, quick=args.quick)
    n_prompts, draws = args.n_prompts, args.draws
    if args.quick:
        n_prompts, draws = min(n_prompts, 8), min(draws, 5)
    config = NeuronConfig(kurtosis_threshold=args.kurtosis_threshold, skew_threshold=args.skew_threshold)
    sign_correct = {"auto": None, "yes": True, "no": False}[args.sign_correct]
    out, figures = Path(args.out or result_folder("suppression", args.model, args.quick)), Path(args.figures)
    with locked(out, args.error):
        written: dict[str, Path] = {}

        ds = neuron_dataset(model, layers, config=config, n_prompts=n_prompts, sign_correct=sign_correct,
                            seed=args.seed, progress=progress)
        written["neurons"] = write_netcdf(ds, out / "neurons.nc")
        stored = load_dataset(written["neurons"])
        if args.figures:  # '' writes no figure
            written["figure_layers"] = write_html(figure_by_layer(stored), figures / "suppression_by_layer.html")
        shares = class_shares(stored)
        print(f"neurons: {int(stored.sizes['layer'])} layers x {int(stored.sizes['neuron'])}; "
              f"suppression {float(shares['suppression'].mean()):.4f}, prediction {float(shares['prediction'].mean()):.4f} "
              f"of all neurons -> {written['neurons']}")

        if args.adapter:

            adapter = load_adapter(model, args.adapter)
            ov = overlap_dataset(model, adapter, stored, top_k=args.top_k, draws=draws, seed=args.seed,
                                 config=config, progress=progress)
            ov.attrs.update({k: v for k, v in stored.attrs.items() if k not in ("sites", "config")})
            ov.attrs.update({
                "adapter_path": str(args.adapter),
                "adapter_sites": ",".join(s.name for s in adapter.sites),
                "adapter_config": _json(adapter.config()),
                "neuron_config": stored.attrs.get("config", ""),
            })
            written["overlap"] = write_netcdf(ov, out / "overlap.nc")
            if args.figures:
                written["figure_overlap"] = write_html(figure_overlap(load_dataset(written["overlap"])),
                                                       figures / "suppression_overlap.html")
            for site in ov["site"].values:
                for kind in OVERLAP_KINDS:
                    r = ov.sel(site=site, kind=kind)
                    print(f"{site} {kind}: n={int(r['n_neurons'])} energy {float(r['energy']):.4f} vs random "
                          f"{float(r['energy_random_mean']):.4f} ± {float(r['energy_random_std']):.4f}")
        return written


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
