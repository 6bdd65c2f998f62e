"""Tiny MHA checkpoint folders for the conversion tests, written as `litgpt pretrain` writes them."""

import shutil
from pathlib import Path
from typing import Any

import torch
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.utils import save_config

from tests.conftest import PYTHIA_TOKENIZER
from tests.helpers import random_gpt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def write_checkpoint_dir(path: Path, model: GPT, training_state: bool = True) -> Path:
    """lit_model.pth (``{"model": ...}`` like `litgpt pretrain`, or a bare state dict), model_config.yaml, tokenizer."""
    path.mkdir(parents=True)
    state = model.state_dict()
    torch.save({"model": state, "iter_num": 1} if training_state else state, path / "lit_model.pth")
    save_config(model.config, path)
    for name in TOKENIZER_FILES:
        shutil.copy(PYTHIA_TOKENIZER / name, path / name)
    return path


def mha_checkpoint(path: Path, config: Config, seed: int = 0, edit: Any = None, **kwargs: Any) -> tuple[Path, GPT]:
    """A random MHA model (biases and norms perturbed), optionally edited in place by `edit(model)`, saved at `path`."""
    model = random_gpt(config, seed=seed)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    return write_checkpoint_dir(path, model, **kwargs), model


def load_converted(path: Path) -> GPT:
    """The float32 GPT of a converted folder, in eval mode (strict load: every parameter, nothing else)."""
    model = GPT(Config.from_file(path / "model_config.yaml"))
    model.load_state_dict(torch.load(path / "lit_model.pth", weights_only=True), strict=True)
    return model.float().eval()


def qkv_heads(model: GPT, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of one MHA layer's q, k, v weights (nh, hs, C) and biases (nh, hs): edits write through."""
    config = model.config
    attn = model.transformer.h[layer].attn
    w = attn.qkv.weight.view(3, config.n_head, config.head_size, config.n_embd)
    b = attn.qkv.bias.view(3, config.n_head, config.head_size)
    return w[0], w[1], w[2], b[0], b[1], b[2]

