"""Contrastive pairs: concept files, suffixes, seeded split by suffix, tokenisation, data order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp.data import (
    ContrastivePair,
    available_concepts,
    batch_indices,
    load_concept,
    make_pairs,
    pairs_hash,
    read_suffixes,
    split_by_suffix,
    tokenize_pairs,
)
from interp.models import embedded_tokenizer


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def test_shipped_concept_and_suffixes():
    assert "honesty" in available_concepts()
    concept = load_concept("honesty")
    personas = concept.persona_pairs()
    assert len(personas) >= 8
    for cho, rej in personas:
        assert cho != rej
    suffixes = read_suffixes()
    assert len(suffixes) >= 100 and len(set(suffixes)) == len(suffixes)
    assert all(not s.startswith("#") for s in suffixes)


def test_new_concept_is_a_json_file(tmp_path):
    path = tmp_path / "kindness.json"
    path.write_text(json.dumps({"concept": "kindness", "templates": [
        {"text": "You are a {} person.", "chosen": ["kind", "warm"], "rejected": ["cruel", "cold"]}]}))
    concept = load_concept(path)
    assert concept.name == "kindness"
    assert concept.persona_pairs() == [("You are a kind person.", "You are a cruel person."),
                                       ("You are a warm person.", "You are a cold person.")]
    pairs = make_pairs(concept, ["Today", "Tomorrow", "Later"], n_pairs=None, seed=1)
    assert len(pairs) == 6 and {p.suffix for p in pairs} == {"Today", "Tomorrow", "Later"}


def test_bad_concept_and_template_errors(tmp_path):
    with pytest.raises(ValueError, match="shipped concepts"):
        load_concept("no-such-concept")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"templates": [{"text": "no slot", "chosen": ["a"], "rejected": ["b"]}]}))
    with pytest.raises(ValueError, match="slot"):
        load_concept(bad)
    bad.write_text(json.dumps({"templates": [{"text": "a {}", "chosen": ["a", "b"], "rejected": ["c"]}]}))
    with pytest.raises(ValueError, match="equal length"):
        load_concept(bad)


def test_user_suffix_file(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("# comment\nFirst\n\nSecond\nFirst\n")
    assert read_suffixes(path) == ["First", "Second"]
    path.write_text("only one\n")
    with pytest.raises(ValueError, match="at least 2"):
        read_suffixes(path)


def test_make_pairs_default_size_and_seed():
    a, b, c = make_pairs(seed=0), make_pairs(seed=0), make_pairs(seed=1)
    assert len(a) == 1000 and a == b and a != c
    assert len(set(a)) == 1000  # drawn without replacement


def test_split_by_suffix_is_disjoint_and_seeded():
    pairs = make_pairs(seed=0)
    split = split_by_suffix(pairs, 0.1, seed=0)
    train_s, val_s = {p.suffix for p in split.train}, {p.suffix for p in split.val}
    assert not train_s & val_s
    assert len(split.train) + len(split.val) == len(pairs)
    assert len(val_s) == round(0.1 * len(train_s | val_s))
    assert split_by_suffix(pairs, 0.1, seed=0) == split
    assert {p.suffix for p in split_by_suffix(pairs, 0.1, seed=5).val} != val_s
    with pytest.raises(ValueError):
        split_by_suffix(pairs, 1.5)


def test_pairs_hash_depends_on_content_and_order():
    pairs = make_pairs(n_pairs=10)
    assert pairs_hash(pairs) == pairs_hash(list(pairs))
    assert pairs_hash(pairs) != pairs_hash(pairs[::-1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_tokenize_pairs_layout(tok, side):
    pairs = [ContrastivePair("I am honest.", "I am a big liar, really.", "The weather today"),
             ContrastivePair("Be honest.", "Be dishonest.", "My favourite food is")]
    b = tokenize_pairs(tok, pairs, padding_side=side)
    assert b.tokens.shape[0] == 4 and b.n_pairs == 2
    for row, (pair, which) in enumerate([(pairs[0], "chosen"), (pairs[1], "chosen"),
                                         (pairs[0], "rejected"), (pairs[1], "rejected")]):
        real = b.tokens[row][b.attention_mask[row].bool()]
        text = tok.decode(real)
        # an open assistant turn: ends with the suffix, no end-of-turn after it
        assert text.endswith("assistant\n" + pair.suffix)
        assert getattr(pair, which) in text
        assert tok.decode(b.tokens[row, b.last[row]]) == tok.decode(real[-1])
        assert tok.decode(b.tokens[row][b.suffix_mask[row]]) == pair.suffix
        assert text.startswith("<|im_start|>system") and not text.startswith("<|im_start|><|im_start|>")  # no extra BOS
    if side == "left":
        assert (b.last == b.tokens.shape[1] - 1).all()
    else:
        assert (b.attention_mask[:, 0] == 1).all()


def test_tokenize_rejects_bad_padding(tok):
    with pytest.raises(ValueError, match="left"):
        tokenize_pairs(tok, make_pairs(n_pairs=2), padding_side="middle")


def test_batch_indices_pure_and_cover_each_epoch():
    n, bs = 10, 4
    again = [batch_indices(n, bs, s, seed=3) for s in range(6)]
    assert all((x == y).all() for x, y in zip(again, [batch_indices(n, bs, s, seed=3) for s in range(6)]))
    epoch0 = np.concatenate(again[:3])  # 3 steps per epoch, the last wraps
    assert set(epoch0[:10].tolist()) == set(range(10))
    assert not all((x == y).all() for x, y in zip(again, [batch_indices(n, bs, s, seed=4) for s in range(6)]))
    assert all(len(x) == bs for x in again)


@pytest.mark.parametrize("template, says", [
    ({"text": "Pretend you are {} person.", "chosen": "an agreeable", "rejected": ["a rude"]}, "JSON lists of strings"),
    ({"text": "Pretend you are {} person.", "chosen": ["an honest", 3], "rejected": ["a dishonest", "a lying"]},
     "list of non-empty strings"),
    ({"text": "Pretend you are {} person.", "chosen": ["an honest"], "rejected": ["an honest"]}, "carries no contrast"),
])
def test_malformed_concept_files_are_refused_naming_the_file(tmp_path, template, says):
    import json

    from interp.data import load_concept

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"concept": "mine", "templates": [template]}))
    with pytest.raises(ValueError, match=says) as err:
        load_concept(path)
    assert str(path) in str(err.value)
