import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
TINYSTORIES = SHARED / "data" / "tinystories"
PYTHIA_TOKENIZER = SHARED / "tokenizers" / "pythia"
CONFIG_HUB = PROJECT_ROOT / "config_hub" / "pretrain"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (TINYSTORIES / "train.txt").is_file():
        pytest.fail(f"the offline data is missing: expected {TINYSTORIES} beside the project (see README)")
    return TINYSTORIES


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    if not (PYTHIA_TOKENIZER / "tokenizer.json").is_file():
        pytest.fail(f"the Pythia tokenizer is missing: expected {PYTHIA_TOKENIZER} beside the project")
    return PYTHIA_TOKENIZER


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict[str, str]:
    """Environment for `litgpt` subprocesses: a private token cache, plugin on, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != "LITGPT_MKA_DISABLE"}
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(args: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a command; on failure the assertion message holds its output."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def litgpt_command() -> list[str]:
    return [str(Path(sys.executable).parent / "litgpt")]
