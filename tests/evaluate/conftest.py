"""Checkpoint folders of every Pythia-14m preset (random weights) for the evaluation tests."""

from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.evaluate.checkpoints import PRESETS, save_checkpoint
from tests.helpers import preset_config


@pytest.fixture(scope="session")
def preset_checkpoints(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """Preset name (``pythia-14m-mla``, ...) -> its checkpoint folder, saved once per test session."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: save_checkpoint(root / name, preset_config(name), tokenizer_dir) for name in PRESETS}


@pytest.fixture
def in_project_root(monkeypatch, tmp_path):
    """The task YAMLs name their JSON files relative to the project root, as lm-eval reads them; datasets
    caches the prepared JSON under `tmp_path`, not in the user's cache."""
    import datasets

    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
