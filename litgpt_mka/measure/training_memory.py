"""What a preset costs before it runs: parameters, KV-cache bytes per token, training memory per GPU.

    python -m litgpt_mka.measure.training_memory config_hub/pretrain/pythia-410m-*.yaml

prints one markdown table per model size (docs/pythia-scale/costs.md holds the output for 410m, 1b and 1.4b).

Notation: ``P`` parameters, ``C`` = n_embd, ``V`` = padded vocabulary, ``n`` = n_layer, ``b`` = micro batch,
``s`` = train.max_seq_length, ``N`` GPUs. Parameters are counted on the meta device (no memory, no weights).

Training memory per GPU in bytes, litgpt pretrain with ``precision: bf16-mixed``:

* ``N = 1`` (litgpt runs a single device, autocast): ``16 P + 2 P_mm + A``. ``16 P``: fp32 weights (4),
  fp32 gradients (4) and AdamW's two fp32 moments (8). ``2 P_mm``: the bf16 copy of every matmul weight
  (``nn.Linear`` weights, the output head included) that autocast makes in the forward and autograd keeps
  for the backward.
* ``N > 1`` (litgpt's FSDP: ``HYBRID_SHARD`` within a node, i.e. fully sharded over the node's N GPUs,
  one unit per ``Block`` plus the root; Lightning's ``MixedPrecision(param_dtype=bf16)``):
  ``16 P / N + 4 (P_root + 2 P_block) + A``. The sharded fp32 states as above, plus the unit's gathered bf16
  weights and their unsharded bf16 gradients for the root (embedding, final norm, head: held through the
  whole step) and two blocks (the one computing and the one prefetched).
* Activations ``A = b s (n a_block C + 10 V + 6 C)``: ``a_block C`` bytes per token and layer that one block
  saves for the backward (:data:`BLOCK_ACTIVATION_WIDTHS`), and at the head the final LayerNorm's fp32
  input and the head's bf16 input (6 C), the fp32 log-probabilities the loss saves (4 V), the bf16 logits
  (2 V) and the fp32 gradient of the log-probabilities at the start of the backward (4 V).

Not counted: the CUDA context and the allocator's caching and fragmentation (typically 0.5-2 GiB), NCCL
buffers, the optimizer step's temporaries. litgpt pretrain checkpoints no activations and uses SDPA's flash
or memory-efficient kernel, so no ``s x s`` score matrix is stored.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from litgpt_mka.measure.kv_cache_size import kv_cache_bytes_per_token

# Bytes per token and layer that one block saves for the backward under bf16 autocast, in multiples of n_embd,
# by attention family and key/value layout ("mha": one key/value head per query head, "grouped": fewer).
# Counted from autograd's saved tensors (tests/measure/test_training_memory.py checks them at two widths).
# MHA, 38 C: the fp32 block input read by both LayerNorms (4 C); the bf16 inputs of the QKV projection and of
# the MLP (2 C + 2 C); the QKV output (6 C, kept alive by the value view); the rotated q and k (4 C); the SDPA
# output and the output projection's input (2 C + 2 C); the MLP's fc output and GELU output (2 x 8 C).
BLOCK_ACTIVATION_WIDTHS = {
    ("CausalSelfAttention", "mha"): 38.0,
    ("CausalSelfAttention", "grouped"): 34.0,
    ("GroupedQueryAttention", "mha"): 38.0,
    ("GroupedQueryAttention", "grouped"): 34.0,
    ("MultiheadLatentAttention", "mha"): 45.1,  # at the presets' dims: L = C / 4, Lq = C / 2, P + R = V = hs
    ("MemorizedKeyAttention/keys", "mha"): 42.6,
    ("MemorizedKeyAttention/keys", "grouped"): 40.1,
    ("MemorizedKeyAttention/keys_values", "mha"): 46.6,
}
ADAMW_STATE_BYTES = 8  # two fp32 moments per parameter
MIXED_PRECISION_STATE_BYTES = 4 + 4 + ADAMW_STATE_BYTES  # fp32 weights, fp32 gradients, AdamW moments
GIB = 2**30


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a GPT, counted on the meta device."""

    total: int
    per_block: int  # the largest block
    root: int  # outside the blocks: embedding, final norm, head (FSDP's root unit)
    matmul: int  # weights of nn.Linear layers (autocast casts them to bf16), the head included


def parameter_counts(config: Any) -> ParameterCounts:
    from litgpt.model import GPT

    with torch.device("meta"):
        model = GPT(config)
    total = sum(p.numel() for p in model.parameters())
    blocks = [sum(p.numel() for p in block.parameters()) for block in model.transformer.h]
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return ParameterCounts(total=total, per_block=max(blocks), root=total - sum(blocks), matmul=matmul)


def block_activation_width(config: Any) -> float:
    """``a_block``: bytes per token and layer that a block saves for the backward, over n_embd.

    Raises:
        ValueError: the attention family and layout is not one of :data:`BLOCK_ACTIVATION_WIDTHS`.
    """
    family = config.attention_class_name
    if family == "MemorizedKeyAttention":
        family += "/" + (config.memorized_key_attention or {}).get("routing", "keys")
    layout = "mha" if config.n_query_groups == config.n_head else "grouped"
    if (family, layout) not in BLOCK_ACTIVATION_WIDTHS:
        raise ValueError(
            f"attention_class_name={config.attention_class_name!r} with n_query_groups={config.n_query_groups}"
            f" has no activation count; counted: {sorted(BLOCK_ACTIVATION_WIDTHS)}"
        )
    return BLOCK_ACTIVATION_WIDTHS[(family, layout)]


def activation_bytes(config: Any, micro_batch_size: int, seq_length: int) -> float:
    """``A = b s (n a_block C + 10 V + 6 C)`` (module docstring)."""
    C, V = config.n_embd, config.padded_vocab_size
    per_token = config.n_layer * block_activation_width(config) * C + 10 * V + 6 * C
    return micro_batch_size * seq_length * per_token


def training_bytes_per_gpu(
    config: Any, micro_batch_size: int, seq_length: int, devices: int, counts: ParameterCounts | None = None
) -> float:
    """Training memory per GPU of litgpt pretrain in bf16-mixed on `devices` GPUs of one node (docstring);
    `counts`: the config's :func:`parameter_counts`, if already counted.

    Raises:
        ValueError: devices is not a positive integer.
    """
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices={devices!r} must be a positive integer")
    counts = parameter_counts(config) if counts is None else counts
    if devices == 1:
        fixed = MIXED_PRECISION_STATE_BYTES * counts.total + 2 * counts.matmul
    else:
        gathered = counts.root + 2 * counts.per_block
        fixed = MIXED_PRECISION_STATE_BYTES * counts.total / devices + 4 * gathered
    return fixed + activation_bytes(config, micro_batch_size, seq_length)


# ------------------------------------------------------------------------------------------------ table
@dataclass(frozen=True)
class PresetCost:
    name: str
    parameters: int
    cache_bytes: dict[str, int]  # per token over all layers, by cache format
    gib_per_gpu: dict[int, float]  # by number of GPUs


CACHE_FORMATS = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "int8": (torch.bfloat16, "int8"), "int4": (torch.bfloat16, "int4")}
DEVICES = (1, 8)


def preset_cost(path: Path) -> PresetCost:
    """Parameters, cache bytes per token and GiB per GPU of one pretraining YAML at its own micro batch."""
    from litgpt_mka.presets import load_pretrain_yaml, model_config_from_yaml

    train = load_pretrain_yaml(path)["train"]
    config = model_config_from_yaml(path)
    b, s = train["micro_batch_size"], train["max_seq_length"]
    counts = parameter_counts(config)
    return PresetCost(
        name=Path(path).stem,
        parameters=counts.total,
        cache_bytes={name: _cache_bytes(path, dtype, q) for name, (dtype, q) in CACHE_FORMATS.items()},
        gib_per_gpu={n: training_bytes_per_gpu(config, b, s, n, counts) / GIB for n in DEVICES},
    )


def _cache_bytes(path: Path, dtype: torch.dtype, quantization: str | None) -> int:
    """Bytes per token over all layers; a quantized cache is held by the class that quantizes this variant's cache
    with the same weights (MHA: GroupedQueryAttention in place of litgpt's CausalSelfAttention)."""
    from litgpt_mka.attention import registry
    from litgpt_mka.presets import model_config_from_yaml

    config = model_config_from_yaml(path)
    if quantization is not None:
        attention_class_name = registry.quantizable_attention_class(config)
        config = model_config_from_yaml(path, attention_class_name=attention_class_name, kv_cache_quantization=quantization)
    return kv_cache_bytes_per_token(config, dtype)


def markdown_table(costs: list[PresetCost], micro_batch: str) -> str:
    header = ["preset", "parameters"] + [f"KV cache B/token {name}" for name in CACHE_FORMATS]
    header += [f"GiB/GPU, {n} GPU{'s' if n > 1 else ''} ({micro_batch})" for n in DEVICES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cost in costs:
        cells = [f"`{cost.name}`", f"{cost.parameters:,}"] + [f"{cost.cache_bytes[name]:,}" for name in CACHE_FORMATS]
        cells += [f"{cost.gib_per_gpu[n]:.1f}" for n in DEVICES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="pretraining YAMLs (config_hub/pretrain/*.yaml)")
    args = parser.parse_args(argv)
    by_size: dict[str, list[Path]] = {}
    for path in args.paths:
        by_size.setdefault(path.stem.rsplit("-", 1)[0], []).append(path)
    for size, paths in by_size.items():
        from litgpt_mka.presets import load_pretrain_yaml

        train = load_pretrain_yaml(paths[0])["train"]
        micro_batch = f"{train['micro_batch_size']} x {train['max_seq_length']} tokens"
        print(f"### {size}\n\n{markdown_table([preset_cost(p) for p in paths], micro_batch)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
