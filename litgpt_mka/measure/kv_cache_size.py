"""KV-cache size of every registered variant, checked against what ``GPT.set_kv_cache`` allocates.

Each variant answers for itself (:class:`~litgpt_mka.attention.variant.AttentionVariant`): numbers and
bytes per token per layer, and bytes per sequence per layer that do not grow with the context (MKA's
ring of running sums). This module adds the layers up, caps the ring buffers of litgpt's sliding-window
layers, reads back the buffers a model allocated, and counts every tensor the caches hold (their buffers and
the scratch workspaces of quantized caches: :func:`held_kv_cache_bytes`). Per-token figures for pythia-70m (fp32, 6 layers):
MHA 24,576 B, GQA (2 groups) 6,144 B, MQA 3,072 B, stock litgpt MLA 24,576 B, our MLA 3,456 B.
"""

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from litgpt_mka.attention import registry


def _variant(config: Any, module_class: type | None) -> Any:
    return registry.variant_class(config) if module_class is None else registry.variant_of_module(module_class)


def kv_cache_elements_per_token(config: Any, module_class: type | None = None) -> int:
    """Numbers cached per token per layer by the config's variant (or by the variant of `module_class`)."""
    return _variant(config, module_class).kv_cache_elements_per_token(config)


def kv_cache_bytes_per_token(config: Any, dtype: torch.dtype = torch.float32, module_class: type | None = None) -> int:
    """Bytes cached per token over all layers, for a cache of `dtype`."""
    return config.n_layer * _variant(config, module_class).kv_cache_bytes_per_token(config, dtype)


def kv_cache_bytes_per_sequence(
    config: Any, dtype: torch.dtype = torch.float32, module_class: type | None = None
) -> int:
    """Bytes per sequence over all layers that do not grow with the context (0 for most variants)."""
    return config.n_layer * _variant(config, module_class).kv_cache_bytes_per_sequence(config, dtype)


def kv_cache_bytes(
    config: Any,
    batch_size: int,
    max_seq_length: int,
    dtype: torch.dtype = torch.float32,
    module_class: type | None = None,
) -> int:
    """Bytes that ``set_kv_cache(batch_size, max_seq_length, dtype=dtype)`` allocates (ring buffers, residual
    windows and MKA's ring of sums capped at the cache's length, as the caches cap them)."""
    variant = _variant(config, module_class)
    per_token = variant.kv_cache_bytes_per_token(config, dtype)
    total = 0
    for block_idx in range(config.n_layer):
        length = max_seq_length
        if _is_sliding_window_layer(config, variant, block_idx):
            length = min(max_seq_length, config.sliding_window_size)
        per_sequence = variant.kv_cache_bytes_per_sequence(config, dtype, max_seq_length)
        total += batch_size * (length * per_token + per_sequence)
    return total


def _is_sliding_window_layer(config: Any, variant: Any, block_idx: int) -> bool:
    """Whether layer `block_idx` caches at most ``sliding_window_size`` positions: a variant whose layers keep
    litgpt's sliding window (its ``sliding_window_layers``), on a layer ``sliding_window_indices`` marks."""
    return (
        variant.sliding_window_layers
        and config.sliding_window_size is not None
        and config.sliding_window_indices is not None
        and bool(config.sliding_window_indices[block_idx])
    )


def allocated_kv_cache_bytes(model: nn.Module) -> int:
    """Sum of ``nbytes`` of every KV-cache buffer of a GPT after ``set_kv_cache`` (the mask cache excluded).

    Raises:
        RuntimeError: a block has no KV cache (call ``model.set_kv_cache(batch_size=...)`` first).
    """
    total = 0
    for block_idx, block in enumerate(model.transformer.h):
        if block.attn.kv_cache is None:
            raise RuntimeError(f"block {block_idx} has no KV cache; call `model.set_kv_cache(batch_size=...)` first")
        total += sum(buffer.nbytes for buffer in block.attn.kv_cache.buffers())
    return total


def held_kv_cache_bytes(model: nn.Module) -> int:
    """Storage bytes of every tensor reachable from the KV caches of a GPT, each storage counted once.

    More than :func:`allocated_kv_cache_bytes`: besides the buffers (keys, values, quantized codes, scales,
    offsets, residual windows, MKA's ring of sums and its positions) it counts tensors held by plain attributes,
    such as the :class:`~litgpt_mka.attention.quantization.Workspace` the quantized caches share (allocated by
    their first read, so call it after a forward to see it). Host-side Python state (MKA's ``HostRing``) holds
    no tensor and costs no tensor bytes.

    Raises:
        RuntimeError: a block has no KV cache (call ``model.set_kv_cache(batch_size=...)`` first).
    """
    storages: dict[tuple[str, int], int] = {}
    seen: set[int] = set()
    for block_idx, block in enumerate(model.transformer.h):
        if block.attn.kv_cache is None:
            raise RuntimeError(f"block {block_idx} has no KV cache; call `model.set_kv_cache(batch_size=...)` first")
        for module in block.attn.kv_cache.modules():
            for tensor in _reachable_tensors(vars(module), seen):
                storage = tensor.untyped_storage()
                storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def _reachable_tensors(value: Any, seen: set[int]) -> Iterator[torch.Tensor]:
    """Tensors reachable from `value` through containers and plain objects' attributes (not through submodules:
    :func:`held_kv_cache_bytes` visits each module itself); `seen` holds the ids of objects already walked."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, nn.Module) or id(value) in seen:
        return
    elif isinstance(value, dict | list | tuple | set):
        seen.add(id(value))
        for item in value.values() if isinstance(value, dict) else value:
            yield from _reachable_tensors(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        seen.add(id(value))
        yield from _reachable_tensors(vars(value), seen)
