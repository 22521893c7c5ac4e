"""The bridge's steered forward through ``interp.backends.run`` against the hook path it replaced.

Before interventions became values, an adapter kept a forward hook on each adapted Linear
from attach to detach and read its coefficient from its own state, and a vector method
registered TransformerLens hooks in ``steer``; a forward pass was a plain ``model(tokens)``.
Now every forward goes through ``run(model, tokens, mask, method.edits(c))``, which installs
the edits' hooks for that one pass. This prints, for the default band adapter (24 sites,
rank 64, one coefficient per row) and a mean-difference vector at its 12 layers, the
median time per batch of both paths, called alternately, and their ratio (new / old),
measured in one run, and checks that both give the same logits. (The old adapter path's hook
registration, microseconds, is timed with it so that the two can alternate.)

    python benchmarks/bench_forward.py [--model smollm2-135m] [--batch 16] [--tokens 64] [--repeats 7]
"""

from __future__ import annotations

import torch
from _timing import forward_parser, paired_times  # benchmarks/ is on sys.path when run as a script

from interp.adapters.innerpissa import attach
from interp.backends import run
from interp.baselines import MeanDiff
from interp.interventions import ADAPTED
from interp.models import load_model
from interp.sites import parse_layers, resid_hook
from interp.backends import select_sites
from interp.train import TrainConfig


def old_adapter_hooks(adapter, coeff):
    """The pre-change adapter path: one forward hook per Linear, registered once, adding ``layer.delta(x, c)``."""
    handles = []
    for site in adapter.sites:
        linear = adapter._linears[site.name]
        layer = getattr(linear, ADAPTED)
        handles.append(linear.register_forward_hook(lambda m, i, o, layer=layer: o + layer.delta(i[0], coeff).to(o.dtype)))
    return handles


def main(argv=None) -> dict[str, float]:
    parser = forward_parser(__doc__)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model)
    tokens = torch.randint(0, 1000, (args.batch, args.tokens))
    mask = torch.ones_like(tokens)
    rows = torch.tensor([1.0, -1.0] * (args.batch // 2) + [0.0] * (args.batch % 2))
    config = TrainConfig(model=args.model)
    adapter = attach(model, select_sites(model, layers=config.layers, modules=list(config.modules)), config.adapter_config())
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.05)
    layers = parse_layers(config.layers, int(model.cfg.n_layers))
    vector = MeanDiff({L: torch.randn(int(model.cfg.d_model)) for L in layers})
    result = {}
    with torch.no_grad():
        new = lambda: run(model, tokens, mask, adapter.edits(rows)).logits  # noqa: E731
        handles = old_adapter_hooks(adapter, rows)
        reference = model(tokens, attention_mask=mask)
        for h in handles:
            h.remove()
        same = torch.allclose(reference, new(), atol=1e-5)

        def old():  # hooks kept on the Linears for the pass, as attach used to leave them
            kept = old_adapter_hooks(adapter, rows)
            try:
                return model(tokens, attention_mask=mask)
            finally:
                for h in kept:
                    h.remove()

        t_new, t_old = paired_times(new, old, args.repeats)
        result["adapter"] = t_new / t_old
        print(f"{args.model}: batch {args.batch} x {args.tokens}, InnerPiSSA at {len(adapter.sites)} sites, per-row c: "
              f"run() {t_new * 1e3:.1f} ms vs hooks kept on the Linears {t_old * 1e3:.1f} ms -> ratio {result['adapter']:.3f} "
              f"(same logits: {same})")

        def old_vectors():
            hooks = [(resid_hook(L), lambda x, hook, v=v: x + rows.view(-1, 1, 1) * v) for L, v in vector.vectors.items()]
            with model.hooks(fwd_hooks=hooks):
                return model(tokens, attention_mask=mask)

        new_vectors = lambda: run(model, tokens, mask, vector.edits(rows)).logits  # noqa: E731
        same = torch.allclose(old_vectors(), new_vectors(), atol=1e-5)
        t_new, t_old = paired_times(new_vectors, old_vectors, args.repeats)
        result["vectors"] = t_new / t_old
        print(f"mean-difference vectors at {len(layers)} layers, per-row c: run() {t_new * 1e3:.1f} ms vs hooks in steer "
              f"{t_old * 1e3:.1f} ms -> ratio {result['vectors']:.3f} (same logits: {same})")
    adapter.detach()
    return result


if __name__ == "__main__":
    main()
