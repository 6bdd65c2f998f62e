"""Reading a litgpt checkpoint folder: the one loader of ``convert``, ``evaluate`` and ``compare``.

A litgpt checkpoint folder holds ``lit_model.pth`` (a plain state dict, as ``litgpt download`` writes, or
``litgpt pretrain``'s training state ``{"model": ..., "iter_num": ...}``), ``model_config.yaml`` (the
``Config``, with the plugin's fields), the tokenizer files and, from ``litgpt pretrain``, ``hyperparameters.yaml``.
``litgpt pretrain --out_dir OUT`` writes ``OUT/step-*/`` and ``OUT/final/`` folders of this kind.
"""

from pathlib import Path

import torch
import yaml

CHECKPOINT_FILE = "lit_model.pth"
CONFIG_FILE = "model_config.yaml"


def read_hyperparameters(checkpoint_dir: Path) -> dict:
    """The ``hyperparameters.yaml`` that litgpt saved beside the checkpoint."""
    with open(Path(checkpoint_dir) / "hyperparameters.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_config(checkpoint_dir: Path):
    """The litgpt ``Config`` of ``model_config.yaml`` (the plugin's fields included)."""
    from litgpt.config import Config

    import litgpt_mka  # noqa: F401  (the Config fields of the plugin, also without the .pth hook)

    return Config.from_file(Path(checkpoint_dir) / CONFIG_FILE)


def load_state(checkpoint_file: Path) -> dict:
    """The saved state (a state dict, or the training state ``model``, ``iter_num``, ...), memory-mapped."""
    return torch.load(checkpoint_file, map_location="cpu", mmap=True, weights_only=True)


def model_weights(state: dict) -> dict[str, torch.Tensor]:
    """The model's state dict of a saved state: its ``model`` entry for a training state, else the state itself."""
    return state.get("model", state)


def load_model(
    checkpoint_dir: Path, device: torch.device, state: dict | None = None, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """The litgpt ``GPT`` of a checkpoint folder in `dtype` (float32 by default), in eval mode on `device`.

    `state`: the folder's saved state if already loaded (:func:`load_state`). The load is strict: every
    parameter of the config's model, nothing else.
    """
    from litgpt.model import GPT

    state = load_state(Path(checkpoint_dir) / CHECKPOINT_FILE) if state is None else state
    model = GPT(load_config(checkpoint_dir))
    model.load_state_dict(model_weights(state))
    return model.to(device=device, dtype=dtype).eval()


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a pretraining out_dir: ``step-*`` by step, then ``final``.

    A folder counts once litgpt wrote its ``model_config.yaml``, the last file of a save.
    """
    out_dir = Path(out_dir)
    steps = [p for p in out_dir.glob("step-*") if (p / CONFIG_FILE).is_file()]
    steps.sort(key=lambda p: int(p.name.split("-")[1]))
    final = out_dir / "final"
    return steps + ([final] if (final / CONFIG_FILE).is_file() else [])
