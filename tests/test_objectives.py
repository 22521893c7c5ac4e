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
