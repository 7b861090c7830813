"""Fixtures for router tests."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def shipped_train_path() -> Path:
    return Path(str(resources.files("switchboard.data").joinpath("routing/train.jsonl")))


@pytest.fixture
def shipped_models_path() -> Path:
    return Path(str(resources.files("switchboard.data").joinpath("routing/models.json")))
