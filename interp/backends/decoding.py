"""Batched, KV-cached decoding of a TransformerBridge: the loop every generation runs through.

:class:`GenerateConfig` holds the decoding settings (greedy unless ``sample``); :func:`decode`
continues left-padded prompts with whatever hooks are active around it (a backend's
:meth:`~interp.backends.base.Backend.decode` installs a method's edits first). Rows are
left-padded; positions follow the attention mask, so a padded row decodes as it would alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.backends.base import Backend

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


def eos_ids(backend: Backend) -> set[int]:
    """Token ids that end a continuation: the tokenizer's EOS and the generation config's."""
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
    eos: Sequence[int],
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Int[Tensor, "batch new"], Int[Tensor, " batch"]]:
    """Continue left-padded prompts with the bridge as it is now (hooks included), KV-cached.

    Returns the new tokens (``PAD`` after each row's end; the EOS token is kept) and each
    row's length. Steering is whatever is active around the call (see
    :meth:`interp.backends.Backend.decode`, which applies a method's edits around it).
    """
    device = next(model.parameters()).device
    ids, mask = tokens.to(device), attention_mask.to(device)
    stop = torch.tensor(sorted(eos), device=device, dtype=torch.long)
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
