"""analyses.rotation_norms: known angles and norms from planted parameters; end to end on tiny-random."""

import json
import math

import numpy as np
import pytest
import torch

from analyses import rotation_norms
from analyses._io import load_dataset
from interp.adapters.innerpissa import InnerPiSSAConfig, attach
from interp.adapters.io import save_adapter
from interp.sites import Site


def test_planted_rotation_gives_known_angle_and_norm():
    w = 0.8
    theta = torch.zeros(4, 4)
    theta[1, 0] = w  # skew(theta) = [[0, -w], [w, 0]] in the first 2x2 block
    norm, angles = rotation_norms.rotation_summary(theta, InnerPiSSAConfig(rank=4, max_angle=None))
    phi = 2 * math.atan(w / 2)
    assert math.isclose(angles[0], phi, rel_tol=1e-6) and math.isclose(angles[1], phi, rel_tol=1e-6)
    assert np.allclose(angles[2:], 0, atol=1e-12)
    # R - I has the 2x2 block [[cos-1, -sin], [sin, cos-1]]: Frobenius norm 2*sqrt(2 - 2cos)
    assert math.isclose(norm, math.sqrt(2 * ((math.cos(phi) - 1) ** 2 + math.sin(phi) ** 2)), rel_tol=1e-6)
    # with the angle clamp the same generator turns by m·tanh(w/m) in Cayley units, m = 2 tan(0.15)
    _, bounded = rotation_norms.rotation_summary(theta, InnerPiSSAConfig(rank=4, max_angle=0.3))
    m = 2 * math.tan(0.15)
    assert math.isclose(bounded[0], 2 * math.atan(m * math.tanh(w / m) / 2), rel_tol=1e-6) and bounded[0] < 0.3


def test_scale_factors():
    lam, s = torch.tensor([0.5, -0.2]), torch.tensor([2.0, 4.0])
    config = lambda scaling: InnerPiSSAConfig(rank=2, scaling=scaling)  # noqa: E731
    assert np.allclose(rotation_norms.scale_factors(lam, s, config("mult")), np.exp([0.5, -0.2]))
    assert np.allclose(rotation_norms.scale_factors(lam, s, config("add")), (s + torch.tanh(lam)).numpy() / s.numpy())
    assert np.allclose(rotation_norms.scale_factors(lam, s, config("none")), 1.0)


def test_summary_matches_the_live_adapter(tiny, tmp_path):
    """What is read back from the saved tensors is what the attached layer computes at c = +1."""
    site = Site(1, "mlp.out")
    adapter = attach(tiny, [site], InnerPiSSAConfig(rank=8, rotate_u=True, scaling="add", max_angle=0.3, init_std=0.3))
    try:
        save_adapter(adapter, tmp_path / "run" / "adapter")
        layer = adapter.layers[site.name.replace(".", "_")]
        with torch.no_grad():
            r_v, r_u, g = layer.rotation_v(1.0).double(), layer.rotation_u(1.0).double(), (layer.scale(1.0) / layer.S).double()
    finally:
        adapter.detach()
    summary = rotation_norms.run_summary(tmp_path / "run")["sites"][0]
    eye = torch.eye(8, dtype=torch.float64)
    assert math.isclose(summary["rot_v_norm"], float(torch.linalg.matrix_norm(r_v - eye)), rel_tol=1e-4)
    assert math.isclose(summary["rot_u_norm"], float(torch.linalg.matrix_norm(r_u - eye)), rel_tol=1e-4)
    assert summary["rot_v_norm"] > 0.1  # a real rotation, not the identity
    assert np.allclose(summary["scale"], g.numpy(), atol=1e-5)
    want = np.sort(np.abs(torch.linalg.eigvals(r_v).angle().numpy()))[::-1]
    assert np.allclose(summary["angles_v"], want, atol=1e-5)


def test_dataset_from_saved_runs(tiny, tmp_path):
    for depth, site in ((0.3, Site(1, "mlp.out")), (0.6, Site(2, "mlp.out"))):
        folder = tmp_path / "runs" / f"depth_{depth:.2f}"
        adapter = attach(tiny, [site], InnerPiSSAConfig(rank=4, scaling="mult", max_angle=None))
        with torch.no_grad():
            adapter.layers[site.name.replace(".", "_")].theta_v.zero_()
            adapter.layers[site.name.replace(".", "_")].theta_v[1, 0] = depth  # planted generator
        save_adapter(adapter, folder / "adapter", extra={"training": {"metrics": {"gap@+1": 2.0, "gap@-1": 1.0},
                                                                      "config": {"concept": "sentiment"}}})
        diag = [{"site": site.name, "rot_v_norm": 0.1 * depth}]
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "diagnostics": diag}) + "\n")
        (folder / "result.json").write_text(json.dumps({"weight_hash": "h0", "rows": [{"budget": "n/a", "delta_target": depth / 10}]}))
        adapter.detach()
    written = rotation_norms.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                                   "--figures", str(tmp_path / "fig"), "--no-progress"])
    ds = load_dataset(written["dataset"])
    assert set(ds.dims) == {"run", "site", "step", "angle_rank", "sv"} and list(ds["depth"].values) == [0.3, 0.6]
    assert np.isclose(float(ds["angles_v"].isel(run=1, site=0, angle_rank=0)), 2 * math.atan(0.3))
    assert np.allclose(ds["rot_v_norm_by_step"].values.ravel(), [0.03, 0.06])
    assert np.allclose(ds["val_separation"].values, 1.0) and np.allclose(ds["delta_target"].values, [0.03, 0.06])
    assert ds.attrs["git_commit"] is not None and ds["angles_v"].attrs["units"] == "radians"
    # the effect is labelled by the runs' own concept's measure (not DailyDilemmas truthfulness)
    assert ds.attrs["target"] == "sentiment margin" and ds["delta_target"].attrs["units"] == "nats/token"
    assert written["figure"].stat().st_size > 1000


def test_standalone_training_on_tiny(tmp_path):
    """--train: 2 depths x 3 steps on tiny-random, end to end, every variable documented."""
    written = rotation_norms.main(["--train", "--model", "tiny-random", "--layers", "0.3,0.6", "--steps", "3",
                                   "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "fig"), "--no-progress"])
    ds = load_dataset(written["dataset"])
    assert set(ds.dims) == {"run", "site", "step", "angle_rank", "sv"}
    assert list(ds["run"].values) == ["depth_0.30", "depth_0.60"] and np.allclose(ds["depth"].values, [0.3, 0.6])
    assert list(ds["site_name"].values[:, 0]) == ["blocks.1.mlp.out", "blocks.2.mlp.out"]
    assert (ds["rot_v_norm"].values > 0).all() and (ds["rot_u_norm"].values == 0).all()  # defaults rotate V only
    assert ds.sizes["angle_rank"] == ds.sizes["sv"] == 64 and ds.sizes["step"] >= 2
    # the last logged training diagnostic is the saved adapter
    last = ds["rot_v_norm_by_step"].isel(step=-1).values
    assert np.allclose(last, ds["rot_v_norm"].values, rtol=1e-4)
    assert np.isnan(ds["delta_target"].values).all() and np.isfinite(ds["val_separation"].values).all()
    for name, var in ds.data_vars.items():
        assert var.attrs.get("description"), name
    assert ds["angles_v"].attrs["units"] == "radians" and ds["scale"].attrs["units"] == "ratio"
    assert ds.attrs["model_spec"] == "tiny-random" and ds.attrs["git_commit"] and ds.attrs["weight_hash"]
    assert "blocks.1.mlp.out" in ds.attrs["sites"]
    assert written["figure"].is_file() and written["figure_steps"].is_file()


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        rotation_norms.main(["--runs", str(tmp_path / "missing"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        rotation_norms.main(["--train", "--layers", "0.3,1.5", "--model", "tiny-random", "--out", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        rotation_norms.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path)])


# --------------------------------------------------------------------------- analyses._io (shared by every analysis)


def test_io_round_trip_is_atomic_and_replaceable(tmp_path):
    import os

    import plotly.graph_objects as go
    import xarray as xr

    from analyses._io import write_html, write_netcdf

    ds = xr.Dataset({"x": ("a", np.arange(3.0))}, attrs={"note": "v1"})
    path = write_netcdf(ds, tmp_path / "sub" / "r.nc")
    loaded = load_dataset(path)
    assert loaded.attrs["note"] == "v1" and np.array_equal(loaded["x"].values, [0, 1, 2])
    write_netcdf(ds.assign_attrs(note="v2"), path)  # the loaded copy holds no handle: replacing works
    assert load_dataset(path).attrs["note"] == "v2"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    with pytest.raises(ValueError):
        write_netcdf(xr.Dataset({"bad": ("a", np.array([object()]))}), tmp_path / "sub" / "bad.nc")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["r.nc"]  # no temp file left behind
    html = write_html(go.Figure(go.Scatter(x=[0, 1], y=[1, 2])), tmp_path / "f.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "plotly.js v" in html and len(html) > 1_000_000  # plotly.js inlined


def test_io_analysis_layers():
    from analyses._io import analysis_layers

    assert analysis_layers(None, 30) == list(range(30))
    assert analysis_layers(None, 30, quick=True) == [0, 6, 12, 17, 23, 29]  # evenly spaced, ends kept
    assert analysis_layers("0,-1", 30, quick=True) == [0, 29]
    assert analysis_layers("0.5", 30) == [14] and analysis_layers(None, 4, quick=True) == [0, 1, 2, 3]


def test_runs_of_other_weights_are_not_pooled(tiny, tmp_path, capsys):
    for depth, made in ((0.3, "h0"), (0.6, "h1")):  # as if one depth were copied from a sweep on another model
        folder = tmp_path / "runs" / f"depth_{depth:.2f}"
        adapter = attach(tiny, [Site(1, "mlp.out")], InnerPiSSAConfig(rank=4))
        save_adapter(adapter, folder / "adapter")
        adapter.detach()
        (folder / "result.json").write_text(json.dumps({"weight_hash": made, "rows": [{"budget": "n/a", "delta_target": 0.1}]}))
    with pytest.raises(SystemExit):
        rotation_norms.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--figures", "", "--no-progress"])
    assert "different models or weights (h0, h1" in capsys.readouterr().err
    assert not (tmp_path / "out" / "rotation_norms.nc").exists()
