"""Shared fixtures: tests never reach the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Set before transformers/datasets are imported anywhere in the test session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models run ~25x faster on one thread than with two threads fighting over two cores.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All eight tasks as tiny learnable datasets, laid out like their Hub repos."""
    from bayesian_lora.data.synthetic import write_all_synthetic

    return write_all_synthetic(tmp_path_factory.mktemp("hub_mirror"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real GLUE copies beside the checkout; skips cleanly where they are absent."""
    if not (SHARED_DATA / "nyu-mll" / "glue").is_dir():
        pytest.skip(f"real GLUE data not found at {SHARED_DATA}")
    return SHARED_DATA
