"""KV-cache size of every registered variant, checked against what ``GPT.set_kv_cache`` allocates.

Each variant answers for itself (:class:`~litgpt_mka.attention.variant.AttentionVariant`): numbers and
bytes per token per layer, and bytes per sequence per layer that do not grow with the context (MKA's
ring of running sums). This module adds the layers up, caps the ring buffers of litgpt's sliding-window
layers, and reads back the buffers a model allocated. Per-token figures for pythia-70m (fp32, 6 layers):
MHA 24,576 B, GQA (2 groups) 6,144 B, MQA 3,072 B, stock litgpt MLA 24,576 B, our MLA 3,456 B.
"""

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
    """Bytes that ``set_kv_cache(batch_size, max_seq_length, dtype=dtype)`` allocates (ring buffers capped)."""
    variant = _variant(config, module_class)
    per_token = variant.kv_cache_bytes_per_token(config, dtype)
    per_sequence = variant.kv_cache_bytes_per_sequence(config, dtype)
    total = 0
    for block_idx in range(config.n_layer):
        length = max_seq_length
        if _is_sliding_window_layer(config, variant, block_idx):
            length = min(max_seq_length, config.sliding_window_size)
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
