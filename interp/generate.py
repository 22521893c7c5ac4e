"""What does a steered model *say*? Batched, KV-cached generation at several coefficients.

Every prompt is generated at every coefficient in one batch, one coefficient per row:
adapters and steering vectors take a ``[batch]`` coefficient tensor, and prompting
rewrites each row's chat (:meth:`interp.steering.SteeringMethod.messages`), so all
methods go through the same two calls of the steering interface. Rows are left-padded;
positions follow the attention mask, so a padded row decodes as it would alone.

Each continuation gets a coherence readout: its mean NLL under the *unsteered* model
in the *unsteered* chat (a +c that derails shows as a high NLL even where the text
looks fluent) and its share of distinct bigrams (repetition shows as a low share).

    python -m interp.generate --adapter runs/default/adapter --prompt "I broke my friend's vase. What should I tell her?"
    python -m interp.generate --method mean_diff --concept sentiment --prompt "Tell me about your day." --coeffs -1,0,1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends import backend_of, run
from interp.steering import Messages, NoSteering, SteeringMethod

VECTOR_METHODS = ("pca", "mean_diff", "s_mean_diff", "random")
METHODS = (*VECTOR_METHODS, "prompt")
PAD = -1  # token id stored after a row's end in the dataset's ``tokens``


@dataclass(frozen=True)
class GenerateConfig:
    """Decoding settings. Greedy unless ``sample``; ``seed`` fixes sampling."""

    max_new_tokens: int = 64
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    system: str | None = None
    batch_size: int = 48

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- decoding


@contextmanager
def kv_cache_passthrough(model) -> Iterator[None]:
    """Let the bridge's attention components see the Hugging Face KV cache.

    TransformerLens 4.3's attention bridge looks for the cache under ``past_key_values``
    (or ``layer_past``), but transformers 5.x decoder layers hand it over as ``cache``;
    without this the cache stays empty and every cached decoding step attends to its own
    token only (the bridge's own ``generate`` degenerates the same way). The pre-hook copies
    ``cache`` to ``past_key_values`` where the latter is missing, and does nothing otherwise,
    so it stays correct once the libraries agree.
    """

    def hook(module, args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
               for m in model.modules() if hasattr(type(m), "_update_kv_cache")]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def eos_ids(model) -> set[int]:
    """Token ids that end a continuation: the tokenizer's EOS and the generation config's."""
    backend = backend_of(model)
    ids: set[int] = set()
    tok_eos = getattr(backend.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen = getattr(backend.hf_model(), "generation_config", None)
    cfg_eos = getattr(gen, "eos_token_id", None)
    if cfg_eos is not None:
        ids.update(int(i) for i in (cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]))
    return ids


def _next_token(logits: Float[Tensor, "batch vocab"], config: GenerateConfig, generator: torch.Generator | None) -> Tensor:
    if not config.sample:
        return logits.argmax(-1)
    # transformers' warpers: the same temperature / nucleus rules as its own generate
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(config.temperature)(None, logits.float())
    if config.top_p < 1:
        scores = TopPLogitsWarper(config.top_p)(None, scores)
    probs = torch.softmax(scores, -1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def decode(
    model,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    config: GenerateConfig = GenerateConfig(),
    *,
    eos: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Int[Tensor, "batch new"], Int[Tensor, " batch"]]:
    """Continue left-padded prompts with the bridge as it is now (hooks included), KV-cached.

    Returns the new tokens (``PAD`` after each row's end; the EOS token is kept) and each
    row's length. Steering is whatever is active around the call (see
    :meth:`interp.backends.Backend.decode`, which applies a method's edits around it).
    """
    device = backend_of(model).device
    ids, mask = tokens.to(device), attention_mask.to(device)
    stop = torch.tensor(sorted(eos_ids(model) if eos is None else eos), device=device, dtype=torch.long)
    batch = ids.shape[0]
    out = torch.full((batch, config.max_new_tokens), PAD, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    past = None
    step_ids = ids
    with kv_cache_passthrough(model), warnings.catch_warnings():
        # the bridge hands HF the cache under its pre-5.x name; HF still takes it, with a warning per step
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        for step in tqdm(range(config.max_new_tokens), desc="generating", disable=not progress, leave=False):
            logits, past = model(step_ids, attention_mask=mask, past_key_values=past,
                                 return_type="logits_and_cache", use_cache=True)
            nxt = _next_token(logits[:, -1], config, generator)
            out[:, step] = torch.where(done, torch.full_like(nxt, PAD), nxt)
            lengths += (~done).long()
            done |= torch.isin(nxt, stop)
            if bool(done.all()):
                break
            step_ids = torch.where(done, torch.zeros_like(nxt), nxt)[:, None]
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
    return out[:, : int(lengths.max())].cpu(), lengths.cpu()


# --------------------------------------------------------------------------- readouts


@torch.no_grad()
def continuation_nll(
    model,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    new_tokens: Int[Tensor, "batch new"],
    lengths: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """Mean NLL (nats/token) of each continuation after its prompt, under the model as it is now."""
    n_new = new_tokens.shape[1]
    steps = torch.arange(n_new)
    new_mask = (steps[None] < lengths[:, None]).long()
    ids = torch.cat([tokens, new_tokens.clamp(min=0)], 1)
    mask = torch.cat([attention_mask, new_mask], 1)
    logp = torch.log_softmax(run(model, ids, mask).logits.float(), -1)
    start = tokens.shape[1]
    # logits at position t predict token t + 1
    pred = logp[:, start - 1 : start - 1 + n_new].cpu()
    picked = pred.gather(-1, new_tokens.clamp(min=0)[..., None]).squeeze(-1)
    total = (-(picked * new_mask)).sum(1)
    return total / lengths.clamp(min=1)


def distinct_share(tokens: Sequence[int], n: int = 2) -> float:
    """Share of distinct n-grams among a continuation's n-grams (1: no repeats; NaN if too short)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


# --------------------------------------------------------------------------- generation


def prompt_chat(prompt: str, system: str | None = None) -> Messages:
    """A one-turn chat for ``prompt`` (``system``: an optional system message)."""
    chat: Messages = [{"role": "system", "content": system}] if system else []
    return [*chat, {"role": "user", "content": prompt}]


def generate(
    model,
    method: SteeringMethod | None,
    prompts: Sequence[str],
    coeffs: Sequence[float] = (-1.0, 0.0, 1.0),
    config: GenerateConfig = GenerateConfig(),
    *,
    progress: bool = True,
) -> xr.Dataset:
    """Every prompt at every coefficient; a dataset with dims ``(prompt, coeff)``.

    Variables: ``text`` (the continuation, special tokens dropped), ``tokens`` (ids, ``PAD``
    after the end, dim ``step``), ``n_tokens``, ``nll_base`` (mean NLL under the unsteered
    model in the unsteered chat) and ``distinct_2`` (distinct bigram share). Attrs hold the
    provenance, the method's config and the decoding settings.
    """
    from interp.data import encode_chats
    from interp.provenance import provenance

    if not prompts:
        raise ValueError("no prompts given: pass at least one")
    coeffs = [float(c) for c in coeffs]
    if not coeffs:
        raise ValueError("no coefficients given, e.g. -1,0,1")
    method = method or NoSteering()
    backend = backend_of(model)
    eos = sorted(eos_ids(backend))
    rows = [(p, c) for p in range(len(prompts)) for c in coeffs]
    base_chats = [prompt_chat(prompts[p], config.system) for p, _ in rows]
    chats = [method.messages(chat, c) for chat, (_, c) in zip(base_chats, rows)]
    generator = torch.Generator().manual_seed(config.seed) if config.sample else None

    new_rows: list[list[int]] = []
    nll: list[float] = []
    chunks = range(0, len(rows), config.batch_size)
    for start in tqdm(chunks, desc="batches", disable=not progress or len(chunks) == 1, leave=False):
        part = slice(start, start + config.batch_size)
        enc = encode_chats(backend.tokenizer, chats[part], continue_final=False)
        ids, mask = enc.tokens, enc.attention_mask
        c = torch.tensor([c for _, c in rows[part]], dtype=torch.float32, device=backend.device)
        new, lengths = backend.decode(ids, mask, method.edits(c), config, eos=eos, generator=generator,
                                      seed=config.seed + start, progress=progress)
        base = encode_chats(backend.tokenizer, base_chats[part], continue_final=False)
        base_ids, base_mask = base.tokens, base.attention_mask
        nll += continuation_nll(model, base_ids, base_mask, new, lengths).tolist()
        new_rows += [new[i, : int(lengths[i])].tolist() for i in range(new.shape[0])]

    tok = model.tokenizer
    width = max(len(r) for r in new_rows)
    shape = (len(prompts), len(coeffs))
    token_array = np.full((*shape, width), PAD, dtype=np.int64)
    texts = np.empty(shape, dtype=object)
    for i, ((p, c), toks) in enumerate(zip(rows, new_rows)):
        j = coeffs.index(c)
        token_array[p, j, : len(toks)] = toks
        texts[p, j] = tok.decode(toks, skip_special_tokens=True).strip()
    ds = xr.Dataset(
        {
            "text": (("prompt", "coeff"), texts.astype(str)),
            "tokens": (("prompt", "coeff", "step"), token_array),
            "n_tokens": (("prompt", "coeff"), np.array([len(t) for t in new_rows]).reshape(shape)),
            "nll_base": (("prompt", "coeff"), np.array(nll).reshape(shape)),
            "distinct_2": (("prompt", "coeff"), np.array([distinct_share(t) for t in new_rows]).reshape(shape)),
        },
        coords={"prompt": list(prompts), "coeff": coeffs},
    )
    ds.attrs.update(provenance(model, config={"method": method.config(), "generation": asdict(config)}, seed=config.seed))
    return ds


def side_by_side(ds: xr.Dataset, width: int = 36) -> str:
    """A plain-text table: one block per prompt, one wrapped column per coefficient."""
    blocks = []
    for p in ds.prompt.values:
        cols = []
        for c in ds.coeff.values:
            row = ds.sel(prompt=p, coeff=c)
            head = f"c={float(c):+g} NLL {float(row.nll_base):.2f} distinct {float(row.distinct_2):.2f}"
            cols.append([head[:width].ljust(width), "-" * width, *(textwrap.wrap(str(row.text.values), width) or [""])])
        depth = max(len(col) for col in cols)
        lines = [" | ".join((col[i] if i < len(col) else "").ljust(width) for col in cols).rstrip() for i in range(depth)]
        blocks.append("\n".join([f"## {p}", *lines]))
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- methods


def fitted_method(model, name: str, concept: str, *, layers: str | None = None, seed: int = 0,
                  budget: float | None = 0.3) -> SteeringMethod:
    """A baseline fitted on the concept's pairs as the comparisons fit it.

    Vectors are scaled so that ``c = ±1`` costs ``budget`` nats of next-token KL on the
    concept's calibration prompts (``None``: the raw fitted vectors); prompting uses the
    concept's own wording.
    """
    from interp.measures import measure_of, measure_splits, prompt_method
    from interp.protocol import calibrate_method_strength, fit_vector_method
    from interp.train import TrainConfig

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHODS)}")
    measure = measure_of(concept)
    if name == "prompt":
        return prompt_method(measure)
    train_config = TrainConfig(concept=concept, seed=seed, **({"layers": layers} if layers else {}))
    method = fit_vector_method(model, name, train_config, seed)
    if budget is not None:
        calibration = measure_splits(measure)["calibration"]
        strength = float(calibrate_method_strength(model, method, calibration, budget, measure=measure))
        # the vectors themselves scaled: c = 1 is the budget on every backend
        method = type(method)({L: v * strength for L, v in method.vectors.items()}, model_spec=method.model_spec,
                              options={**method.options, "strength": strength, "budget_kl": budget})
    return method


# --------------------------------------------------------------------------- CLI


def read_prompts(prompt: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """``--prompt`` values, then the lines (or a JSON list) of ``--prompts FILE``; ``ValueError`` naming a bad file."""
    prompts = list(prompt or [])
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts {path}: no such file")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            loaded = json.loads(text)
            if not isinstance(loaded, list) or not all(isinstance(s, str) for s in loaded):
                raise ValueError(f"--prompts {path}: a .json prompts file must hold a list of strings")
            prompts += loaded
        else:
            prompts += [line.strip() for line in text.splitlines() if line.strip()]
    return prompts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from interp.cli import add_shared_args, float_list, join_negative_values, positive_int

    d = GenerateConfig()
    p = argparse.ArgumentParser(prog="python -m interp.generate", description=__doc__.split("\n\n")[0])
    add_shared_args(p, out="folder for generations.nc and generations.md (default: print only)",
                    seed="sampling and fitting seed", quick="16 new tokens: a smoke run",
                    layers="layers of a --method vector (default: the training default's band)", backends=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, help="a saved adapter folder (InnerPiSSA or LoRA)")
    which.add_argument("--method", choices=METHODS, default=None, help="a baseline fitted on --concept's pairs")
    p.add_argument("--concept", default="honesty", help="concept the --method baseline is fitted on")
    p.add_argument("--budget", type=float, default=0.3,
                   help="scale --method vectors so c = 1 costs this many nats of KL (0: raw vectors)")
    p.add_argument("--prompt", action="append", help="a user message (repeatable)")
    p.add_argument("--prompts", default=None, help="a file of prompts: one per line, or a .json list")
    p.add_argument("--coeffs", type=float_list, default=[-1.0, 0.0, 1.0], help="comma-separated coefficients")
    p.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--system", default=None, help="a system message for every prompt")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="rows per batched generation")
    p.add_argument("--width", type=positive_int, default=36, help="column width of the printed table")
    args = p.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, ["--coeffs"]))
    if not args.prompt and not args.prompts:
        p.error("give at least one --prompt TEXT or --prompts FILE")
    if args.remote:
        p.error("generation runs on a local model; drop --remote (use --backend nnsight for a local nnsight model)")
    try:
        args.prompt_list = read_prompts(args.prompt, args.prompts)
        args.config = GenerateConfig(max_new_tokens=16 if args.quick else args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                                     top_p=args.top_p, seed=args.seed, system=args.system, batch_size=args.batch_size)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> xr.Dataset:
    from interp.cli import model_from_args

    from interp.adapters.io import load_adapter

    args = parse_args(argv)
    prompts = args.prompt_list
    model = model_from_args(args)
    if args.adapter:
        method = load_adapter(model, args.adapter)
    elif args.method:
        method = fitted_method(model, args.method, args.concept, layers=args.layers, seed=args.seed,
                               budget=args.budget or None)
    else:
        method = NoSteering()
    ds = generate(model, method, prompts, args.coeffs, args.config, progress=not args.no_progress)
    ds.attrs["adapter"] = str(args.adapter or "")
    table = side_by_side(ds, args.width)
    print(table)
    if args.out:
        from interp.store import run_lock, write_netcdf, write_text

        out = Path(args.out)
        with run_lock(out):
            write_netcdf(ds, out / "generations.nc")
            write_text(out / "generations.md", table + "\n")
        print(f"\nwrote {out / 'generations.nc'} and {out / 'generations.md'}")
    return ds


if __name__ == "__main__":
    main()
