"""Shared fixtures: one tiny random model and (for slow tests) the embedded default model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch a hub; fail loudly rather than hang if code tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
