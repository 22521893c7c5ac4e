"""``python -m interp.evaluate``: the evaluation command (:mod:`interp.cli.evaluate`)."""

import sys

from interp.cli.evaluate import main

main(sys.argv[1:])
