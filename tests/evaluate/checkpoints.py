"""Checkpoint folders with random weights, and the task folder, for the evaluation tests."""

import shutil
from pathlib import Path

import torch
from litgpt.utils import save_config

from tests.conftest import CONFIG_HUB, PROJECT_ROOT
from tests.helpers import random_gpt

PRESETS = sorted(path.stem for path in CONFIG_HUB.glob("pythia-14m-*.yaml"))
TASKS_DIR = PROJECT_ROOT / "tests" / "evaluate" / "tasks"


def save_checkpoint(directory: Path, config, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A litgpt checkpoint folder: random weights of `config`, model_config.yaml, the tokenizer files."""
    directory.mkdir(parents=True)
    torch.save(random_gpt(config, seed=seed).state_dict(), directory / "lit_model.pth")
    save_config(config, directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, directory / name)
    return directory
