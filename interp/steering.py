"""One steering interface for every method (InnerPiSSA, its ablations, LoRA, steering
vectors, prompting), so that every evaluation and table compares like with like.

A method is fitted once, then *applied* with a coefficient ``c``:

* ``c = 0`` is the untouched model, exactly;
* ``c`` is a float, or a tensor of one coefficient per batch row (shape ``[batch]``) so
  that rows at +1, -1 and 0 share one forward pass;
* ``orientation`` (+1 or -1) multiplies ``c``: sign calibration flips it so that ``+c``
  means "more of the concept" without touching the fitted parameters.

Methods that act on activations describe what they do at ``c`` as values,
:meth:`SteeringMethod.edits` (:mod:`interp.interventions`), which any backend executes
(:func:`interp.backends.run`); :meth:`SteeringMethod.steer` installs them on a model for a
block, for code that calls the model itself. Prompting acts on the prompt instead and
implements :meth:`SteeringMethod.messages`. Evaluation calls both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from interp.interventions import Coeff, Edits
from interp.backends import backend_of

Messages = list[dict[str, str]]


def check_coeff(coeff: Coeff) -> Coeff:
    """Reject NaN/inf coefficients and tensors that are not 0-d or 1-d."""
    if isinstance(coeff, Tensor):
        if coeff.ndim > 1:
            raise ValueError(f"a coefficient tensor must be 0-d or [batch], got shape {tuple(coeff.shape)}")
        if not torch.isfinite(coeff).all():
            raise ValueError(f"steering coefficients must be finite, got {coeff.tolist()}")
        return coeff
    coeff = float(coeff)
    if not math.isfinite(coeff):
        raise ValueError(f"steering coefficient must be finite, got {coeff}")
    return coeff


class SteeringMethod:
    """Base class: a fitted steering method applied with a coefficient.

    Subclasses override :meth:`edits` (activation methods) and/or :meth:`messages`
    (prompt methods). ``name`` labels the method in tables; ``orientation`` is the
    calibrated sign (see :mod:`interp.calibrate`).
    """

    name: str = "method"
    orientation: int = 1  # the calibrated sign: +1, or -1 after a flip (interp.calibrate)
    calibration: dict | None = None  # the sign / strength calibration records (interp.calibrate), None until calibrated

    def edits(self, coeff: Coeff) -> Edits:
        """What the method does to a forward pass at ``coeff`` (orientation applied); ``()`` at 0 (default: nothing)."""
        check_coeff(coeff)
        return ()

    @contextmanager
    def steer(self, model, coeff: Coeff) -> Iterator[None]:
        """Apply the method's :meth:`edits` at ``coeff`` to ``model`` inside the block."""

        with backend_of(model).applied(self.edits(coeff)):
            yield

    def messages(self, messages: Messages, coeff: float) -> Messages:
        """Rewrite one chat (list of role/content dicts) for coefficient ``coeff`` (default: unchanged)."""
        return messages

    def effective(self, coeff: Coeff) -> Coeff:
        """The coefficient after orientation: what the method's maths actually uses."""
        coeff = check_coeff(coeff)
        if isinstance(coeff, Tensor) and coeff.ndim == 0:
            coeff = float(coeff)
        return coeff * self.orientation if self.orientation != 1 else coeff

    @contextmanager
    def oriented(self, value: int) -> Iterator[None]:
        """The method with ``orientation`` set to ``value`` inside the block (training runs at +1), restored after."""
        if value not in (1, -1):
            raise ValueError(f"orientation must be +1 or -1, got {value}")
        saved, self.orientation = self.orientation, value
        try:
            yield
        finally:
            self.orientation = saved

    def config(self) -> dict:
        """JSON-able description (for provenance); subclasses extend it."""
        return {"name": self.name, "orientation": self.orientation, "class": type(self).__name__}


class NoSteering(SteeringMethod):
    """The base model at every coefficient (the reference row of every table)."""

    name = "base"
