"""analyses.rotation_norms: known angles and norms from planted parameters; end to end on tiny-random."""

import json
import math

import numpy as np
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
    norm, angles = rotation_norms.rotation_summary(theta, None, 4)
    phi = 2 * math.atan(w / 2)
    assert math.isclose(angles[0], phi, rel_tol=1e-6) and math.isclose(angles[1], phi, rel_tol=1e-6)
    assert np.allclose(angles[2:], 0, atol=1e-12)
    # R - I has the 2x2 block [[cos-1, -sin], [sin, cos-1]]: Frobenius norm 2*sqrt(2 - 2cos)
    assert math.isclose(norm, math.sqrt(2 * ((math.cos(phi) - 1) ** 2 + math.sin(phi) ** 2)), rel_tol=1e-6)


def test_scale_factors():
    lam = torch.tensor([0.5, -0.2])
    assert np.allclose(rotation_norms.scale_factors(lam, None, "mult", 2), np.exp([0.5, -0.2]))
    s = torch.tensor([2.0, 4.0])
    assert np.allclose(rotation_norms.scale_factors(lam, s, "add", 2), (s + torch.tanh(lam)).numpy() / s.numpy())
    assert np.allclose(rotation_norms.scale_factors(lam, s, "none", 2), 1.0)


def test_dataset_from_saved_runs(tiny, tmp_path):
    for depth, site in ((0.3, Site(1, "mlp.out")), (0.6, Site(2, "mlp.out"))):
        folder = tmp_path / "runs" / f"depth_{depth:.2f}"
        adapter = attach(tiny, [site], InnerPiSSAConfig(rank=4, scaling="mult", max_angle=None))
        with torch.no_grad():
            adapter.layers[site.name.replace(".", "_")].theta_v.zero_()
            adapter.layers[site.name.replace(".", "_")].theta_v[1, 0] = depth  # planted generator
        save_adapter(adapter, folder / "adapter", extra={"training": {"metrics": {"gap@+1": 2.0, "gap@-1": 1.0}}})
        diag = [{"site": site.name, "rot_v_norm": 0.1 * depth}]
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "diagnostics": diag}) + "\n")
        (folder / "eval.json").write_text(json.dumps({"depth": depth, "delta_target": depth / 10}))
        adapter.detach()
    written = rotation_norms.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                                   "--figures", str(tmp_path / "fig"), "--no-progress"])
    ds = load_dataset(written["dataset"])
    assert set(ds.dims) == {"run", "site", "step", "angle_rank", "sv"} and list(ds["depth"].values) == [0.3, 0.6]
    assert np.isclose(float(ds["angles_v"].isel(run=1, site=0, angle_rank=0)), 2 * math.atan(0.3))
    assert np.allclose(ds["rot_v_norm_by_step"].values.ravel(), [0.03, 0.06])
    assert np.allclose(ds["val_separation"].values, 1.0) and np.allclose(ds["delta_target"].values, [0.03, 0.06])
    assert ds.attrs["git_commit"] is not None and ds["angles_v"].attrs["units"] == "radians"
    assert written["figure"].stat().st_size > 1000


def test_standalone_training_on_tiny(tmp_path):
    written = rotation_norms.main(["--train", "--model", "tiny-random", "--depths", "0.5", "--steps", "2",
                                   "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "fig"), "--no-progress"])
    ds = load_dataset(written["dataset"])
    assert ds.sizes["run"] == 1 and float(ds["rot_v_norm"].values[0, 0]) > 0
