"""ReprPO training of a bidirectional adapter (the command: ``python -m interp.train``, :mod:`interp.cli.train`).

One step, for a batch of ``n`` contrastive pairs (rows: chosen then rejected, see
:mod:`interp.data`):

1. reference forward at ``c = 0`` (plain model, ``torch.no_grad``): last-token hidden
   states at the loss hook and per-row NLL;
2. one policy forward carrying both directions: the pair rows twice, with a per-row
   coefficient tensor ``[+1]*2n + [-1]*2n`` under ``adapter.steer(model, coeff)``;
3. loss = projection (or logsigmoid) separation along the frozen preference direction
   + ``coherence_weight`` · coherence + ``ordering_weight`` · ordering (:mod:`interp.losses`);
4. AdamW step with gradient clipping and a warmup + cosine schedule.

The preference direction is fixed before training from reference differences on a
calibration subset of the *training* pairs. The adapter trains with
``orientation = +1``; the guard's sign is recorded each step, and after training the
orientation is set from the separation summed over all steps (training
data only) so that ``+c`` means "more of the concept". Validation (held-out suffixes)
reports the mean gap at ``c ∈ {−1, 0, +1}`` and ΔNLL at ``c = ±1``.

Runs are reproducible without touching the global random generators: data order is a pure
function of ``(seed, step)`` (:func:`interp.data.batch_indices`), the adapter's initial values
come from its own seeded generator, and checkpoints (adapter parameters, optimizer,
scheduler, step, direction, history) are written atomically every
``checkpoint_every`` steps; ``--resume`` continues a killed run to the same adapter, bit
for bit on CPU.

Python API: :func:`train` (any :class:`~interp.adapters.base.AdapterSet`, e.g. LoRA) and
:func:`train_adapter` (builds an InnerPiSSA adapter first). Modules: :mod:`~interp.train.config`
(settings and recipes), :mod:`~interp.train.step` (one step), :mod:`~interp.train.loop` (the loop
and checkpoints).
"""

from interp.train.config import (
    ADDED_SETTINGS,
    CHECKPOINT,
    KL_SPANS,
    LOG,
    RESUME_FREE,
    TARGETS,
    TrainConfig,
    parse_recipe,
)
from interp.train.loop import TrainResult, build_pairs, train, train_adapter
from interp.train.step import evaluate_separation, loss_layer_of, loss_points, lr_factor, read_states, site_basis, step_loss

__all__ = ["ADDED_SETTINGS", "CHECKPOINT", "KL_SPANS", "LOG", "RESUME_FREE", "TARGETS", "TrainConfig", "TrainResult",
           "build_pairs", "evaluate_separation", "loss_layer_of", "loss_points", "lr_factor", "parse_recipe", "read_states",
           "site_basis", "step_loss", "train", "train_adapter"]
