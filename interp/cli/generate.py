"""``python -m interp.generate``: what does a steered model say? (:mod:`interp.generation`)

``--out`` is held from the start of the run: a second generation into the same folder is
refused at once instead of replacing the first one's files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from interp.adapters.io import AdapterLoadError, load_adapter
from interp.cli import add_measure_args, add_shared_args, float_list, join_negative_values, model_from_args, positive_int
from interp.models import ModelLoadError
from interp.files import RunLocked, run_lock, write_netcdf, write_text
from interp.generation import METHODS, GenerateConfig, fitted_method, generate, side_by_side
from interp.steering import NoSteering


def read_prompts(prompt: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """``--prompt`` values, then the lines (or a JSON list) of ``--prompts FILE``; ``ValueError`` naming a bad file."""
    prompts = list(prompt or [])
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
            loaded = json.loads(text) if path.suffix == ".json" else None
        except UnicodeDecodeError as err:
            raise ValueError(f"--prompts {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"--prompts {path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                             "expected a list of strings, or use a .txt file with one prompt per line") from err
        if path.suffix == ".json":
            if not isinstance(loaded, list) or not all(isinstance(s, str) for s in loaded):
                raise ValueError(f"--prompts {path}: a .json prompts file must hold a list of strings")
            prompts += loaded
        else:
            prompts += [line.strip() for line in text.splitlines() if line.strip()]
    return prompts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = GenerateConfig()
    p = argparse.ArgumentParser(prog="python -m interp.generate", description="What does a steered model say? Batched, KV-cached generation at several coefficients.")
    add_shared_args(p, out="folder for generations.nc and generations.md (default: print only)",
                    seed="sampling and fitting seed", quick="16 new tokens: a smoke run",
                    layers="layers of a --method vector (default: the training default's band)", backends=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, help="a saved adapter folder (InnerPiSSA or LoRA)")
    which.add_argument("--method", choices=METHODS, default=None, help="a baseline fitted on --concept's pairs")
    add_measure_args(p)  # the concept a --method baseline is fitted on, and the measure its sign is calibrated on
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
    args.error = p.error
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; a results folder is needed")
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
    args = parse_args(argv)
    if args.out is None:
        return _generate(args)
    try:
        with run_lock(args.out):  # held from the start: a second run into the same folder is refused at once
            return _generate(args)
    except RunLocked as err:
        args.error(str(err))


def _generate(args: argparse.Namespace) -> xr.Dataset:
    try:
        model = model_from_args(args)
        if args.adapter:
            method = load_adapter(model, args.adapter)
        elif args.method:
            method = fitted_method(model, args.method, args.concept, measure=args.measure, layers=args.layers, seed=args.seed,
                                   budget=args.budget or None)
        else:
            method = NoSteering()
    except (AdapterLoadError, ModelLoadError, ValueError) as err:  # the library's own errors name their input
        args.error(str(err))
    ds = generate(model, method, args.prompt_list, args.coeffs, args.config, progress=not args.no_progress)
    ds.attrs["adapter"] = str(args.adapter or "")
    table = side_by_side(ds, args.width)
    print(table)
    if args.out:
        out = Path(args.out)
        write_netcdf(ds, out / "generations.nc")
        write_text(out / "generations.md", table + "\n")
        print(f"\nwrote {out / 'generations.nc'} and {out / 'generations.md'}")
    return ds
