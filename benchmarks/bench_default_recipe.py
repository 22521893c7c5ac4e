"""Training cost of the default recipe (a band of 24 sites) against the earlier single-site default.

Both are timed in one run on the same batch (one full step: reference forward, the policy
forward carrying c = +1 and -1, backward, AdamW); prints each step's median, their ratio,
and the 40-step training time each implies (validation and sign calibration excluded).
The target: default training within 10 minutes on 2 cores.

    python benchmarks/bench_default_recipe.py [--model smollm2-135m] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from bench_train import time_train_step  # benchmarks/ is on sys.path when run as a script

from interp.models import DEFAULT_MODEL
from interp.data import tokenize_pairs
from interp.models import load_model
from interp.train import TrainConfig, build_pairs
from _timing import report  # benchmarks/ is on sys.path when run as a script

# the default before the recipe search: one mlp.out site at depth 0.5, loss read there
SINGLE = dict(layers="0.5", modules=("mlp.out",), loss_layer=None, max_angle=0.3)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model)
    config = TrainConfig(model=args.model)
    pairs = build_pairs(config).train
    batch = tokenize_pairs(model.tokenizer, pairs[: config.batch_size], system=config.system, max_length=config.max_length)
    t_default, n_default = time_train_step(model, config, batch, pairs, args.repeats)
    t_single, n_single = time_train_step(model, config.with_(**SINGLE), batch, pairs, args.repeats)
    ratio = t_default / t_single
    report(f"model {args.model}, batch {config.batch_size} pairs, torch threads {torch.get_num_threads()}", [
        (f"default recipe ({n_default} sites)", f"{t_default:.3f} s/step -> {config.steps} steps {config.steps * t_default / 60:.1f} min"),
        (f"single site ({n_single} site)", f"{t_single:.3f} s/step -> {config.steps} steps {config.steps * t_single / 60:.1f} min"),
        ("ratio", f"{ratio:.2f}")])
    return ratio


if __name__ == "__main__":
    main()
