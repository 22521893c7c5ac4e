"""``python -m interp.train``: the training command (:mod:`interp.cli.train`)."""

import sys

from interp.cli.train import main

main(sys.argv[1:])
