"""The nnsight backend: the same edits and read-outs through nnsight, locally or on NDIF.

Analyses name places one way on both backends: this module maps the project's hook
names (``blocks.14.mlp.out``, ``blocks.14.mlp.out.hook_in``, ``blocks.14.hook_resid_post``,
``blocks.14.hook_resid_pre``) to the wrapped Hugging Face modules
(``model.layers[14].mlp.down_proj`` ...) for Llama-family models (Llama, Qwen2/3, Mistral).

:class:`NNsightBackend` runs :mod:`interp.interventions` edits as plain tensor maths inside a
trace, on tensors computed *outside* it (NDIF's sandbox whitelists modules, so remote code
cannot call project functions):

* :class:`~interp.interventions.WeightDelta`: the layer's ``ΔW(c)`` is precomputed (one per
  distinct coefficient of a ``[batch]`` c) and the site's output gets ``x @ ΔW(c).T`` added;
* :class:`~interp.interventions.AddToResidual`: ``c * vector`` is added to
  ``model.layers[L].output`` (= ``blocks.L.hook_resid_post``).

Usage::

    nn_model = load_nnsight("smollm2-135m")                  # fresh HF copy, eager attention
    logits = run(nn_model, tokens, mask, adapter.edits(1.0)).logits   # interp.backends.run
    adapter = load_adapter(nn_model, "runs/x/adapter")       # adapters attach to nnsight models too
    path = collect(nn_model, "runs/acts", tokens, mask, sites=[...])  # interp.store.collect

Remote (NDIF): ``load_nnsight(hf_id, remote=True)`` loads no weights and gives a model whose
backend runs every trace on NDIF; set ``NDIF_API_KEY`` (or
``nnsight.CONFIG.set_default_api_key``). Without a key, a network or a served model it raises
:class:`RemoteUnavailable` within a few seconds. Collection and evaluation can run remotely;
training stays local (it needs gradients on adapter parameters held here).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal
from urllib.parse import urlparse

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.backends.base import Backend, Readout, RemoteUnavailable
from interp.backends.nnsight_sites import NNSite, NNSteering, _n_layers, edit_tensors, envoy, module_of, resolve
from interp.interventions import ADAPTED, Edits, WeightDelta
from interp.models import DEFAULT_MODEL, TINY_PREFIX, load_hf
from interp.sites import Site, site_hook

Remote = bool | Literal["local"]

REMOTE_CONNECT_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------- loading


def check_remote_spec(spec: str) -> None:
    """Refuse, before anything is built, a spec NDIF cannot serve (the embedded, tiny or a local model)."""
    if spec == DEFAULT_MODEL or spec.startswith(TINY_PREFIX) or os.path.isdir(spec):
        raise RemoteUnavailable(
            f"{spec!r} is built locally; NDIF only runs Hub models it serves (see nnsight.ndif.status()). "
            "Use a Hub id such as 'meta-llama/Llama-3.1-8B' with remote=True, or remote=False here."
        )


def load_nnsight(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "eager",
    remote: bool = False,
):
    """An nnsight ``TransformersModel`` for a model spec handled by :mod:`interp.models`.

    Locally the HF model is a fresh copy (``interp.models.load_hf``; a bridge rewrites its
    own copy in place), with eager attention like the bridge so that padded rows agree.
    ``remote=True`` wraps the Hub id without loading weights (NDIF holds them); it needs
    a Hub id, not the embedded or tiny models.
    """
    from nnsight.modeling.transformers import TransformersModel

    if remote:
        check_remote_spec(spec)
        nn_model = TransformersModel(spec)
        nn_model.spec = spec
        object.__setattr__(nn_model, "_interp_backend", NNsightBackend(nn_model, remote=True))
        return nn_model
    hf_model, tokenizer = load_hf(spec, dtype=dtype)
    hf_model.set_attn_implementation(attn_implementation)
    hf_model.to(device)
    return wrap(hf_model, tokenizer, spec=spec)


def wrap(hf_model, tokenizer, *, spec: str = ""):
    """Wrap an already-loaded HF causal LM (not one inside a bridge) as an nnsight model."""
    from nnsight.modeling.transformers import TransformersModel

    if any("_original_component" in name for name, _ in hf_model.named_modules()):
        raise ValueError("this HF model was rewritten by a TransformerBridge; load a fresh one with interp.models.load_hf")
    nn_model = TransformersModel(hf_model.eval(), tokenizer=tokenizer)
    nn_model.spec = spec  # provenance reads it; Envoy keeps unknown attributes on itself
    return nn_model


# --------------------------------------------------------------------------- the trace


def check_remote(nn_model=None, *, timeout: float = REMOTE_CONNECT_TIMEOUT_S) -> str:
    """Fail fast unless NDIF can run this: API key, network, a Hub-built model. Returns the key."""
    from nnsight import CONFIG

    key = CONFIG.API.APIKEY or os.environ.get("NDIF_API_KEY")
    if not key:
        raise RemoteUnavailable(
            "remote=True needs an NDIF API key: export NDIF_API_KEY=... or call "
            "nnsight.CONFIG.set_default_api_key('...') (get one at the NDIF login page); "
            "or run with remote=False"
        )
    CONFIG.API.APIKEY = key  # in memory only: set_default_api_key would write nnsight's config file
    if nn_model is not None:
        repo = getattr(getattr(nn_model, "_module", None), "config", None)
        name = getattr(repo, "_name_or_path", "") or ""
        if not name or os.path.isdir(name) or getattr(nn_model, "spec", "") in (DEFAULT_MODEL,) or str(
            getattr(nn_model, "spec", "")
        ).startswith(TINY_PREFIX):
            raise RemoteUnavailable(
                "this nnsight model was built from a local HF object; NDIF runs Hub models it serves. "
                "Build it with load_nnsight('<hub id>', remote=True)"
            )
    url = urlparse(CONFIG.API.HOST if "://" in CONFIG.API.HOST else "https://" + CONFIG.API.HOST)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise RemoteUnavailable(f"cannot reach NDIF at {url.hostname}:{port} ({err}); run with remote=False") from err
    return key


def _trace_plan(nn_model, sites: Sequence[str], steering: NNSteering) -> list[tuple[NNSite, str, object]]:
    """Events in execution order: ('delta', ΔW), ('add', vector), ('save', site name)."""
    n = _n_layers(nn_model)
    plan: list[tuple[NNSite, int, str, object]] = []
    for name, dw in steering.deltas.items():
        site = resolve(Site.parse(name).hook_out, n)
        plan.append((site, 0, "delta", dw))
    for layer, v in steering.vectors.items():
        site = resolve(f"blocks.{int(layer)}.hook_resid_post", n)
        plan.append((site, 0, "add", v))
    for name in sites:
        site = resolve(name, n)
        plan.append((site, 1, "save", name))  # saves after any change at the same place: what the bridge's hook sees
    plan.sort(key=lambda e: (e[0], e[1]))
    return [(site, kind, payload) for site, _, kind, payload in plan]


def nnsight_trace(
    nn_model,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    *,
    sites: Sequence[Site | str] = (),
    steering: NNSteering | None = None,
    remote: Remote = False,
) -> tuple[Float[Tensor, "batch pos vocab"], dict[str, Tensor]]:
    """One forward pass through nnsight: ``(logits, {site: activations})`` with ``steering`` inlined."""
    import nnsight

    if remote is True:
        check_remote(nn_model)
    steering = steering or NNSteering()
    names = [site_hook(s) for s in sites]
    plan = _trace_plan(nn_model, names, steering)
    events = [(kind, envoy(nn_model, site.path), site.is_output, payload) for site, kind, payload in plan]
    inputs = {"input_ids": tokens, "attention_mask": attention_mask}
    with torch.no_grad(), nn_model.trace(inputs, remote=remote):
        # Inline tensor ops only (NDIF's sandbox): no project functions in this block.
        saved = []
        for kind, env, is_output, payload in events:
            if kind == "delta":
                x = env.input
                if payload.ndim == 3:
                    env.output = env.output + torch.einsum("bpi,boi->bpo", x, payload.to(x.dtype))
                else:
                    env.output = env.output + x @ payload.to(x.dtype).T
            elif kind == "add":
                out = env.output
                env.output = out + payload.to(out.dtype)
            else:
                saved.append(env.output if is_output else env.input)
        logits = nn_model.lm_head.output
        nnsight.save(saved)
        logits = logits.save()
    found = {}
    for (site, kind, name), value in zip([p for p in plan if p[1] == "save"], saved, strict=True):
        found[name] = value[0] if isinstance(value, tuple) else value
    return logits, found


# --------------------------------------------------------------------------- generation


@contextmanager
def hooked(nn_model, steering: NNSteering) -> Iterator[None]:
    """The steering tensors as plain torch hooks on the wrapped Hugging Face modules.

    The same maths as inside a trace (``x @ ΔW.T`` added to a site's output, ``vector``
    added to a decoder layer's output), for running the model's own ``generate``: its KV
    cache and stopping rules stay Hugging Face's. Local models only (the hooks run here).
    """
    n = _n_layers(nn_model)
    handles = []

    def delta_hook(dw: Tensor):
        def hook(module, inputs, output):
            x = inputs[0]
            add = torch.einsum("bpi,boi->bpo", x, dw.to(x.dtype)) if dw.ndim == 3 else x @ dw.to(x.dtype).T
            return output + add

        return hook

    def vector_hook(v: Tensor):
        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] + v.to(output[0].dtype), *output[1:])
            return output + v.to(output.dtype)

        return hook

    try:
        for name, dw in steering.deltas.items():
            handles.append(module_of(nn_model, Site.parse(name).hook_out).register_forward_hook(delta_hook(dw)))
        for layer, v in steering.vectors.items():
            site = resolve(f"blocks.{int(layer)}.hook_resid_post", n)
            handles.append(module_of(nn_model, site.name).register_forward_hook(vector_hook(v)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def nnsight_generate(nn_model, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
                     steering: NNSteering | None = None, *, max_new_tokens: int, sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                     eos: Sequence[int] = ()) -> tuple[Int[Tensor, "batch new"], Int[Tensor, " batch"]]:
    """Continue left-padded prompts on a local nnsight model, steered; ``(new tokens, lengths)``.

    Rows end at their first token in ``eos`` (kept); tokens after a row's end are -1.
    """
    hf = nn_model._module
    tok = nn_model.tokenizer
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id)
    if eos:
        kwargs["eos_token_id"] = sorted(eos)
    if sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    with hooked(nn_model, steering or NNSteering()), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = hf.generate(input_ids=tokens, attention_mask=attention_mask, **kwargs)[:, tokens.shape[1]:].cpu()
    ended = torch.isin(out, torch.tensor(sorted(eos), dtype=out.dtype)) if eos else torch.zeros_like(out, dtype=torch.bool)
    steps = torch.arange(out.shape[1])
    first = torch.where(ended, steps, out.shape[1]).min(1).values
    lengths = torch.minimum(first + 1, torch.tensor(out.shape[1]))
    out = torch.where(steps[None] < lengths[:, None], out, torch.full_like(out, -1))
    return out, lengths


# --------------------------------------------------------------------------- the backend


class NNsightBackend(Backend):
    """An nnsight model as a backend: :meth:`run` is one trace with the edits inlined; ``remote``
    (``True``: NDIF, ``"local"``: NDIF's serialisation path run here) applies to every trace."""

    name = "nnsight"

    def __init__(self, nn_model, *, remote: Remote = False):
        self.nn_model = nn_model
        self.remote = remote

    @property
    def tokenizer(self):
        return self.nn_model.tokenizer

    @property
    def spec(self) -> str:
        return str(getattr(self.nn_model, "spec", "") or "")

    @property
    def n_layers(self) -> int:
        return _n_layers(self.nn_model)

    @property
    def d_model(self) -> int:
        return int(self.nn_model._module.config.hidden_size)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.nn_model._module.parameters()

    def linear(self, site: Site) -> torch.nn.Module:
        return module_of(self.nn_model, site.name)

    def hf_model(self) -> torch.nn.Module:
        return self.nn_model._module

    def _checked(self, edits: Edits) -> NNSteering:
        for edit in edits:
            if isinstance(edit, WeightDelta) and getattr(self.linear(edit.site), ADAPTED, None) is not edit.layer:
                raise ValueError(f"{edit.site.name}: this edit's adapter is not attached to this model (attach it, or "
                                 "load it with interp.adapters.io.load_adapter)")
        steering = edit_tensors(edits, self.n_layers)
        if self.remote:
            return steering
        here = self.device  # a local model: the tensors go where its weights are
        return NNSteering({k: v.to(here) for k, v in steering.deltas.items()}, {k: v.to(here) for k, v in steering.vectors.items()})

    def run(self, tokens: Tensor, attention_mask: Tensor, edits: Edits = (), read: Sequence[str] = ()) -> Readout:
        if not self.remote:
            tokens, attention_mask = tokens.to(self.device), attention_mask.to(self.device)
        logits, found = nnsight_trace(self.nn_model, tokens, attention_mask, sites=read, steering=self._checked(edits),
                                      remote=self.remote)
        return Readout(logits, found)

    def decode(self, tokens, attention_mask, edits: Edits, config, *, eos, generator=None, seed: int = 0,
               progress: bool = False):
        """Hugging Face's own ``generate`` on the wrapped model with the edits as hooks (sampling
        seeded by ``seed``; local models only)."""
        if self.remote is True:
            raise RemoteUnavailable("generation runs on a local nnsight model only; this backend runs on NDIF")
        new, lengths = nnsight_generate(self.nn_model, tokens.to(self.device), attention_mask.to(self.device), self._checked(edits),
                                        max_new_tokens=config.max_new_tokens, sample=config.sample,
                                        temperature=config.temperature, top_p=config.top_p, seed=seed, eos=eos)
        return new[:, : int(lengths.max())], lengths

    @contextmanager
    def applied(self, edits: Edits) -> Iterator[None]:
        if self.remote is True:
            raise RemoteUnavailable("edits as hooks run on a local model only; this backend runs on NDIF")
        with hooked(self.nn_model, self._checked(edits)):
            yield
