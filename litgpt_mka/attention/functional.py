"""Attention kernels shared by the variants: written once here, called by ``grouped.py``, ``mla.py`` and ``mka.py``.

Each variant decides what it attends to (its queries, keys, values, its cache); the pieces that several of them
compute the same way live here as plain functions of tensors. Every SDPA call still goes through
:func:`~litgpt_mka.attention.dispatch.sdpa` (the one module that chooses arguments and kernels).

Notation: B batch, T queries in the call, S keys attended to, nh_q query heads, nh_kv key/value heads,
g = nh_q / nh_kv query heads per key/value head, hs head size, n any head count.

=================================  ==========================================================  ================
function                           what                                                        used by
=================================  ==========================================================  ================
:func:`attention_scale`            litgpt's softmax scale ``mscale^2 / sqrt(scalar or width)``  GQA, MLA, MKA
:func:`rope_function`              litgpt's RoPE for the config (interleaved or halves)        GQA, MLA, MKA
:func:`partial_rope`               RoPE on the first ``rope_n_elem`` features of each head     GQA, MKA
:func:`tile_mask`                  a query chunk's mask repeated for n stacked query blocks    GQA, MLA, MKA
:func:`attention_at_site`          SDPA, or under softcapping the explicit float32 softmax     GQA, MLA, MKA
:func:`grouped_attention`          nh_q query heads over nh_kv shared key/value heads          GQA, MKA
:func:`quantized_decode_step`      a decode step's write to a quantized cache, its length and  GQA, MLA, MKA
                                   mask
:func:`grouped_decode`             :func:`grouped_attention` of a decode step, from the codes  GQA, MKA
=================================  ==========================================================  ================

Derived weights (MLA's absorbed projections, MKA's long-term key and value) are forgotten on a state-dict load by
:class:`~litgpt_mka.attention.variant.CachedAttention`, the base of the three classes.
"""

import math
from typing import Any

import torch

from litgpt_mka.attention.dispatch import Site, cached_site_and_mask, explicit_attention, sdpa
from litgpt_mka.attention.kv_cache import KVCacheBase, decode_length
from litgpt_mka.attention.quantization import QuantizedSequence
from litgpt_mka.attention.quantized_attention import decode_attention, mask_bias

CAUSAL_SITES = (Site.TRAINING, Site.PREFILL)  # causal over the chunk itself (T == S), no mask


def attention_scale(config: Any, mscale: float, key_width: int | None = None) -> float:
    """litgpt's softmax scale: ``mscale^2 / sqrt(attention_scores_scalar or key_width)``.

    `key_width`: the width of a query-key dot product, ``head_size`` by default (MLA: P + R).
    """
    width = config.head_size if key_width is None else key_width
    return mscale * mscale / math.sqrt(config.attention_scores_scalar or width)


def rope_function(config: Any):
    """litgpt's RoPE for this config: ``apply_rope_interleave`` (``rope_interleave: true``) or ``apply_rope``."""
    from litgpt.model import apply_rope, apply_rope_interleave

    return apply_rope_interleave if config.rope_interleave else apply_rope


def partial_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, config: Any) -> torch.Tensor:
    """RoPE on the first ``n = rope_n_elem`` features of every head, the rest unchanged, as litgpt does.

    ``[rope(t[..., :n]) ; t[..., n:]]``: t (B, n_heads, T, hs), cos and sin (T, n) -> (B, n_heads, T, hs).
    """
    n = config.rope_n_elem
    return torch.cat((rope_function(config)(t[..., :n], cos, sin), t[..., n:]), dim=-1)  # (B, n_heads, T, hs)


def tile_mask(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The mask of T query rows repeated for n blocks of them stacked as n T rows (a group's heads as rows).

    (mb, 1, T, S) -> (mb, 1, n T, S), row ``i T + t`` being row t: a view when T == 1. None and n == 1 unchanged.
    """
    if mask is None or n == 1:
        return mask
    mb, _, T, S = mask.shape
    mask = mask.unsqueeze(2).expand(mb, 1, n, T, S)  # (mb, 1, T, S) -> (mb, 1, n, T, S)
    return mask.reshape(mb, 1, n * T, S)  # (mb, 1, n T, S)


def attention_at_site(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    site: Site,
    mask: torch.Tensor | None = None,
    softcapping: float | None = None,
) -> torch.Tensor:
    """``softmax(softcap(scale q k^T) + mask) v`` at `site`: one SDPA call, or the explicit softmax under softcapping.

    Without softcapping: :func:`~litgpt_mka.attention.dispatch.sdpa` (n_q > n_kv: SDPA's ``enable_gqa``, k and v
    read shared). With it (SDPA has no softcapping): :func:`~litgpt_mka.attention.dispatch.explicit_attention`,
    scores, softcapping, mask and softmax in float32, k and v repeated to the n_q query heads first (a fallback).

    Args:
        q: (B, n_q, R, E) query rows; k: (B, n_kv, S, E), v: (B, n_kv, S, Ev), n_kv dividing n_q (head h of q
            reads key/value head ``h // (n_q / n_kv)``).
        scale: the softmax scale.
        site: TRAINING and PREFILL are causal over the chunk itself (R == S); DECODE sees every key; MASKED
            takes `mask`.
        mask: boolean (1 or B, 1, R, S), True where visible; MASKED only.
        softcapping: litgpt's ``attention_logit_softcapping``, or None.

    Returns:
        (B, n_q, R, Ev).

    Raises:
        ValueError: a mask at a site that takes none, or none at MASKED (from ``sdpa``).
    """
    g = q.size(1) // k.size(1)
    if softcapping is None:
        return sdpa(q, k, v, site=site, scale=scale, mask=mask, enable_gqa=g > 1)  # (B, n_q, R, Ev)
    if g > 1:  # the explicit softmax has no GQA: repeat the heads (a fallback path)
        k = k.repeat_interleave(g, dim=1)  # (B, n_kv, S, E) -> (B, n_q, S, E)
        v = v.repeat_interleave(g, dim=1)  # (B, n_kv, S, Ev) -> (B, n_q, S, Ev)
    causal = site in CAUSAL_SITES
    return explicit_attention(q, k, v, scale=scale, softcapping=softcapping, mask=mask, causal=causal)


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    site: Site,
    mask: torch.Tensor | None = None,
    softcapping: float | None = None,
) -> torch.Tensor:
    """Attention of nh_q query heads over nh_kv shared key/value heads, never copying k or v.

    Query head h reads key/value head ``j = h // g``. A chunk causal over itself (TRAINING, PREFILL) runs the
    nh_q heads against the nh_kv heads with SDPA's ``enable_gqa`` (one causal diagonal per head); any other
    chunk stacks the g query heads of a group as g T query rows against their one key/value head::

        Q_j = [q_jg ; ... ; q_jg+g-1]                          (B, g T, hs)
        O_j = softmax(scale Q_j K_j^T + [mask ; ... ; mask]) V_j   (B, g T, hs)

    Args:
        q: (B, nh_q, T, hs) queries.
        k, v: (B, nh_kv, S, hs) keys and values (nh_kv divides nh_q).
        scale: the softmax scale.
        site: the call site (:mod:`~litgpt_mka.attention.dispatch`): TRAINING and PREFILL are causal over the
            chunk itself (T == S), DECODE sees every key, MASKED takes `mask`.
        mask: boolean (1 or B, 1, T, S), True where a query sees a key; MASKED only.
        softcapping: litgpt's ``attention_logit_softcapping`` (explicit softmax in float32), or None.

    Returns:
        (B, T, nh_q, hs), the layout of litgpt's ``CausalSelfAttention.scaled_dot_product_attention``.

    Raises:
        ValueError: nh_kv does not divide nh_q; a mask at a site that takes none, or none at MASKED.
    """
    B, nh_q, T, hs = q.shape
    nh_kv = k.size(1)
    if nh_q % nh_kv:
        raise ValueError(f"key/value heads ({nh_kv}) must divide query heads ({nh_q})")
    g = nh_q // nh_kv
    attend = dict(scale=scale, site=site, softcapping=softcapping)
    if site in CAUSAL_SITES:  # the rows of a group cannot share one causal diagonal: heads kept apart
        y = attention_at_site(q, k, v, **attend)  # (B, nh_q, T, hs)
        return y.transpose(1, 2)  # (B, T, nh_q, hs)
    q = q.reshape(B, nh_kv, g * T, hs)  # (B, nh_q, T, hs) -> (B, nh_kv, g T, hs): a group's heads as query rows
    y = attention_at_site(q, k, v, mask=tile_mask(mask, g), **attend)  # (B, nh_kv, g T, hs)
    return y.reshape(B, nh_q, T, hs).transpose(1, 2)  # (B, nh_kv, g T, hs) -> (B, nh_q, T, hs) -> (B, T, nh_q, hs)


def quantized_decode_step(
    cache: KVCacheBase,
    input_pos: torch.Tensor,
    input_pos_maxp1: int | None,
    mask: torch.Tensor | None,
    **chunks: torch.Tensor,
) -> tuple[int, torch.Tensor | None]:
    """Writes a decode step's `chunks` into a quantized cache without reading it back, and says what to attend to.

    For a step whose chunk attends to the codes (:func:`~litgpt_mka.attention.quantized_attention.reads_codes`:
    one query per sequence). `chunks`: the cache's sequences by name, each (bs, ..., 1, F).

    Returns:
        ``upto``, the cached positions the step attends to (``input_pos_maxp1``, or the cache's length), and its
        boolean mask (1 or B, 1, 1, upto): None where the step sees every position (DECODE), else the given mask
        or the causal one by position.
    """
    cache.append(input_pos, input_pos_maxp1, **chunks)
    upto = decode_length(cache, input_pos_maxp1)
    _, mask = cached_site_and_mask(1, input_pos, input_pos_maxp1, mask, upto)
    return upto, mask


def grouped_decode(
    q: torch.Tensor,
    keys: QuantizedSequence,
    values: QuantizedSequence,
    upto: int,
    *,
    scale: float,
    softcapping: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`grouped_attention` of one decode step over quantized keys and values, from their codes.

    The g query heads of a group are the g query rows of its one cached key/value head
    (:func:`~litgpt_mka.attention.quantized_attention.decode_attention`, float32 scores and softmax).

    Args:
        q: (B, nh_q, 1, hs), one query per sequence, over the first `upto` cached positions.
        keys, values: quantized sequences (B', nh_kv, S, hs), B' >= B (nh_kv divides nh_q).
        upto: cached positions attended to.
        scale: the softmax scale.
        softcapping: litgpt's ``attention_logit_softcapping``, or None.
        mask: boolean (1 or B, 1, 1, upto), True where visible; None: the query sees every position.

    Returns:
        (B, 1, nh_q, hs), the layout of :func:`grouped_attention`.
    """
    B, nh_q, T, hs = q.shape
    nh_kv = keys.codes.size(1)
    g = nh_q // nh_kv
    rows = q.reshape(B * nh_kv, g * T, hs)  # (B, nh_q, 1, hs) -> (B nh_kv, g, hs): a group's heads as rows
    additive = mask_bias(mask, B, nh_kv, g * T)  # (B nh_kv, g, upto) or None
    y = decode_attention(rows, keys, values, upto, scale, softcapping=softcapping, mask=additive)  # (B nh_kv, g, hs)
    return y.view(B, nh_q, T, hs).transpose(1, 2)  # (B nh_kv, g, hs) -> (B, nh_q, 1, hs) -> (B, 1, nh_q, hs)


__all__ = [
    "CAUSAL_SITES",
    "attention_at_site",
    "attention_scale",
    "grouped_attention",
    "grouped_decode",
    "partial_rope",
    "quantized_decode_step",
    "rope_function",
    "tile_mask",
]
