"""Steered generation: greedy parity with Hugging Face, one batch = separate runs, readouts, CLI."""

import math

import pytest
import torch

from interp.adapters import innerpissa, lora
from interp.baselines import MeanDiff, PromptSteering
from interp.cli.generate import main
from interp.generation import (
    PAD,
    GenerateConfig,
    continuation_nll,
    distinct_share,
    generate,
    prompt_chat,
    side_by_side,
)
from interp.models import load_hf
from interp.sites import Site
from conftest import tokenize_chats

PROMPTS = ["I broke my friend's vase. What should I tell her?", "Hi", "Tell me about your day in three sentences."]
SHORT = GenerateConfig(max_new_tokens=12)


def _hf_greedy(spec: str, prompt: str, n: int, model) -> list[int]:
    hf, tok = load_hf(spec)
    ids, mask = tokenize_chats(model, [prompt_chat(prompt)])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def _row_tokens(ds, p: int, c: float) -> list[int]:
    return [t for t in ds.tokens.sel(coeff=c).values[p].tolist() if t != PAD]


def _randomised(adapter, scale: float = 0.3):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return adapter


def test_c0_equals_plain_hf_greedy_generate_in_a_padded_batch(tiny):
    ds = generate(tiny, None, PROMPTS, [0.0], SHORT, progress=False)
    for i, prompt in enumerate(PROMPTS):
        assert _row_tokens(ds, i, 0.0) == _hf_greedy("tiny-random", prompt, 12, tiny)


@pytest.mark.parametrize("kind", ["vector", "innerpissa", "lora", "prompt"])
def test_mixed_coefficient_batch_equals_one_run_per_coefficient(tiny, kind):
    adapter = None
    if kind == "vector":
        method = MeanDiff({2: torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4})
    elif kind == "prompt":
        method = PromptSteering()
    else:
        module = {"innerpissa": innerpissa, "lora": lora}[kind]
        adapter = method = _randomised(module.attach(tiny, [Site(1, "mlp.out"), Site(2, "attn.o")]))
    try:
        coeffs = [-1.0, 0.0, 1.0]
        mixed = generate(tiny, method, PROMPTS, coeffs, SHORT, progress=False)
        texts = set()
        for c in coeffs:
            alone = generate(tiny, method, PROMPTS, [c], SHORT, progress=False)
            for p in range(len(PROMPTS)):
                assert _row_tokens(mixed, p, c) == _row_tokens(alone, p, c), (kind, c, p)
                texts.add(tuple(_row_tokens(mixed, p, c)))
        assert len(texts) > len(PROMPTS)  # the method did change something
    finally:
        if adapter is not None:
            adapter.detach()


def test_c0_rows_of_a_steered_batch_are_the_base_model(tiny):
    method = MeanDiff({1: torch.ones(64) * 5})
    base = generate(tiny, None, PROMPTS, [0.0], SHORT, progress=False)
    steered = generate(tiny, method, PROMPTS, [-1.0, 0.0, 1.0], SHORT, progress=False)
    for p in range(len(PROMPTS)):
        assert _row_tokens(steered, p, 0.0) == _row_tokens(base, p, 0.0)
        assert _row_tokens(steered, p, 1.0) != _row_tokens(base, p, 0.0)


def test_distinct_share_known_answers():
    assert distinct_share([1, 2, 3, 4]) == 1.0
    assert distinct_share([5, 5, 5, 5, 5]) == 0.25  # 4 bigrams, one distinct
    assert distinct_share([1, 2, 1, 2, 1]) == 0.5
    assert math.isnan(distinct_share([7]))


def test_continuation_nll_matches_a_direct_computation(tiny):
    ids, mask = tokenize_chats(tiny, [prompt_chat(p) for p in PROMPTS[:2]])
    new = torch.tensor([[11, 12, 13], [21, 22, PAD]])
    lengths = torch.tensor([3, 2])
    got = continuation_nll(tiny, ids, mask, new, lengths)
    for row in range(2):
        n = int(lengths[row])
        real = mask[row].bool()
        seq = torch.cat([ids[row][real], new[row, :n]])[None]
        with torch.no_grad():
            logp = torch.log_softmax(tiny(seq).float(), -1)[0]
        start = int(real.sum())
        want = -sum(float(logp[start - 1 + t, new[row, t]]) for t in range(n)) / n
        assert got[row].item() == pytest.approx(want, abs=1e-4)


def test_sampling_is_reproducible_from_its_seed(tiny):
    cfg = GenerateConfig(max_new_tokens=10, sample=True, temperature=1.0, top_p=0.9, seed=3)
    a = generate(tiny, None, PROMPTS[:2], [0.0], cfg, progress=False)
    b = generate(tiny, None, PROMPTS[:2], [0.0], cfg, progress=False)
    c = generate(tiny, None, PROMPTS[:2], [0.0], GenerateConfig(max_new_tokens=10, sample=True, seed=4), progress=False)
    assert (a.tokens.values == b.tokens.values).all()
    assert not (a.tokens.values == c.tokens.values[..., : a.tokens.shape[-1]]).all()


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="top_p"):
        GenerateConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        GenerateConfig(temperature=0)


def test_cli_writes_a_labelled_dataset_and_prints_columns(tmp_path, capsys):
    from interp.files import load_dataset

    ds = main(["--model", "tiny-random", "--prompt", "Hi", "--prompt", "Tell me a story.", "--coeffs", "0",
               "--max-new-tokens", "6", "--out", str(tmp_path), "--no-progress"])
    printed = capsys.readouterr().out
    assert "## Hi" in printed and "c=+0" in printed
    saved = load_dataset(tmp_path / "generations.nc")
    assert list(saved.prompt.values) == ["Hi", "Tell me a story."]
    assert (saved.n_tokens.values <= 6).all() and saved.attrs["model_spec"] == "tiny-random"
    assert "generation" in saved.attrs["config"]
    assert list(ds.coeff.values) == [0.0]
    assert "c=+0" in side_by_side(saved)


def test_cli_refuses_missing_prompts_and_bad_coefficients(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "tiny-random"])
    assert "--prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "tiny-random", "--prompt", "Hi", "--coeffs", "one"])
    assert "--coeffs" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_greedy_parity_and_default_adapter_changes_the_text(smol, tmp_path):
    from interp.train import TrainConfig, train_adapter

    prompts = ["I broke my friend's vase. What should I tell her?", "What do you think of my cooking?",
               "Describe a rainy Monday.", "My essay got a C. How should I feel?"]
    base = generate(smol, None, prompts[:2], [0.0], GenerateConfig(max_new_tokens=16), progress=False)
    for i, prompt in enumerate(prompts[:2]):
        assert _row_tokens(base, i, 0.0) == _hf_greedy("smollm2-135m", prompt, 16, smol)
    adapter, _ = train_adapter(smol, config=TrainConfig(concept="sentiment"), out=tmp_path, progress=False)
    try:
        ds = generate(smol, adapter, prompts, [-1.0, 0.0, 1.0], GenerateConfig(max_new_tokens=24), progress=False)
    finally:
        adapter.detach()
    changed = [all(_row_tokens(ds, p, c) != _row_tokens(ds, p, 0.0) for c in (-1.0, 1.0)) for p in range(len(prompts))]
    assert sum(changed) > len(prompts) / 2
    assert ds.nll_base.notnull().all() and ds.distinct_2.notnull().all()


def test_cli_reads_a_leading_minus_coefficient_list(capsys):
    ds = main(["--model", "tiny-random", "--prompt", "Hi", "--coeffs", "-1,0,1", "--max-new-tokens", "2", "--no-progress"])
    assert list(ds.coeff.values) == [-1.0, 0.0, 1.0]


def test_nnsight_backend_generates_the_bridges_tokens(tiny, tmp_path):
    from interp.adapters.io import load_adapter, save_adapter
    from interp.backends.nnsight import load_nnsight

    nn_model = load_nnsight("tiny-random")
    vector = MeanDiff({2: torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4})
    adapter = _randomised(innerpissa.attach(tiny, [Site(1, "mlp.out"), Site(2, "attn.o")]))
    save_adapter(adapter, tmp_path / "a")
    on_nn = load_adapter(nn_model, tmp_path / "a")  # the same adapter, attached to the nnsight model
    try:
        for method in (None, vector, adapter, PromptSteering()):
            coeffs = [0.0] if method is None else [-1.0, 0.0, 1.0]
            bridge = generate(tiny, method, PROMPTS, coeffs, SHORT, progress=False)
            nn = generate(nn_model, on_nn if method is adapter else method, PROMPTS, coeffs, SHORT, progress=False)
            for c in coeffs:
                for p in range(len(PROMPTS)):
                    assert _row_tokens(nn, p, c) == _row_tokens(bridge, p, c), (type(method).__name__, c, p)
            assert abs(nn.nll_base - bridge.nll_base).max() < 1e-3
    finally:
        adapter.detach()
        on_nn.detach()


def test_cli_on_the_nnsight_backend(tmp_path, capsys):
    ds = main(["--backend", "nnsight", "--model", "tiny-random", "--prompt", "Hi", "--coeffs", "0",
               "--max-new-tokens", "4", "--no-progress"])
    assert ds.n_tokens.values.max() <= 4 and "## Hi" in capsys.readouterr().out


def test_cli_fits_a_baseline_scaled_to_its_budget(mini_concept, capsys):
    from interp.provenance import read_json_attr

    ds = main(["--model", "tiny-random", "--method", "mean_diff", "--concept", str(mini_concept), "--layers", "1:2",
               "--budget", "0.3", "--prompt", "Hi", "--coeffs", "-1,0,1", "--max-new-tokens", "3", "--no-progress"])
    method = read_json_attr(ds.attrs, "config")["method"]
    assert method["name"] == "mean_diff" and method["options"]["budget_kl"] == 0.3 and method["options"]["strength"] > 0
    raw = main(["--model", "tiny-random", "--method", "mean_diff", "--concept", str(mini_concept), "--layers", "1:2",
                "--budget", "0", "--prompt", "Hi", "--coeffs", "1", "--max-new-tokens", "3", "--no-progress"])
    assert "strength" not in read_json_attr(raw.attrs, "config")["method"]["options"]


def test_two_generations_into_one_folder_one_proceeds(tmp_path, hold_folder, capsys):
    """--out is held from the start of the run: while another run holds it (a live process), a second generation is
    refused at once, naming the holder, and writes nothing; once it is free the generation proceeds."""
    out = tmp_path / "gen"
    proc = hold_folder(out)
    args = ["--model", "tiny-random", "--prompt", "Hi", "--coeffs", "0", "--max-new-tokens", "2", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit):
        main(args)
    assert f"pid {proc.pid}" in capsys.readouterr().err and not (out / "generations.nc").exists()
    proc.kill()
    proc.wait()
    main(args)
    assert (out / "generations.nc").is_file() and (out / "generations.md").is_file()
