"""Independent units of an analysis (depths of a sweep, methods x seeds of a comparison) in parallel processes.

Scoring and training are at the forward bound on one core, so the machine is used best by running
independent units side by side, one torch thread each, rather than one unit on every core. Each
worker process loads the model once (from the local cache: about a second) and runs its units
through ``fn(model, *unit)``; results come back in the order given. Units must be picklable and
must write into folders of their own (each run folder is locked by its writer).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
from tqdm.auto import tqdm

from interp.cli import DTYPES
from interp.models import load_model

_MODEL = None  # the worker's model, loaded once by _init


def default_jobs() -> int:
    """One process per free core, at most 2 (the machine this project is sized for)."""
    return max(1, min(2, os.cpu_count() or 1))


def _init(model_args: dict, threads: int) -> None:
    global _MODEL
    torch.set_num_threads(threads)
    _MODEL = load_model(model_args["model"], dtype=DTYPES[model_args["dtype"]], device=model_args["device"])


def _call(fn: Callable, unit: tuple):
    return fn(_MODEL, *unit)


def run_units(fn: Callable, units: Sequence[tuple], *, model, model_args: dict, jobs: int, desc: str,
              progress: bool = True) -> list:
    """``[fn(model, *unit) for unit in units]``, in ``jobs`` worker processes when more than one (``model`` is
    used in this process otherwise; ``model_args``: ``--model --dtype --device`` for the workers)."""
    jobs = min(jobs, len(units))
    bar = tqdm(total=len(units), desc=desc, disable=not progress)
    if jobs <= 1:
        out = []
        for unit in units:
            out.append(fn(model, *unit))
            bar.update()
        return out
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init,
                             initargs=(model_args, threads)) as pool:
        futures = [pool.submit(_call, fn, tuple(unit)) for unit in units]
        out = []
        for future in futures:
            out.append(future.result())
            bar.update()
    return out
