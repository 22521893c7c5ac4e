"""``python -m interp.evaluate``: the evaluation command (:mod:`interp.cli.evaluate`).

The measures themselves live in :mod:`interp.measures` (DailyDilemmas scoring in
:mod:`interp.measures.dilemma_scoring`, continuation margins in :mod:`interp.continuations`).
"""
