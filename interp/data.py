"""Contrastive prompt pairs for ReprPO training: building, splitting, tokenising.

A *pair* is two chat prefixes that differ only in one early word or persona and share
the same assistant-turn *suffix*::

    chosen:   user "Pretend you are an honest person. ..."   assistant "The weather today"
    rejected: user "Pretend you are a dishonest person. ..." assistant "The weather today"

There are no completions and no labels beyond chosen / rejected: the assistant turn is
left open (no end-of-turn token), so the last real token is where the model is about to
continue, and its hidden state carries the persona.

Concepts are data, not code: ``interp/concepts/<concept>.json`` holds templates with one
``{}`` slot and aligned ``chosen`` / ``rejected`` word lists (``chosen[i]`` pairs with
``rejected[i]``). A new concept is a new json file (or a path to one). Suffixes come from
``interp/concepts/suffixes.txt`` (written for this project, no download) or a user's own
text file (one suffix per line, ``#`` comments).

Batch layout (:func:`tokenize_pairs`): the rows of a :class:`PairBatch` stack the chosen
prompts first, then the rejected ones, in pair order: rows ``0..n-1`` are chosen,
``n..2n-1`` rejected, and row ``i`` pairs with row ``n + i``. The training loop stacks
two such blocks (``c = +1`` then ``c = -1``) into one forward pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from interp.files import read_json_file

Messages = list[dict[str, str]]
DEFAULT_CONCEPT = "honesty"
PADDING_SIDES = ("left", "right")


# --------------------------------------------------------------------------- concepts and suffixes


@dataclass(frozen=True)
class Template:
    """One persona sentence with a ``{}`` slot; ``chosen[i]`` and ``rejected[i]`` fill it."""

    text: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or self.text.count("{}") != 1:
            raise ValueError(f"template {self.text!r} must be a string with exactly one '{{}}' slot")
        for side in ("chosen", "rejected"):
            words = getattr(self, side)
            if isinstance(words, str) or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"template {self.text!r}: {side} must be a list of non-empty strings, "
                                 f"got {words!r}")
        same = [c for c, r in zip(self.chosen, self.rejected) if c.strip() == r.strip()]
        if same:
            raise ValueError(f"template {self.text!r}: chosen and rejected are equal for {same}: a pair of equal "
                             "prompts carries no contrast")
        if not self.chosen or len(self.chosen) != len(self.rejected):
            raise ValueError(
                f"template {self.text!r}: chosen ({len(self.chosen)}) and rejected ({len(self.rejected)}) "
                "word lists must be non-empty and of equal length (chosen[i] pairs with rejected[i])"
            )

    def prompts(self) -> list[tuple[str, str]]:
        """The (chosen, rejected) persona prompts of this template."""
        return [(self.text.format(c), self.text.format(r)) for c, r in zip(self.chosen, self.rejected)]


@dataclass(frozen=True)
class Concept:
    """A concept's templates, as read from ``interp/concepts/<name>.json``."""

    name: str
    templates: tuple[Template, ...]
    description: str = ""

    def persona_pairs(self) -> list[tuple[str, str]]:
        """All (chosen, rejected) persona prompts, in file order."""
        return [p for t in self.templates for p in t.prompts()]


def concepts_dir() -> Path:
    """Folder of the shipped concept files (package data)."""
    return Path(str(resources.files("interp") / "concepts"))


def available_concepts() -> list[str]:
    """Names of the shipped concepts (json files in :func:`concepts_dir` with templates; a
    concept's evaluation items live beside them without)."""
    return sorted(p.stem for p in concepts_dir().glob("*.json") if '"templates"' in p.read_text(encoding="utf-8"))


CONCEPT_LAYOUT = ("{'concept': ..., 'templates': [{'text': '... {} ...', 'chosen': [...], 'rejected': [...]}], "
                  "'description': ... (optional)}")


def _word_list(words, path: Path) -> tuple[str, ...]:
    # tuple("agreeable") would split a string into letters: a list is required
    if not isinstance(words, list):
        raise ValueError(f"chosen and rejected must be JSON lists of strings, got {words!r}")
    return tuple(words)


def load_concept(concept: str | Path = DEFAULT_CONCEPT) -> Concept:
    """A shipped concept by name (``"honesty"``) or any json file path with the same layout."""
    path = Path(concept)
    if path.suffix != ".json" or not path.is_file():
        path = concepts_dir() / f"{concept}.json"
    if not path.is_file():
        raise ValueError(f"unknown concept {str(concept)!r}; shipped concepts: {available_concepts()} (or pass a .json path)")
    raw = read_json_file(path, f"a concept: {CONCEPT_LAYOUT}")
    if not isinstance(raw, dict) or "templates" not in raw:
        got = f"keys {sorted(raw)}" if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise ValueError(f"{path}: expected a concept object with a 'templates' list, got {got}; layout: {CONCEPT_LAYOUT}")
    try:
        templates = tuple(
            Template(t["text"], _word_list(t["chosen"], path), _word_list(t["rejected"], path)) for t in raw["templates"]
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    except (KeyError, TypeError) as err:
        missing = f"a template lacks key {err}" if isinstance(err, KeyError) else f"wrong type ({err})"
        raise ValueError(f"{path}: {missing}; expected {CONCEPT_LAYOUT}") from err
    if not templates:
        raise ValueError(f"{path} has no templates; expected {CONCEPT_LAYOUT}")
    name, description = raw.get("concept", path.stem), raw.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise ValueError(f"{path}: 'concept' and 'description' must be strings, got {name!r} and {description!r}")
    return Concept(name=name, templates=templates, description=description)


def read_suffixes(path: str | Path | None = None) -> list[str]:
    """Suffixes from a text file (one per line; blank lines and ``#`` comments skipped).

    ``None`` reads the shipped ``interp/concepts/suffixes.txt``. Duplicates are dropped,
    keeping the first occurrence, so a split by suffix is a split by distinct text.
    """
    path = concepts_dir() / "suffixes.txt" if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"suffix file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"suffix file {path} is not UTF-8 text (byte {err.start}: {err.reason}); expected UTF-8 text, "
                         "one suffix per line") from err
    seen: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            seen.setdefault(line, None)
    if len(seen) < 2:
        raise ValueError(f"{path} holds {len(seen)} suffix(es); need at least 2 (one for training, one for validation)")
    return list(seen)


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class ContrastivePair:
    """Two persona prompts sharing one assistant-turn suffix."""

    chosen: str
    rejected: str
    suffix: str

    def messages(self, which: str, system: str | None = None) -> Messages:
        """The chat for ``which`` in {"chosen", "rejected"}: user = persona, assistant = suffix (open)."""
        if which not in ("chosen", "rejected"):
            raise ValueError(f"which must be 'chosen' or 'rejected', got {which!r}")
        msgs: Messages = [] if system is None else [{"role": "system", "content": system}]
        return msgs + [{"role": "user", "content": getattr(self, which)}, {"role": "assistant", "content": self.suffix}]


@dataclass(frozen=True)
class PairSplit:
    """Train / validation pairs; no suffix appears in both."""

    train: list[ContrastivePair]
    val: list[ContrastivePair]


def make_pairs(
    concept: Concept | str | Path = DEFAULT_CONCEPT,
    suffixes: Sequence[str] | str | Path | None = None,
    *,
    n_pairs: int | None = 1000,
    seed: int = 0,
) -> list[ContrastivePair]:
    """Cross every persona pair with every suffix, then draw ``n_pairs`` of them (seeded).

    ``suffixes`` is a list, a file path, or ``None`` for the shipped file. ``n_pairs=None``
    (or more than exist) keeps all combinations. The result is shuffled by ``seed``.
    """
    concept = concept if isinstance(concept, Concept) else load_concept(concept)
    if suffixes is None or isinstance(suffixes, (str, Path)):
        suffixes = read_suffixes(suffixes)
    personas = concept.persona_pairs()
    combos = [ContrastivePair(c, r, s) for s in suffixes for c, r in personas]
    if n_pairs is not None and n_pairs < 1:
        raise ValueError(f"n_pairs must be positive or None, got {n_pairs}")
    order = np.random.default_rng(seed).permutation(len(combos))
    if n_pairs is not None:
        order = order[:n_pairs]
    return [combos[i] for i in order]


def split_by_suffix(pairs: Sequence[ContrastivePair], val_fraction: float = 0.1, seed: int = 0) -> PairSplit:
    """Hold out a seeded ``val_fraction`` of the distinct suffixes (and all their pairs).

    Splitting by suffix rather than by pair keeps the validation text unseen in training,
    so validation separation measures generalisation to new continuations.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    distinct = sorted({p.suffix for p in pairs})
    if len(distinct) < 2:
        raise ValueError(f"need at least 2 distinct suffixes to split, got {len(distinct)}")
    n_val = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))
    held = {distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))[:n_val]}
    return PairSplit(train=[p for p in pairs if p.suffix not in held], val=[p for p in pairs if p.suffix in held])


def pairs_hash(pairs: Sequence[ContrastivePair], length: int = 16) -> str:
    """A short sha256 over the pairs' text, in order (provenance of a training run)."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.chosen, p.rejected, p.suffix]).encode())
    return digest.hexdigest()[:length]


# --------------------------------------------------------------------------- tokenisation


@dataclass(frozen=True)
class PairBatch:
    """Tokenised pairs: rows ``0..n-1`` chosen, ``n..2n-1`` rejected (row ``i`` pairs with ``n + i``).

    ``last`` is the index of the last real token per row (where the hidden state is read);
    ``suffix_mask`` marks the assistant-suffix tokens (where coherence NLL is scored).
    """

    tokens: Int[Tensor, "rows pos"]
    attention_mask: Int[Tensor, "rows pos"]
    last: Int[Tensor, " rows"]
    suffix_mask: Bool[Tensor, "rows pos"]

    @property
    def n_pairs(self) -> int:
        return self.tokens.shape[0] // 2

    def to(self, device: str | torch.device) -> PairBatch:
        return PairBatch(*(t.to(device) for t in (self.tokens, self.attention_mask, self.last, self.suffix_mask)))


def last_token_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of the last real token per row; works for left and right padding."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [batch, pos], got shape {tuple(attention_mask.shape)}")
    if (attention_mask.sum(1) == 0).any():
        raise ValueError("a row of the attention mask is all zeros (empty sequence)")
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (pos + 1)).argmax(1)


def chat_text(tokenizer, messages: Messages) -> str:
    """Chat-template text with the final assistant turn left open (no end-of-turn)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)


@dataclass(frozen=True)
class ChatBatch:
    """Left-padded chats: ``tokens`` and ``attention_mask``; ``span`` marks the tokens from the last user
    message's start to the end of the prompt (where coherence NLL is read); ``continuation`` the tokens of
    a text appended after the prompt (none without continuations)."""

    tokens: Int[Tensor, "row pos"]
    attention_mask: Int[Tensor, "row pos"]
    span: Bool[Tensor, "row pos"]
    continuation: Bool[Tensor, "row pos"]


def encode_chats(tokenizer, chats: Sequence[Messages], *, continue_final: bool = True,
                 continuations: Sequence[str] | None = None) -> ChatBatch:
    """Chat-template, append ``continuations`` (if any) and tokenise, left-padded, without extra special tokens.

    ``continue_final=True`` leaves the last (assistant) message open, so the next token continues
    it; ``False`` ends the chat with the template's generation prompt. Continuation tokens are
    those whose character offset starts at or after the prompt's end; a token straddling that
    boundary raises ``ValueError`` (the continuation would not be scored on its own tokens).
    The one chat encoder of the project (evaluation, continuation margins, baselines, generation).
    """
    if continuations is not None and len(continuations) != len(chats):
        raise ValueError(f"{len(chats)} chats for {len(continuations)} continuations")
    prompts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=not continue_final,
                                             continue_final_message=continue_final) for c in chats]
    extra = list(continuations) if continuations is not None else [""] * len(prompts)
    enc = tokenizer([p + s for p, s in zip(prompts, extra)], return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False, return_offsets_mapping=True)
    ends = torch.tensor([len(p) for p in prompts], device="cpu")

    def user_start(prompt: str, chat: Messages) -> int:
        # the last user message's last occurrence before any open assistant prefix (a system prompt may quote it)
        user = next(m["content"] for m in reversed(chat) if m["role"] == "user")
        tail = len(chat[-1]["content"]) if continue_final and chat[-1]["role"] == "assistant" else 0
        return prompt.rfind(user, 0, len(prompt) - tail)

    starts = torch.tensor([user_start(p, c) for p, c in zip(prompts, chats)], device="cpu")
    real = enc["attention_mask"].bool()
    first, last = enc["offset_mapping"][..., 0], enc["offset_mapping"][..., 1]
    if continuations is not None:
        straddle = real & (first < ends[:, None]) & (last > ends[:, None])
        if straddle.any():
            row = int(straddle.any(-1).nonzero()[0, 0])
            raise ValueError(f"continuation {continuations[row]!r} merges with the end of prefix {chats[row][-1]['content']!r} "
                             "into one token; start continuations with a space (or end the prefix on a word boundary)")
    cont = real & (first >= ends[:, None])
    if continuations is not None and (cont.sum(-1) == 0).any():
        row = int((cont.sum(-1) == 0).nonzero()[0, 0])
        raise ValueError(f"continuation {continuations[row]!r} has no tokens of its own")
    span = real & (first >= starts[:, None]) & (first < ends[:, None])
    return ChatBatch(enc["input_ids"], enc["attention_mask"], span, cont)


def tokenize_pairs(
    tokenizer,
    pairs: Sequence[ContrastivePair],
    *,
    padding_side: str = "left",
    system: str | None = None,
    max_length: int | None = None,
) -> PairBatch:
    """Chat-template and tokenise pairs into one :class:`PairBatch` (chosen rows, then rejected).

    No special tokens are added beyond the template's own (no extra BOS). ``max_length``
    truncates from the left (the end of a prefix is what matters). The suffix mask is
    found by tokenising the same chat with an empty assistant turn: the tokens after that
    prefix are the suffix (the template is the same up to there).
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {list(PADDING_SIDES)}, got {padding_side!r}")
    if not pairs:
        raise ValueError("no pairs to tokenise")
    rows: list[list[int]] = []
    n_suffix: list[int] = []
    for which in ("chosen", "rejected"):
        for p in pairs:
            msgs = p.messages(which, system)
            ids = tokenizer(chat_text(tokenizer, msgs), add_special_tokens=False)["input_ids"]
            head = tokenizer(
                chat_text(tokenizer, msgs[:-1] + [{"role": "assistant", "content": ""}]), add_special_tokens=False
            )["input_ids"]
            if ids[: len(head)] != head:  # BPE merged across the boundary: fall back to the whole assistant text
                head = head[:-1]
            n_suffix.append(len(ids) - len(head))
            if max_length is not None:
                ids = ids[-max_length:]
            rows.append(ids)
    tokens, mask, suffix_mask = pad_rows(rows, n_suffix, pad_id_of(tokenizer), padding_side)
    return PairBatch(tokens=tokens, attention_mask=mask, last=last_token_index(mask), suffix_mask=suffix_mask)


def pad_id_of(tokenizer) -> int:
    """The id padding is written with (0 where the tokenizer has none: masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pad_rows(rows: Sequence[Sequence[int]], tails: Sequence[int], pad_id: int, padding_side: str = "left",
             ) -> tuple[Int[Tensor, "rows pos"], Int[Tensor, "rows pos"], Bool[Tensor, "rows pos"]]:
    """Rows of token ids as one host-side batch (moved to the model's device by the backend): ``(tokens,
    attention mask, tail mask)``, the tail mask marking each row's last ``tails[i]`` tokens (at most the row)."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    tail_mask = torch.zeros((len(rows), width), dtype=torch.bool, device="cpu")
    for i, (ids, tail) in enumerate(zip(rows, tails)):
        start = width - len(ids) if padding_side == "left" else 0
        tokens[i, start : start + len(ids)] = torch.tensor(list(ids), dtype=torch.long, device="cpu")
        mask[i, start : start + len(ids)] = 1
        tail = min(tail, len(ids))
        tail_mask[i, start + len(ids) - tail : start + len(ids)] = True
    return tokens, mask, tail_mask


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Pair indices for training step ``step``: a pure function of ``(n, batch_size, step, seed)``.

    Each epoch is a fresh permutation seeded by ``(seed, epoch)``; a batch that would cross
    an epoch boundary is taken whole from the epoch it starts in (the tail wraps within
    that epoch's permutation), so resuming at any step replays the same data.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    per_epoch = max(1, -(-n // batch_size))
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.take(perm, np.arange(k * batch_size, (k + 1) * batch_size), mode="wrap")
