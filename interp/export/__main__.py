"""``python -m interp.export``: the command line lives in :mod:`interp.cli.export`."""

from interp.cli.export import main

main()
