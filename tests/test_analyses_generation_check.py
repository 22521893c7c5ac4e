"""analyses.generation_check: the lexicon's known answers, and a finished run's generations at its calibrated strength."""

import pandas as pd
import pytest

from analyses import generation_check
from interp.data import read_suffixes
from interp.measures import measure_of
from interp.protocol import MethodSpec, run_method
from interp.train import TrainConfig


def test_the_lexicon_scores_sentiment_offline():
    pos, neg, flat = generation_check.lexicon_sentiment(["What a lovely, wonderful day!", "This is awful, I hate it.",
                                                         "The bus leaves at nine."])
    assert pos > 0.5 and neg < -0.5 and flat == 0.0


def test_the_held_out_prompts_share_no_text_with_training_or_evaluation():
    import json

    from interp.data import concepts_dir

    prompts = generation_check.read_prompts()
    assert len(prompts) == 40
    starts = [s.lower() for s in read_suffixes()]
    users = {item["user"].lower() for item in json.loads((concepts_dir() / "sentiment_eval.json").read_text())["items"]}
    assert not [p for p in prompts if p.lower() in users or any(s in p.lower() for s in starts)]


def test_a_finished_run_writes_at_its_strength_and_is_reused(tiny, mini_concept, tmp_path, capsys):
    measure = measure_of(mini_concept)
    spec = MethodSpec("mean_diff", TrainConfig(model="tiny-random", concept=str(mini_concept), layers="1:2", n_pairs=200))
    run = tmp_path / "run"
    run_method(tiny, spec, measure, measure.splits(), run, budgets=(0.001,), progress=False)
    argv = ["--model", "tiny-random", "--quick", "--runs", str(run), "--budget", "0.001", "--out", str(tmp_path / "out")]
    written = generation_check.main(argv)
    table = pd.read_csv(written["csv"])
    assert list(table["run"]) == ["run"] and table["coeff"].iloc[0] > 0
    for key in ("sentiment_shift", "sentiment_shift_neg", "nll_shift", "distinct_2"):
        assert pd.notna(table[key].iloc[0])
    kept = run / "generations_0.001-quick.nc"
    stamp = kept.stat().st_mtime_ns
    generation_check.main(argv)
    assert kept.stat().st_mtime_ns == stamp  # read back, not generated again
    with pytest.raises(SystemExit):
        generation_check.main([*argv[:-4], "--runs", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "result.json" in capsys.readouterr().err
