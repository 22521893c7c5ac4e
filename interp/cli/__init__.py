"""The command-line vocabulary every entry point shares (:func:`add_shared_args`).

* ``--model`` (default :data:`interp.models.DEFAULT_MODEL`), ``--device`` (``cpu``, ``cuda``,
  ``cuda:N``, ``mps`` or ``auto``: the first of cuda, mps, cpu that this machine has),
  ``--dtype`` (``float32``, ``bfloat16``, ``float16``; adapter parameters stay float32);
* ``--out`` (the results folder), ``--seed``, ``--quick`` (a small smoke run), ``--no-progress``;
* where a command has them: ``--n-eval`` (how many items of the scored split: dilemmas or
  continuation items), ``--layers`` (layer indices, depth fractions or bands ``a:b``), and
  ``--backend bridge|nnsight`` with ``--remote`` (nnsight on NDIF).

Bad values fail in the parser, naming the option and the valid choices; commands report
other errors through ``parser.error``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.measures import measure_of
from interp.models import DEFAULT_MODEL, SPECS_HELP, load_model
from interp.backends.nnsight import check_remote, check_remote_spec, load_nnsight
from interp.sites import check_layer_spec

@dataclass(frozen=True)
class QuickSizes:
    """What ``--quick`` (a smoke run of minutes, not a result) means in every command, declared once."""

    steps: int = 6  # training steps
    n_pairs: int = 200  # contrastive pairs
    n_eval: int = 16  # scored items
    n_calibration: int = 16  # calibration items (sign, strength)
    max_new_tokens: int = 16  # generated tokens
    depths: tuple[float, ...] = (0.3, 0.6)  # layer sweep depths
    seeds: int = 1


QUICK = QuickSizes()

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` / ``mps`` / ``cpu`` (what this machine has); other names checked and kept."""
    if not _DEVICE.match(name):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device; use --device cpu")
    return name


def _device_arg(text: str) -> str:
    try:
        return resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_args(p: argparse.ArgumentParser, *, backends: bool = False) -> None:
    """``--model``, ``--device``, ``--dtype`` (and, with ``backends``, ``--backend``, ``--remote``)."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec: {SPECS_HELP}")
    p.add_argument("--device", type=_device_arg, default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model weights' dtype (adapters stay float32)")
    if backends:
        p.add_argument("--backend", choices=("bridge", "nnsight"), default="bridge",
                       help="run the model as a TransformerBridge or through nnsight (same results)")
        p.add_argument("--remote", action="store_true",
                       help="run on NDIF through nnsight (implies --backend nnsight; a Hub model NDIF serves and NDIF_API_KEY)")


def add_measure_args(p: argparse.ArgumentParser, *, concept: str = "honesty", measure_help: str = "") -> None:
    """``--concept`` (a shipped concept or a concept .json) and ``--measure`` (one of the measures the concept offers)."""
    p.add_argument("--concept", default=concept, help="a shipped concept (honesty, sentiment) or a concept .json path")
    p.add_argument("--measure", default=None,
                   help=measure_help or "which of the concept's measures: facts or dailydilemmas for honesty, continuations "
                                        "for sentiment (default: the concept's first)")


def measure_from_args(args: argparse.Namespace, error, **overrides):
    """The measure ``--concept`` / ``--measure`` name (errors through the parser, naming the option)."""
    try:
        return measure_of(args.concept, args.measure, **overrides)
    except ValueError as err:
        error(f"--concept {args.concept} --measure {args.measure or '(default)'}: {err}")


def add_shared_args(p: argparse.ArgumentParser, *, out: str, seed: str = "seed of the run (training, fitting, bootstrap)",
                    quick: str | None = None, n_eval: str | None = None, layers: str | None = None,
                    backends: bool = False) -> None:
    """The shared options (see the module docstring); the strings are each option's help."""
    add_model_args(p, backends=backends)
    p.add_argument("--out", default=None, help=out)
    if seed:
        p.add_argument("--seed", type=int, default=0, help=seed)
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if n_eval:
        p.add_argument("--n-eval", type=positive_int, default=None, help=n_eval)
    if layers:
        p.add_argument("--layers", type=layer_spec, default=None, help=layers)


def model_from_args(args: argparse.Namespace):
    """The model that ``--model --device --dtype`` (and ``--backend``, ``--remote`` where given) name:
    a TransformerBridge, or an nnsight model (whose backend runs on NDIF with ``--remote``)."""
    if getattr(args, "remote", False) or getattr(args, "backend", "bridge") == "nnsight":

        if args.remote:  # key and network first: building a remote model already reads its config from the Hub
            check_remote_spec(args.model)
            check_remote()
        return load_nnsight(args.model, dtype=DTYPES[args.dtype], device=args.device, remote=args.remote)
    return load_model(args.model, dtype=DTYPES[args.dtype], device=args.device)


def layer_spec(text: str) -> str:
    """An argparse type: a layer spec (:func:`interp.sites.check_layer_spec`); ``--layers=`` is an error, not a default."""

    try:
        return check_layer_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def float_list(text: str) -> list[float]:
    """An argparse type: comma-separated finite numbers, e.g. ``-1,0,1``."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as -1,0,1, got {text!r}") from None
    if not values or not all(torch.isfinite(torch.tensor(values))):
        raise argparse.ArgumentTypeError(f"expected finite numbers such as -1,0,1, got {text!r}")
    return values


def join_negative_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``["--coeffs", "-1,0,1"]`` -> ``["--coeffs=-1,0,1"]`` for the named options.

    argparse reads a value such as ``-1,0,1`` as an unknown option; joining it to its
    option lets users write the natural form.
    """
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        if items[i] in options and i + 1 < len(items) and re.match(r"^-[\d.]", items[i + 1]):
            out.append(f"{items[i]}={items[i + 1]}")
            i += 2
            continue
        out.append(items[i])
        i += 1
    return out


def _float(text: str, ok, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number that {rule}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must {rule}, got {value}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    return _float(text, lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _float(text, lambda v: v > 0, "be finite and > 0")
