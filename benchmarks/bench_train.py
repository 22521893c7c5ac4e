"""Cost of one ReprPO training step relative to one plain forward+backward on the same batch.

The training step is :func:`interp.train.step_loss` (reference forward at c = 0 without
grad, then one policy forward carrying the c = +1 and c = −1 rows) plus backward and an
AdamW step on the adapter. The baseline is one ordinary fine-tuning step's compute on the
same pairs: a forward+backward of the base model (all weights trainable) on the batch's
chosen and rejected rows with a next-token NLL loss. Prints the median time of each and
their ratio (target: <= 2.5).

    python benchmarks/bench_train.py [--model smollm2-135m] [--batch-size 4] [--repeats 3]

The adapter is InnerPiSSA at the config's sites and rank.
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_time, report  # benchmarks/ is on sys.path when run as a script

from interp.models import DEFAULT_MODEL
from interp.adapters.innerpissa import attach
from interp.data import tokenize_pairs
from interp.losses import gap_scale, gaps, preference_direction, token_nll
from interp.models import load_model
from interp.sites import resid_hook
from interp.backends import select_sites
from interp.train import TrainConfig, _forward, _frozen_base, build_pairs, loss_layer_of, step_loss


def time_train_step(model, config: TrainConfig, batch, pairs, repeats: int) -> tuple[float, int]:
    """Median seconds of one full training step (step_loss, backward, AdamW) with an InnerPiSSA
    adapter at ``config``'s sites and rank; returns ``(seconds, number of sites)``."""
    sites = select_sites(model, layers=config.layers, modules=list(config.modules))
    hook = resid_hook(loss_layer_of(model, sites, config.loss_layer))
    adapter = attach(model, sites, config.adapter_config())
    try:
        with torch.no_grad():
            h, _ = _forward(model, tokenize_pairs(model.tokenizer, pairs[:16], system=config.system), hook)
        direction = preference_direction(h[:16], h[16:])
        scale = gap_scale(gaps(h[:16], h[16:], direction))
        opt = torch.optim.AdamW(list(adapter.parameters()), lr=config.lr)

        def train_step():
            with _frozen_base(model, adapter):
                loss, _ = step_loss(model, adapter, batch, direction, scale, config, hook=hook)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return median_time(train_step, repeats), len(sites)
    finally:
        adapter.detach()


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model)
    config = TrainConfig.of(model=args.model, batch_size=args.batch_size, rank=args.rank)
    pairs = build_pairs(config).train
    batch = tokenize_pairs(model.tokenizer, pairs[: args.batch_size], system=config.system, max_length=config.max_length)

    def base_step():
        model.zero_grad(set_to_none=True)
        logits = model(batch.tokens, attention_mask=batch.attention_mask)
        nll, _ = token_nll(logits.float(), batch.tokens, batch.attention_mask)
        nll.mean().backward()

    # Timed before attaching: an attached adapter freezes the base weights (PEFT-style).
    t_base = median_time(base_step, args.repeats)
    model.zero_grad(set_to_none=True)
    t_train, n_sites = time_train_step(model, config, batch, pairs, args.repeats)
    ratio = t_train / t_base
    report(f"model {args.model}, adapter innerpissa, {n_sites} site(s), batch {args.batch_size} pairs "
           f"({batch.tokens.shape[0]} rows x {batch.tokens.shape[1]} tokens), torch threads {torch.get_num_threads()}", [
               ("training step", f"{t_train:.3f} s (median of {args.repeats})"), ("base fwd+bwd", f"{t_base:.3f} s"),
               ("ratio", f"{ratio:.2f}  (target <= 2.5)")])
    return ratio


if __name__ == "__main__":
    main()
