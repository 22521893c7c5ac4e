"""Shared fixtures: one tiny random model and (for slow tests) the embedded default model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests never touch a hub; fail loudly rather than hang if code tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# static PNG/SVG figures cost a browser start each (~3 s): tests/test_figures.py turns them on where it checks them
os.environ.setdefault("INTERP_STATIC_FIGURES", "0")
# caches (the personas' completions) go to a folder of this session, never the user's
if "INTERP_CACHE" not in os.environ:
    import tempfile

    os.environ["INTERP_CACHE"] = tempfile.mkdtemp(prefix="interp-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    # The unit tests use a hidden-64 model: thread start-up costs more than it saves, and
    # two threads per process slow every test several-fold when anything else shares the
    # cores. INTERP_TEST_THREADS overrides (e.g. for the slow default-model tests).
    import torch

    torch.set_num_threads(int(os.environ.get("INTERP_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
DILEMMAS_DIR = REPO.parent / "shared" / "data" / "daily_dilemmas"


@pytest.fixture(scope="session")
def tiny():
    from interp.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def smol():
    from interp.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def dilemmas_dir() -> Path:
    if not DILEMMAS_DIR.is_dir():
        pytest.skip(f"DailyDilemmas not found at {DILEMMAS_DIR}")
    return DILEMMAS_DIR


@pytest.fixture()
def mini_concept(tmp_path):
    """The sentiment concept with 14 of its evaluation items (4 for sign calibration): fast on tiny-random."""
    import json

    from interp.data import concepts_dir

    items = json.loads((concepts_dir() / "sentiment_eval.json").read_text())["items"][:14]
    (tmp_path / "items.json").write_text(json.dumps({"items": items}))
    concept = json.loads((concepts_dir() / "sentiment.json").read_text())
    concept["measure"] = {"kind": "continuations", "file": "items.json", "n_calibration": 4}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(concept))
    return path


HOLD = """
import sys, time
from interp.files import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def hold_folder():
    """``hold_folder(path)`` locks ``path`` (:func:`interp.store.run_lock`) from another live process
    and returns it; every such process is killed at teardown."""
    import subprocess
    import sys

    procs = []

    def hold(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def tokenize_chats(model, chats, continue_final: bool = False):
    """``(tokens, attention_mask)`` of chats ending in the generation prompt (or left open): tests' shorthand
    for :func:`interp.data.encode_chats`."""
    from interp.data import encode_chats

    enc = encode_chats(model.tokenizer, chats, continue_final=continue_final)
    return enc.tokens, enc.attention_mask


def randomised(adapter, scale: float):
    """``adapter`` with every parameter drawn from N(0, scale²) (seeded): a non-trivial steer for export tests."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return adapter
