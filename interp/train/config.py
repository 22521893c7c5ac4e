"""Training settings: :class:`TrainConfig` (everything a run depends on) and recipe strings.

A *recipe* is a set of overrides written ``"field=value;field=value"`` (:func:`parse_recipe`),
the one vocabulary of ``--recipe`` in every command. Settings are validated where they are
defined, so the command line, recipe strings and the Python API get the same error.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, fields, replace


from interp.adapters.innerpissa import InnerPiSSAConfig
from interp.data import (
    DEFAULT_CONCEPT,
)
from interp.losses import (
    LOSS_KINDS,
    SPACES,
)
from interp.models import DEFAULT_MODEL
from interp.sites import LINEAR_MODULES



TARGETS = ("gap", "shift", "both")
KL_SPANS = ("all", "prompt")
OBJECTIVES = ("reprpo", "distill", "preference")  # what training optimises (interp.train.objectives)
CHECKPOINT = "checkpoint.pt"
LOG = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (stored in the adapter's json ``training`` extra).

    The defaults are sized for the embedded default model on 2 CPU cores (about 6 minutes on
    one core: 40 steps on 24 sites).
    ``loss_layer`` (index or depth fraction) is where hidden states are read
    (``blocks.L.hook_resid_post``); ``None`` means the deepest adapted layer.
    ``system`` is the chat's system message: ``""`` keeps prompts short (an empty system
    turn), ``None`` uses the template's default system prompt.
    """

    # model and adapter (used by train_adapter and the CLI; train() takes a built adapter)
    model: str = DEFAULT_MODEL
    # the recipe found by analyses.recipe_search (validation split, sentiment): a band of residual
    # writers over depths 0.1-0.5, the loss read just after it, rotations bounded by 0.1 rad
    layers: str = "0.1:0.5"
    modules: tuple[str, ...] = ("attn.o", "mlp.out")
    # the adapter's own options (rank, rotations, scaling, angle bound); its init is seeded by ``seed``
    adapter: InnerPiSSAConfig = InnerPiSSAConfig(max_angle=0.1)
    # data
    concept: str = DEFAULT_CONCEPT
    suffixes: str | None = None
    n_pairs: int = 1000
    val_fraction: float = 0.1
    n_calibration: int = 32
    n_validation: int = 32
    system: str | None = ""
    max_length: int | None = 64
    # optimisation
    steps: int = 40
    batch_size: int = 4
    lr: float = 8e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    # loss
    space: str = "dHS"
    loss: str = "proj"
    # "reprpo": separate hidden states along the preference direction (the losses above); "distill": at c = +1 the
    # steered model, given the negative persona, predicts the suffix as the base model given the positive persona
    # does (and the reverse at c = -1): the prompt's behaviour moved into the weights, reversibly; "preference": at a
    # coefficient c drawn from [-1, 1] per row, the steered model's preference for the positive persona's own
    # completion over the negative persona's (relative to the base model) moves with c (interp.losses.preference_loss)
    objective: str = "reprpo"
    preference_beta: float = 1.0  # the preference loss's β (its margin is in nats per token)
    kl_allowed: float = 0.5  # the preference objective's KL barrier: nats per token a row at |c| = 1 spends free
    completion_tokens: int = 16  # length of the personas' greedy completions the preference objective compares
    target: str = "gap"  # what the loss moves: the pairs' gaps, every row's own state ("shift"), or "both"
    loss_layer: int | float | None = 0.55
    beta: float = 1.0
    tau: float = 0.2
    coherence_weight: float = 1.0
    coherence_temperature: float = 0.1
    ordering_weight: float = 1.0
    margin: float = 0.1
    # read the loss's hidden state as the mean over the last n suffix tokens (1: the last token only)
    last_tokens: int = 1
    # weight of the mean next-token KL(base || steered) over the training rows at c = +1 and -1: the
    # coherence cost the strength calibration matches, paid during training; kl_span "all" takes every
    # position, "prompt" those before the assistant suffix (where the concept is not being expressed)
    kl_weight: float = 0.0
    kl_span: str = "all"
    # bookkeeping
    eval_batch_size: int = 16
    diagnostics_every: int = 10
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; valid spaces: {list(SPACES)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; valid targets: {list(TARGETS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; valid objectives: {list(OBJECTIVES)}")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"unknown loss {self.loss!r}; valid losses: {list(LOSS_KINDS)}")
        if not isinstance(self.adapter, InnerPiSSAConfig):
            raise ValueError(f"adapter must be an InnerPiSSAConfig, got {type(self.adapter).__name__}")
        bad = [m for m in self.modules if m not in LINEAR_MODULES]
        if bad:
            raise ValueError(f"unknown module(s) {bad}; valid modules: {list(LINEAR_MODULES)}")
        for name in ("steps", "batch_size", "n_calibration", "n_validation", "eval_batch_size",
                     "diagnostics_every", "checkpoint_every", "last_tokens", "completion_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_calibration < 2:
            raise ValueError("n_calibration must be >= 2 (a direction needs two pairs)")
        if self.kl_span not in KL_SPANS:
            raise ValueError(f"unknown kl_span {self.kl_span!r}; valid: {list(KL_SPANS)}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        self._check_ranges()

    # (setting, rule, holds): every number means something only in its range; a value outside it (grad_clip = -1
    # reverses the step's sign; lr = inf breaks the SVD) is refused here, so the CLI, recipes and the API agree
    _RANGES = (
        ("lr", "a finite number > 0", lambda v: 0 < v < math.inf),
        ("grad_clip", "a finite number > 0", lambda v: 0 < v < math.inf),
        ("weight_decay", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("beta", "a finite number > 0", lambda v: 0 < v < math.inf),
        ("tau", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("coherence_weight", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("coherence_temperature", "a finite number > 0", lambda v: 0 < v < math.inf),
        ("ordering_weight", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("margin", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("kl_weight", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("preference_beta", "a finite number > 0", lambda v: 0 < v < math.inf),
        ("kl_allowed", "a finite number >= 0", lambda v: 0 <= v < math.inf),
        ("val_fraction", "a fraction in (0, 1)", lambda v: 0 < v < 1),
        ("n_pairs", "an integer >= 2 (a train and a validation pair at least)", lambda v: v >= 2),
    )

    def _check_ranges(self) -> None:
        for name, rule, holds in self._RANGES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not holds(value):
                raise ValueError(f"{name} must be {rule}, got {value!r}")

    @classmethod
    def of(cls, **fields) -> TrainConfig:
        """A config from flat fields: the adapter's options (``rank``, ``max_angle``, ...) by their names too."""
        return cls().with_(**fields)

    def with_(self, **overrides) -> TrainConfig:
        """``dataclasses.replace`` that also takes the adapter's options by name (``rank=8``)."""
        unknown = set(overrides) - set(TRAIN_FIELDS) - set(ADAPTER_FIELDS)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; valid: {sorted(set(TRAIN_FIELDS) | set(ADAPTER_FIELDS))}")
        adapter = {k: overrides.pop(k) for k in list(overrides) if k in ADAPTER_FIELDS}
        if adapter:
            overrides["adapter"] = replace(overrides.get("adapter", self.adapter), **adapter)
        return replace(self, **overrides)

    def adapter_config(self) -> InnerPiSSAConfig:
        """The adapter's options, its init seeded by the run's seed."""
        return replace(self.adapter, seed=self.seed)

    def record(self) -> dict:
        """The config as one flat, JSON-able dict (the adapter's options at the top level, as stored
        in run folders, checkpoints and adapter files); :meth:`from_record` reads it back."""
        flat = {k: v for k, v in asdict(self).items() if k != "adapter"}
        return {**flat, **{k: v for k, v in asdict(self.adapter).items() if k in ADAPTER_FIELDS}}

    @classmethod
    def from_record(cls, record: dict) -> TrainConfig:
        """The config a :meth:`record` describes (settings it lacks keep today's defaults)."""
        fields_ = {k: tuple(v) if k == "modules" else v for k, v in record.items() if k in TRAIN_FIELDS or k in ADAPTER_FIELDS}
        return cls.of(**fields_)


TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.name != "adapter")
# the adapter's options a training config sets by name (its seed is the run's)
ADAPTER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(InnerPiSSAConfig) if f.name != "seed")


# settings written as comma-separated lists in a recipe
_TUPLES = {"modules"}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_recipe(spec: str) -> dict:
    """``"layers=0.1:0.5;modules=attn.o,mlp.out;lr=0.02"`` -> overrides for :meth:`TrainConfig.with_`
    (TrainConfig and adapter fields, names checked): the ``--recipe`` of every command that trains."""
    known = set(TRAIN_FIELDS) | set(ADAPTER_FIELDS)
    out: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"bad recipe part {part!r}: write field=value with a TrainConfig or adapter field, one of {sorted(known)}")
        out[key] = tuple(v.strip() for v in value.split(",") if v.strip()) if key in _TUPLES else (
            value.strip() if key == "layers" else _value(value.strip()))
    return out


RESUME_FREE = ("checkpoint_every", "diagnostics_every")
# settings added after runs were first recorded, with the value that means "as before": a stored
# config without them describes a run made with these values
ADDED_SETTINGS = {"objective": "reprpo", "preference_beta": 1.0, "kl_allowed": 0.5, "completion_tokens": 16, "last_tokens": 1, "kl_weight": 0.0, "target": "gap", "kl_span": "all", "select": "top",
                  # the adapter options a training record names since it holds the whole adapter config
                  "clamp": "angle", "init_std": 1e-3}


