"""Per-run measurements: parameters, training throughput, peak memory, KV cache, decode speed.

Definitions are in :mod:`litgpt_mka.compare` (Metrics). Training figures are read from litgpt's own
``metrics.csv`` (one file per training process: ``logs/csv/version_*/metrics.csv``; a resumed run has
several), never re-timed.
"""

import csv
import os
import resource
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PRECISION_DTYPES = {"bf16": "bfloat16", "16": "float16", "32": "float32", "64": "float32"}


# ---------------------------------------------------------------------------------------------- memory
def reset_peak_memory() -> None:
    """Resets CUDA's peak counters (no-op on CPU, where the process's own peak RSS starts with it)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, Any]:
    """This process's peak: CUDA ``max_memory_allocated`` when CUDA is used, else peak RSS (``ru_maxrss``)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated())}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "cpu_peak_rss", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none): more than its CPU count means
    other processes competed for the CPUs, and CPU timings are then unreliable."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------------------------- parameters
def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """All parameters, and those of the attention modules (``block.attn`` of every block)."""
    attention = sum(p.numel() for block in model.transformer.h for p in block.attn.parameters())
    return {"total": sum(p.numel() for p in model.parameters()), "attention": attention}


# ---------------------------------------------------------------------------------------- metrics.csv
def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def read_metrics(out_dir: Path) -> list[list[dict[str, float | None]]]:
    """The rows of every ``metrics.csv`` under ``out_dir/logs/csv``, one list per training process, in order."""
    files = sorted(Path(out_dir).glob("logs/csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    segments = []
    for path in files:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        segments.append([row for row in rows if row.get("iter_time") is not None])
    return segments


def tokens_per_iteration(segments: list[list[dict]]) -> int:
    """Tokens of one iteration on all devices (``total_tokens / iter`` of any logged row).

    Raises:
        ValueError: no iteration was logged.
    """
    for rows in segments:
        for row in rows:
            return int(round(row["total_tokens"] / row["iter"]))
    raise ValueError("metrics.csv holds no training iteration; did training run?")


def training_throughput(segments: list[list[dict]], skip_iters: int) -> dict[str, Any]:
    """Steady-state training tokens/s from litgpt's per-iteration ``iter_time``.

    The first `skip_iters` logged iterations of every process are left out (compilation, warm-up).
    ``tokens_per_s`` is None when no iteration is left, with the reason in ``note``.
    """
    per_iter = tokens_per_iteration(segments)
    timed = [row["iter_time"] for rows in segments for row in rows[skip_iters:]]
    result = {"tokens_per_iteration": per_iter, "timed_iterations": len(timed), "skipped_iterations_per_process": skip_iters}
    if not timed:
        logged = sum(len(rows) for rows in segments)
        note = f"{logged} iterations logged, the first {skip_iters} of each process skipped"
        return {**result, "tokens_per_s": None, "note": note}
    return {**result, "tokens_per_s": len(timed) * per_iter / sum(timed)}


def train_loss_curve(segments: list[list[dict]]) -> list[dict[str, float]]:
    """(iteration, tokens, training loss) per logged iteration; a resumed process's rows replace the older ones."""
    by_iter = {}
    for rows in segments:
        for row in rows:
            by_iter[int(row["iter"])] = {"iter": int(row["iter"]), "tokens": int(row["total_tokens"]), "loss": row["loss"]}
    return [by_iter[i] for i in sorted(by_iter)]


# ---------------------------------------------------------------------------------------- KV and decode
def default_decode_dtype() -> str:
    """The dtype of ``litgpt generate``'s default precision on this machine (bf16-true -> bfloat16)."""
    from litgpt.utils import get_default_supported_precision

    return _PRECISION_DTYPES[get_default_supported_precision(training=False).split("-")[0]]


def kv_cache(model: torch.nn.Module, batch_size: int, context_length: int, dtype: str) -> dict[str, Any]:
    """The bytes ``set_kv_cache`` allocates for batch x context, and per cached token (all layers).

    Both are measured (the buffers' ``nbytes``). The accounting of :mod:`litgpt_mka.measure.kv_cache_size` is recorded
    beside them (``*_formula``); when it disagrees with the allocation, a warning says so and
    ``formula_matches`` is False.
    """
    from litgpt_mka.measure.kv_cache_size import allocated_kv_cache_bytes, kv_cache_bytes, kv_cache_bytes_per_token

    device = next(model.parameters()).device
    model.set_kv_cache(batch_size=batch_size, max_seq_length=context_length, device=device, dtype=DTYPES[dtype])
    try:
        allocated = allocated_kv_cache_bytes(model)
    finally:
        model.clear_kv_cache()
    formula = kv_cache_bytes(model.config, batch_size, context_length, DTYPES[dtype])
    if formula != allocated:
        warnings.warn(
            f"litgpt_mka.measure.kv_cache_size.kv_cache_bytes says {formula} bytes for batch {batch_size} x context {context_length},"
            f" but set_kv_cache allocates {allocated}; the report uses the allocation"
        )
    per_token = allocated / (batch_size * context_length)
    return {
        "dtype": dtype,
        "bytes_per_token": int(per_token) if per_token.is_integer() else per_token,
        "batch_size": batch_size,
        "context_length": context_length,
        "bytes_at_context": allocated,
        "bytes_per_token_formula": kv_cache_bytes_per_token(model.config, DTYPES[dtype]),
        "bytes_at_context_formula": formula,
        "formula_matches": formula == allocated,
    }


def decode_speed(
    model: torch.nn.Module, batch_size: int, context_length: int, new_tokens: int, dtype: str
) -> dict[str, Any]:
    """Greedy cached decode tokens/s of `model` cast to `dtype` (:mod:`litgpt_mka.measure.decode_speed`)."""
    from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second

    model = model.to(DTYPES[dtype])
    tokens_per_s = measure_decode_tokens_per_second(model, batch_size, context_length, new_tokens)
    return {
        "dtype": dtype,
        "device": str(next(model.parameters()).device),
        "batch_size": batch_size,
        "context_length": context_length,
        "new_tokens": new_tokens,
        "tokens_per_s": tokens_per_s,
    }
