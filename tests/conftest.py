"""Fixtures shared by the tests; the builders they use live in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SAMPLES, skip_unless_ci, write_pool

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        skip_unless_ci(f"{SAMPLES} not found (the shared fixtures sit beside the repository)")
    return SAMPLES


@pytest.fixture
def make_pool(tmp_path):
    """``make_pool(crops)`` writes a pool under ``tmp_path/img`` (see :func:`write_pool`)."""
    return lambda crops, **kwargs: write_pool(tmp_path / "img", crops, **kwargs)
