"""``python -m interp.generate``: the generation command (:mod:`interp.cli.generate`); the library is :mod:`interp.generation`."""
