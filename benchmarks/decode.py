"""Decode benchmark: KV-cache size and cached greedy decode speed of every attention variant.

    python benchmarks/decode.py                   # pythia-70m shape, fp32, CUDA if present else CPU
    python benchmarks/decode.py --size 14m --contexts 128 256 --new-tokens 8

Variants at one Pythia size, from config_hub/pretrain/pythia-{size}-*.yaml: MHA, GQA, MQA (litgpt's
CausalSelfAttention), litgpt's stock MultiheadLatentAttention (expanded per-head cache) and ours
(litgpt_mka.attention.mla: latent cache, absorbed decode). The two MLA rows run the same weights. Weights are
random (speed does not depend on them); ``block_size`` is raised to fit the largest context plus the
decoded tokens (Pythia has no learned positions). Prints a markdown table; stock litgpt's own
``print`` warnings go to stderr.
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from litgpt.config import Config

from litgpt_mka.measure.kv_cache_size import (
    allocated_kv_cache_bytes,
    build_gpt,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token,
    stock_mla_class,
)
from litgpt_mka.measure.decode_speed import prefill_random_prompt, time_decode_steps

PRESETS = Path(__file__).resolve().parents[1] / "config_hub" / "pretrain"
# (row label, preset suffix, use litgpt's stock MLA class)
VARIANTS = (
    ("MHA", "mha", False),
    ("GQA", "gqa", False),
    ("MQA", "mqa", False),
    ("MLA, stock litgpt (expanded cache)", "mla", True),
    ("MLA, ours (latent cache, absorbed)", "mla", False),
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", choices=("14m", "70m", "160m"), default="70m", help="Pythia size (default: 70m)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048], help="prompt lengths")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=16, help="timed decode steps per context (default: 16)")
    parser.add_argument("--warmup-tokens", type=int, default=2, help="untimed decode steps before timing")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timing rounds; the fastest is kept (default: 5)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def preset_config(size: str, suffix: str, block_size: int) -> Config:
    model_config = yaml.safe_load((PRESETS / f"pythia-{size}-{suffix}.yaml").read_text())["model_config"]
    return Config(**{**model_config, "block_size": block_size})


def build_variants(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[tuple[str, Config, type, torch.nn.Module]]:
    block_size = max(args.contexts) + args.warmup_tokens + args.new_tokens
    variants, mla_weights = [], None
    for label, suffix, stock in VARIANTS:
        config = preset_config(args.size, suffix, block_size)
        attention_class = stock_mla_class() if stock else config.attention_class
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = build_gpt(config, attention_class).to(dtype)
        if suffix == "mla":  # both MLA rows run one set of weights
            if mla_weights is None:
                mla_weights = model.state_dict()
            else:
                model.load_state_dict(mla_weights)
        variants.append((label, config, attention_class, model))
    return variants


def checked_cache_bytes(
    model: torch.nn.Module, config: Config, attention_class: type, context: int, dtype: torch.dtype
) -> int:
    """Bytes of one sequence's cache at `context`, as allocated by set_kv_cache (checked against the formula)."""
    device = next(model.parameters()).device
    model.set_kv_cache(batch_size=1, max_seq_length=context, device=device, dtype=dtype)
    allocated = allocated_kv_cache_bytes(model)
    model.clear_kv_cache()
    expected = context * kv_cache_bytes_per_token(config, dtype, attention_class)
    if allocated != expected:
        name = type(model.transformer.h[0].attn).__name__
        raise RuntimeError(f"{name}: allocated {allocated} B, accounted {expected} B")
    return allocated


def measure_speeds(args: argparse.Namespace, variants: list) -> dict[tuple[str, int, int], float]:
    """tokens/s per (variant, batch, context): the fastest of `rounds` interleaved rounds.

    Per batch size every variant is prefilled once to the largest context (see `time_decode_steps`), then
    each round times every variant at every context in turn, so that load from other processes on a
    shared machine spreads over all variants and only slows rounds down.
    """
    positions = max(args.contexts) + args.warmup_tokens + args.new_tokens
    speeds: dict[tuple[str, int, int], float] = {}
    for batch_size in args.batch_sizes:
        tokens = {
            label: prefill_random_prompt(model, batch_size, max(args.contexts), positions, seed=args.seed)
            for label, _, _, model in variants
        }
        for _ in range(args.rounds):
            for context in sorted(args.contexts):
                for label, _, _, model in variants:
                    steps = time_decode_steps(model, tokens[label], context, args.warmup_tokens, args.new_tokens)
                    key = (label, batch_size, context)
                    speeds[key] = max(speeds.get(key, 0.0), batch_size / statistics.median(steps))
        for _, _, _, model in variants:
            model.clear_kv_cache()
        print(f"measured batch size {batch_size}", file=sys.stderr, flush=True)
    return speeds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = DTYPES[args.dtype]
    variants = build_variants(args, device, dtype)
    largest = max(args.contexts)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stock litgpt MLA prints warnings in build_kv_cache
        cache_bytes = {
            label: checked_cache_bytes(model, config, attention_class, largest, dtype)
            for label, config, attention_class, model in variants
        }
        speeds = measure_speeds(args, variants)
    ours_bytes = cache_bytes[variants[-1][0]]
    speed_columns = [(b, c) for b in args.batch_sizes for c in sorted(args.contexts)]

    print(f"Decode benchmark, pythia-{args.size} shape, {args.dtype}, {describe_device(device)}")
    print(
        f"tokens/s = batch / median step time over {args.new_tokens} timed greedy steps (after {args.warmup_tokens}"
        f" warm-up steps), fastest of {args.rounds} interleaved rounds; random weights and prompts;"
        f" {time.perf_counter() - started:.0f} s\n"
    )
    header = ["variant", "params", "KV numbers/token/layer", "KV bytes/token"]
    header += [f"cache MiB @ {largest} (1 seq)", "x ours"]
    header += [f"tok/s b={b} ctx={c}" for b, c in speed_columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for label, config, attention_class, model in variants:
        cells = [
            label,
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
            str(kv_cache_elements_per_token(config, attention_class)),
            str(kv_cache_bytes_per_token(config, dtype, attention_class)),
            f"{cache_bytes[label] / 2**20:.2f}",
            f"{cache_bytes[label] / ours_bytes:.1f}",
        ]
        cells += [f"{speeds[(label, b, c)]:.1f}" for b, c in speed_columns]
        print("| " + " | ".join(cells) + " |")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
