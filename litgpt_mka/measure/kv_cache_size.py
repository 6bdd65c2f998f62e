"""KV-cache accounting for every attention variant, checked against what ``GPT.set_kv_cache`` allocates.

Numbers cached per token per layer (``hs`` head size, ``nq`` = ``n_query_groups``, ``nh`` = ``n_head``):

==========================================  ===========================  =====================
variant                                     numbers per token per layer  pythia-70m (nh 8, hs 64)
==========================================  ===========================  =====================
MHA / GQA / MQA (litgpt CausalSelfAttention)  2 nq hs                     1024 / 512 (nq 4) / 128
litgpt's stock MultiheadLatentAttention     nh (P + R + V)               1024 (P 48, R 16, V 64)
ours (litgpt_mka.attention.mla)                       L + R                        144 (L 128, R 16)
==========================================  ===========================  =====================

A class that defines ``kv_cache_elements_per_token(config)`` (our MLA, MKA) is asked; litgpt's two
classes are covered by the formulas above, written after their ``build_kv_cache``. Bytes per token
multiply by the dtype's size and the number of layers. Sliding-window layers of litgpt's class cap
their ring buffer at the window, which :func:`kv_cache_bytes` accounts for; the per-token figure counts
them as full layers (exact while the context is within the window).
"""

from typing import Any

import torch
import torch.nn as nn


def _litgpt_classes() -> tuple[type, type]:
    from litgpt.model import CausalSelfAttention, MultiheadLatentAttention

    return CausalSelfAttention, MultiheadLatentAttention


def stock_mla_class() -> type:
    """litgpt's own ``MultiheadLatentAttention`` (expanded per-head cache), for comparisons."""
    return _litgpt_classes()[1]


def kv_cache_elements_per_token(config: Any, attention_class: type | None = None) -> int:
    """Numbers cached per token per layer by `attention_class` (default: ``config.attention_class``)."""
    cls = config.attention_class if attention_class is None else attention_class
    own = getattr(cls, "kv_cache_elements_per_token", None)
    if own is not None:
        return own(config)
    causal_self_attention, stock_mla = _litgpt_classes()
    if issubclass(cls, causal_self_attention):
        # k: rope_cache_length + head_size - rope_n_elem wide, and rope_cache_length == rope_n_elem
        return 2 * config.n_query_groups * config.head_size
    if issubclass(cls, stock_mla):
        return config.n_head * (config.qk_head_dim + config.v_head_dim)
    raise TypeError(
        f"{cls.__name__} defines no `kv_cache_elements_per_token(config)` classmethod and is not one of litgpt's"
        " attention classes; add the classmethod to account for its cache"
    )


def kv_cache_bytes_per_token(
    config: Any, dtype: torch.dtype = torch.float32, attention_class: type | None = None
) -> int:
    """Bytes cached per token over all layers, for buffers of `dtype`.

    A class whose buffers are not all of `dtype` (MKA keeps float32 running sums) reports its own bytes
    through a ``kv_cache_bytes_per_token(config, dtype)`` classmethod (per layer).
    """
    cls = config.attention_class if attention_class is None else attention_class
    own_bytes = getattr(cls, "kv_cache_bytes_per_token", None)
    if own_bytes is not None:
        return config.n_layer * own_bytes(config, dtype)
    element_size = torch.empty((), dtype=dtype).element_size()
    return config.n_layer * kv_cache_elements_per_token(config, attention_class) * element_size


def kv_cache_bytes(
    config: Any,
    batch_size: int,
    max_seq_length: int,
    dtype: torch.dtype = torch.float32,
    attention_class: type | None = None,
) -> int:
    """Bytes that ``set_kv_cache(batch_size, max_seq_length, dtype=dtype)`` allocates (ring buffers capped)."""
    per_layer = kv_cache_bytes_per_token(config, dtype, attention_class) // config.n_layer
    cls = config.attention_class if attention_class is None else attention_class
    total = 0
    for block_idx in range(config.n_layer):
        length = max_seq_length
        if _is_sliding_window_layer(config, cls, block_idx):
            length = min(max_seq_length, config.sliding_window_size)
        total += batch_size * length * per_layer
    return total


def _is_sliding_window_layer(config: Any, cls: type, block_idx: int) -> bool:
    causal_self_attention, _ = _litgpt_classes()
    return (
        issubclass(cls, causal_self_attention)
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


def build_gpt(config: Any, attention_class: type | None = None) -> nn.Module:
    """A litgpt ``GPT`` for `config` whose blocks use `attention_class` (default: ``config.attention_class``).

    ``build_gpt(config, stock_mla_class())`` gives litgpt's own MLA (needs ``q_lora_rank``) for an MLA
    config; its state dict has the same keys as ours, so ``load_state_dict`` moves weights between them.
    Modules are created on the current default device (``with torch.device("meta"):`` works).
    """
    from litgpt.model import GPT

    model = GPT(config)
    if attention_class is not None:
        for block_idx, block in enumerate(model.transformer.h):
            if type(block.attn) is not attention_class:
                block.attn = attention_class(config, block_idx)
    return model
