"""Training loop on tiny-random: loss goes down, validation separation is ordered, resume is exact.

The loop trains any AdapterSet; a minimal LoRA-like stand-in (``ToyAdapter``, ΔW(c) = c·B·A
through forward hooks on the raw Linear) exercises it here, and the same tests run on
InnerPiSSA when ``interp.adapters.innerpissa`` is present.
"""

from __future__ import annotations

import json
from dataclasses import replace

from pathlib import Path

import pytest
import torch
from torch import nn

from interp.data import make_pairs, split_by_suffix
from interp.backends import linear_of, select_sites
from interp.adapters.base import AdapterSet, DeltaLayer
from interp.cli.train import parse_args
from interp.train import (
    CHECKPOINT,
    LOG,
    TrainConfig,
    build_pairs,
    loss_layer_of,
    lr_factor,
    site_basis,
    train,
)


class ToyLayer(DeltaLayer):
    """ΔW(c) = c · B A: linear in c, so it exercises the loop without InnerPiSSA's maths."""

    def __init__(self, site, weight, rank: int, generator: torch.Generator):
        super().__init__()
        self.site = site
        self.A = nn.Parameter(torch.randn(rank, weight.shape[1], generator=generator) * 0.02)
        self.B = nn.Parameter(torch.randn(weight.shape[0], rank, generator=generator) * 0.02)

    def delta(self, x, coeff):
        c = coeff.to(x.dtype).view(-1, 1, 1) if isinstance(coeff, torch.Tensor) else float(coeff)
        return c * (x @ self.A.T @ self.B.T)

    def delta_weight(self, coeff):
        return float(coeff) * (self.B @ self.A)


class ToyAdapter(AdapterSet):
    """Minimal AdapterSet: y += c · x Aᵀ Bᵀ per site (the c = 0 model is the base model)."""

    name = "toy"

    def __init__(self, model, sites, rank: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        super().__init__(model, sites, [ToyLayer(s, linear_of(model, s).weight, rank, g) for s in sites])

    def diagnostics(self):
        return [{"site": s.name, "norm_B": float(self.layers[s.name.replace(".", "_")].B.detach().norm())} for s in self.sites]


def _innerpissa(model, sites, seed):
    mod = pytest.importorskip("interp.adapters.innerpissa")
    return mod.attach(model, sites, mod.InnerPiSSAConfig(rank=8, seed=seed))


ADAPTERS = {"toy": lambda model, sites, seed: ToyAdapter(model, sites, seed=seed), "innerpissa": _innerpissa}


def _params(adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.layers.named_parameters()}


# ----------------------------------------------------------------------------- pure parts


def test_lr_schedule_warmup_then_cosine():
    # 10 steps, warmup 0.2 -> 2 warmup steps
    assert [round(lr_factor(s, 10, 0.2), 6) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 0.2) == 1.0
    assert abs(lr_factor(6, 10, 0.2) - 0.5) < 1e-12  # half way through the cosine
    assert lr_factor(10, 10, 0.2) == 0.0
    assert lr_factor(0, 10, 0.0) == 1.0


def test_config_and_cli_errors(capsys):
    with pytest.raises(ValueError, match="valid spaces"):
        TrainConfig(space="hs")
    with pytest.raises(ValueError, match="valid losses"):
        TrainConfig(loss="dpo")
    with pytest.raises(ValueError, match="valid modules"):
        TrainConfig(modules=("mlp.down",))
    with pytest.raises(SystemExit):
        parse_args(["--space", "hs"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--modules", "mlp.down"])
    assert "valid modules" in capsys.readouterr().err
    config, args = parse_args(["--space", "dHS@U", "--loss", "logsigmoid", "--no-rotate-v", "--rotate-u",
                               "--scaling", "mult", "--layers", "0.3,0.5", "--steps", "3", "--resume"])
    assert (config.space, config.loss, config.adapter.rotate_v, config.adapter.rotate_u, config.adapter.scaling, config.layers,
            config.steps) == (
        "dHS@U", "logsigmoid", False, True, "mult", "0.3,0.5", 3)
    assert args.resume


def test_loss_layer_and_site_basis(tiny):
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    assert loss_layer_of(tiny, sites, None) == 1
    assert loss_layer_of(tiny, sites, 3) == 3
    with pytest.raises(ValueError, match="before"):
        loss_layer_of(tiny, sites, 0)
    site, U = site_basis(tiny, sites, 2, rank=8)
    assert site == sites[0] and U.shape == (64, 8)
    assert torch.allclose(U.T @ U, torch.eye(8), atol=1e-5)
    with pytest.raises(ValueError, match="residual stream"):
        site_basis(tiny, select_sites(tiny, layers=[1], modules=["mlp.in"]), 2, rank=8)


# ----------------------------------------------------------------------------- tiny-random runs

# frozen persona pairs: the loop is under test, not the shipped concepts (rewritten as they evolve)
LOOP_CONCEPT = str(Path(__file__).parent / "data" / "honesty_v1.json")
SHORT = dict(model="tiny-random", concept=LOOP_CONCEPT, n_pairs=200, n_calibration=16, n_validation=16, rank=8, lr=0.05, steps=16, batch_size=4)


@pytest.mark.parametrize("kind", ["toy", "innerpissa"])
def test_short_run_lowers_loss_and_orders_validation(tiny, tmp_path, kind):
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    config = TrainConfig.of(**SHORT, seed=0, diagnostics_every=8, checkpoint_every=8)
    base = linear_of(tiny, sites[0]).weight.detach().clone()
    adapter = ADAPTERS[kind](tiny, sites, 0)
    try:
        result = train(tiny, adapter, build_pairs(config), config, out=tmp_path, progress=False)
    finally:
        adapter.detach()
    losses = [r["loss"] for r in result.history]
    assert len(losses) == config.steps
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    m = result.metrics
    assert m["gap@-1"] < m["gap@+0"] < m["gap@+1"] and m["ordered"] == 1.0
    assert adapter.orientation == result.orientation in (1, -1)
    # the base weight is untouched and trainable again afterwards
    assert torch.equal(linear_of(tiny, sites[0]).weight, base)
    assert all(p.requires_grad for p in tiny.parameters())
    # JSONL log: one line per step, diagnostics every 8 steps
    lines = [json.loads(x) for x in (tmp_path / LOG).read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 17))
    assert [r["step"] for r in lines if "diagnostics" in r] == [8, 16]
    extra = result.training_extra()
    assert extra["orientation"] == result.orientation and len(extra["pairs_hash"]) == 16
    json.dumps(extra)


@pytest.mark.parametrize("kind", ["toy", "innerpissa"])
def test_kill_and_resume_is_bit_exact(tiny, tmp_path, kind):
    sites = select_sites(tiny, layers=[1, 2], modules=["mlp.out"])
    config = TrainConfig.of(**{**SHORT, "steps": 5, "batch_size": 2, "n_calibration": 4, "n_validation": 4},
                         seed=1, checkpoint_every=2)
    pairs = build_pairs(config)

    full = ADAPTERS[kind](tiny, sites, 1)
    try:
        ref = train(tiny, full, pairs, config, out=tmp_path / "full", progress=False)
        want = _params(full)
    finally:
        full.detach()

    class Killed(Exception):
        pass

    def kill_at_3(record):
        if record["step"] == 3:  # checkpoint at step 2 exists; step 3 is lost
            raise Killed

    first = ADAPTERS[kind](tiny, sites, 1)
    try:
        with pytest.raises(Killed):
            train(tiny, first, pairs, config, out=tmp_path / "run", progress=False, callback=kill_at_3)
    finally:
        first.detach()
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 2

    second = ADAPTERS[kind](tiny, sites, 1)  # a fresh process would build the same fresh adapter
    try:
        got = train(tiny, second, pairs, config, out=tmp_path / "run", resume=True, progress=False)
        have = _params(second)
    finally:
        second.detach()
    assert set(have) == set(want)
    for name in want:
        assert torch.equal(have[name], want[name]), name
    assert [r["loss"] for r in got.history] == [r["loss"] for r in ref.history]
    assert got.metrics == ref.metrics and got.orientation == ref.orientation
    assert len((tmp_path / "run" / LOG).read_text().splitlines()) == 5


def test_resume_without_checkpoint_is_an_error(tiny, tmp_path):
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    adapter = ToyAdapter(tiny, sites)
    try:
        with pytest.raises(ValueError, match="checkpoint"):
            train(tiny, adapter, build_pairs(TrainConfig.of(**SHORT)), TrainConfig.of(**SHORT), out=tmp_path, resume=True)
    finally:
        adapter.detach()


def test_resume_with_other_settings_is_an_error(tiny, tmp_path):
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    config = TrainConfig.of(**{**SHORT, "steps": 2, "n_calibration": 4, "n_validation": 4}, checkpoint_every=1)
    pairs = build_pairs(config)
    for cfg, resume in [(config, False), (replace(config, checkpoint_every=2), True)]:  # cadence may change
        adapter = ToyAdapter(tiny, sites)
        try:
            train(tiny, adapter, pairs, cfg, out=tmp_path, resume=resume, progress=False)
        finally:
            adapter.detach()
    adapter = ToyAdapter(tiny, sites)
    try:
        with pytest.raises(ValueError, match="lr 0.05 in the checkpoint, 0.1 now"):
            train(tiny, adapter, pairs, replace(config, lr=0.1), out=tmp_path, resume=True, progress=False)
    finally:
        adapter.detach()


def test_dhs_u_space_and_logsigmoid_run(tiny):
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    config = TrainConfig.of(**{**SHORT, "steps": 2, "batch_size": 2, "n_calibration": 4, "n_validation": 4},
                         space="dHS@U", loss="logsigmoid", loss_layer=2)
    adapter = ToyAdapter(tiny, sites)
    try:
        result = train(tiny, adapter, split_by_suffix(make_pairs(n_pairs=60), 0.2), config, progress=False)
    finally:
        adapter.detach()
    assert result.direction.shape == (8,)  # lives in the r-dim U space
    assert result.loss_hook == "blocks.2.hook_resid_post"
    assert all(0 < r["proj"] < 1 for r in result.history)  # -log σ(x) with |x| small is near log 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


def test_cli_calibrates_the_sign_on_the_concept_measure(mini_concept, tmp_path):
    from interp.adapters.io import read_adapter_config
    from interp.cli.train import main

    args = ["--model", "tiny-random", "--concept", str(mini_concept), "--layers", "1", "--steps", "2", "--n-pairs", "40",
            "--no-progress"]
    main([*args, "--out", str(tmp_path / "cal")])
    sign = read_adapter_config(tmp_path / "cal" / "adapter")["calibration"]["sign"]
    assert sign["measure"] == "sentiment margin" and sign["split"] == "calibration" and sign["n"] == 4
    assert sign["flipped"] == (sign["score_pos"] < sign["score_neg"])  # +1 must score above -1 after calibration
    main([*args, "--out", str(tmp_path / "raw"), "--no-calibrate"])
    assert "calibration" not in read_adapter_config(tmp_path / "raw" / "adapter")


@pytest.mark.parametrize("space", ["dHS", "dHS@U"])
def test_antisym_loss_runs_and_is_bounded(tiny, space):
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    config = TrainConfig.of(**{**SHORT, "steps": 2, "batch_size": 2, "n_calibration": 4, "n_validation": 4},
                         space=space, loss="antisym", loss_layer=2)
    adapter = ToyAdapter(tiny, sites)
    try:
        result = train(tiny, adapter, split_by_suffix(make_pairs(n_pairs=60), 0.2), config, progress=False)
    finally:
        adapter.detach()
    assert all(-1 - 1e-6 <= r["proj"] <= 1 + 1e-6 for r in result.history)  # a mean of cosine products
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny, tmp_path):
    """A pickle payload planted as the checkpoint is refused by the weights-only loader and never runs."""
    import os
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    run.mkdir()
    with open(run / CHECKPOINT, "wb") as fh:
        pickle.dump({"step": 1, "x": Payload()}, fh, protocol=2)
    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    adapter = ToyAdapter(tiny, sites)
    try:
        with pytest.raises(ValueError, match="not a checkpoint this version wrote"):
            train(tiny, adapter, split_by_suffix(make_pairs(n_pairs=40), 0.2),
                  TrainConfig.of(**{**SHORT, "steps": 2, "batch_size": 2, "n_calibration": 4, "n_validation": 4}),
                  out=run, resume=True, progress=False)
    finally:
        adapter.detach()
    assert not marker.exists()


def _checkpointed_run(model, tmp_path):
    sites = select_sites(model, layers=[1], modules=["mlp.out"])
    config = TrainConfig.of(**{**SHORT, "steps": 2, "n_calibration": 4, "n_validation": 4}, checkpoint_every=1)
    adapter = ToyAdapter(model, sites)
    try:
        train(model, adapter, build_pairs(config), config, out=tmp_path, progress=False)
    finally:
        adapter.detach()
    return sites, config


def test_resume_on_other_base_weights_is_refused(tiny, tmp_path):
    from interp.models import load_model

    _, config = _checkpointed_run(tiny, tmp_path)
    other = load_model("tiny-random:1")  # same spec family and shapes, other weights
    adapter = ToyAdapter(other, select_sites(other, layers=[1], modules=["mlp.out"]))
    try:
        with pytest.raises(ValueError, match="other base weights"):
            train(other, adapter, build_pairs(config), config, out=tmp_path, resume=True, progress=False)
    finally:
        adapter.detach()


def test_resume_from_a_checkpoint_without_config_is_refused(tiny, tmp_path):
    sites, config = _checkpointed_run(tiny, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / CHECKPOINT)
    adapter = ToyAdapter(tiny, sites)
    try:
        with pytest.raises(ValueError, match="records no training config"):
            train(tiny, adapter, build_pairs(config), config, out=tmp_path, resume=True, progress=False)
    finally:
        adapter.detach()


def test_read_states_averages_the_last_suffix_tokens():
    from interp.data import PairBatch
    from interp.train import read_states

    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    # row 0: suffix at positions 2..4; row 1 (left padded): suffix at 3..4 only
    suffix = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    batch = PairBatch(tokens=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long),
                      last=torch.tensor([4, 4]), suffix_mask=suffix)
    assert torch.equal(read_states(x, batch, 1), x[:, 4])
    got = read_states(x, batch, 3)
    assert torch.allclose(got[0], x[0, 2:5].mean(0)) and torch.allclose(got[1], x[1, 3:5].mean(0))  # the suffix bounds it


@pytest.mark.parametrize("kind", ["toy", "innerpissa"])
def test_kl_term_is_the_weighted_next_token_kl_of_both_directions(tiny, kind):
    from interp.calibrate import next_token_kl
    from interp.data import tokenize_pairs
    from interp.losses import gap_scale
    from interp.sites import resid_hook
    from interp.train import step_loss

    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    adapter = ADAPTERS[kind](tiny, sites, 0)
    try:
        with torch.no_grad():  # move the adapter off its near-identity start so the KL is not ~0
            for p in adapter.parameters():
                p.add_(torch.randn_like(p) * 3.0)
        config = TrainConfig.of(**SHORT)
        batch = tokenize_pairs(tiny.tokenizer, build_pairs(config).train[:4], system="")
        direction = torch.nn.functional.normalize(torch.randn(int(tiny.cfg.d_model)), dim=0)
        kw = dict(hook=resid_hook(2))
        plain, _ = step_loss(tiny, adapter, batch, direction, gap_scale(torch.ones(4)), config, **kw)
        loss, parts = step_loss(tiny, adapter, batch, direction, gap_scale(torch.ones(4)), replace(config, kl_weight=2.0), **kw)
        with torch.no_grad():
            base = tiny(batch.tokens, attention_mask=batch.attention_mask)
            expect = []
            for c in (1.0, -1.0):
                with adapter.steer(tiny, c):
                    expect.append(float(next_token_kl(base, tiny(batch.tokens, attention_mask=batch.attention_mask),
                                                      batch.attention_mask)))
        assert parts["kl_pos"] == pytest.approx(expect[0], rel=1e-3) and parts["kl_neg"] == pytest.approx(expect[1], rel=1e-3)
        assert min(expect) > 1e-4
        assert float(loss - plain) == pytest.approx(2.0 * (expect[0] + expect[1]) / 2, rel=1e-3)
        # kl_span="prompt": only the positions before the assistant suffix count
        _, prompt = step_loss(tiny, adapter, batch, direction, gap_scale(torch.ones(4)),
                              replace(config, kl_weight=2.0, kl_span="prompt"), **kw)
        with torch.no_grad(), adapter.steer(tiny, 1.0):
            span = batch.attention_mask.bool() & ~batch.suffix_mask
            want = float(next_token_kl(base, tiny(batch.tokens, attention_mask=batch.attention_mask), span))
        assert prompt["kl_pos"] == pytest.approx(want, rel=1e-3) and abs(want - expect[0]) > 1e-6
    finally:
        adapter.detach()


def test_loss_points_a_common_shift_is_invisible_to_the_gap_but_not_to_the_shift_target():
    from interp.losses import projection_loss
    from interp.train import loss_points

    torch.manual_seed(0)
    n, d = 3, 5
    h_ref = torch.randn(2 * n, d)
    direction = torch.nn.functional.normalize(torch.randn(d), dim=0)
    # +c moves every row (chosen and rejected alike) along the direction; -c the other way
    h_pos, h_neg = h_ref + 2.0 * direction, h_ref - 2.0 * direction
    gap = loss_points(h_pos, h_neg, h_ref, n, "gap")
    shift = loss_points(h_pos, h_neg, h_ref, n, "shift")
    both = loss_points(h_pos, h_neg, h_ref, n, "both")
    assert gap[0].shape == (n, d) and shift[0].shape == (2 * n, d) and both[0].shape == (3 * n, d)
    assert torch.allclose(gap[2], h_ref[:n] - h_ref[n:]) and torch.equal(shift[2], h_ref)
    assert torch.equal(both[0], torch.cat([gap[0], shift[0]]))
    sep = {name: float(projection_loss(*(p @ direction for p in pts), scale=1.0).separation)
           for name, pts in (("gap", gap), ("shift", shift))}
    assert sep["gap"] == pytest.approx(0.0, abs=1e-5) and sep["shift"] == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ValueError, match="valid targets"):
        TrainConfig(target="rows")


def test_training_leaves_the_global_random_generators_alone(tiny):
    import random

    import numpy as np

    sites = select_sites(tiny, layers=[1], modules=["mlp.out"])
    config = TrainConfig.of(**{**SHORT, "steps": 2, "n_calibration": 4, "n_validation": 4})
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    adapter = ToyAdapter(tiny, sites)
    try:
        train(tiny, adapter, build_pairs(config), config, progress=False)
    finally:
        adapter.detach()
    assert torch.equal(torch.get_rng_state(), states[0]) and (np.random.get_state()[1] == states[1]).all()
    assert random.getstate() == states[2]
