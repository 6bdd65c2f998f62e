"""Per-run measurements: parameters, training throughput, peak memory, load, KV cache, decode speed, routing.

Definitions are in :mod:`litgpt_mka.compare` (Metrics). Training figures are read from litgpt's own
``metrics.csv`` (one file per training process: ``logs/csv/version_*/metrics.csv``; a resumed run has
several), never re-timed. Results are the typed records of :mod:`litgpt_mka.compare.records`.
"""

import csv
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from litgpt_mka.compare.records import (
    Decode, KVCacheSize, Parameters, PeakMemory, PhaseLoad, Routing, Throughput, TrainLossPoint,
)
from litgpt_mka.measure.load import load_average_1min
from litgpt_mka.precision import EVALUATION_PRECISIONS
from litgpt_mka.validation import torch_dtype

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- memory
def reset_peak_memory() -> None:
    """Resets CUDA's peak counters (no-op on CPU, where the process's own peak RSS starts with it)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> PeakMemory:
    """This process's peak: CUDA ``max_memory_allocated`` when CUDA is used, else peak RSS (``ru_maxrss``)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return PeakMemory("cuda_max_allocated", int(torch.cuda.max_memory_allocated()))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return PeakMemory("cpu_peak_rss", int(rss if sys.platform == "darwin" else rss * 1024))


# ------------------------------------------------------------------------------------------------ load
def measure_phase(phase: Callable[[], T]) -> tuple[T, PhaseLoad]:
    """Runs `phase` and records the load around it (:class:`~litgpt_mka.compare.records.PhaseLoad`).

    The run's CPUs are torch's thread count at the start, at most the CPU count, or 1 where a GPU is available (the
    worker and litgpt pretrain then drive it from one CPU: ``litgpt_mka.measure.load``'s rule); CPU time is this
    process's (all threads, user + system).
    """
    cpus = os.cpu_count() or 1
    threads = 1 if torch.cuda.is_available() else min(torch.get_num_threads(), cpus)
    before, wall0, cpu0 = load_average_1min(), time.perf_counter(), time.process_time()
    result = phase()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return result, PhaseLoad(load_1min_before=before, load_1min_after=load_average_1min(), threads=threads,
                             cpu_count=cpus, wall_s=wall, cpu_s=cpu)


# ------------------------------------------------------------------------------------------- parameters
def parameter_counts(model: torch.nn.Module) -> Parameters:
    """All parameters, and those of the attention modules (``block.attn`` of every block)."""
    attention = sum(p.numel() for block in model.transformer.h for p in block.attn.parameters())
    return Parameters(total=sum(p.numel() for p in model.parameters()), attention=attention)


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


def training_throughput(segments: list[list[dict]], skip_iters: int) -> Throughput:
    """Steady-state training tokens/s from litgpt's per-iteration ``iter_time`` of the last training process.

    Only the last process is timed: it is the one whose load ``train.json`` records (an interrupted process
    never writes its load), so the busy rule and the number cover the same iterations. Its first
    `skip_iters` logged iterations are left out (compilation, warm-up). ``tokens_per_s`` is None when no
    iteration is left, with the reason in ``note``.
    """
    per_iter = tokens_per_iteration(segments)
    last = segments[-1]
    timed = [row["iter_time"] for row in last[skip_iters:]]
    if not timed:
        note = f"{len(last)} iterations logged by the last training process, its first {skip_iters} skipped"
        return Throughput(per_iter, 0, skip_iters, tokens_per_s=None, note=note)
    return Throughput(per_iter, len(timed), skip_iters, tokens_per_s=len(timed) * per_iter / sum(timed))


def train_loss_curve(segments: list[list[dict]]) -> list[TrainLossPoint]:
    """(iteration, tokens, training loss) per logged iteration; a resumed process's rows replace the older ones."""
    by_iter = {}
    for rows in segments:
        for row in rows:
            by_iter[int(row["iter"])] = TrainLossPoint(int(row["iter"]), int(row["total_tokens"]), row["loss"])
    return [by_iter[i] for i in sorted(by_iter)]


# ---------------------------------------------------------------------------------------- KV and decode
def default_decode_dtype() -> str:
    """The dtype of ``litgpt generate``'s default precision on this machine (bf16-true -> bfloat16), by name."""
    from litgpt.utils import get_default_supported_precision

    return EVALUATION_PRECISIONS[get_default_supported_precision(training=False)]


def kv_cache(model: torch.nn.Module, batch_size: int, context_length: int, dtype: str) -> KVCacheSize:
    """The bytes ``set_kv_cache`` allocates for batch x context, and per cached token (all layers).

    Both are measured (the buffers' ``nbytes``). The accounting of :mod:`litgpt_mka.measure.kv_cache_size` is recorded
    beside them (``*_formula``); when it disagrees with the allocation, a warning says so and
    ``formula_matches`` is False.
    """
    from litgpt_mka.measure.kv_cache_size import allocated_kv_cache_bytes, kv_cache_bytes, kv_cache_bytes_per_token

    device, cache_dtype = next(model.parameters()).device, torch_dtype("decode_dtype", dtype)
    model.set_kv_cache(batch_size=batch_size, max_seq_length=context_length, device=device, dtype=cache_dtype)
    try:
        allocated = allocated_kv_cache_bytes(model)
    finally:
        model.clear_kv_cache()
    formula = kv_cache_bytes(model.config, batch_size, context_length, cache_dtype)
    if formula != allocated:
        warnings.warn(
            f"litgpt_mka.measure.kv_cache_size.kv_cache_bytes says {formula} bytes for batch {batch_size} x context {context_length},"
            f" but set_kv_cache allocates {allocated}; the report uses the allocation"
        )
    return KVCacheSize(
        dtype=dtype,
        bytes_per_token=allocated / (batch_size * context_length),
        batch_size=batch_size,
        context_length=context_length,
        bytes_at_context=allocated,
        bytes_per_token_formula=kv_cache_bytes_per_token(model.config, cache_dtype),
        bytes_at_context_formula=formula,
        formula_matches=formula == allocated,
    )


def decode_speed(model: torch.nn.Module, batch_size: int, context_length: int, new_tokens: int, dtype: str) -> Decode:
    """Greedy cached decode tokens/s of `model` cast to `dtype` (:mod:`litgpt_mka.measure.decode_speed`), and the
    load around the measurement."""
    from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second

    model = model.to(torch_dtype("decode_dtype", dtype))
    tokens_per_s, load = measure_phase(
        lambda: measure_decode_tokens_per_second(model, batch_size, context_length, new_tokens)
    )
    return Decode(dtype=dtype, device=str(next(model.parameters()).device), batch_size=batch_size,
                  context_length=context_length, new_tokens=new_tokens, tokens_per_s=tokens_per_s, load=load)


# ---------------------------------------------------------------------------------------------- routing
@torch.no_grad()
def routing(model: torch.nn.Module, windows: torch.Tensor, new_from: torch.Tensor, batch_size: int) -> Routing:
    """Mean routing weights per layer over the validation text, for a variant whose layers route between memories
    (its class's ``memory_routing``; MKA's :func:`litgpt_mka.attention.mka.routing_weights`).

    Inputs are the validation windows' first L tokens (``windows[:, :-1]``), so every input position of the
    stride-L windows counts once; the end-aligned tail window (``new_from > 0``), which repeats positions, is
    left out. Batches are weighted by their token count.
    """
    from litgpt_mka.attention import registry

    variant = registry.variant_class(model.config)
    device = next(model.parameters()).device
    inputs = windows[new_from == 0, :-1]  # (W', L)
    total, count = None, 0
    for batch in inputs.split(batch_size):
        weights = variant.routing_weights(model, batch.to(device)).double() * batch.numel()  # (n_layer, M)
        total = weights if total is None else total + weights
        count += batch.numel()
    return Routing(sources=list(variant.memory_sources), per_layer=(total / count).tolist(), tokens=count)
