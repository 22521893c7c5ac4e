"""dHS vs dHS@U: where do the reference model's contrastive hidden-state differences live?

Research question: the ReprPO loss can read the preference signal in the raw residual
space (dHS) or in the coordinates of the site weight's top-r left singular vectors (dHS@U).
For each layer L this analysis takes the frozen base model's last-token hidden states at
``blocks.L.hook_resid_post`` for chosen and rejected prompts of contrastive pairs and compares
the spaces (:func:`interp.geometry.space_metrics`):

* energy fraction of the differences inside ``span(U_r)`` (U of ``blocks.L.mlp.out``'s raw
  weight) vs a random r-dim subspace (expected ``r / d``);
* share of the first principal component; mean cosine of per-pair differences to their mean;
* cross-validated linear-probe AUROC of chosen vs rejected in each space.

    python -m analyses.space_compare --model smollm2-135m --rank 64   # -> results/space_compare/smollm2-135m

The Dataset (dims ``layer``, ``space``; provenance attrs) goes to ``<out>/space_compare.nc``; the
figure ``<figures>/space_compare.html`` is drawn from the stored file only (:func:`figure`).
With ``--compare-methods`` it goes on to the downstream question: InnerPiSSA adapters trained with the
loss in each space, calibrated and scored on DailyDilemmas by :mod:`analyses.compare_methods`
(methods ``innerpissa`` and ``loss_dHS@U``; results under ``<out>/trained``).
``--backend nnsight`` reads the hidden states through an nnsight trace instead of bridge hooks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from analyses._io import locked, analysis_parser, analysis_layers, load_dataset, result_folder, write_html, write_netcdf
from interp.geometry import METRICS, SPACES, GeometryConfig, left_singular_basis, space_metrics
from interp.backends import backend_of
from interp.baselines import last_token_hidden
from interp.sites import Site, parse_layers
from interp.backends import linear_of
from analyses import compare_methods
from interp.backends import RemoteUnavailable
from interp.cli import model_from_args
from interp.data import make_pairs, tokenize_pairs
from interp.data import pairs_hash
from interp.provenance import provenance

DEFAULT_FIGURES = "figures"
FIGURE_PANELS: tuple[tuple[str, str], ...] = (
    ("energy_fraction", "energy fraction of dHS in the space"),
    ("pc1_explained", "share of PC1"),
    ("mean_cos_to_mean", "mean cos(pair diff, mean diff)"),
    ("probe_auroc", "probe AUROC (CV)"),
)


def site_weight(model, layer: int) -> Tensor:
    """The raw ``mlp.out`` weight of ``layer`` (for ``U``), refused where the weights are not here (remote nnsight)."""
    w = linear_of(model, Site(layer, "mlp.out")).weight
    if w.is_meta:

        raise RemoteUnavailable("space_compare needs the mlp.out weights (for U) here; this model holds none "
                                "(an nnsight model built with remote=True): use a local one")
    return w


def compare_dataset(
    model,
    layers: Sequence[int] | None = None,
    *,
    rank: int = 64,
    n_pairs: int = 128,
    concept: str = "honesty",
    config: GeometryConfig = GeometryConfig(),
    batch_size: int = 16,
    progress: bool = True,
) -> xr.Dataset:
    """The metrics of :func:`interp.geometry.space_metrics` per layer and space, with provenance attrs."""

    backend = backend_of(model)
    n_layers, d_model = backend.n_layers, backend.d_model
    layers = list(range(n_layers)) if layers is None else parse_layers(list(layers), n_layers)
    if not 1 <= rank < d_model:
        raise ValueError(f"rank must lie in 1..{d_model - 1} (d_model = {d_model}; r = d makes every space the same), got {rank}")
    pairs = make_pairs(concept, n_pairs=n_pairs, seed=config.seed)
    if len(pairs) < config.folds:
        raise ValueError(f"only {len(pairs)} pairs for concept {concept!r}: need at least folds={config.folds}")
    batch = tokenize_pairs(backend.tokenizer, pairs, padding_side="left")
    n = batch.n_pairs
    states = last_token_hidden(backend, batch.tokens, batch.attention_mask, layers, batch_size=batch_size, progress=progress)
    values = np.full((len(layers), len(SPACES), len(METRICS)), np.nan)
    for i, layer in enumerate(tqdm(layers, desc="space metrics", disable=not progress)):
        U_r = left_singular_basis(site_weight(backend, layer), rank)
        metrics = space_metrics(states[layer][:n], states[layer][n:], U_r, config)
        for j, space in enumerate(SPACES):
            values[i, j] = [metrics[space][m] for m in METRICS]
    ds = xr.Dataset(
        {m: (("layer", "space"), values[:, :, k]) for k, m in enumerate(METRICS)},
        coords={"layer": np.asarray(layers), "space": list(SPACES), "depth": ("layer", np.asarray(layers) / max(n_layers - 1, 1))},
    )
    ds["energy_fraction"].attrs["description"] = "share of sum_i |h_cho_i - h_rej_i|^2 inside the space (random: mean over draws)"
    ds["probe_auroc"].attrs["description"] = "logistic-regression ROC AUC, chosen vs rejected, grouped stratified k-fold"

    ds.attrs.update(provenance(
        backend_of(model),
        sites=[Site(layer, "mlp.out") for layer in layers],
        config={**asdict(config), "rank": rank, "n_pairs": n, "concept": concept},
        seed=config.seed,
        analysis="space_compare",
        rank=rank,
        d_model=d_model,
        expected_random_energy=rank / d_model,
        n_pairs=n,
        pairs_hash=pairs_hash(pairs),
        hook="blocks.L.hook_resid_post, last real token",
        basis="top-r left singular vectors of the raw HF weight of blocks.L.mlp.out (float64 SVD)",
    ))
    return ds


def figure(ds: xr.Dataset):
    """Four panels by layer (energy, PC1, cosine to mean, probe AUROC), one line per space; from stored data."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in FIGURE_PANELS])
    colours = dict(zip(SPACES, ("#1f77b4", "#d62728", "#7f7f7f")))
    layers = ds["layer"].values
    for p, (var, title) in enumerate(FIGURE_PANELS):
        row, col = p // 2 + 1, p % 2 + 1
        for space in ds["space"].values:
            fig.add_trace(
                go.Scatter(x=layers, y=ds[var].sel(space=space).values, mode="lines+markers", name=str(space),
                           legendgroup=str(space), showlegend=p == 0, line={"color": colours.get(str(space))}),
                row=row, col=col,
            )
        fig.update_xaxes(title_text="layer", row=row, col=col)
        fig.update_yaxes(title_text=title, row=row, col=col)
    expected = ds.attrs.get("expected_random_energy")
    if expected is not None:
        fig.add_hline(y=float(expected), line_dash="dot", annotation_text="r/d", row=1, col=1)
    fig.update_layout(
        title=f"dHS vs dHS@U: {ds.attrs.get('model_spec', '')}, rank {ds.attrs.get('rank', '')}, "
        f"{ds.attrs.get('n_pairs', '')} pairs",
        legend_title="space",
        height=800,
    )
    return fig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = GeometryConfig()
    p = analysis_parser("space_compare", __doc__, writes="space_compare.nc", figures=DEFAULT_FIGURES,
                        quick="32 pairs, 5 draws, 3 folds, at most 6 evenly spaced layers", seed="seed of the pairs, draws and folds",
                        layers="layer indices / depth fractions / bands (default: all layers)", backends=True)
    p.add_argument("--rank", type=int, default=64, help="r: top-r left singular vectors of mlp.out (clipped to d_model // 2)")
    p.add_argument("--n-pairs", type=int, default=128)
    p.add_argument("--concept", default="honesty", help="shipped concept name or path to a concept .json")
    p.add_argument("--draws", type=int, default=d.draws, help="random subspaces for the energy baseline")
    p.add_argument("--folds", type=int, default=d.folds, help="probe cross-validation folds")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--compare-methods", action="store_true",
                   help="then the downstream question: adapters trained with the loss in each space, scored on "
                        "DailyDilemmas (analyses.compare_methods --methods innerpissa,loss_dHS@U)")
    args = p.parse_args(argv)
    args.error = p.error
    if args.rank < 1 or args.n_pairs < 2 or args.draws < 1 or args.folds < 2 or args.batch_size < 1:
        p.error("--rank, --draws, --batch-size must be >= 1; --n-pairs and --folds >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the analysis; returns the paths written (``dataset``, ``figure``)."""
    args = parse_args(argv)
    out = Path(args.out or result_folder("space_compare", args.model, args.quick))
    with locked(out, args.error):

        try:
            model = model_from_args(args)
        except RemoteUnavailable as err:
            args.error(f"cannot run remotely: {err}")
        n_layers, d_model = backend_of(model).n_layers, backend_of(model).d_model
        layers = analysis_layers(args.layers, n_layers, quick=args.quick)
        n_pairs, draws, folds = args.n_pairs, args.draws, args.folds
        if args.quick:
            n_pairs, draws, folds = min(n_pairs, 32), min(draws, 5), min(folds, 3)
        rank = min(args.rank, d_model // 2)
        if rank != args.rank:
            print(f"rank {args.rank} clipped to {rank} (d_model = {d_model}): a subspace near the whole space compares nothing")
        ds = compare_dataset(model, layers, rank=rank, n_pairs=n_pairs, concept=args.concept,
                             config=GeometryConfig(draws=draws, folds=folds, seed=args.seed),
                             batch_size=args.batch_size, progress=not args.no_progress)
        written = {"dataset": write_netcdf(ds, out / "space_compare.nc")}
        stored = load_dataset(written["dataset"])
        if args.figures:  # '' writes no figure
            written["figure"] = write_html(figure(stored), Path(args.figures) / "space_compare.html")
        e = stored["energy_fraction"]
        print(f"energy in span(U_{rank}): mean over layers {float(e.sel(space='dHS@U').mean()):.3f} vs random "
              f"{float(e.sel(space='random').mean()):.3f} (r/d = {rank / d_model:.3f}); probe AUROC dHS "
              f"{float(stored['probe_auroc'].sel(space='dHS').mean()):.3f}, dHS@U {float(stored['probe_auroc'].sel(space='dHS@U').mean()):.3f}"
              f" -> {written['dataset']}")
        if args.compare_methods:
            # Training needs gradients through a bridge; the comparison keeps its own results folder.

            written.update({f"train_{k}": v for k, v in compare_methods.main(
                ["--model", args.model, "--methods", "innerpissa,loss_dHS@U", "--figures", args.figures,
                 "--out", str(out / "trained"), *(["--quick"] if args.quick else []),
                 *(["--no-progress"] if args.no_progress else [])]).items()})
        return written


if __name__ == "__main__":
    main(sys.argv[1:])
