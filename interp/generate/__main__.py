"""``python -m interp.generate``: the generation command (:mod:`interp.cli.generate`)."""

import sys

from interp.cli.generate import main

main(sys.argv[1:])
