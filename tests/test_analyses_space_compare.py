"""analyses.space_compare end to end on tiny-random: dataset dims, attrs, values in range, figure from stored data."""

from __future__ import annotations

import numpy as np
import pytest

from analyses import space_compare
from interp.geometry import METRICS, SPACES
from interp.provenance import read_json_attr


def test_main_end_to_end_on_tiny(tmp_path):
    out, figs = tmp_path / "res", tmp_path / "figs"
    written = space_compare.main(["--model", "tiny-random", "--quick", "--rank", "8", "--n-pairs", "12",
                                  "--out", str(out), "--figures", str(figs), "--no-progress"])
    ds = space_compare.load_dataset(written["dataset"])
    assert dict(ds.sizes) == {"layer": 4, "space": 3}
    assert ds["space"].values.tolist() == list(SPACES)
    assert set(METRICS) <= set(ds.data_vars)
    assert ds.attrs["model_spec"] == "tiny-random" and ds.attrs["rank"] == 8 and ds.attrs["n_pairs"] == 12
    assert ds.attrs["expected_random_energy"] == pytest.approx(8 / 64)
    assert read_json_attr(ds.attrs, "config")["folds"] == 3  # --quick
    assert read_json_attr(ds.attrs, "sites") == [f"blocks.{i}.mlp.out" for i in range(4)]
    e = ds["energy_fraction"]
    assert np.allclose(e.sel(space="dHS"), 1.0)
    assert ((e.sel(space="dHS@U") > 0) & (e.sel(space="dHS@U") < 1)).all()
    assert np.allclose(e.sel(space="random"), 8 / 64, atol=0.1)
    auc = ds["probe_auroc"].values
    assert np.all((auc >= 0) & (auc <= 1))
    assert np.all((ds["pc1_explained"].values > 0) & (ds["pc1_explained"].values <= 1 + 1e-9))
    html = (figs / "space_compare.html").read_text()
    assert "probe AUROC (CV)" in html and "share of PC1" in html
    fig = space_compare.figure(ds)
    assert fig.layout.xaxis.title.text == "layer" and len(fig.data) == 4 * 3


def test_nnsight_backend_gives_the_bridge_numbers(tiny):
    from interp.backends.nnsight import load_nnsight

    kwargs = dict(rank=8, n_pairs=12, config=space_compare.GeometryConfig(draws=3, folds=3), progress=False)
    bridge = space_compare.compare_dataset(tiny, [0, 2], **kwargs)
    nn = space_compare.compare_dataset(load_nnsight("tiny-random"), [0, 2], **kwargs)
    assert nn.attrs["backend"] == "nnsight" and bridge.attrs["backend"] == "bridge"
    assert nn.attrs["weight_hash"] == bridge.attrs["weight_hash"]
    for var in space_compare.METRICS:
        np.testing.assert_allclose(nn[var].values, bridge[var].values, atol=1e-4, err_msg=var)


def test_train_hands_the_two_loss_spaces_to_compare_methods(tmp_path, monkeypatch):
    from analyses import compare_methods

    seen = {}
    monkeypatch.setattr(compare_methods, "main", lambda argv: seen.setdefault("argv", argv) and {"table": tmp_path / "t.md"})
    written = space_compare.main(["--model", "tiny-random", "--quick", "--rank", "8", "--n-pairs", "12", "--compare-methods",
                                  "--out", str(tmp_path / "res"), "--figures", str(tmp_path / "figs"), "--no-progress"])
    argv = seen["argv"]
    assert argv[argv.index("--methods") + 1] == "innerpissa,loss_dHS@U"
    assert argv[argv.index("--out") + 1] == str(tmp_path / "res" / "trained") and "--quick" in argv
    assert written["train_table"] == tmp_path / "t.md" and written["dataset"].is_file()


def test_errors(tiny):
    with pytest.raises(ValueError, match="rank must lie"):
        space_compare.compare_dataset(tiny, [0], rank=64, progress=False)
    with pytest.raises(SystemExit):
        space_compare.parse_args(["--folds", "1"])


@pytest.mark.slow
def test_default_model_known_geometry(smol):
    """Measured on SmolLM2-135M (128 honesty pairs, r = 64): at layer 0 the differences put 0.48 of their
    energy in span(U_64) of mlp.out vs 0.11 = r/d for random subspaces; at layer 15 a raw-space probe
    separates chosen from rejected with AUROC 0.96."""
    from interp.geometry import GeometryConfig

    ds = space_compare.compare_dataset(smol, [0, 15], rank=64, n_pairs=48,
                                       config=GeometryConfig(draws=5, folds=4, seed=0), progress=False)
    e = ds["energy_fraction"]
    assert float(e.sel(layer=0, space="dHS@U")) > 2.5 * float(e.sel(layer=0, space="random"))
    assert float(e.sel(layer=0, space="random")) == pytest.approx(64 / 576, abs=0.02)
    assert float(ds["probe_auroc"].sel(layer=15, space="dHS")) > 0.85
    assert float(ds["probe_auroc"].sel(layer=15, space="dHS")) > float(ds["probe_auroc"].sel(layer=0, space="dHS"))
