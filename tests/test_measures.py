"""Measures as objects: every concept's measures build, the factual-honesty measure has known answers.

The facts measure's known answers (on tiny-random, whose preferences are noise):
* a method that only adds a constant to one completion word's logit everywhere moves the
  fact margin by ~0 (the word is true in some items and false in their swapped twins) while
  its token bias is not 0;
* a method that raises each item's *true* completion moves the margin up and flips nothing;
* the splits share no group (no fact or stem in two splits).
"""

import json

import numpy as np
import pandas as pd
import pytest

from interp.interventions import AtHook
from interp.measures import KINDS, ContinuationMeasure, DailyDilemmasMeasure, FactsMeasure, concept_measures, measure_of
from interp.measures.facts import item_groups
from interp.steering import SteeringMethod

FACTS = [  # swapped groups: each word is true once and false once within its group
    (0, "The capital of France is", " Paris", " Rome"), (0, "The capital of Italy is", " Rome", " Paris"),
    (1, "The colour of grass is", " green", " red"), (1, "The colour of blood is", " red", " green"),
    (2, "Ice feels", " cold", " hot"), (2, "Fire feels", " hot", " cold"),
    (3, "A cat says", " meow", " woof"), (3, "A dog says", " woof", " meow"),
    (4, "The sun rises in the", " east", " west"), (4, "The sun sets in the", " west", " east"),
    (5, "Two plus two is", " four", " five"), (5, "Two plus three is", " five", " four"),
]


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory):
    items = [{"id": i, "group": g, "domain": "test", "user": "Tell me a fact.", "prefix": p, "positive": t, "negative": f}
             for i, (g, p, t, f) in enumerate(FACTS)]
    path = tmp_path_factory.mktemp("facts") / "facts.json"
    path.write_text(json.dumps({"concept": "honesty", "items": items}))
    return path


@pytest.fixture(scope="module")
def facts(facts_file):
    return FactsMeasure(concept="honesty", file=str(facts_file), n_calibration=1)


class WordBias(SteeringMethod):
    """Adds ``c * k`` to one token's logit at every position: a preference for a word, not for truth."""

    name = "word_bias"

    def __init__(self, token: int, k: float = 4.0):
        self.token, self.k = token, k

    def edits(self, coeff):
        c = float(self.effective(coeff))
        if c == 0:
            return ()

        def push(logits):
            logits = logits.clone()
            logits[..., self.token] += c * self.k
            return logits

        return (AtHook("unembed.hook_out", push),)


class TruthTeller(SteeringMethod):
    """Raises, in each row, the first token of that row's fact's true completion by ``c * k`` (read from the row's text)."""

    name = "truth"

    def __init__(self, tokenizer, k: float = 6.0):
        self.tokenizer, self.k = tokenizer, k
        self.true_token = {p: tokenizer.encode(t, add_special_tokens=False)[0] for _, p, t, _ in FACTS}

    def edits(self, coeff):
        c = float(self.effective(coeff))
        if c == 0:
            return ()
        rows: list[int] = []

        def read(x):  # embed.hook_in carries the token ids
            rows.clear()
            for ids in x.tolist():
                text = self.tokenizer.decode(ids)
                rows.append(next(tok for prefix, tok in self.true_token.items() if prefix in text))
            return x

        def push(logits):
            logits = logits.clone()
            for i, tok in enumerate(rows):
                logits[i, :, tok] += c * self.k
            return logits

        return (AtHook("embed.hook_in", read), AtHook("unembed.hook_out", push))


def test_every_shipped_concept_builds_each_of_its_measures():
    offered = {concept: concept_measures(concept) for concept in ("honesty", "sentiment")}
    assert list(offered["honesty"]) == ["dailydilemmas", "facts"] and list(offered["sentiment"]) == ["continuations"]
    assert isinstance(measure_of("honesty"), DailyDilemmasMeasure)
    assert isinstance(measure_of("honesty", "facts"), FactsMeasure) and isinstance(measure_of("sentiment"), ContinuationMeasure)
    assert set(KINDS) == {"dailydilemmas", "continuations", "facts"}
    facts = measure_of("honesty", "facts")
    assert facts.unit == "nats/token" and "fact margin" in facts.label and facts.key == "honesty-facts"
    assert dict(facts.prompting)["negative_strong"].startswith("You are a liar")  # the measure's own wording


def test_an_unknown_measure_names_what_the_concept_offers():
    with pytest.raises(ValueError, match=r"has no measure 'nope'.*\['dailydilemmas', 'facts'\]"):
        measure_of("honesty", "nope")


def test_shipped_facts_split_by_group_share_no_fact():
    facts = measure_of("honesty", "facts")
    groups = item_groups(facts.file)
    splits = facts.splits()
    seen = {name: {groups[int(i)] for i in part.ids} for name, part in splits.items()}
    assert not (seen["calibration"] & seen["validation"]) and not (seen["calibration"] & seen["test"])
    assert not (seen["validation"] & seen["test"])
    assert sum(len(p) for p in splits.values()) == len(groups)  # every item in exactly one split
    prefixes = {name: set(part.frame["prefix"]) for name, part in splits.items()}
    assert not (prefixes["validation"] & prefixes["test"])


def every_item(facts):
    parts = facts.splits()
    return type(parts["test"])(pd.concat([p.frame for p in parts.values()], ignore_index=True), "")


def test_a_word_bias_is_not_truthfulness(tiny, facts):
    items = every_item(facts)
    paris = tiny.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    ds = facts.score(tiny, WordBias(paris), items, (-1.0, 0.0, 1.0), progress=False)
    row = facts.metrics_at(ds, 1.0)
    assert abs(row["delta_target"]) < 0.02  # Paris is true once and false once: the margins cancel
    assert row["token_bias"] > 0.1 and row["token_bias_neg"] < -0.1  # ... but both completions' level moved
    assert row["flipped_share"] <= 0.5


def test_a_truth_teller_raises_the_margin_and_flips_nothing(tiny, facts):
    ds = facts.score(tiny, TruthTeller(tiny.tokenizer), every_item(facts), (-1.0, 0.0, 1.0), progress=False)
    row = facts.metrics_at(ds, 1.0)
    assert row["delta_target"] > 1.0 and row["delta_target_neg"] < -1.0 and row["p_value"] < 1e-3
    assert row["flipped_share"] == 0.0  # nothing the base model got right is now false
    margin = ds["margin"].isel(method=0)
    assert (margin.sel(coeff=1.0) > margin.sel(coeff=0.0)).all()
    assert np.isfinite(row["token_bias"])
