"""Attention of a decode step over a quantized KV cache, read from its codes (``kv_cache_quantization``).

A decode step (one query per sequence; :func:`reads_codes` says when) never materialises the dequantized cache.
The cached rows (batch x key/value heads, or MLA's batch rows) are read in blocks of at most
:func:`block_budget` bytes of converted numbers, few enough to stay in a cache of the processor between their
conversion and the two matrix products that read them (a CPU's L2/L3, a GPU's L2), and with one group per row
the scales act on the scores and on the attention weights instead of on the rows. Scores, softmax and the
weighted sum run in float32 whatever the compute dtype (a bf16 model included); the result is cast back.

Notation: ``q`` a query row, ``c_t`` the codes of position t as numbers, ``s_t``, ``z_t`` the float16 scale
and offset of its one group (``z_t = 0`` but for int4; :mod:`litgpt_mka.attention.quantization`), so the
dequantized row is ``x^_t = s_t c_t + z_t``; ``p_t`` the attention weights; ``m_t`` an additive mask (0, or
float32's finite minimum where position t is not visible: rows at different positions, or no
``input_pos_maxp1``); ``cap`` litgpt's softcapping where set (before the mask, as litgpt applies it)::

    scores_t = cap(scale q . x^_t) + m_t = cap(s_t (scale q . c_t) + z_t (scale sum(q))) + m_t       keys
    o        = sum_t p_t x^_t = sum_t (p_t s_t) c_t + sum_t p_t z_t                         values

A block costs one conversion of its codes (int4: two half-row unpacks) and two matrix products; with several
groups per row the block is scaled in place first. Chunks of more than one query (prefill) and caches with a
residual window read the dequantized rows of ``QuantizedSequence.update``; both give the same outputs to float
error (tested per variant, with blocks of one row and more).

Bytes per decode step and layer, against an unquantized cache of ``b`` bytes per number: the codes and scales
(int8: ``1 + 2/G`` bytes per number) are read once from memory; the converted block is written and read twice
in float32, in the processor's cache when the block fits :func:`block_budget`. On a CPU that is a win where the
cache dominates. On a GPU the memory traffic is ``(1 + 2/G) / b`` of the unquantized cache's, but this is a
dozen PyTorch kernels per block, not one fused kernel: at the sizes of the presets the launches (microseconds
each) can outweigh the bytes saved, so on a GPU the quantized cache buys capacity (more sequences in the same
memory) before speed. The measurements: ``docs/kv-quantization.md`` ("Speed", "On a GPU"), ``docs/benchmarks/``
and ``benchmarks/gpu.sh``.
"""

import torch
import torch.nn as nn
from litgpt.model import do_softcapping

from litgpt_mka.attention.dispatch import additive_mask
from litgpt_mka.attention.quantization import QuantizedSequence

# converted bytes of one block on a CPU: large enough to amortise the per-block operations, small enough to stay
# in the processor's cache between the conversion and the two products; chosen by timing the sizes around it
# (docs/kv-quantization.md, "Speed")
BLOCK_BYTES = 8 * 2**20


def reads_codes(cache: nn.Module, names: tuple[str, ...], T: int,
                input_pos: torch.Tensor | None) -> tuple[QuantizedSequence, ...] | None:
    """The quantized sequences `names` of `cache` when this chunk attends to their codes (:func:`decode_attention`):
    one query per sequence (T = 1, at any positions, with or without ``input_pos_maxp1``) and sequences without a
    residual window. None: the chunk reads the dequantized rows (``KVCacheBase.update``) or uses no cache
    (``input_pos`` None)."""
    if input_pos is None or T != 1:
        return None
    sequences = tuple(getattr(cache, name, None) for name in names)
    if all(isinstance(sequence, QuantizedSequence) and not sequence.residual for sequence in sequences):
        return sequences
    return None


def mask_bias(mask: torch.Tensor | None, B: int, n: int, Q: int) -> torch.Tensor | None:
    """A decode step's boolean mask (1 or B, 1, 1, S) -> the additive float32 bias (B n, Q, S) of
    :func:`decode_attention`'s rows (n cached rows per sequence, Q query rows each); None stays None."""
    if mask is None:
        return None
    mb, _, _, S = mask.shape
    bias = additive_mask(mask, torch.float32).view(mb, 1, 1, S)  # (mb, 1, 1, S)
    return bias.expand(B, n, Q, S).reshape(B * n, Q, S)  # (B n, Q, S)


def block_budget(device: torch.device) -> int:
    """Converted bytes per block: ``BLOCK_BYTES`` on a CPU (measured), half the L2 cache on a CUDA GPU (a design
    choice, not yet measured: the block is written and read back while the codes stream past it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size // 2
    return BLOCK_BYTES


def _rows_per_block(row_bytes: int, N: int, device: torch.device) -> int:
    """Cached rows per block: as many as fit :func:`block_budget` (at least one, at most N); on a CPU rounded to a
    multiple of the torch threads, over which the matrix products split their batch, so that no thread idles on
    a block's last rows (timings: docs/kv-quantization.md, "Speed")."""
    per_block = max(1, block_budget(device) // row_bytes)
    if device.type == "cpu":
        threads = torch.get_num_threads()
        per_block = threads * round(per_block / threads) if per_block > threads else per_block
    return min(per_block, N)


def decode_attention(
    q: torch.Tensor, keys: QuantizedSequence, values: QuantizedSequence, upto: int, scale: float,
    bias: torch.Tensor | None = None, softcapping: float | None = None, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention over the first `upto` positions of quantized sequences, read block by block from their
    codes (the equations in the module docstring), in float32.

    Args:
        q: (N, Q, Fk): Q query rows for each of the N cached rows (the sequences' leading dimensions flattened:
            batch x key/value heads, whose group of query heads are the Q rows; MLA: batch, its heads).
        keys, values: sequences of rows (N, S, Fk) and (N, S, Fv); `values` may be `keys` (MLA's latent is
            both), then each block is converted once.
        upto: positions attended to (``input_pos_maxp1``, or the cache's length).
        scale: the softmax scale.
        bias: (N, Q, upto) float32 added to the scaled scores before softcapping (MLA's RoPE part), or None.
        softcapping: litgpt's ``attention_logit_softcapping`` of the scores, or None.
        mask: (N, Q, upto) float32 additive mask (:func:`mask_bias`), added after softcapping (which would turn a
            masked score into ``-softcapping`` instead of keeping it hidden), or None.

    Returns:
        (N, Q, Fv) in q's dtype.
    """
    N, Q, _ = q.shape
    compute = torch.float32
    q32 = q.to(compute) * scale  # (N, Q, Fk)
    shared = values is keys
    key_scales = keys.row_scales(N, upto, compute)  # 2x (N, upto) (offsets: int4), or None: blocks dequantized
    value_scales = key_scales if shared else values.row_scales(N, upto, compute)
    q_sums = q32.sum(-1, keepdim=True) if key_scales is not None and key_scales[1] is not None else None  # (N, Q, 1)
    out = q32.new_empty(N, Q, values.width)
    row_bytes = upto * (keys.width + (0 if shared else values.width)) * compute.itemsize
    per_block = _rows_per_block(row_bytes, N, q.device)
    capacity = block_budget(q.device) // compute.itemsize + upto * max(keys.width, values.width)  # >= one row
    for start in range(0, N, per_block):
        rows = slice(start, min(start + per_block, N))
        k = keys.block(rows, upto, compute, capacity)  # (r, upto, Fk)
        scores = _scores(q32[rows], k, _rows_of(key_scales, rows), None if q_sums is None else q_sums[rows])
        if bias is not None:
            scores.add_(bias[rows])
        if softcapping is not None:
            scores = do_softcapping(scores, softcapping)
        if mask is not None:
            scores.add_(mask[rows])
        p = scores.softmax(dim=-1)  # (r, Q, upto) float32
        v = k if shared else values.block(rows, upto, compute, capacity)  # (r, upto, Fv)
        _weighted_values(p, v, _rows_of(value_scales, rows), out=out[rows])
    return out.to(q.dtype)


def _rows_of(scales: tuple[torch.Tensor, torch.Tensor | None] | None, rows: slice):
    """A block's rows of (scales, offsets) (N, upto), or None."""
    if scales is None:
        return None
    return scales[0][rows], None if scales[1] is None else scales[1][rows]


def _scores(q: torch.Tensor, k: torch.Tensor, scales, q_sums: torch.Tensor | None) -> torch.Tensor:
    """scale q . x^_t of a block: q (r, Q, Fk) scaled, k (r, upto, Fk) codes as numbers (or dequantized rows when
    `scales` is None), scales and offsets (r, upto), q_sums (r, Q, 1) for the offsets -> (r, Q, upto)."""
    scores = torch.bmm(q, k.mT)  # (r, Q, Fk) @ (r, Fk, upto) -> (r, Q, upto)
    if scales is not None:
        s, z = scales
        scores.mul_(s.unsqueeze(1))  # s_t (scale q . c_t)
        if z is not None:
            scores.addcmul_(q_sums, z.unsqueeze(1))  # + z_t (scale sum(q))
    return scores


def _weighted_values(p: torch.Tensor, v: torch.Tensor, scales, out: torch.Tensor) -> None:
    """out <- sum_t p_t x^_t of a block: p (r, Q, upto) (scaled in place), v (r, upto, Fv) codes as numbers (or
    dequantized rows when `scales` is None), scales and offsets (r, upto); out (r, Q, Fv)."""
    if scales is None:
        torch.bmm(p, v, out=out)  # (r, Q, upto) @ (r, upto, Fv) -> (r, Q, Fv)
        return
    s, z = scales
    # sum_t p_t z_t, (r, Q, 1): as a product and a sum, faster on a CPU than a bmm into one
    # column (timed: docs/kv-quantization.md, "Speed")
    offset_sums = None if z is None else (p * z.unsqueeze(1)).sum(-1, keepdim=True)
    torch.bmm(p.mul_(s.unsqueeze(1)), v, out=out)  # sum_t (p_t s_t) c_t
    if offset_sums is not None:
        out += offset_sums


__all__ = ["BLOCK_BYTES", "block_budget", "decode_attention", "mask_bias", "reads_codes"]
