"""Activation collection through nnsight vs through the TransformerBridge, same prompts, same store.

    python benchmarks/bench_nnsight.py [--model smollm2-135m] [--n 32] [--repeats 3]

Prints the median wall time of each backend's ``collect`` (to a fresh temporary store, so
the disk writes are included) and the ratio nnsight / bridge. Also prints the max absolute
difference between the two stores (parity check, not a timing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from interp.models import DEFAULT_MODEL
from interp.backends.nnsight import load_nnsight
from interp.models import load_model
from interp.backends import n_layers
from interp.store import collect, open_store


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=32, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    bridge = load_model(args.model)
    nn_model = load_nnsight(args.model)
    texts = [f"Question {i}: is it ever right to " + "lie " * (i % 5) + "to a friend?" for i in range(args.n)]
    chats = [bridge.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                  add_generation_prompt=True) for t in texts]
    enc = bridge.tokenizer(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    L = n_layers(bridge)
    sites = [f"blocks.{L // 2}.hook_resid_post", f"blocks.{L // 2}.mlp.out.hook_in", f"blocks.{L - 1}.hook_resid_post"]
    kw = dict(positions="last", chunk_size=args.n, batch_size=args.batch_size, progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def run_bridge() -> Path:
            return collect(bridge, Path(tmp) / f"b{next(runs)}", enc.input_ids, enc.attention_mask, sites, **kw)

        def run_nn() -> Path:
            return collect(nn_model, Path(tmp) / f"n{next(runs)}", enc.input_ids, enc.attention_mask, sites, **kw)

        run_bridge(), run_nn()  # warm-up (first-call costs: lazy imports, allocator)
        t_bridge = _time(run_bridge, args.repeats)
        t_nn = _time(run_nn, args.repeats)
        a, b = open_store(run_bridge()), open_store(run_nn())
        diff = max(float(np.abs(a[v].values - b[v].values).max()) for v in a.data_vars if v.startswith("acts"))

    mb, mn = statistics.median(t_bridge), statistics.median(t_nn)
    print(f"model {args.model}, {args.n} prompts x {enc.input_ids.shape[1]} tokens, {len(sites)} sites, batch {args.batch_size}")
    print(f"bridge  collect: {mb:.3f} s (median of {args.repeats})")
    print(f"nnsight collect: {mn:.3f} s (median of {args.repeats})")
    print(f"ratio nnsight / bridge: {mn / mb:.2f}x")
    print(f"max |bridge - nnsight| over stored activations: {diff:.2e}")


if __name__ == "__main__":
    main()
