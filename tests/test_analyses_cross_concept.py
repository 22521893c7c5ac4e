"""analyses.cross_concept on tiny-random: each adapter on each measure, at the budget on its own concept's prompts."""

import pytest

from analyses import cross_concept
from analyses._io import load_dataset


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from interp.cli.train import main as train

    root = tmp_path_factory.mktemp("adapters")
    for concept in ("honesty", "sentiment"):
        train(["--model", "tiny-random", "--quick", "--steps", "2", "--layers", "1:2", "--concept", concept,
               "--no-calibrate", "--no-progress", "--out", str(root / concept)])
    return root


def test_every_adapter_on_every_measure(adapters, tmp_path):
    spec = f"h={adapters / 'honesty' / 'adapter'},s={adapters / 'sentiment' / 'adapter'}"
    written = cross_concept.main(["--model", "tiny-random", "--adapters", spec, "--measures", "honesty:facts,sentiment",
                                  "--budget", "0.01", "--n-eval", "6", "--out", str(tmp_path / "out"), "--no-progress"])
    ds = load_dataset(written["dataset"])
    assert list(ds["adapter"].values) == ["h (honesty)", "s (sentiment)"]
    assert list(ds["measure"].values) == ["honesty:facts", "sentiment"] and list(ds["unit"].values) == ["nats/token"] * 2
    assert (ds["coeff"].values > 0).all() and ds["delta_target"].notnull().all()
    # one budget per adapter: its strength is the same on every measure
    assert ds["coeff"].sel(adapter="h (honesty)").values[0] == ds["coeff"].sel(adapter="h (honesty)").values[1]
    assert "Cross-concept table" in written["table"].read_text() and ds.attrs["weight_hash"]


def test_a_missing_adapter_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cross_concept.main(["--model", "tiny-random", "--adapters", f"x={tmp_path / 'nothing'}", "--out", str(tmp_path)])
    assert "--adapters x=" in capsys.readouterr().err
