"""analyses.cross_concept on tiny-random: each adapter on each measure, at the budget on its own concept's prompts."""

import json

import pytest

from analyses import cross_concept
from analyses._io import load_dataset


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from interp.cli.train import main as train

    root = tmp_path_factory.mktemp("adapters")
    for concept, seed in (("honesty", 0), ("sentiment", 0), ("sentiment", 1)):
        train(["--model", "tiny-random", "--quick", "--steps", "2", "--layers", "1:2", "--concept", concept,
               "--seed", str(seed), "--no-calibrate", "--no-progress", "--out", str(root / f"{concept}{seed}")])
    return root


def _run(spec: str, out, *extra: str):
    return cross_concept.main(["--model", "tiny-random", "--adapters", spec, "--measures", "honesty:facts,sentiment",
                               "--budget", "0.01", "--n-eval", "6", "--out", str(out), "--no-progress", *extra])


def test_every_adapter_on_every_measure(adapters, tmp_path):
    written = _run(f"h={adapters / 'honesty0' / 'adapter'},s={adapters / 'sentiment0' / 'adapter'}", tmp_path / "out")
    ds = load_dataset(written["dataset"])
    assert list(ds["adapter"].values) == ["h (honesty)", "s (sentiment)"]
    assert list(ds["measure"].values) == ["honesty:facts", "sentiment"] and list(ds["unit"].values) == ["nats/token"] * 2
    assert (ds["coeff"].values > 0).all() and ds["delta_target"].notnull().all()
    # one budget per adapter: its strength is the same on every measure
    assert ds["coeff"].isel(run=0).values[0] == ds["coeff"].isel(run=0).values[1]
    assert "Cross-concept table" in written["table"].read_text() and ds.attrs["weight_hash"]


def test_seeds_of_one_name_are_pooled_and_rows_are_kept(adapters, tmp_path, monkeypatch):
    out = tmp_path / "out"
    s0, s1 = adapters / "sentiment0" / "adapter", adapters / "sentiment1" / "adapter"
    first = load_dataset(_run(f"s={s0}", out)["dataset"])
    scored = []
    real = cross_concept.cross_row
    monkeypatch.setattr(cross_concept, "cross_row", lambda model, path, *a, **k: scored.append(path) or real(model, path, *a, **k))
    written = _run(f"s={s0},s={s1}", out)
    assert scored == [str(s1)]  # the first seed's stored row is reused, only the new one is scored
    ds = load_dataset(written["dataset"])
    assert list(ds["adapter"].values) == ["s (sentiment)"] * 2
    assert ds["delta_target"].isel(run=0).values.tolist() == first["delta_target"].isel(run=0).values.tolist()
    want = ds["delta_target"].sel(measure="sentiment").values
    row = next(line for line in written["table"].read_text().splitlines() if line.startswith("| s (sentiment)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2"  # seeds
    assert f"{want.mean():+.3f} ± {want.std(ddof=1):.3f}" in cells
    # another budget is another key: the row is scored again, not reused
    scored.clear()
    _run(f"s={s0}", tmp_path / "out", "--budget", "0.02")
    assert scored == [str(s0)]


def test_a_stored_row_of_another_adapter_is_not_reused(adapters, tmp_path):
    out = tmp_path / "out"
    _run(f"s={adapters / 'sentiment0' / 'adapter'}", out)
    (stored,) = (out / "rows").glob("*.json")
    record = json.loads(stored.read_text())
    record["key"]["adapter"] = "0" * 16
    record["row"]["sentiment"]["delta_target"] = 123.0
    stored.write_text(json.dumps(record))
    ds = load_dataset(_run(f"s={adapters / 'sentiment0' / 'adapter'}", out)["dataset"])
    assert float(ds["delta_target"].sel(measure="sentiment").values[0]) != 123.0


def test_a_missing_adapter_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cross_concept.main(["--model", "tiny-random", "--adapters", f"x={tmp_path / 'nothing'}", "--out", str(tmp_path)])
    assert "--adapters x=" in capsys.readouterr().err


def test_the_budget_is_spent_on_the_measure_the_sign_was_calibrated_on(tmp_path):
    from interp.cli.train import main as train

    train(["--model", "tiny-random", "--quick", "--steps", "2", "--layers", "1:2", "--concept", "honesty", "--measure", "facts",
           "--no-progress", "--out", str(tmp_path / "h")])
    assert cross_concept.adapter_measure(tmp_path / "h" / "adapter").key == "honesty-facts"
    train(["--model", "tiny-random", "--quick", "--steps", "2", "--layers", "1:2", "--concept", "honesty", "--no-calibrate",
           "--no-progress", "--out", str(tmp_path / "u")])
    assert cross_concept.adapter_measure(tmp_path / "u" / "adapter").key == "honesty-dailydilemmas"  # no sign record


def test_train_names_a_measure_the_concept_lacks(tmp_path, capsys):
    from interp.cli.train import main as train

    with pytest.raises(SystemExit):
        train(["--model", "tiny-random", "--concept", "sentiment", "--measure", "facts", "--out", str(tmp_path / "x")])
    assert "--measure facts" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_an_adapter_named_twice_is_refused(adapters, tmp_path, capsys):
    path = adapters / "sentiment0" / "adapter"
    with pytest.raises(SystemExit):
        cross_concept.main(["--model", "tiny-random", "--adapters", f"a={path},b={path}", "--out", str(tmp_path)])
    assert "names an adapter twice" in capsys.readouterr().err
