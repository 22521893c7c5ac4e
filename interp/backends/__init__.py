"""Backends: one forward-with-intervention entry point per way of running a model
(:mod:`interp.backends.bridge`, :mod:`interp.backends.nnsight`); see :mod:`interp.backends.base`."""

from interp.backends.base import Backend, Readout, backend_of, run

__all__ = ["Backend", "Readout", "backend_of", "run"]
