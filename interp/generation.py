"""What does a steered model *say*? Batched, KV-cached generation at several coefficients.

Every prompt is generated at every coefficient in one batch, one coefficient per row:
adapters and steering vectors take a ``[batch]`` coefficient tensor, and prompting
rewrites each row's chat (:meth:`interp.steering.SteeringMethod.messages`), so all
methods go through the same two calls of the steering interface. Rows are left-padded;
positions follow the attention mask, so a padded row decodes as it would alone.

Each continuation gets a coherence readout: its mean NLL under the *unsteered* model
in the *unsteered* chat (a +c that derails shows as a high NLL even where the text
looks fluent) and its share of distinct bigrams (repetition shows as a low share).

The command is ``python -m interp.generate`` (:mod:`interp.cli.generate`)::

    python -m interp.generate --adapter runs/default/adapter --prompt "I broke my friend's vase. What should I tell her?"
    python -m interp.generate --method mean_diff --concept sentiment --prompt "Tell me about your day." --coeffs -1,0,1
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends import backend_of, run
from interp.backends.decoding import PAD, GenerateConfig, eos_ids
from interp.data import encode_chats
from interp.measures import measure_of
from interp.protocol import VECTORS, MethodSpec, calibrate_method_strength, fit_method
from interp.provenance import provenance
from interp.steering import Messages, NoSteering, SteeringMethod
from interp.train import TrainConfig

METHODS = (*VECTORS, "prompt")

__all__ = ["METHODS", "PAD", "GenerateConfig", "continuation_nll", "distinct_share", "fitted_method", "generate",
           "prompt_chat", "side_by_side"]


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

    ds = _generations_dataset(model.tokenizer, prompts, coeffs, rows, new_rows, nll)
    ds.attrs.update(provenance(backend_of(model), config={"method": method.config(), "generation": asdict(config)}, seed=config.seed))
    return ds


def _generations_dataset(tok, prompts: Sequence[str], coeffs: list[float], rows: list[tuple[int, float]],
                         new_rows: list[list[int]], nll: list[float]) -> xr.Dataset:
    """The generations as a dataset with dims ``(prompt, coeff)`` (tokens padded with :data:`PAD`)."""
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


def fitted_method(model, name: str, concept: str, *, measure: str | None = None, layers: str | None = None, seed: int = 0,
                  budget: float | None = 0.3) -> SteeringMethod:
    """A baseline fitted on the concept's pairs as the comparisons fit it (:func:`interp.protocol.fit_method`).

    Vectors are scaled so that ``c = ±1`` costs ``budget`` nats of next-token KL on the
    concept's calibration prompts (``None``: the raw fitted vectors); prompting uses the
    concept's own wording.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHODS)}")
    the_measure = measure_of(concept, measure)
    calibration = the_measure.splits()["calibration"]
    spec = MethodSpec(name, TrainConfig(concept=concept, seed=seed, **({"layers": layers} if layers else {})))
    method, _ = fit_method(model, spec, the_measure, calibration, folder="", progress=False)
    if budget is None or name == "prompt":
        return method
    strength = float(calibrate_method_strength(model, method, the_measure, calibration, budget))
    scaled = method * strength  # the vectors themselves scaled: c = 1 is the budget on every backend
    scaled.options.update(strength=strength, budget_kl=budget)
    return scaled
