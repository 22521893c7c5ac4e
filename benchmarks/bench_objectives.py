"""One training step of each objective, as a ratio to today's default (ReprPO), on the default adapter and batch.

A step is the objective's loss (its forward passes) plus backward, on the same seeded batch of the
default recipe (InnerPiSSA on the band of residual writers, batch size 4). The preference objective's
completions are prepared first (generated once and cached, as a training run does before its first
step; the preparation is timed apart). Objectives are called in turn within each repeat, so a noisy
machine's slow moments fall on all alike; the medians and the ratios to ReprPO are printed, with
what the default 40-step run would cost at that step time.

    python benchmarks/bench_objectives.py [--model smollm2-135m] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _timing import report  # benchmarks/ is on sys.path when run as a script

from interp.adapters.innerpissa import attach
from interp.backends import backend_of, select_sites
from interp.data import batch_indices, tokenize_pairs
from interp.models import DEFAULT_MODEL, load_model
from interp.sites import resid_hook
from interp.train import TrainConfig, build_pairs, loss_layer_of
from interp.train.config import OBJECTIVES
from interp.train.objectives import StepInputs, objective_of
from interp.train.step import _frozen_base


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model)
    base = TrainConfig(model=args.model)
    sites = select_sites(model, layers=base.layers, modules=list(base.modules))
    adapter = attach(model, sites, base.adapter_config())
    split = build_pairs(base)
    pairs = [split.train[i] for i in batch_indices(len(split.train), base.batch_size, 0, base.seed)]
    batch = tokenize_pairs(model.tokenizer, pairs, system=base.system, max_length=base.max_length).to(backend_of(model).device)
    hook = resid_hook(loss_layer_of(model, sites, base.loss_layer))
    direction = torch.nn.functional.normalize(torch.randn(backend_of(model).d_model), dim=0)  # any unit direction: cost only
    objectives, prepared = {}, {}
    for name in OBJECTIVES:
        objective = objective_of(base.with_(objective=name))
        t0 = time.perf_counter()
        objective.prepare(model, split.train)
        prepared[name] = time.perf_counter() - t0
        objectives[name] = objective
    inputs = StepInputs(pairs, batch, 0, direction, 1.0, hook, None, prior=0.0)

    def step(objective) -> None:
        loss, _ = objective.loss(model, adapter, inputs)
        for p in adapter.parameters():  # as the optimiser step's zero_grad does
            p.grad = None
        loss.backward()

    times: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    with _frozen_base(model, adapter), adapter.oriented(1):
        for objective in objectives.values():  # warm-up
            step(objective)
        for _ in range(args.repeats):
            for name, objective in objectives.items():
                t0 = time.perf_counter()
                step(objective)
                times[name].append(time.perf_counter() - t0)
    adapter.detach()
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [(name, f"{medians[name]:.2f} s/step  x{medians[name] / medians['reprpo']:.2f} of reprpo  "
                   f"40 steps ~{40 * medians[name] / 60:.1f} min  (prepared in {prepared[name]:.1f} s)") for name in OBJECTIVES]
    report(f"One training step per objective on {args.model} ({len(sites)} sites, batch {base.batch_size}, "
           f"{torch.get_num_threads()} threads, median of {args.repeats})", rows)
    return medians


if __name__ == "__main__":
    main()
