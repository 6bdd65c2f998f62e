"""Shared test helpers: one tiny-config builder, one way to load presets, the decoding equivalences.

Every numerical helper runs in float32 on the CPU by default and compares whole tensors with
``torch.testing.assert_close``; callers pass documented looser tolerances for half precision.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from litgpt.config import Config
from litgpt.model import GPT

import litgpt_mka  # noqa: F401  (activates the plugin for litgpt modules imported by the tests)
from litgpt_mka.presets import model_config_from_yaml

CONFIG_HUB = Path(__file__).resolve().parents[1] / "config_hub" / "pretrain"
TINY_VOCAB = 128

# attention keys of each variant at a tiny size (n_head 4, head size 16, rotary on 4 of 16 features)
TINY_LATENT = dict(q_lora_rank=24, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "mha": {},
    "gqa": {"n_query_groups": 2, "attention_class_name": "GroupedQueryAttention"},  # as the presets
    "mqa": {"n_query_groups": 1, "attention_class_name": "GroupedQueryAttention"},
    "mla": {"latent_attention": TINY_LATENT},
    "mka": {"attention_class_name": "MemorizedKeyAttention", "memorized_key_attention": {"routing": "keys"}},
    "fmka": {"attention_class_name": "MemorizedKeyAttention", "memorized_key_attention": {"routing": "keys_values"}},
}


def load_script(path: Path, name: str) -> Any:
    """A script outside the package (a benchmark, a study's report) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(variant: str = "mha", **overrides: Any) -> Config:
    """A tiny override of the real pythia-14m config: 2 layers, width 64, 4 heads, vocabulary 128.

    `variant` names a key of :data:`TINY_VARIANTS`; `overrides` win over both.
    """
    settings = dict(
        n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=TINY_VOCAB, padded_vocab_size=TINY_VOCAB
    )
    settings.update(TINY_VARIANTS[variant])
    settings.update(overrides)
    return Config.from_name("pythia-14m", **settings)


def preset_config(name: str, **overrides: Any) -> Config:
    """The `Config` of ``config_hub/pretrain/<name>.yaml`` (e.g. ``"pythia-14m-mla"``), with `overrides`."""
    return model_config_from_yaml(CONFIG_HUB / f"{name}.yaml", **overrides)


def build_gpt(config: Config, module_class: type | None = None) -> GPT:
    """A litgpt ``GPT`` for `config` whose blocks use `module_class` (default: the config's variant).

    ``build_gpt(config, attention_class("LitgptMultiheadLatentAttention"))`` puts litgpt's own MLA in a
    model of our MLA config: both have the same state-dict keys, so weights move between them. Modules
    are created on the current default device (``with torch.device("meta"):`` works).
    """
    model = GPT(config)
    if module_class is not None:
        for block_idx, block in enumerate(model.transformer.h):
            if type(block.attn) is not module_class:
                block.attn = module_class(config, block_idx)
    return model


def random_gpt(config: Config, seed: int = 0, std: float | None = None) -> GPT:
    """A `GPT` in eval mode whose every parameter is random (no zero bias, no unit norm, no zero router).

    ``std=None`` keeps the default init and perturbs biases and norms by N(0, 0.1); a number redraws every
    parameter from N(0, std).
    """
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if std is not None:
                parameter.normal_(0.0, std)
            elif name.endswith("bias") or "norm" in name or "router.out" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def tokens(batch: int, length: int, seed: int = 1, vocab_size: int = TINY_VOCAB) -> torch.Tensor:
    """Random token ids (batch, length) from a fixed seed."""
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode_token_by_token(model: GPT, idx: torch.Tensor, prompt: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """litgpt generate's loop: prefill `prompt` tokens, then one token at a time; logits (B, T, V)."""
    model.set_kv_cache(batch_size=idx.size(0), dtype=dtype)
    logits = [model(idx[:, :prompt], torch.arange(prompt), input_pos_maxp1=prompt)]
    for t in range(prompt, idx.size(1)):
        logits.append(model(idx[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1))
    return torch.cat(logits, dim=1)


@torch.no_grad()
def prefill_in_chunks(model: GPT, idx: torch.Tensor, sizes: list[int], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Fresh cache, then consecutive chunks of `sizes` tokens (they must add up to T); logits (B, T, V)."""
    if sum(sizes) != idx.size(1):
        raise ValueError(f"chunk sizes {sizes} add up to {sum(sizes)}, not to the {idx.size(1)} tokens")
    model.set_kv_cache(batch_size=idx.size(0), dtype=dtype)
    logits, start = [], 0
    for size in sizes:
        end = start + size
        logits.append(model(idx[:, start:end], torch.arange(start, end), input_pos_maxp1=end))
        start = end
    return torch.cat(logits, dim=1)


def assert_cached_decode_matches_full_forward(model: GPT, idx: torch.Tensor, prompt: int, **tolerance: Any) -> None:
    """Token-by-token cached decoding gives the full forward's logits at every position."""
    with torch.no_grad():
        full = model(idx)
    torch.testing.assert_close(decode_token_by_token(model, idx, prompt), full, **tolerance)


def assert_chunked_prefill_matches_single_prefill(
    model: GPT, idx: torch.Tensor, sizes: list[int], **tolerance: Any
) -> None:
    """Prefill in chunks of `sizes` gives the logits (and so the cache) of one prefill of all tokens."""
    single = prefill_in_chunks(model, idx, [idx.size(1)])
    torch.testing.assert_close(prefill_in_chunks(model, idx, sizes), single, **tolerance)


_SAVE_STOCK_CHECKPOINT = """
import json, shutil, sys, torch
from pathlib import Path
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.utils import save_config
out, tokenizer, overrides = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
config = Config.from_name("pythia-14m", **overrides)
assert not hasattr(config, "attention_class_name")  # the plugin is off
torch.manual_seed(0)
model = GPT(config)
assert type(model.transformer.h[0].attn).__module__ == "litgpt.model"
torch.save(model.state_dict(), out / "lit_model.pth")
save_config(config, out)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(tokenizer / name, out / name)
"""


def run_worker(worker: Path, out_dir: Path, *args: str) -> None:
    """Runs ``python WORKER OUT_DIR ARGS...`` from the project root (one thread per process, a bare environment),
    for workers that start processes of their own; on failure the assertion message holds its output."""
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(worker), str(out_dir), *args], cwd=root, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def run_with_plugin(args: list[str], plugin: bool) -> "subprocess.CompletedProcess":
    """Runs a command with the plugin switched on or off (LITGPT_MKA_DISABLE); raises on a non-zero exit."""
    env = {**os.environ, "LITGPT_MKA_DISABLE": "0" if plugin else "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=True)


def save_stock_checkpoint(out_dir: Path, tokenizer_dir: Path, **overrides: Any) -> None:
    """A pythia-14m override (`overrides`, JSON values) saved by stock litgpt, plugin off, with the tokenizer files."""
    script_args = [str(out_dir), str(tokenizer_dir), json.dumps(overrides)]
    run_with_plugin([sys.executable, "-c", _SAVE_STOCK_CHECKPOINT, *script_args], plugin=False)


def assert_rows_at_different_positions_match_full_forward(model: GPT, **tolerance: Any) -> None:
    """Batched (B, T) input_pos: row 0 decodes on at positions 6..11 while row 1 rolls back to position 3 and
    decodes other tokens; each row's logits equal its own full forward."""
    first, second = tokens(1, 12, seed=1), tokens(1, 12, seed=2)
    rolled_back = torch.cat((second[:, :3], tokens(1, 9, seed=3)), dim=1)  # shares 3 tokens with `second`
    with torch.no_grad():
        expected = torch.cat((model(first)[:, 6:12], model(rolled_back)[:, 3:9]))  # (2, 6, vocab)
        model.set_kv_cache(batch_size=2)
        model(torch.cat((first[:, :6], second[:, :6])), torch.arange(6).expand(2, 6))  # (B, T) input_pos
        steps = []
        for i in range(6):
            idx = torch.stack((first[0, 6 + i], rolled_back[0, 3 + i])).view(2, 1)
            steps.append(model(idx, torch.tensor([[6 + i], [3 + i]]), input_pos_maxp1=7 + i))  # (B, 1) input_pos
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **tolerance)


# the SDPA kernels a GPU may run, by the profiler's op name (the CPU's: "..._flash_attention_for_cpu", math)
FUSED_CUDA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
}
MATH_OP = "aten::_scaled_dot_product_attention_math"


def attention_kernels_run(model: GPT, *args: Any, **kwargs: Any) -> list[str]:
    """The SDPA kernels ("flash", "cuDNN", "efficient", "math") one forward of `model` runs, in order."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile, torch.no_grad():
        model(*args, **kwargs)
    names = {**FUSED_CUDA_OPS, MATH_OP: "math"}
    return [names[event.name] for event in profile.events() if event.name in names]
