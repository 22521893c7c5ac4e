"""Take a steered model elsewhere: an adapter merged at one coefficient, written as a file others load.

* :func:`export_merged`: a plain Hugging Face folder (safetensors, config, tokenizer with its
  chat template, model card); ``transformers.AutoModelForCausalLM.from_pretrained(folder)``
  loads it with no project code (:mod:`interp.export.hf`).
* :func:`export_gguf`: one GGUF file for llama.cpp, Ollama and LM Studio, for a model loaded
  from GGUF (the embedded default or a ``.gguf`` path), keeping that file's metadata and
  tokenizer (:mod:`interp.export.gguf`).

Both check where they write first (:func:`check_out`: never a live run's folder, the
adapter's own folder, or a folder no export wrote), refuse non-finite merged weights, and
compare the merged model's logits at one prompt with the steered model's. The command
line is :mod:`interp.cli.export` (``python -m interp.export``).
"""

from interp.export.base import (
    CARD,
    CHECK_PROMPT,
    LOGIT_TOLERANCE,
    MAX_RELATIVE_CHANGE,
    STEERING,
    ExportError,
    check_out,
    lock_holders,
    merged_weights,
    model_card,
    site_weights,
)
from interp.export.gguf import export_gguf, not_from_gguf
from interp.export.hf import export_merged

__all__ = ["CARD", "CHECK_PROMPT", "LOGIT_TOLERANCE", "MAX_RELATIVE_CHANGE", "STEERING", "ExportError", "check_out", "export_gguf",
           "export_merged", "lock_holders", "merged_weights", "model_card", "not_from_gguf", "site_weights"]
