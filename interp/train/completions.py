"""The personas' own completions: what the preference objective compares.

For a contrastive pair (two persona prompts sharing an open assistant suffix), the base model
continues the suffix greedily under each persona: ``y+`` under the chosen persona, ``y−`` under
the rejected one. They are the model's own behaviour under the prompt, so the preference
objective moves into the weights what the prompt does to *this* model, in its own words; they
come from the training pairs only (the measures' evaluation items are other texts).

Generating costs forward passes, so completions are cached per model weights, concept and
length in ``$INTERP_CACHE/completions/`` (default ``~/.cache/innerpissa-lab``), one JSON file with
the weights' hash and the generation settings; a file made with other weights is never read
(its name carries the hash), and writers hold the cache folder's lock while they merge.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends import backend_of
from interp.backends.decoding import PAD, GenerateConfig, eos_ids
from interp.data import ContrastivePair, chat_text, pad_id_of, pad_rows, tokenize_pairs
from interp.files import read_json_file, run_lock, write_text

CACHE_ENV = "INTERP_CACHE"
Completions = dict[str, tuple[list[int], list[int]]]  # pair key -> (y+ token ids, y- token ids)


def cache_root() -> Path:
    """``$INTERP_CACHE`` or ``~/.cache/innerpissa-lab``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "innerpissa-lab")


def pair_key(pair: ContrastivePair, system: str | None) -> str:
    """A pair's name in the cache: a hash of its two persona prompts, its suffix and the system turn."""
    text = json.dumps([pair.chosen, pair.rejected, pair.suffix, system])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_file(model, concept: str, tokens: int) -> Path:
    """Where one model's completions for one concept and length are kept."""
    name = Path(concept).stem if concept.endswith(".json") else concept
    return cache_root() / "completions" / f"{backend_of(model).weight_hash[:16]}-{name}-{tokens}tok.json"


@torch.no_grad()
def generate_completions(model, pairs: Sequence[ContrastivePair], *, tokens: int, system: str | None = "",
                         max_length: int | None = None, batch_size: int = 32, progress: bool = False) -> Completions:
    """Greedy ``tokens``-token continuations of each pair's suffix under its chosen and its rejected persona
    (generation stops early at the end-of-turn token, which is kept)."""
    backend = backend_of(model)
    eos, config = eos_ids(backend), GenerateConfig(max_new_tokens=tokens)
    out: Completions = {}
    for start in tqdm(range(0, len(pairs), batch_size), desc="completions", disable=not progress, leave=False):
        chunk = list(pairs[start : start + batch_size])
        batch = tokenize_pairs(backend.tokenizer, chunk, system=system, max_length=max_length)
        new, lengths = backend.decode(batch.tokens, batch.attention_mask, (), config, eos=eos)
        rows = [new[i, : int(lengths[i])].tolist() for i in range(new.shape[0])]
        n = len(chunk)
        for i, pair in enumerate(chunk):
            out[pair_key(pair, system)] = (rows[i], rows[n + i])
    return out


def persona_completions(model, pairs: Sequence[ContrastivePair], *, concept: str, tokens: int, system: str | None = "",
                        max_length: int | None = None, progress: bool = False) -> Completions:
    """The completions of ``pairs``: read from the cache, the missing ones generated and added to it."""
    path = cache_file(model, concept, tokens)
    with run_lock(path.parent):
        stored = read_json_file(path, "a completions cache", "delete it to generate again") if path.is_file() else {}
        have: Completions = {k: (v[0], v[1]) for k, v in stored.get("items", {}).items()}
        missing = [p for p in dict.fromkeys(pairs) if pair_key(p, system) not in have]
        if missing:
            have.update(generate_completions(model, missing, tokens=tokens, system=system, max_length=max_length,
                                             progress=progress))
            backend = backend_of(model)
            record = {"model": backend.spec, "weight_hash": backend.weight_hash, "concept": concept, "tokens": tokens,
                      "decoding": "greedy", "items": have}
            write_text(path, json.dumps(record))
    return {pair_key(p, system): have[pair_key(p, system)] for p in pairs}


@dataclass(frozen=True)
class PreferenceBatch:
    """Each pair's two contexts (chosen, rejected persona) each followed by ``y+`` and by ``y−``: rows
    ``[chosen·y+, chosen·y−, rejected·y+, rejected·y−]``, ``n`` rows each, left-padded, with the completion
    tokens marked (where the preference is read)."""

    tokens: Int[Tensor, "rows pos"]
    attention_mask: Int[Tensor, "rows pos"]
    completion: Bool[Tensor, "rows pos"]
    n: int

    def to(self, device) -> PreferenceBatch:
        return PreferenceBatch(self.tokens.to(device), self.attention_mask.to(device), self.completion.to(device), self.n)


def preference_batch(tokenizer, pairs: Sequence[ContrastivePair], completions: Completions, *, system: str | None = "",
                     max_length: int | None = None) -> PreferenceBatch:
    """The rows the preference objective reads for ``pairs`` (pairs whose two completions are the same carry no
    preference: the caller leaves them out)."""
    rows: list[tuple[list[int], list[int]]] = []
    for which in ("chosen", "rejected"):
        contexts = [tokenizer(chat_text(tokenizer, p.messages(which, system)), add_special_tokens=False)["input_ids"]
                    for p in pairs]
        for side in (0, 1):
            for p, ids in zip(pairs, contexts):
                y = [t for t in completions[pair_key(p, system)][side] if t != PAD]
                prompt = ids[-max_length:] if max_length is not None else ids
                rows.append((prompt, y))
    tokens, mask, completion = pad_rows([prompt + y for prompt, y in rows], [len(y) for _, y in rows],
                                        pad_id_of(tokenizer))
    return PreferenceBatch(tokens, mask, completion, len(pairs))
