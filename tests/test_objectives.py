"""The distillation objective: known answers for the loss, its alignment of a pair's suffix, and a short run.

At c = +1 the steered model, given the negative persona, should predict the shared suffix as the base model
does given the positive persona (and the reverse at c = -1).
"""

from pathlib import Path

import pytest
import torch

from interp.adapters.innerpissa import InnerPiSSAConfig, attach
from interp.backends import select_sites
from interp.data import ContrastivePair, tokenize_pairs
from interp.losses import distill_kl
from interp.train import TrainConfig, build_pairs, train
from interp.train.step import distill_loss, suffix_columns

LOOP_CONCEPT = str(Path(__file__).parent / "data" / "honesty_v1.json")
SHORT_DISTILL = dict(model="tiny-random", concept=LOOP_CONCEPT, objective="distill", n_pairs=200, n_calibration=16,
                     n_validation=16, lr=0.05, steps=16, batch_size=4)


def learns_both_directions(model, adapter, config, out):
    """Train ``adapter`` (detached after) and check both distillation sides fell; returns the result."""
    try:
        result = train(model, adapter, build_pairs(config), config, out=out, progress=False)
    finally:
        adapter.detach()
    pos = [r["distill_pos"] for r in result.history]
    neg = [r["distill_neg"] for r in result.history]
    assert sum(pos[-4:]) < sum(pos[:4]) and sum(neg[-4:]) < sum(neg[:4])  # both directions learned
    return result


def test_distill_kl_is_zero_on_the_target_and_positive_elsewhere():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 11, generator=gen)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 2:4] = True
    assert distill_kl(teacher.clone(), teacher, mask) == pytest.approx(0.0, abs=1e-6)
    student = teacher + torch.randn(2, 5, 11, generator=gen)
    assert distill_kl(student, teacher, mask) > 0.01
    shifted = teacher + 3.0  # the same distributions: a constant added to every logit changes nothing
    assert distill_kl(shifted, teacher, mask) == pytest.approx(0.0, abs=1e-5)
    student = student.requires_grad_(True)
    distill_kl(student, teacher, mask).backward()
    assert student.grad[:, :2].abs().sum() == 0 and student.grad[:, 2:4].abs().sum() > 0  # only masked positions
    with pytest.raises(ValueError, match="align"):
        distill_kl(student[:1], teacher, mask)


def test_a_pairs_suffix_columns_hold_the_same_tokens_in_both_rows(tiny):
    pairs = [ContrastivePair("Pretend you are an honest person.", "Pretend you are a deceitful and dishonest person.",
                             "Well, the thing is"), ContrastivePair("Be kind.", "Be cruel.", "I think that we should go")]
    batch = tokenize_pairs(tiny.tokenizer, pairs)
    cols = suffix_columns(batch)
    n = batch.n_pairs
    assert torch.equal(cols[:n], cols[n:])
    for i in range(n):  # the tokens predicted at those columns are the suffix, the same in both rows
        predicted = batch.tokens[i, 1:][cols[i, :-1]]
        assert torch.equal(predicted, batch.tokens[n + i, 1:][cols[n + i, :-1]])
        assert int(cols[i].sum()) == int(batch.suffix_mask[i].sum())


def test_distillation_toward_the_base_itself_is_zero(tiny):
    """Chosen = rejected: the target is the base model's own distribution, which the adapter at c = 0 has exactly."""
    same = [ContrastivePair("Pretend you are a person.", "Pretend you are a person.", "Well, the thing is")]
    batch = tokenize_pairs(tiny.tokenizer, same)
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    adapter = attach(tiny, sites, InnerPiSSAConfig(rank=4, init_std=1e-8))
    try:
        loss, parts = distill_loss(tiny, adapter, batch, TrainConfig())
    finally:
        adapter.detach()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6) and parts["distill_pos"] == pytest.approx(0.0, abs=1e-6)


def test_a_short_distillation_run_moves_each_side_toward_its_persona(tiny, tmp_path):
    config = TrainConfig.of(**SHORT_DISTILL, rank=8, max_angle=1.0)
    sites = select_sites(tiny, layers="1:2", modules=["attn.o", "mlp.out"])
    result = learns_both_directions(tiny, attach(tiny, sites, config.adapter_config()), config, tmp_path)
    assert result.orientation == 1  # the sign is fixed by construction
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(objective="nope")


def test_a_trained_vector_is_exact_at_zero_antisymmetric_and_learns_both_directions(tiny, tmp_path):
    from interp.adapters.vector import VectorConfig
    from interp.adapters.vector import attach as attach_vector
    from interp.backends import run

    sites = select_sites(tiny, layers="1:2", modules=["mlp.out"])
    adapter = attach_vector(tiny, sites, VectorConfig(init_std=0.5))
    batch = tokenize_pairs(tiny.tokenizer, [ContrastivePair("Be kind.", "Be cruel.", "Well, the thing is")])
    try:
        base = run(tiny, batch.tokens, batch.attention_mask).logits
        assert adapter.edits(0.0) == () and torch.equal(run(tiny, batch.tokens, batch.attention_mask, adapter.edits(0.0)).logits, base)
        layer = next(iter(adapter.layers.values()))
        x = torch.randn(2, 3, 8)
        assert torch.allclose(layer.delta(x, -1.0), -layer.delta(x, 1.0)) and torch.allclose(layer.delta(x, 1.0)[0, 0], layer.vector)
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            layer.delta_weight(1.0)
    finally:
        adapter.detach()
    learns_both_directions(tiny, attach_vector(tiny, sites), TrainConfig.of(**SHORT_DISTILL), tmp_path)


def test_the_protocol_fits_a_trained_vector_at_the_bands_mlp_outputs(tiny, mini_concept, tmp_path):
    from interp.measures import measure_of
    from interp.protocol import MethodSpec, run_method

    spec = MethodSpec("trained_vector", TrainConfig(model="tiny-random", concept=str(mini_concept), layers="1:2", steps=2,
                                                    n_pairs=200, objective="distill"))
    assert spec.fit_config().modules == ("mlp.out",)
    measure = measure_of(mini_concept)
    record = run_method(tiny, spec, measure, measure.splits(), tmp_path / "run", progress=False)
    assert record["method"] == "trained_vector" and record["config"]["class"] == "TrainedVector"
    assert record["training"]["n_sites"] == 2 and record["rows"][0]["budget"] == "n/a"


# --------------------------------------------------------------------------- the preference objective


def test_the_preference_loss_has_no_gradient_at_zero_and_its_sign_flips_with_c():
    from interp.losses import preference_loss

    gen = torch.Generator().manual_seed(0)
    lp_pos, lp_neg = torch.randn(6, generator=gen, requires_grad=True), torch.randn(6, generator=gen, requires_grad=True)
    ref_pos, ref_neg = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    loss = preference_loss(lp_pos, lp_neg, ref_pos, ref_neg, torch.zeros(6))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(torch.log(torch.tensor(2.0)).item())  # log 2 whatever the model does
    assert lp_pos.grad.abs().sum() == 0 and lp_neg.grad.abs().sum() == 0
    for c in (0.5, -0.5):  # +c asks for y+ over y-, -c for the opposite: descent moves the margin with c's sign
        a, b = lp_pos.detach().clone().requires_grad_(True), lp_neg.detach().clone().requires_grad_(True)
        preference_loss(a, b, ref_pos, ref_neg, torch.full((6,), c)).backward()
        assert ((-a.grad) * c > 0).all() and ((-b.grad) * c < 0).all()
    # relative to the base: a model equal to its reference pays log 2 at any c
    same = preference_loss(ref_pos, ref_neg, ref_pos, ref_neg, torch.full((6,), 0.7))
    assert float(same) == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_completion_logprob_and_the_kl_barrier_have_known_values():
    from interp.losses import completion_logprob, kl_barrier, kl_rows

    logits = torch.zeros(2, 4, 10)  # uniform over 10 tokens
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    marked = torch.tensor([[False, False, True, True], [False, True, True, True]])
    assert torch.allclose(completion_logprob(logits, tokens, marked), torch.full((2,), -torch.log(torch.tensor(10.0))))
    logits[0, 1, 3] = 50.0  # token 3 (predicted at position 1) almost certain: its log-prob is ~0
    assert completion_logprob(logits, tokens, marked)[0] == pytest.approx(-torch.log(torch.tensor(10.0)).item() / 2, abs=1e-4)
    with pytest.raises(ValueError, match="no completion"):
        completion_logprob(logits, tokens, torch.zeros(2, 4, dtype=torch.bool))
    base = torch.randn(2, 4, 10)
    assert torch.allclose(kl_rows(base, base + 1.0, torch.ones(2, 4, dtype=torch.bool)), torch.zeros(2), atol=1e-6)
    kl = torch.tensor([0.1, 0.9])
    assert float(kl_barrier(kl, torch.tensor([1.0, 1.0]), 0.5)) == pytest.approx(0.2)  # only the row above 0.5 pays
    assert float(kl_barrier(kl, torch.tensor([0.1, -1.0]), 0.5)) == pytest.approx((0.05 + 0.4) / 2)  # budget grows with |c|


def test_a_preference_batch_ends_each_context_with_each_completion(tiny):
    from interp.data import chat_text
    from interp.train.completions import pair_key, preference_batch

    pairs = [ContrastivePair("Be kind.", "Be cruel.", "Well,"), ContrastivePair("Be glad.", "Be sad.", "I think")]
    completions = {pair_key(p, ""): ([11, 12, 13], [21, 22]) for p in pairs}
    batch = preference_batch(tiny.tokenizer, pairs, completions)
    assert batch.tokens.shape[0] == 8 and batch.n == 2
    for row, y in ((0, [11, 12, 13]), (2, [21, 22]), (5, [11, 12, 13]), (7, [21, 22])):
        assert batch.tokens[row, -len(y):].tolist() == y and int(batch.completion[row].sum()) == len(y)
    context = tiny.tokenizer(chat_text(tiny.tokenizer, pairs[1].messages("rejected", "")), add_special_tokens=False)["input_ids"]
    assert batch.tokens[7, -2 - len(context):-2].tolist() == context  # the rejected context of pair 1, then y-


def test_the_personas_completions_are_cached_per_model(tiny, monkeypatch, tmp_path):
    from interp.train import completions as comp

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    pairs = [ContrastivePair("Be kind.", "Be cruel.", "Well,"), ContrastivePair("Be glad.", "Be sad.", "I think")]
    first = comp.persona_completions(tiny, pairs, concept="x", tokens=4)
    assert all(1 <= len(y) <= 4 for pos_neg in first.values() for y in pos_neg)
    assert comp.cache_file(tiny, "x", 4).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(comp, "generate_completions", refuse)
    assert comp.persona_completions(tiny, pairs[:1], concept="x", tokens=4) == {k: first[k] for k in list(first)[:1]}


SHORT_PREFERENCE = {**SHORT_DISTILL, "objective": "preference", "completion_tokens": 3, "steps": 16, "lr": 0.05,
                    "kl_allowed": 5.0, "preference_beta": 5.0}


@pytest.mark.parametrize("kind", ["innerpissa", "trained_vector"])
def test_a_short_preference_run_moves_the_preference_both_ways(tiny, tmp_path, monkeypatch, kind):
    """A toy where one direction controls the preference: every pair's chosen persona 'completes' with one token
    three times and the rejected persona with another (tiny-random's own completions differ at random from pair
    to pair, which no shared direction can learn). After a short run the steered model prefers the chosen
    completion at c = +1 and the other at c = -1 (relative to the base model) on pairs it never trained on, and
    c = 0 is the base model: the adapter and the trained vector both learn the two directions."""
    from interp.adapters.vector import attach as attach_vector
    from interp.train import objectives
    from interp.train.completions import pair_key

    monkeypatch.setattr(objectives, "persona_completions",
                        lambda model, pairs, **kw: {pair_key(p, kw["system"]): ([40, 40, 40], [90, 90, 90]) for p in pairs})
    config = TrainConfig.of(**SHORT_PREFERENCE, rank=8, max_angle=1.0)
    sites = select_sites(tiny, layers="1:2", modules=["attn.o", "mlp.out"] if kind == "innerpissa" else ["mlp.out"])
    adapter = attach(tiny, sites, config.adapter_config()) if kind == "innerpissa" else attach_vector(tiny, sites)
    split = build_pairs(config)
    try:
        result = train(tiny, adapter, split, config, out=tmp_path, progress=False)
        assert result.orientation == 1
        held_out = objectives.Preference(config)
        up, down = (float(held_out.margins(tiny, adapter, split.val[:8], c).mean()) for c in (1.0, -1.0))
        assert up > 0.1 and down < -0.1
        assert float(held_out.margins(tiny, adapter, split.val[:8], 0.0).abs().max()) < 1e-5  # c = 0 is the base model
    finally:
        adapter.detach()
