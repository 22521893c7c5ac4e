"""The shared command-line vocabulary, bfloat16 runs and device placement, across the entry points."""

from __future__ import annotations

import importlib

import pytest
import torch

ENTRY_POINTS = ("interp.cli.train", "interp.cli.evaluate", "interp.cli.generate", "interp.cli.export", "analyses.layer_sweep",
                "analyses.compare_methods", "analyses.recipe_search", "analyses.space_compare", "analyses.suppression",
                "analyses.rotation_norms")
SHARED = ("--model", "--device", "--dtype", "--out", "--no-progress")
RUN_SHARED = ("--seed", "--quick")  # every command that has randomness and a smaller version (not export)


def _help(module: str, capsys) -> str:
    mod = importlib.import_module(module)
    entry = getattr(mod, "parse_args", None) or mod.main
    with pytest.raises(SystemExit) as exit_:
        entry(["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_command_lists_the_shared_options(module, capsys):
    from interp.models import DEFAULT_MODEL

    text = _help(module, capsys)
    wanted = SHARED + (() if module == "interp.cli.export" else RUN_SHARED)
    missing = [o for o in wanted if o not in text]
    assert not missing, f"{module} --help lacks {missing}"
    assert "--limit" not in text and "--n-test" not in text and "--depths" not in text  # one name each: --n-eval, --layers
    if module != "interp.cli.export":  # export's default model is the adapter's own
        mod = importlib.import_module(module)
        parse = getattr(mod, "parse_args", None)
        if parse is not None and module not in ("interp.cli.generate", "interp.cli.export"):
            import argparse

            parsed = parse([])
            args = next(a for a in (parsed if isinstance(parsed, tuple) else (parsed,)) if isinstance(a, argparse.Namespace))
            assert args.model == DEFAULT_MODEL and args.device == "cpu" and args.dtype == "float32"


def test_bad_device_and_dtype_fail_in_the_parser(capsys):
    from interp.cli.train import parse_args

    for argv, said in ((["--device", "tpu"], "--device"), (["--dtype", "float64"], "--dtype")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_bfloat16_training_evaluation_and_an_analysis(mini_concept, tmp_path):
    """tiny-random in bfloat16 on the CPU: training (adapter parameters stay float32), evaluation, recipe search."""
    from interp.adapters.io import load_adapter, read_adapter_config
    from interp.cli.evaluate import main as evaluate
    from interp.models import load_model
    from interp.cli.train import main as train
    from analyses.recipe_search import main as search

    bf16 = ["--model", "tiny-random", "--dtype", "bfloat16", "--no-progress"]
    train([*bf16, "--quick", "--steps", "2", "--layers", "1:2", "--concept", str(mini_concept), "--out", str(tmp_path / "run")])
    model = load_model("tiny-random", dtype=torch.bfloat16)
    adapter = load_adapter(model, tmp_path / "run" / "adapter")
    assert {p.dtype for p in adapter.parameters()} == {torch.float32} and next(model.parameters()).dtype == torch.bfloat16
    assert read_adapter_config(tmp_path / "run" / "adapter")["calibration"]["sign"]["split"] == "calibration"
    adapter.detach()
    table = evaluate([*bf16, "--adapter", str(tmp_path / "run" / "adapter"), "--coeffs", "-1,1", "--concept", str(mini_concept),
                      "--split", "test", "--no-floor-check"])
    assert table["delta_target"].notna().all() and table["delta_nll"].notna().all()
    written = search([*bf16, "--concept", str(mini_concept), "--recipes", "single", "--steps", "2", "--no-budget",
                      "--out", str(tmp_path / "search"), "--figures", ""])
    from analyses._io import load_dataset

    ds = load_dataset(written["dataset"])
    assert ds.attrs["weight_hash"] and bool(ds["delta_target"].notnull().all())


def test_nothing_in_a_forward_pass_is_made_off_the_models_device(tiny, monkeypatch):
    """Tensors created without a device land on torch's default device. With that set to ``meta`` during
    every forward pass (the backend's ``run`` and ``decode``) while the model and its inputs live on the
    CPU, any tensor the code makes there without naming the model's device meets a CPU tensor in some op
    and fails. Forward passes with every kind of edit, a training step (all of it under ``meta``),
    DailyDilemmas and continuation scoring, a coherence cost and generation run clean."""
    from interp.adapters.innerpissa import InnerPiSSAConfig, attach
    from interp.adapters.lora import LoRAConfig
    from interp.adapters.lora import attach as attach_lora
    from interp.backends import run
    from interp.backends.bridge import BridgeBackend
    from interp.baselines import VectorSteering
    from interp.calibrate import coherence_cost
    from interp.continuations import load_items, score_continuations
    from interp.data import tokenize_pairs
    from interp.dilemmas import load_dilemmas
    from interp.measures.dilemma_scoring import EvalConfig, score_dilemmas
    from interp.generation import GenerateConfig, generate
    from interp.losses import gap_scale
    from interp.sites import Site, resid_hook
    from interp.train import TrainConfig, build_pairs, step_loss

    for name in ("run", "decode"):
        original = getattr(BridgeBackend, name)

        def on_meta(self, *args, _original=original, **kwargs):
            with torch.device("meta"):
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(BridgeBackend, name, on_meta)
    adapter = attach(tiny, [Site(1, "mlp.out"), Site(2, "attn.o")], InnerPiSSAConfig(rank=8))
    lora = attach_lora(tiny, [Site(3, "mlp.out")], LoRAConfig(rank=4))
    vectors = VectorSteering({1: torch.randn(64)})
    tokens, mask = torch.randint(0, 100, (4, 6)), torch.ones(4, 6, dtype=torch.long)
    rows = torch.tensor([1.0, -1.0, 0.0, 1.0])
    config = TrainConfig.of(model="tiny-random", rank=8, kl_weight=1.0, target="both", last_tokens=2)
    batch = tokenize_pairs(tiny.tokenizer, build_pairs(config).train[:2], system="")
    direction = torch.nn.functional.normalize(torch.randn(64), dim=0)
    scale = gap_scale(torch.ones(2))
    try:
        for edits in (adapter.edits(1.0), adapter.edits(rows), lora.edits(rows), vectors.edits(rows)):
            assert run(tiny, tokens, mask, edits, read=["blocks.1.hook_resid_post"]).logits.device.type == "cpu"
        with torch.device("meta"):
            loss, _ = step_loss(tiny, adapter, batch, direction, scale, config, hook=resid_hook(3))
            loss.backward()
        score_dilemmas(tiny, adapter, [-1.0, 0.0, 1.0], load_dilemmas().head(2), EvalConfig(batch_size=2), progress=False)
        score_continuations(tiny, vectors, [0.0, 1.0], load_items("sentiment").head(2), progress=False)
        coherence_cost(tiny, adapter, tokens, mask)(0.5)
        generate(tiny, adapter, ["Hi"], [-1.0, 1.0], GenerateConfig(max_new_tokens=3), progress=False)
    finally:
        adapter.detach()
        lora.detach()


@pytest.mark.parametrize("command", ["interp.train", "interp.evaluate", "interp.generate", "interp.export"])
def test_python_dash_m_runs_each_command(command):
    """``python -m interp.<command>`` keeps working: the package's __main__ runs the command line of interp.cli."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert f"usage: python -m {command}" in done.stdout and "--model" in done.stdout
