"""PCASteering vs repeng 0.4.0's ``pca_diff``: same pairs, same layers, same model.

Prints, per layer, the cosine between the two directions (they must agree to >= 0.99;
the script exits 1 otherwise) and the extraction-time ratio. repeng is *not* a
dependency of this project; install it for this benchmark only::

    pip install repeng==0.4.0 --no-deps

repeng 0.4.0 uses ``np.float_`` (removed in NumPy 2), so it is shimmed before import.
Its hidden state ``hidden_states[L + 1]`` is the output of block ``L``, the same place as
``blocks.L.hook_resid_post``, except for the last block (HF applies the final norm
there), so the last layer is not compared.

    python benchmarks/bench_repeng.py [--model smollm2-135m] [--pairs 64] [--layers 5,14,22]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch

from interp.models import DEFAULT_MODEL
from interp.baselines import PCASteering, last_token_hidden
from interp.models import load_hf, load_model

PERSONAS = [("an honest", "a dishonest"), ("a truthful", "an untruthful")]
FRAMES = [
    "Pretend you are {} person making statements about the world.",
    "Act as {} person.",
    "You are {} person. Continue the sentence.",
    "Imagine being {} person talking to a friend.",
]
SUFFIXES = [
    "The capital of France is",
    "When my friend asked if I liked the gift, I said",
    "I found a wallet on the street, so I",
    "The report I handed to my boss was",
    "Asked where I was last night, I told them",
    "About the broken vase, I explained that",
    "My tax return this year",
    "The used car I am selling has",
]


def build_pairs(tokenizer, n: int) -> tuple[list[str], list[str]]:
    """Chat-templated (positive, negative) strings; a pair differs only in the persona."""
    combos = list(itertools.product(FRAMES, PERSONAS, SUFFIXES))
    if n > len(combos):
        raise SystemExit(f"at most {len(combos)} pairs available, asked for {n}")
    pos, neg = [], []
    for frame, (good, bad), suffix in combos[:n]:
        for persona, out in ((good, pos), (bad, neg)):
            chat = [{"role": "user", "content": frame.format(persona)}, {"role": "assistant", "content": suffix}]
            out.append(tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True))
    return pos, neg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--layers", default="5,14,22")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]

    np.float_ = np.float64  # repeng 0.4.0 predates NumPy 2
    try:
        from repeng import ControlVector, DatasetEntry
    except ImportError as err:
        print(f"repeng is not installed ({err}); pip install repeng==0.4.0 --no-deps")
        return 2

    bridge = load_model(args.model)
    hf_model, tokenizer = load_hf(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    pos, neg = build_pairs(tokenizer, args.pairs)
    if max(layers) >= bridge.cfg.n_layers - 1:
        raise SystemExit(f"compare layers below the last ({bridge.cfg.n_layers - 1}): HF's last hidden state is normed")

    with torch.no_grad():  # warm both models up so neither timing pays first-call costs
        warm = tokenizer(pos[:2], return_tensors="pt", padding=True)
        hf_model(**warm)
        bridge(warm["input_ids"], attention_mask=warm["attention_mask"])

    # repeng: tokenises with the tokenizer's defaults (right padding), reads hidden_states[L + 1].
    dataset = [DatasetEntry(positive=p, negative=n) for p, n in zip(pos, neg)]
    t0 = time.perf_counter()
    theirs = ControlVector.train(hf_model, tokenizer, dataset, hidden_layers=layers, batch_size=args.batch_size, method="pca_diff")
    t_repeng = time.perf_counter() - t0

    # Ours: the same strings tokenised the same way, through the bridge.
    def enc(texts: list[str]):
        e = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
        return e["input_ids"], e["attention_mask"]

    t0 = time.perf_counter()
    h_cho = last_token_hidden(bridge, *enc(pos), layers, batch_size=args.batch_size)
    h_rej = last_token_hidden(bridge, *enc(neg), layers, batch_size=args.batch_size)
    ours = PCASteering.from_hidden(h_cho, h_rej, model_spec=args.model)
    t_ours = time.perf_counter() - t0

    print(f"model {args.model}, {args.pairs} pairs, layers {layers}")
    worst = 1.0
    for L in layers:
        a = torch.as_tensor(theirs.directions[L]).double()
        b = ours.vectors[L].double()
        cos = float(a @ b / (a.norm() * b.norm()))
        # repeng's sign is a vote over pairs; on a tie it keeps sklearn's arbitrary SVD sign,
        # while ours breaks the tie by the mean gap, so only |cos| is comparable there.
        gap = (h_cho[L] - h_rej[L]).double() @ b
        tie = int((gap > 0).sum()) == int((gap < 0).sum())
        worst = min(worst, abs(cos) if tie else cos)
        note = f"  (sign vote tied {int((gap > 0).sum())}:{int((gap < 0).sum())}: compare |cos|)" if tie else ""
        print(f"  layer {L:>2}: cosine(ours, repeng) = {cos:+.6f}   |ours| = {float(b.norm()):.3f} (mean-diff norm){note}")
    print(f"extraction time: ours {t_ours:.2f} s, repeng {t_repeng:.2f} s, ratio ours/repeng = {t_ours / t_repeng:.2f}")
    if worst < 0.99:
        print(f"FAIL: worst cosine {worst:.4f} < 0.99")
        return 1
    print(f"OK: worst cosine {worst:.6f} >= 0.99")
    return 0


if __name__ == "__main__":
    sys.exit(main())
