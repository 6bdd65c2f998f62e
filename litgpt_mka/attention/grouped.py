"""Grouped-query attention (GQA, MQA) whose cached decoding reads each key/value head once, never repeated.

Notation (example sizes: ``config_hub/pretrain/pythia-70m-gqa.yaml``; MQA: ``pythia-70m-mqa.yaml``)

=====  ==================================================  ============
B      batch size
T      query positions in this call (chunk length)
S      key positions attended to (cache length, ``input_pos_maxp1`` when given)
C      model width, ``n_embd``                             512
nh_q   query heads, ``n_head``                             8
nh_kv  key/value heads, ``n_query_groups``                 2 (MQA: 1)
g      query heads per key/value head, ``nh_q / nh_kv``    4 (MQA: 8)
hs     head size                                           64
=====  ==================================================  ============

Weights (litgpt's ``CausalSelfAttention``, same names and shapes, so checkpoints load both ways)

============  ========================  ==============================================================
``qkv``       ((nh_q + 2 nh_kv) hs, C)  ``[W_Q ; W_K ; W_V]``, fused, and its bias
``proj``      W_O (C, nh_q hs)          output projection
``norm_q/k``  optional                  litgpt's ``norm_qk`` (both of its types)
============  ========================  ==============================================================

Equations, per layer, for ``x`` (B, T, C); query head ``h`` belongs to group ``j = h // g`` (litgpt's
order: ``repeat_interleave`` of the key/value heads)::

    [q ; k ; v] = qkv(x)                                   (B, nh_q, T, hs), 2x (B, nh_kv, T, hs)
    q, k = RoPE(q), RoPE(k)                                on the first ``rope_n_elem`` features
    o_h = softmax(scale q_h K_j^T + mask) V_j              (B, T, hs) per head; K_j, V_j (B, S, hs)
    y = W_O [o_1 ; ... ; o_nh_q]                           (B, T, C)
    scale = mscale^2 / sqrt(attention_scores_scalar or hs)             (litgpt's)

Grouped evaluation (:func:`~litgpt_mka.attention.functional.grouped_attention`, shared with MKA): the g query
heads of a group are stacked as g T query rows against their one key/value head, so every head's keys and
values are read once per step and never copied::

    Q_j = [q_jg ; q_jg+1 ; ... ; q_jg+g-1]                (B, g T, hs)  "bhtd" -> "bj(gt)d", a reshape
    O_j = softmax(scale Q_j K_j^T + [mask ; ... ; mask]) V_j   (B, g T, hs): one SDPA call, nh_kv heads
    [o_jg ; ... ; o_jg+g-1] = O_j                          (B, g, T, hs)

The mask of the T queries is tiled g times (a broadcast view when T = 1). litgpt instead
``repeat_interleave``s K and V to nh_q heads on every step (g copies of the whole cache; MQA broadcasts
and falls to a slow kernel). The rows cannot share one causal diagonal, so a chunk causal over itself
(training, and a prefill from position 0) runs one SDPA call with ``enable_gqa``: the fused kernels read
each key/value head for its g query heads without a copy. Which site a call is, its arguments and its
kernels: :mod:`litgpt_mka.attention.dispatch` (a decode step at the last cached position, as in ``litgpt
generate``, needs no mask; any other cached chunk attends with a finite additive mask).

Cache: litgpt's ``KVCache``, per layer::

    k  (B, nh_kv, S, hs)   keys after RoPE
    v  (B, nh_kv, S, hs)

    bytes per token per layer = 2 nh_kv hs x dtype size    70m fp32: GQA 2 x 2 x 64 x 4 = 1024, MQA 512
    (MHA: 2 nh_q hs x 4 = 4096)

With ``kv_cache_quantization`` set, :class:`QuantizedKVCache` holds the same two sequences quantized per
token (:mod:`litgpt_mka.attention.quantization`: codes, float16 scales, an optional exact residual window).
A decode step that sees the whole cache attends to the codes block by block
(:func:`~litgpt_mka.attention.functional.grouped_decode`, the same query rows per group); other chunks read them
dequantized, up to ``input_pos_maxp1`` positions.

``attention_logit_softcapping`` is supported (explicit float32 softmax over the same query rows, masked
positions set to float32's finite minimum; litgpt's class adds its boolean cache mask to the scores instead,
True as 1 and False as 0, so its own softcapped cached decoding attends to masked positions and differs from
its full forward);
``sliding_window_size`` is refused by :meth:`GroupedQueryAttention.validate_config` (litgpt's ring
buffer and its mask slicing are not reproduced here).
"""

from typing import Any

import torch
from litgpt.model import CausalSelfAttention, KVCache

from litgpt_mka.attention.dispatch import cached_site_and_mask, uncached_site
from litgpt_mka.attention.functional import (
    attention_scale,
    grouped_attention,
    grouped_decode,
    partial_rope,
    quantized_decode_step,
)
from litgpt_mka.attention.kv_cache import KVCacheBase
from litgpt_mka.attention.quantized_attention import reads_codes
from litgpt_mka.attention.variant import CachedAttention, KeyValueHeads, QuantizedRows, cache_quantization


class QuantizedKVCache(KVCacheBase):
    """Keys and values (B, nh_kv, S, hs), each a quantized sequence (``kv_cache_quantization``; see the module doc).

    litgpt's contract through :class:`~litgpt_mka.attention.kv_cache.KVCacheBase`; returns the first ``bs``
    rows and ``input_pos_maxp1`` positions (all S when None), dequantized to the chunk's dtype.
    """

    activation_buffers = ("k", "v")

    def __init__(self, batch_size: int, max_seq_length: int, n_query_groups: int, head_size: int, quantization,
                 **placement) -> None:
        """`placement`: ``device`` and ``dtype`` (the dtype of the residual window)."""
        super().__init__(batch_size, max_seq_length, **placement)
        shape = (batch_size, n_query_groups, max_seq_length, head_size)  # (B, nh_kv, S, hs)
        self.add_sequence("k", *shape, quantization=quantization)
        self.add_sequence("v", *shape, quantization=quantization)

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos_maxp1: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k, v (bs, nh_kv, T, hs) at ``input_pos``; returns 2x (bs, nh_kv, S', hs)."""
        bs, _, T, _ = k.shape
        self.check_chunk(input_pos, bs, T, input_pos_maxp1)
        return self.update("k", input_pos, k, input_pos_maxp1), self.update("v", input_pos, v, input_pos_maxp1)


class GroupedQueryAttention(KeyValueHeads, CachedAttention, CausalSelfAttention):
    """litgpt's ``CausalSelfAttention`` (MHA, GQA, MQA) with grouped cached decoding; see the module docstring.

    Same parameters, same cache (litgpt's ``KVCache``), same training forward; the cached path runs
    :func:`~litgpt_mka.attention.functional.grouped_attention` instead of repeating the cache to every query head.
    It replaces litgpt's class for the same config and weights (``litgpt_counterpart``).
    """

    lora_target = "litgpt_mka.finetune.lora:LoRAGroupedQueryAttention"
    litgpt_counterpart = "CausalSelfAttention"
    cache_class = (KVCache, QuantizedKVCache)
    rope_width_field = "rope_n_elem"

    def __init__(self, config: Any, block_idx: int) -> None:
        super().__init__(config, block_idx)
        self.scale = attention_scale(config, self.mscale)

    def new_kv_cache(self, batch_size: int, max_seq_length: int, device, dtype) -> KVCache | QuantizedKVCache:
        """litgpt's own cache, keys ``head_size`` wide (the checked rope_cache_length is rope_n_elem); the
        quantized one under ``kv_cache_quantization``."""
        c = self.config
        quantization = cache_quantization(c)
        if quantization is not None:
            return QuantizedKVCache(
                batch_size, max_seq_length, c.n_query_groups, c.head_size, quantization, device=device, dtype=dtype
            )
        return CausalSelfAttention.build_kv_cache(self, batch_size, max_seq_length, c.rope_n_elem, device, dtype)

    @classmethod
    def validate_config(cls, config: Any) -> None:
        """Raises ValueError for litgpt options this module does not implement (``sliding_window_size``)."""
        if config.sliding_window_size is not None:
            raise ValueError(
                f"sliding_window_size={config.sliding_window_size} is not supported with"
                " attention_class_name='GroupedQueryAttention' (litgpt's ring-buffer cache is not reproduced);"
                " set sliding_window_size: null, or use attention_class_name: CausalSelfAttention"
            )

    @classmethod
    def kv_cache_elements_per_token(cls, config: Any) -> int:
        """litgpt's cache: keys and values of the nh_kv heads, ``2 nh_kv hs``."""
        return 2 * config.n_query_groups * config.head_size

    @classmethod
    def kv_cache_quantized_rows(cls, config: Any) -> tuple[QuantizedRows, ...]:
        """Keys and values: two buffers of nh_kv rows, hs wide, per token."""
        return (QuantizedRows("key/value head", config.head_size, config.n_query_groups, 2),)

    def attend(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """litgpt's attention forward (see ``CachedAttention.forward``); x (B, T, C) -> (B, T, C)."""
        B, T, _ = x.shape
        q, k, v = self._project(x, cos, sin)  # (B, nh_q, T, hs), 2x (B, nh_kv, T, hs)
        softcapping = self.config.attention_logit_softcapping
        codes = reads_codes(self.kv_cache, ("k", "v"), T, input_pos)
        if codes:  # a decode step over a quantized cache: attend to the codes
            upto, mask = quantized_decode_step(self.kv_cache, input_pos, input_pos_maxp1, mask, k=k, v=v)
            y = grouped_decode(q, *codes, upto, scale=self.scale, softcapping=softcapping, mask=mask)  # (B, 1, nh_q, hs)
            return self.proj(y.reshape(B, T, -1))  # (B, T, C)
        site = uncached_site(mask)
        if input_pos is not None:
            if isinstance(self.kv_cache, KVCache):  # litgpt's: returns all max_seq_length positions
                k, v = self.kv_cache(input_pos, k, v)  # 2x (B, nh_kv, max_seq_length, hs)
                k, v = k[:, :, :input_pos_maxp1], v[:, :, :input_pos_maxp1]  # 2x (B, nh_kv, S, hs)
            else:  # quantized: dequantizes only the S positions attended to
                k, v = self.kv_cache(input_pos, k, v, input_pos_maxp1)  # 2x (B, nh_kv, S, hs)
            site, mask = cached_site_and_mask(T, input_pos, input_pos_maxp1, mask, k.size(2))
        y = grouped_attention(q, k, v, scale=self.scale, site=site, mask=mask, softcapping=softcapping)  # (B, T, nh_q, hs)
        return self.proj(y.reshape(B, T, -1))  # (B, T, nh_q hs) -> (B, T, C)

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """litgpt's projections, ``norm_qk`` and RoPE: q (B, nh_q, T, hs), k, v (B, nh_kv, T, hs)."""
        B, T, _ = x.shape
        c = self.config
        q, k, v = self.qkv(x).split(
            (c.n_head * c.head_size, c.n_query_groups * c.head_size, c.n_query_groups * c.head_size), dim=-1
        )  # (B, T, (nh_q + 2 nh_kv) hs) -> (B, T, nh_q hs), 2x (B, T, nh_kv hs)
        if c.norm_qk and c.norm_qk_type == "olmo2":
            q, k = self.norm_q(q), self.norm_k(k)
        q = q.view(B, T, c.n_head, c.head_size).transpose(1, 2)  # (B, T, nh_q, hs) -> (B, nh_q, T, hs)
        k = k.view(B, T, c.n_query_groups, c.head_size).transpose(1, 2)  # (B, T, nh_kv, hs) -> (B, nh_kv, T, hs)
        v = v.view(B, T, c.n_query_groups, c.head_size).transpose(1, 2)  # (B, T, nh_kv, hs) -> (B, nh_kv, T, hs)
        if c.norm_qk and c.norm_qk_type == "default":
            q, k = self.norm_q(q), self.norm_k(k)
        return partial_rope(q, cos, sin, c), partial_rope(k, cos, sin, c), v


__all__ = ["GroupedQueryAttention", "QuantizedKVCache"]
