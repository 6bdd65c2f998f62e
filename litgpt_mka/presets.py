"""Reading the `litgpt pretrain` YAML files of ``config_hub/pretrain`` from Python."""

from pathlib import Path
from typing import Any

import yaml

def load_pretrain_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a `litgpt pretrain --config` file."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def model_config_from_yaml(path: str | Path, **overrides: Any):
    """The `litgpt.Config` that `litgpt pretrain --config path` builds, with `overrides` applied."""
    from litgpt.config import Config

    return Config(**{**load_pretrain_yaml(path)["model_config"], **overrides})
