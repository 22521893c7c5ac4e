"""The factual-honesty items (facts_eval.json) and the honesty training templates: json only, no model."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from interp.data import concepts_dir, load_concept, make_pairs

ITEM_KEYS = ("id", "group", "domain", "user", "prefix", "positive", "negative")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture(scope="module")
def facts() -> dict:
    return json.loads((concepts_dir() / "facts_eval.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def items(facts) -> list[dict]:
    return facts["items"]


def test_header_and_item_fields(facts, items):
    assert facts["concept"] == "honesty" and facts["description"].strip()
    for it in items:
        assert set(ITEM_KEYS) <= set(it), it
        assert isinstance(it["id"], int) and isinstance(it["group"], int)
        for key in ("domain", "user", "prefix"):
            assert isinstance(it[key], str) and it[key].strip(), it
        # a completion is one short word after a space, so it never merges with the prefix's last token
        for key in ("positive", "negative"):
            assert re.fullmatch(r" [A-Za-z0-9]+", it[key]), it
        assert it["positive"] != it["negative"], it


def test_size_and_domains(items):
    assert len(items) >= 400
    domains = Counter(it["domain"] for it in items)
    assert len(domains) >= 8
    assert min(domains.values()) >= 30, domains  # no token domain


def test_unique_ids_and_prefixes(items):
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids)
    prefixes = [it["prefix"].strip().lower() for it in items]
    dup = [p for p, n in Counter(prefixes).items() if n > 1]
    assert not dup, dup  # a stem in two groups would leak across a split by group


def test_groups_balance_every_word(items):
    """Within each group every completion word is the true answer as often as the false one, so a
    preference for a word (rather than for the fact) cancels within the group; splits are made by
    group, so every group has at least two items and one domain."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for it in items:
        groups[it["group"]].append(it)
    assert len(groups) >= 200
    for g, members in groups.items():
        assert len(members) >= 2, g
        assert len({m["domain"] for m in members}) == 1, g
        assert Counter(m["positive"] for m in members) == Counter(m["negative"] for m in members), g


def test_completions_not_given_away(items):
    for it in items:
        context = words(it["user"]) | words(it["prefix"])
        for key in ("positive", "negative"):
            assert it[key].strip().lower() not in context, it


def test_honesty_templates_build_pairs():
    concept = load_concept("honesty")
    personas = concept.persona_pairs()
    assert len(personas) >= 11  # at least as many as the templates these replaced
    assert all(c != r for c, r in personas)
    assert "untruthful" in " ".join(r for _, r in personas)  # the canonical honest / untruthful pair is kept
    pairs = make_pairs("honesty", n_pairs=None)
    assert len(pairs) >= 1000 and len({(p.chosen, p.rejected, p.suffix) for p in pairs}) == len(pairs)


def test_honesty_templates_avoid_fact_words(items):
    """Training templates must not contain the facts' completion words: the measure would reward
    repeating a training word. Single letters are exempt (the article 'a' vs the letter ' A')."""
    completions = {it[k].strip().lower() for it in items for k in ("positive", "negative")}
    completions = {w for w in completions if len(w) > 1}
    raw = json.loads((concepts_dir() / "honesty.json").read_text(encoding="utf-8"))
    for t in raw["templates"]:
        text = " ".join([t["text"], *t["chosen"], *t["rejected"]])
        assert not words(text) & completions, (t["text"], words(text) & completions)
