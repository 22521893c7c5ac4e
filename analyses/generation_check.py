"""Does a steered model *write* with the concept? Free generations scored by an off-the-shelf sentiment lexicon.

An independent check of the sentiment measure (a margin between two chosen words): each finished run
(a folder of ``compare_methods`` or ``recipe_search`` holding ``result.json``) is rebuilt (a saved
adapter loaded, a vector refitted), set to the strength it was calibrated to at ``--budget`` and made
to continue held-out everyday requests (``interp/concepts/generation_prompts.txt``, written for this
check and shared with no training or evaluation text) greedily at ``-c`` and ``+c``; the base model
writes once at ``c = 0``. Each text is scored by VADER's compound score (Hutto and Gilbert 2014: a
rule-based lexicon, -1 most negative to +1 most positive, shipped with the ``vaderSentiment`` package,
nothing downloaded). Beside the shift, the coherence of what was written: its NLL under the unsteered
model in the unsteered chat and its share of distinct bigrams.

    python -m analyses.generation_check --runs results/recipe_search/smollm2-135m/sentiment/default/seed_0 \\
        results/recipe_search/smollm2-135m/sentiment/baselines/mean_diff/seed_0 --budget 0.3

Each run's generations are kept beside it (``generations_<budget>.nc``, reused); the table goes to
``<out>/generation_check.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from analyses._io import analysis_parser, load_or_compute, locked, write_text
from interp.backends import backend_of
from interp.backends.decoding import GenerateConfig
from interp.cli import model_from_args, positive_float, positive_int
from interp.data import concepts_dir, read_suffixes
from interp.files import RUN_CONFIG, read_json_file
from interp.generation import generate
from interp.measures import measure_of
from interp.protocol import RESULT, MethodSpec, budget_key, fit_method, row_of
from interp.train import TrainConfig

PROMPTS = concepts_dir() / "generation_prompts.txt"


def read_prompts(path: str | Path = PROMPTS) -> list[str]:
    """The held-out requests (one per line; ``#`` comments skipped)."""
    return read_suffixes(path)


def lexicon_sentiment(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound score of each text, in [-1, 1]."""
    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(str(t))["compound"] for t in texts])


def rebuilt(model, folder: Path, budget: float):
    """A finished run's method as it was scored at ``budget``: ``(method, coefficient, record)``."""
    record = read_json_file(folder / RESULT, "a run record", "run the comparison that writes it first")
    settings = read_json_file(folder / RUN_CONFIG, "a run's settings")
    row = row_of(record, budget_key(budget))
    if not row:
        raise ValueError(f"{folder} was not scaled to {budget:g} nats; run it with that budget first")
    train = TrainConfig.from_record({k: v for k, v in settings.items() if k != "method"})
    measure = measure_of(train.concept)
    method, _ = fit_method(model, MethodSpec(record["method"], train), measure, measure.splits()["calibration"], folder,
                           progress=False)
    return method, float(row["coeff"]), record


def generated(model, folder: Path, budget: float, prompts: Sequence[str], config: GenerateConfig) -> xr.Dataset:
    """A finished run's generations at its ``-c`` and ``+c`` for ``budget``, each scored by the lexicon."""
    method, coeff, _ = rebuilt(model, folder, budget)
    try:
        ds = generate(model, method, prompts, (-coeff, coeff), config, progress=False)
    finally:
        if hasattr(method, "detach"):
            method.detach()
    return ds.assign(sentiment=(("prompt", "coeff"), lexicon_sentiment(ds["text"].values.ravel()).reshape(ds["text"].shape)))


def summary(name: str, ds: xr.Dataset, base: xr.Dataset) -> dict:
    """Shifts against the base model's own generations: sentiment (paired over prompts), NLL, distinct bigrams."""
    b = base.isel(coeff=0)
    pos, neg = ds.isel(coeff=1), ds.isel(coeff=0)
    shift = {side: r["sentiment"].values - b["sentiment"].values for side, r in (("pos", pos), ("neg", neg))}
    return {"run": name, "coeff": float(ds["coeff"].values[1]),
            "sentiment_shift": float(shift["pos"].mean()), "sentiment_shift_neg": float(shift["neg"].mean()),
            "p_value": float(stats.ttest_rel(pos["sentiment"].values, neg["sentiment"].values).pvalue),
            "nll_shift": float((pos["nll_base"] - b["nll_base"]).mean()),
            "nll_shift_neg": float((neg["nll_base"] - b["nll_base"]).mean()),
            "distinct_2": float(pos["distinct_2"].mean()), "distinct_2_neg": float(neg["distinct_2"].mean()),
            "base_sentiment": float(b["sentiment"].mean()), "base_distinct_2": float(b["distinct_2"].mean())}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = analysis_parser("generation_check", __doc__, writes="the table (generations are kept in each run's folder)",
                        quick="4 prompts, 12 new tokens")
    p.add_argument("--runs", nargs="+", required=True, help="finished run folders (each holding result.json)")
    p.add_argument("--budget", type=positive_float, default=0.3, help="the calibrated strength used: this budget's row")
    p.add_argument("--prompts", default=str(PROMPTS), help="a text file of requests, one per line")
    p.add_argument("--max-new-tokens", type=positive_int, default=40)
    args = p.parse_args(argv)
    args.error = p.error
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    try:
        prompts = read_prompts(args.prompts)
    except ValueError as err:
        args.error(str(err))
    prompts = prompts[:4] if args.quick else prompts
    config = GenerateConfig(max_new_tokens=12 if args.quick else args.max_new_tokens, system="")
    model = model_from_args(args)
    out = Path(args.out or Path("results") / "generation_check" / args.model.replace("/", "_"))
    tag = f"{budget_key(args.budget)}{'-quick' if args.quick else ''}"
    hash_ = backend_of(model).weight_hash

    def scored_base() -> xr.Dataset:
        ds = generate(model, None, prompts, (0.0,), config, progress=False)
        return ds.assign(sentiment=(("prompt", "coeff"), lexicon_sentiment(ds["text"].values.ravel())[:, None]))

    rows = []
    with locked(out, args.error):
        base = load_or_compute(out / f"base_generations-{tag}-{hash_}.nc", scored_base)
        for run in args.runs:
            folder = Path(run)
            if not (folder / RESULT).is_file():
                args.error(f"{folder} holds no {RESULT}: pass finished run folders")
            with locked(folder, args.error):
                ds = load_or_compute(folder / f"generations_{tag}.nc", lambda: generated(model, folder, args.budget, prompts, config))
            if ds.attrs.get("weight_hash") != hash_:
                args.error(f"{folder / f'generations_{tag}.nc'} was written by other model weights (hash "
                           f"{ds.attrs.get('weight_hash')}, this model {hash_}); delete it to generate again")
            name = f"{folder.parent.name}/{folder.name}" if folder.name.startswith("seed_") else folder.name
            rows.append(summary(name, ds, base))
    table = pd.DataFrame(rows)
    shown = table.drop(columns=["base_sentiment", "base_distinct_2"])
    shown = shown.assign(**{k: [f"{v:.2g}" if k == "p_value" else f"{v:+.3f}" for v in shown[k]] for k in shown.columns if k != "run"})
    head = (f"Free generations ({len(prompts)} held-out requests, greedy, {config.max_new_tokens} new tokens) scored by "
            f"VADER's compound sentiment (-1..1); each run at its strength for {args.budget:g} nats of KL; shifts against "
            f"the base model's own generations (mean sentiment {rows[0]['base_sentiment']:+.3f}, distinct bigrams "
            f"{rows[0]['base_distinct_2']:.3f}); NLL under the base model (nats/token); p: paired t-test of +c against -c "
            "over prompts.\n\n")
    written = {"table": write_text(out / f"generation_check-{tag}.md", head + shown.to_markdown(index=False, disable_numparse=True) + "\n"),
               "csv": write_text(out / f"generation_check-{tag}.csv", table.to_csv(index=False))}
    print(head + shown.to_markdown(index=False, disable_numparse=True))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
