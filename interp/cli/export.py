"""Take a steered model elsewhere: an adapter merged at one coefficient, as a Hugging Face folder or a GGUF file.

``--format hf`` (the default) writes a folder that plain ``transformers`` loads;
``--format gguf`` writes ``<out>/<out name>.gguf`` for llama.cpp, Ollama and LM Studio (for a
model loaded from GGUF: the embedded default or a ``.gguf`` path). Both write a model card
(base model, adapter, coefficient, weight hashes) and ``steering.json``.

    python -m interp.export --adapter runs/default/adapter --coeff 1 --out exports/smollm2-honest
    python -m interp.export --adapter runs/default/adapter --coeff 1 --format gguf --dtype float16 --out exports/smollm2-honest-gguf

``--overwrite`` replaces an earlier export only; a folder a live run holds, the adapter's own
folder, or a folder no export wrote is refused and left as it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from interp.cli import DTYPES, add_shared_args, join_negative_values
from interp.adapters.io import AdapterLoadError, load_adapter, read_adapter_config
from interp.export import ExportError, check_out, export_gguf, export_merged, not_from_gguf
from interp.models import ModelLoadError, gguf_source, load_model

FORMATS = ("hf", "gguf")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The export command line; ``args.error`` is the parser's ``error`` (usage line, the reason, exit 2)."""
    p = argparse.ArgumentParser(prog="python -m interp.export", description=__doc__.split("\n\n")[0])
    # no --seed or --quick: a merge has no randomness and no smaller version
    add_shared_args(p, out="the folder to write (required): the Hugging Face folder, or the folder holding the GGUF file",
                    seed="")
    p.set_defaults(model=None)
    p.add_argument("--adapter", required=True, help="a saved adapter folder (InnerPiSSA or LoRA)")
    p.add_argument("--coeff", type=float, required=True, help="the coefficient to merge at (its saved sign applied)")
    p.add_argument("--format", choices=FORMATS, default="hf",
                   help="hf: a Hugging Face folder; gguf: one GGUF file (llama.cpp, Ollama, LM Studio) for a model "
                        "loaded from GGUF, its 2-D tensors in --dtype and 1-D tensors in float32")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that an earlier export wrote (nothing else is ever replaced)")
    args = p.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, ["--coeff"]))
    if args.out is None:
        p.error("--out is required: the folder to write")
    if args.format == "gguf" and args.out.lower().endswith(".gguf"):
        p.error(f"--out {args.out} names a folder, not the file: the GGUF file is written inside it as "
                f"{Path(args.out).name}; pass --out {args.out[:-5]}")
    if not torch.isfinite(torch.tensor(args.coeff)):
        p.error(f"--coeff must be finite, got {args.coeff}")
    if not Path(args.adapter).is_dir():
        p.error(f"--adapter {args.adapter} is not a folder; pass a saved adapter folder (e.g. runs/<run>/adapter)")
    args.error = p.error
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Export as the command line asks; returns the written folder (``hf``) or GGUF file (``gguf``)."""

    args = parse_args(argv)
    try:
        spec = args.model or read_adapter_config(args.adapter).get("model_spec")
        if not spec:
            args.error(f"--adapter {args.adapter} does not name its base model; pass --model")
        # the cheap refusals first, before a model is loaded
        check_out(args.out, overwrite=args.overwrite, adapter_path=args.adapter)
        if args.format == "gguf" and gguf_source(spec) is None:
            args.error(not_from_gguf(spec))
        model = load_model(spec, device=args.device)  # merged in float32; --dtype is the written weights'
        adapter = load_adapter(model, args.adapter)
        export = export_gguf if args.format == "gguf" else export_merged
        path = export(model, adapter, args.coeff, args.out, dtype=DTYPES[args.dtype], adapter_path=str(args.adapter),
                      overwrite=args.overwrite)
    except (AdapterLoadError, ExportError, ModelLoadError) as err:
        args.error(str(err))
    if args.format == "gguf":
        how = f"run it with llama.cpp (llama-cli -m {str(path)!r}) or Ollama (a Modelfile with FROM {path})"
    else:
        how = f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})"
    print(f"wrote {path} ({spec} + {args.adapter} merged at c = {args.coeff:+g}, {args.dtype}); {how}")
    return path


if __name__ == "__main__":
    main()
