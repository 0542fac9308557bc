"""Fixtures shared by the SPEX model tests: one briefly trained checkpoint per session.

The brief training (tests/model/brief_training.py) is smoke-level on purpose: a few dozen steps
on tiles of the bundled Berlin sample, enough for weights that run end to end and write
template-like descriptions. Training it once per session keeps the end-to-end tests
within their time budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from brief_training import BriefTrainingSettings, brief_train

# Fewer steps and tiles than the CLI default: the tests need working, text-writing
# weights, not the best the brief recipe can do.
TEST_TRAINING = BriefTrainingSettings(steps=40, n_tiles=16, batch_size=2, seed=0)


@pytest.fixture(scope="session")
def brief_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint folder of the tiny model after a brief, seeded training."""
    folder = tmp_path_factory.mktemp("brief") / "ckpt"
    _, record = brief_train(TEST_TRAINING, folder)
    assert record["final_loss"] < record["first_loss"]
    return folder
