"""What each preset costs, before renting a GPU: one markdown table per model size.

    python benchmarks/preset_costs.py config_hub/pretrain/pythia-{410m,1b,1.4b}-{mha,gqa,mqa,mla,mka,fmka}.yaml

Per preset: parameters (counted on the meta device), KV-cache bytes per token over all layers for a cache in
fp32, bf16, int8 and int4 (``litgpt_mka.measure.kv_cache_size``; a quantized cache is held by the class that
quantizes this variant's cache with the same weights, GroupedQueryAttention for MHA), and the training memory
per GPU of ``litgpt pretrain`` in bf16-mixed at the preset's micro batch on 1 and 8 GPUs, by the formula of
``litgpt_mka.measure.training_memory``. No weights, no GPU: about 30 s. docs/pythia-scale/costs.md holds the
output of the command above.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt_mka.attention import registry
from litgpt_mka.measure.kv_cache_size import kv_cache_bytes_per_token
from litgpt_mka.measure.training_memory import GIB, parameter_counts, training_bytes_per_gpu
from litgpt_mka.presets import load_pretrain_yaml, model_config_from_yaml

CACHE_FORMATS = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "int8": (torch.bfloat16, "int8"),
    "int4": (torch.bfloat16, "int4"),
}
DEVICES = (1, 8)


@dataclass(frozen=True)
class PresetCost:
    name: str
    parameters: int
    cache_bytes: dict[str, int]  # per token over all layers, by cache format
    gib_per_gpu: dict[int, float]  # by number of GPUs


def preset_cost(path: Path) -> PresetCost:
    """Parameters, cache bytes per token and GiB per GPU of one pretraining YAML at its own micro batch."""
    train = load_pretrain_yaml(path)["train"]
    config = model_config_from_yaml(path)
    counts = parameter_counts(config)
    b, s = train["micro_batch_size"], train["max_seq_length"]
    return PresetCost(
        name=path.stem,
        parameters=counts.total,
        cache_bytes={name: cache_bytes(path, dtype, q) for name, (dtype, q) in CACHE_FORMATS.items()},
        gib_per_gpu={n: training_bytes_per_gpu(config, b, s, n, counts) / GIB for n in DEVICES},
    )


def cache_bytes(path: Path, dtype: torch.dtype, quantization: str | None) -> int:
    config = model_config_from_yaml(path)
    if quantization is not None:
        quantizing_class = registry.quantizable_attention_class(config)
        config = model_config_from_yaml(path, attention_class_name=quantizing_class, kv_cache_quantization=quantization)
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
        train = load_pretrain_yaml(paths[0])["train"]
        micro_batch = f"{train['micro_batch_size']} x {train['max_seq_length']} tokens"
        print(f"### {size}\n\n{markdown_table([preset_cost(path) for path in paths], micro_batch)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
