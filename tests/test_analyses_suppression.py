"""analyses.suppression: end to end on tiny-random (dataset dims/attrs, figure), overlap on planted neurons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analyses import suppression
from interp.provenance import read_json_attr
from interp.sites import Site


def test_default_out_is_per_model_and_run_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder is relative to where the command runs
    written = suppression.main(["--model", "tiny-random", "--quick", "--figures", "figs", "--no-progress", "--n-prompts", "4"])
    assert written["neurons"].resolve() == tmp_path / "results" / "suppression" / "tiny-random-quick" / "neurons.nc"


def test_main_end_to_end_on_tiny(tmp_path):
    out, figs = tmp_path / "res", tmp_path / "figs"
    written = suppression.main(["--model", "tiny-random", "--quick", "--out", str(out), "--figures", str(figs),
                                "--no-progress", "--n-prompts", "4"])
    assert set(written) == {"neurons", "figure_layers"}
    ds = suppression.load_dataset(out / "neurons.nc")
    assert dict(ds.sizes) == {"layer": 4, "neuron": 128}
    assert {"skew", "kurtosis", "class", "sign", "out_norm", "mean_activation"} <= set(ds.data_vars)
    assert ds["layer"].values.tolist() == [0, 1, 2, 3]
    assert ds["depth"].values.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert set(np.unique(ds["class"].values)) <= {"neither", "suppression", "prediction"}
    # gated (SwiGLU) model: signs corrected from measured mean activations
    assert ds.attrs["gated_mlp"] == 1 and ds.attrs["sign_corrected"] == 1
    assert np.array_equal(ds["sign"].values, np.where(ds["mean_activation"].values < 0, -1.0, 1.0))
    # provenance
    assert ds.attrs["model_spec"] == "tiny-random" and len(ds.attrs["weight_hash"]) == 16
    assert read_json_attr(ds.attrs, "sites") == [f"blocks.{i}.mlp.out" for i in range(4)]
    assert read_json_attr(ds.attrs, "config")["kurtosis_threshold"] == 10.0
    # kurtosis, not excess: random init gives ~3
    assert 2.0 < float(ds["kurtosis"].mean()) < 4.0
    html = (figs / "suppression_by_layer.html").read_text()
    assert "share of MLP neurons" in html and "layer" in html and "plotly" in html.lower()
    assert not list(out.glob("*.tmp")), "no temporary files left behind"


def test_class_shares_and_figure_from_data():
    ds = _neuron_ds(np.array([["suppression", "neither"], ["prediction", "prediction"]]))
    shares = suppression.class_shares(ds)
    assert shares["suppression"].values.tolist() == [0.5, 0.0]
    assert shares["prediction"].values.tolist() == [0.0, 1.0]
    fig = suppression.figure_by_layer(ds)
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "share of MLP neurons"
    assert [t.name for t in fig.data] == ["suppression", "prediction"]


def _neuron_ds(classes: np.ndarray):
    import xarray as xr

    n_layers, n = classes.shape
    return xr.Dataset(
        {"class": (("layer", "neuron"), classes), "sign": (("layer", "neuron"), np.ones(classes.shape, np.float32))},
        coords={"layer": np.arange(n_layers), "neuron": np.arange(n)},
    )


class _FakeLayer(nn.Module):
    def __init__(self, dW: torch.Tensor):
        super().__init__()
        self.dW = dW

    def delta_weight(self, coeff: float) -> torch.Tensor:
        return coeff * self.dW


class _FakeAdapter:
    """Just the part of the AdapterSet API the overlap reads: sites, layers[...].delta_weight, config()."""

    def __init__(self, deltas: dict[Site, torch.Tensor]):
        self.sites = list(deltas)
        self.layers = nn.ModuleDict({s.name.replace(".", "_"): _FakeLayer(dW) for s, dW in deltas.items()})

    def config(self) -> dict:
        return {"class": "Fake", "sites": [s.name for s in self.sites]}


def test_overlap_on_planted_suppression_neurons(tiny):
    """ΔW written from three 'suppression' neurons' output directions: their energy is 1, random ~ k/d."""
    d_model, d_mlp = int(tiny.cfg.d_model), int(tiny.cfg.d_mlp)
    classes = np.full((4, d_mlp), "neither", dtype=object)
    planted = [(1, 3), (2, 10), (3, 40)]
    for layer, i in planted:
        classes[layer, i] = "suppression"
    ds = _neuron_ds(classes.astype(str))
    W_dirs = torch.stack([tiny.blocks[layer].mlp.out.original_component.weight[:, i].detach() for layer, i in planted], 1)
    g = torch.Generator().manual_seed(0)
    dW = W_dirs @ torch.randn(3, d_mlp, generator=g)  # [d_model, d_mlp], rank 3, columns in the neurons' span
    adapter = _FakeAdapter({
        Site(2, "mlp.out"): dW,
        Site(2, "mlp.gate"): torch.randn(d_mlp, d_model, generator=g),  # writes d_mlp: skipped
    })
    ov = suppression.overlap_dataset(tiny, adapter, ds, top_k=3, draws=10, seed=0, progress=False)
    assert ov["site"].values.tolist() == ["blocks.2.mlp.out"]
    assert ov["kind"].values.tolist() == ["suppression", "prediction"]
    sup = ov.sel(site="blocks.2.mlp.out", kind="suppression")
    assert float(sup["n_neurons"]) == 3
    assert float(sup["energy"]) == pytest.approx(1.0, abs=1e-5)
    assert float(sup["max_cos"]) > float(sup["max_cos_random_mean"])
    assert abs(float(sup["energy_random_mean"]) - 3 / d_model) < 0.05
    assert np.isnan(float(ov.sel(site="blocks.2.mlp.out", kind="prediction")["energy"]))  # no prediction neurons
    fig = suppression.figure_overlap(ov)
    assert fig.layout.yaxis.title.text == "mean energy fraction in span"
    with pytest.raises(ValueError, match="residual stream"):
        suppression.overlap_dataset(tiny, _FakeAdapter({Site(2, "mlp.gate"): torch.randn(d_mlp, d_model)}), ds,
                                    progress=False)


def test_main_with_saved_adapter(tmp_path, tiny):
    """With a real saved adapter (when interp.adapters has landed): the overlap part runs and is stored."""
    innerpissa = pytest.importorskip("interp.adapters.innerpissa")
    io = pytest.importorskip("interp.adapters.io")
    adapter = innerpissa.attach(tiny, [Site(2, "mlp.out")], innerpissa.InnerPiSSAConfig(rank=8, init_std=0.1))
    try:
        path = io.save_adapter(adapter, tmp_path / "adapter")
    finally:
        adapter.detach()
    out = tmp_path / "res"
    written = suppression.main(["--model", "tiny-random", "--quick", "--out", str(out), "--figures", str(tmp_path / "f"),
                                "--adapter", str(path), "--top-k", "4", "--no-progress", "--n-prompts", "4"])
    ov = suppression.load_dataset(written["overlap"])
    assert ov["site"].values.tolist() == ["blocks.2.mlp.out"] and dict(ov.sizes) == {"site": 1, "kind": 2}
    assert ov.attrs["model_spec"] == "tiny-random" and ov.attrs["top_k"] == 4
    assert (tmp_path / "f" / "suppression_overlap.html").is_file()


def test_cli_errors():
    with pytest.raises(SystemExit):
        suppression.parse_args(["--draws", "0"])
