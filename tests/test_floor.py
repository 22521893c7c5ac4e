"""The floor check: a model at chance that prompting cannot move fails it, one that holds the preference passes."""

from contextlib import contextmanager

import numpy as np
import pytest

from interp.dilemmas import TARGET, Dilemmas, load_dilemmas
from interp.cli.evaluate import main
from interp.floor import FLOOR_MESSAGE, floor_verdict
from interp.measures import DailyDilemmasMeasure, measure_of
from interp.measures.dilemma_scoring import answer_token_ids

FAST = DailyDilemmasMeasure(concept="honesty", batch_size=4, max_situation_chars=160)


def test_verdict_at_chance_and_unmoved_fails():
    rng = np.random.default_rng(0)
    base = 0.5 + rng.normal(0, 0.01, 200)
    noise = {c: 0.5 + rng.normal(0, 0.01, 200) for c in (-1.0, 0.0, 1.0)}
    check = floor_verdict(base - base.mean() + 0.5, 0.5, noise, measure="m")
    assert not check.base_holds and not check.prompt_moves and not check.passes
    assert FLOOR_MESSAGE in check.summary()


def test_verdict_holds_or_moves_passes():
    rng = np.random.default_rng(1)
    base = 0.6 + rng.normal(0, 0.05, 100)
    flat = {c: base for c in (-1.0, 1.0)}
    holds = floor_verdict(base, 0.5, flat, measure="m")
    assert holds.base_holds and not holds.prompt_moves and holds.passes
    centred = base - base.mean()
    moved = floor_verdict(centred, 0.0, {c: centred + 0.2 * c + rng.normal(0, 0.01, 100) for c in (-1.0, 0.0, 1.0)},
                          measure="m")
    assert not moved.base_holds and moved.prompt_moves and moved.passes
    assert moved.prompt_delta == pytest.approx(0.2, abs=0.01)
    backwards = floor_verdict(centred, 0.0, {c: centred - 0.2 * c for c in (-1.0, 1.0)}, measure="m")
    assert not backwards.prompt_moves  # prompting the other way is not "moving it"


def test_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        floor_verdict(np.array([0.5]), 0.5, {-1.0: np.zeros(1), 1.0: np.zeros(1)}, measure="m")
    with pytest.raises(ValueError, match="negative and a positive"):
        floor_verdict(np.ones(3), 0.5, {0.0: np.zeros(3), 1.0: np.zeros(3)}, measure="m")


@contextmanager
def holds_truth(model, dilemmas: Dilemmas, nats: float = 3.0):
    """The model, made to say Yes to the truth-serving action and No to the other (at c = 0)."""
    _, signs = dilemmas.label_signs([TARGET])
    f = dilemmas.frame
    truthful = {(a if s > 0 else b) for a, b, s in zip(f["action_to_do"], f["action_not_to_do"], signs[:, 0]) if s}
    yes, no = answer_token_ids(model.tokenizer)
    rows: list[float] = []

    def read(tokens, hook):
        rows[:] = [nats if any(f"Action: {a}\n" in t for a in truthful) else -nats
                   for t in model.tokenizer.batch_decode(tokens)]
        return tokens

    def push(logits, hook):
        logits = logits.clone()
        for i, d in enumerate(rows):
            logits[i, :, yes] += 30.0 + d
            logits[i, :, no] += 30.0 - d
        return logits

    with model.hooks(fwd_hooks=[("embed.hook_in", read), ("unembed.hook_out", push)]):
        yield model


@pytest.fixture(scope="module")
def truth_dilemmas(dilemmas_dir):
    data = load_dilemmas(dilemmas_dir)
    _, signs = data.label_signs([TARGET])
    return data.subset(np.concatenate([data.ids[signs[:, 0] > 0][:3], data.ids[signs[:, 0] < 0][:3]]))


def test_synthetic_model_that_holds_the_preference_passes(tiny, truth_dilemmas):
    with holds_truth(tiny, truth_dilemmas):
        check, ds = FAST.floor(tiny, truth_dilemmas, progress=False)
    assert check.base > 0.9 and check.base_holds and check.passes and check.n == 6
    assert set(ds["coeff"].values) == {-1.0, 0.0, 1.0} and str(ds["method"].values[0]) == "prompt"


def test_cli_prints_the_floor_and_withholds_effects_below_it(tiny, truth_dilemmas, dilemmas_dir, tmp_path, capsys):
    # tiny-random answers at random: the floor check decides from its own scores
    main(["--model", "tiny-random", "--n-eval", "6", "--coeffs=-1,1", "--dilemmas", str(dilemmas_dir), "--split",
          "validation", "--min-pmass", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "floor check on Virtue/Truthfulness" in out
    text = (tmp_path / "table.md").read_text()
    if FLOOR_MESSAGE in out:
        assert "| Method" not in out and text.startswith(f"**{FLOOR_MESSAGE}**") and "| Method" in text
    else:
        assert "| Method" in out


def test_evaluate_cli_on_a_continuation_concept(mini_concept, tmp_path, capsys):
    table = main(["--model", "tiny-random", "--concept", str(mini_concept), "--split", "test", "--coeffs=-1,1",
                  "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "items (test split) of sentiment margin" in out and "floor check on sentiment margin" in out
    assert list(table["coeff"]) == [-1.0, 1.0] and (tmp_path / "scores.nc").is_file()


@pytest.mark.slow
def test_default_model_fails_the_floor_on_dailydilemmas_and_passes_on_sentiment(smol):
    """SmolLM2-135M does not hold honesty on de-biased DailyDilemmas (at chance, prompting does not
    move it), and does hold sentiment on the continuation margin."""
    honesty = measure_of("honesty", "dailydilemmas")
    truth = honesty.scorable(honesty.splits()["validation"]).head(48)
    check, _ = honesty.floor(smol, truth, progress=False)
    assert not check.passes and check.base_low < 0.5 < check.base_high and check.prompt_p > 0.05
    sentiment = measure_of("sentiment")
    check, _ = sentiment.floor(smol, sentiment.splits()["validation"], progress=False)
    assert check.passes and check.base_holds and check.prompt_moves and check.prompt_p < 1e-6


def test_each_measure_names_the_unit_of_its_effect():
    honesty, sentiment = measure_of("honesty"), measure_of("sentiment")
    assert honesty.unit == "probability" and "de-biased" in honesty.effect_units
    assert sentiment.unit == "nats/token" and sentiment.effect_units == "Δ margin (nats/token)"
