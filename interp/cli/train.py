"""``python -m interp.train``: train, calibrate the sign and save an adapter (:mod:`interp.train`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from interp.adapters.innerpissa import SCALINGS
from interp.cli import add_measure_args, add_shared_args, measure_from_args, model_from_args, positive_int
from interp.adapters.io import AdapterLoadError
from interp.files import RunLocked, run_lock
from interp.models import ModelLoadError
from interp.losses import LOSS_KINDS, SPACES
from interp.protocol import fit_adapter
from interp.sites import LINEAR_MODULES
from interp.train import CHECKPOINT, TrainConfig, parse_recipe
from interp.train.config import OBJECTIVES


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m interp.train", description="Train a bidirectional InnerPiSSA adapter (ReprPO by default, or --objective distill / preference), "
                                "calibrate its sign on the concept's measure, save it.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_shared_args(p, out="run folder (default: runs/<concept>-<model>-s<seed>)", seed="training seed (data order, adapter init)",
                    quick="6 steps on 200 pairs: a smoke run",
                    layers=f"adapted layers: indices, depth fractions and bands, e.g. '0.5', '10,14' or '0.1:0.5' (default {d.layers})")
    p.add_argument("--modules", default=",".join(d.modules), help=f"comma-separated, from {list(LINEAR_MODULES)}")
    p.add_argument("--rank", type=positive_int, default=d.adapter.rank)
    add_measure_args(p, concept=d.concept, measure_help="the concept's measure the sign is calibrated on: facts or "
                     "dailydilemmas for honesty (default: the concept's first, DailyDilemmas for honesty)")
    p.add_argument("--suffixes", default=d.suffixes, help="text file of suffixes (default: the shipped list)")
    p.add_argument("--n-pairs", type=int, default=d.n_pairs)
    p.add_argument("--steps", type=positive_int, default=d.steps)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="pairs per step")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--space", choices=SPACES, default=d.space)
    p.add_argument("--loss", choices=LOSS_KINDS, default=d.loss)
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective,
                   help="reprpo: separate hidden states along the preference direction; distill: at c = +1 / -1 predict "
                        "what the model prompted with the positive / negative persona predicts; preference: at c, prefer the "
                        "positive persona's own completions over the negative's in proportion to c (under a KL barrier)")
    p.add_argument("--loss-layer", default=str(d.loss_layer), help="read hidden states here (index or depth fraction; 'none': the deepest adapted layer)")
    p.add_argument("--no-rotate-v", action="store_true")
    p.add_argument("--rotate-u", action="store_true")
    p.add_argument("--scaling", choices=SCALINGS, default=d.adapter.scaling)
    p.add_argument("--max-angle", type=float, default=d.adapter.max_angle, help="largest rotation angle at |c| = 1 (radians)")
    p.add_argument("--recipe", default="", help="further TrainConfig or adapter settings, 'field=value;...' (e.g. 'target=shift')")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of the one-line message")
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into an --out that already holds an adapter or a checkpoint (they are replaced)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep the training orientation instead of calibrating the sign on the concept's measure "
                        "(--measure's calibration split: DailyDilemmas for honesty unless --measure facts, continuation "
                        "margins for sentiment)")
    args = p.parse_args(argv)
    args.error = p.error
    args.measure_obj = measure_from_args(args, p.error)
    loss_layer = None
    if args.loss_layer is not None and args.loss_layer.lower() != "none":
        try:
            loss_layer = int(args.loss_layer)
        except ValueError:
            try:
                loss_layer = float(args.loss_layer)
            except ValueError:
                p.error(f"--loss-layer must be an int index or a float depth fraction, got {args.loss_layer!r}")
    try:
        config = TrainConfig.of(
            model=args.model, layers=args.layers or d.layers,
            modules=tuple(m.strip() for m in args.modules.split(",") if m.strip()),
            rank=args.rank, rotate_v=not args.no_rotate_v, rotate_u=args.rotate_u, scaling=args.scaling,
            max_angle=args.max_angle,
            concept=args.concept, suffixes=args.suffixes, n_pairs=200 if args.quick else args.n_pairs,
            steps=6 if args.quick else args.steps,
            batch_size=args.batch_size, lr=args.lr, space=args.space, loss=args.loss, objective=args.objective, loss_layer=loss_layer, seed=args.seed,
        ).with_(**parse_recipe(args.recipe))
    except ValueError as err:
        p.error(str(err))
    return config, args


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, calibrate the sign and save an adapter; returns its training record (the json's ``training``)."""
    config, args = parse_args(argv)
    out = Path(args.out or f"runs/{Path(config.concept).stem}-{config.model.replace('/', '_')}-s{config.seed}")
    if out.exists() and not out.is_dir():
        args.error(f"--out {out} is a file; a run folder is needed")
    if args.resume and args.overwrite:
        args.error("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    try:
        with run_lock(out):  # held first: a live run's folder is refused naming its holder, whatever else is asked
            held = [f for f in (out / CHECKPOINT, out / "adapter" / "adapter.json") if f.is_file()]
            if held and not (args.resume or args.overwrite):
                args.error(f"--out {out} already holds {' and '.join(str(f) for f in held)}; pass --resume to continue "
                           "that run or --overwrite to train afresh and replace it")
            return _main(config, args, out)
    except RunLocked as err:
        args.error(str(err))
    except (AdapterLoadError, ModelLoadError, ValueError) as err:  # the library's own errors name their input
        if args.debug:
            raise
        args.error(str(err))


def _main(config: TrainConfig, args: argparse.Namespace, out: Path) -> dict:
    model = model_from_args(args)
    # representation orientation does not fix the behavioural sign: unless --no-calibrate it is
    # checked on the calibration split of the concept's own measure
    adapter, training = fit_adapter(model, config, out, measure=args.measure_obj, calibrate=not args.no_calibrate,
                                    resume=args.resume, progress=not args.no_progress)
    sign = (adapter.calibration or {}).get("sign")
    if sign:
        print(f"sign on the {sign['n']}-item calibration split of the concept's measure: +1 {sign['score_pos']:.4f} vs "
              f"-1 {sign['score_neg']:.4f} -> orientation {sign['orientation']:+d}{' (flipped)' if sign['flipped'] else ''}")
    m = training["metrics"]
    print(
        f"done in {training['seconds']:.0f}s: orientation {adapter.orientation:+d}; validation gap "
        f"(-1) {m['gap@-1']:.3f} < (0) {m['gap@+0']:.3f} < (+1) {m['gap@+1']:.3f}: {bool(m['ordered'])}; "
        f"dNLL(-1) {m['dnll@-1']:.3f}, dNLL(+1) {m['dnll@+1']:.3f}; adapter -> {out / 'adapter'}"
    )
    adapter.detach()
    return training

