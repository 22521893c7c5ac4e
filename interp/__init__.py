"""InnerPiSSA-lab: steering language models in the singular-vector space of their own weights.

The few names a notebook needs (the modules hold the rest; ARCHITECTURE.md draws the layers):

    from interp import load_model, select_sites, attach, train_adapter, TrainConfig, measure_of
    from interp.generation import generate
    model = load_model()                                    # the embedded SmolLM2-135M (or a Hugging Face id)
    sites = select_sites(model, layers="0.1:0.5", modules=["attn.o", "mlp.out"])
    adapter, result = train_adapter(model, sites, TrainConfig(concept="sentiment"))
    facts = measure_of("honesty", "facts")                  # a concept's measure: splits, score, table, floor
    print(facts.table(facts.score(model, adapter, facts.splits()["validation"], (-1, 0, 1))))
    generate(model, adapter, ["Tell me about your day."], coeffs=(-1, 0, 1))
"""

from interp.adapters.innerpissa import InnerPiSSAConfig, attach
from interp.adapters.io import load_adapter, save_adapter
from interp.backends import backend_of, select_sites
from interp.measures import measure_of
from interp.models import load_model
from interp.protocol import MethodSpec, fit_adapter, run_method
from interp.train import TrainConfig, train_adapter

# (``train`` and ``generate`` are not re-exported: ``interp.train`` and ``interp.generate`` name the packages of
# those commands, and a function of the same name here would hide them from ``import interp.train``)
__all__ = ["InnerPiSSAConfig", "MethodSpec", "TrainConfig", "attach", "backend_of", "fit_adapter", "load_adapter",
           "load_model", "measure_of", "run_method", "save_adapter", "select_sites", "train_adapter"]
