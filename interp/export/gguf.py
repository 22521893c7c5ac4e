"""A steered model as one GGUF file, for llama.cpp, Ollama and LM Studio.

For a model loaded from GGUF (the embedded default, or a ``.gguf`` path as ``--model``) the
written file keeps the source file's metadata and tokenizer (chat template included) and
its tensor order; the adapted sites hold the merged weights, mapped to GGUF names with
the ``gguf`` package's name map and, for llama-family attention, llama.cpp's Q/K row
permutation (the inverse of the one ``transformers`` undoes when it reads the file). Every
tensor is written de-quantised: 2-D and larger in ``dtype`` (float32, float16 or bfloat16),
1-D tensors (norms) in float32 as llama.cpp's converter writes them. The steering
provenance goes in ``general.description`` and ``innerpissa.*`` keys.

A model not loaded from GGUF is refused: writing its metadata and tokenizer is what
llama.cpp's ``convert_hf_to_gguf.py`` does per architecture, so export a Hugging Face
folder (``--format hf``) and convert that.

The written file is read back with ``transformers`` before it is put in place: its weights
must hash to the merged weights, and its logits at one prompt are compared with the steered
model's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from interp.adapters.base import AdapterSet
from interp.export.base import (CARD, CHECK_PROMPT, STEERING, ExportError, check_finite, check_ids, check_logits, check_out,
    export_info, merged_weights, model_card, replace_folder, site_weights, steered_logits)
from interp.provenance import hf_state_dict
from interp.models import gguf_source
from interp.provenance import model_weight_hash
from interp.provenance import weight_hash

# Architectures whose attn_q / attn_k rows llama.cpp's converter permutes (transformers undoes it for these).
PERMUTED_ARCHS = ("llama",)
# Keys the writer sets itself, or that this export rewrites.
_OWN_KEYS = ("general.architecture", "general.file_type", "general.description", "general.alignment")


def not_from_gguf(spec: str) -> str:
    """Why a model that was not loaded from GGUF is refused, and what to do instead."""
    return (f"--format gguf rewrites the GGUF file a model was loaded from, and {spec!r} was not loaded from one "
            "(the embedded default and a path to a .gguf file are). Export a Hugging Face folder instead "
            "(--format hf), then convert it with llama.cpp: python convert_hf_to_gguf.py <that folder> --outtype f16")


def _gguf_types(dtype: torch.dtype):
    from gguf import GGMLQuantizationType, LlamaFileType

    table = {torch.float32: (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
             torch.float16: (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
             torch.bfloat16: (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16)}
    if dtype not in table:
        raise ExportError(f"--dtype {dtype} cannot be written to GGUF; use float32, float16 or bfloat16")
    return table[dtype]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: HF rotary layout (halves) -> GGUF layout (interleaved pairs), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`_permute` (what transformers applies when it reads a llama GGUF)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _heads_of(reader, arch: str, tensor: str) -> int | None:
    """How many heads llama.cpp permuted ``tensor`` by (None: not permuted)."""
    if arch not in PERMUTED_ARCHS:
        return None
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv = _field(reader, f"{arch}.attention.head_count_kv", heads)
    if tensor.endswith(".attn_q.weight"):
        return heads
    if tensor.endswith(".attn_k.weight"):
        return int(kv)
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored(arr: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``arr`` rounded as it is written: 1-D in float32, others in ``dtype`` (as float32 values)."""
    if arr.ndim <= 1 or dtype == torch.float32:
        return arr.astype(np.float32)
    return torch.from_numpy(np.array(arr, dtype=np.float32)).to(dtype).float().numpy()


def export_gguf(model, adapter: AdapterSet, coeff: float, out: str | Path, *, dtype: torch.dtype = torch.float32,
                adapter_path: str = "", overwrite: bool = False) -> Path:
    """Write ``model`` with ``adapter`` merged at ``coeff`` as ``<out>/<out name>.gguf`` with a model card; returns the file.

    ``model`` must have been loaded from a GGUF file (:func:`interp.models.gguf_source`);
    its base weight at every adapted site is checked against that file's tensor (de-quantised,
    un-permuted). ``out`` is checked as for the Hugging Face export
    (:func:`interp.export.base.check_out`); non-finite merged weights (an absurd coefficient,
    float16 overflow) are refused. The folder is filled beside ``out`` and renamed into place.
    """
    from gguf import GGUFReader, MODEL_ARCH_NAMES, get_tensor_name_map


    source = gguf_source(model.spec)
    if source is None:
        raise ExportError(not_from_gguf(model.spec))
    qtype, file_type = _gguf_types(dtype)
    out = check_out(out, overwrite=overwrite, adapter_path=adapter_path or None)
    merged = merged_weights(model, adapter, coeff, dtype)

    reader = GGUFReader(source)
    arch = _field(reader, "general.architecture")
    arch_enum = {name: a for a, name in MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise ExportError(f"{source} has architecture {arch!r}, which this gguf package does not know; "
                          "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    names = get_tensor_name_map(arch_enum, int(_field(reader, f"{arch}.block_count")))
    replaced, merged_hash = _site_tensors(model, adapter, merged, reader, arch, names, source, dtype)
    base_hash = model_weight_hash(model)

    ids = check_ids(model)
    steered = steered_logits(model, adapter, coeff, ids)
    file_name = f"{out.name}.gguf"
    info = export_info(model, adapter, coeff, dtype, adapter_path, format="gguf", file=file_name,
                       base_weight_hash=base_hash, merged_weight_hash=merged_hash,
                       source_gguf=source.name, source_gguf_sha256=_sha256(source))

    def fill(tmp: Path) -> None:
        _write(tmp / file_name, reader, arch, file_type, qtype, replaced, info, dtype, coeff, adapter_path)
        loaded = _read_back(tmp, file_name)
        if weight_hash(dict(loaded.state_dict())) != merged_hash:
            raise ExportError(f"the written {file_name} does not read back (with transformers) as the merged weights; "
                              "its tensor names or layout are not what this architecture expects: export --format hf "
                              "and convert with llama.cpp's convert_hf_to_gguf.py")
        with torch.no_grad():
            plain = loaded(ids).logits.float()
        info["check"] = {"prompt": CHECK_PROMPT, "n_tokens": int(ids.shape[1]),
                         "max_abs_logit_diff": check_logits(plain, steered, coeff, dtype,
                                                            f"GGUF export of {adapter_path or 'the adapter'}")}
        (tmp / CARD).write_text(model_card(info), encoding="utf-8")
        (tmp / STEERING).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    folder = replace_folder(out, fill, overwrite=overwrite, adapter_path=adapter_path or None)
    return folder / file_name


def _site_tensors(model, adapter: AdapterSet, merged: dict, reader, arch: str, names, source: Path,
                  dtype: torch.dtype) -> tuple[dict[str, np.ndarray], str]:
    """The merged site weights in GGUF names and layout (each base weight checked against the file), and the
    weight hash of the whole merged model as it will be stored."""
    from gguf.quants import dequantize  # optional heavy dependency of this export only


    tensors = {t.name: t for t in reader.tensors}
    replaced: dict[str, np.ndarray] = {}
    state = {k: v.detach().cpu().float() for k, v in hf_state_dict(model).items()}
    for hf_name, (site, linear) in site_weights(model, adapter).items():
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None or gname not in tensors:
            raise ExportError(f"{site.name} ({hf_name}) has no tensor in {source.name} (looked for {gname!r}); "
                              "export --format hf instead")
        t = tensors[gname]
        base = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        heads = _heads_of(reader, arch, gname)
        if heads:
            base = _unpermute(base, heads)
        if base.shape != tuple(linear.weight.shape) or not np.array_equal(base, linear.weight.detach().cpu().float().numpy()):
            raise ExportError(f"{source.name} does not hold the model's base weight at {site.name} ({gname}): the model "
                              f"was not loaded from this file, cannot merge there")
        w = merged[hf_name].float().numpy()
        replaced[gname] = _permute(w, heads) if heads else w
        state[hf_name] = torch.from_numpy(w)
    merged_hash = weight_hash({k: torch.from_numpy(_stored(v.numpy(), dtype)) for k, v in state.items()})
    return replaced, merged_hash



def _write(path: Path, reader, arch: str, file_type, qtype, replaced: dict[str, np.ndarray], info: dict, dtype: torch.dtype,
           coeff: float, adapter_path: str) -> None:
    """The GGUF file: the source's metadata (less what this export sets) and tensors, the steered ones replaced."""
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter  # optional heavy dependency of this export only
    from gguf.quants import dequantize, quantize

    writer = GGUFWriter(path, arch)
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "innerpissa.")) or field.name in _OWN_KEYS:
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.add_custom_alignment(int(alignment))
    writer.add_file_type(int(file_type))
    writer.add_description(f"{info['base_model']} with the steering adapter {adapter_path or '(unnamed)'} "
                           f"({info['adapter_class']}, concept {info['concept']}) merged at c = {coeff:+g} "
                           f"by InnerPiSSA-lab interp.export")
    _add_provenance(writer, info)
    for t in reader.tensors:
        arr = replaced.get(t.name)
        if arr is None:
            arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        stored = _stored(arr, dtype)
        check_finite(t.name, torch.from_numpy(stored), coeff, dtype)
        if arr.ndim <= 1 or qtype == GGMLQuantizationType.F32:
            writer.add_tensor(t.name, np.ascontiguousarray(arr, dtype=np.float32))
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(t.name, np.ascontiguousarray(arr).astype(np.float16))
        else:
            writer.add_tensor(t.name, quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def _add_provenance(writer, info: dict) -> None:
    """The export record as ``innerpissa.*`` keys (the coefficient as float64, lists as string arrays)."""
    for key, value in info.items():
        if key == "coeff":
            writer.add_float64("innerpissa.coefficient", float(value))
        elif isinstance(value, bool | int):
            writer.add_int32(f"innerpissa.{key}", int(value))
        elif isinstance(value, list):
            writer.add_array(f"innerpissa.{key}", [str(v) for v in value])
        else:
            writer.add_string(f"innerpissa.{key}", str(value))


def _read_back(folder: Path, file_name: str):
    """The written file as plain ``transformers`` reads it (float32, eval mode)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32).eval()
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
