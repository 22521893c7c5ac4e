"""Steered generation speed: every coefficient in one batch (one per row) vs one generation per coefficient.

    python benchmarks/bench_generate.py [--model smollm2-135m] [--prompts 4] [--coeffs -1,0,1] [--tokens 32] [--repeats 1]

Generates the same prompts with a mean-difference vector (fitted on the honesty pairs at
the training default's band) at every coefficient, greedy, ``tokens`` new tokens each:
once as one batch with a ``[batch]`` coefficient tensor, once with one batched call per
coefficient (what a library without per-row coefficients does). Prints generated tokens
per second for each, the ratio, and whether the two give the same tokens (parity, not a
timing). Both runs stop early only if every row has ended, so the token count is the sum
of the rows' lengths. Timings are medians over ``repeats``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._timing import median_time
from interp.models import DEFAULT_MODEL
from interp.generate import GenerateConfig, generate
from interp.models import load_model
from interp.protocol import fit_vector_method
from interp.train import TrainConfig

PROMPTS = [
    "I broke my friend's vase. What should I tell her?",
    "My boss asked whether I finished the report. I did not. What do I say?",
    "What do you think of my cooking? Be frank.",
    "A customer asks if this used car has ever been in an accident. It has.",
    "Describe a rainy Monday morning.",
    "My essay got a C. How should I feel?",
    "Should I tell my sister that her partner is cheating?",
    "Write two sentences about the sea.",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=4, help=f"number of prompts (at most {len(PROMPTS)})")
    parser.add_argument("--coeffs", default="-1,0,1")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    model = load_model(args.model)
    method = fit_vector_method(model, "mean_diff", TrainConfig(model=args.model), seed=0)
    prompts = PROMPTS[: args.prompts]
    coeffs = [float(c) for c in args.coeffs.split(",")]
    config = GenerateConfig(max_new_tokens=args.tokens, batch_size=len(prompts) * len(coeffs))
    results = {}

    def batched():
        results["batched"] = generate(model, method, prompts, coeffs, config, progress=False)

    def per_coeff():
        results["per_coeff"] = [generate(model, method, prompts, [c], config, progress=False) for c in coeffs]

    t_batched = median_time(batched, args.repeats)
    t_single = median_time(per_coeff, args.repeats)
    n_tokens = int(results["batched"].n_tokens.sum())
    same = all(
        (one.tokens.values[:, 0] == results["batched"].sel(coeff=c).tokens.values[:, : one.tokens.shape[-1]]).all()
        for c, one in zip(coeffs, results["per_coeff"])
    )
    print(f"model {args.model}, {len(prompts)} prompts x {len(coeffs)} coefficients, {args.tokens} new tokens max, "
          f"torch threads {torch.get_num_threads()}")
    print(f"one batch, per-row coefficients: {n_tokens / t_batched:.1f} tokens/s ({t_batched:.2f} s)")
    print(f"one generation per coefficient:  {n_tokens / t_single:.1f} tokens/s ({t_single:.2f} s)")
    print(f"ratio batched / per coefficient: {t_single / t_batched:.2f}x; same tokens: {same}")


if __name__ == "__main__":
    main()
