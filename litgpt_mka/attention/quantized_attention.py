"""Attention of a decode step over a quantized KV cache, read from its codes (``kv_cache_quantization``).

A decode step whose one query sees every cached position (``litgpt generate``'s loop; :func:`reads_codes`
says when) never materialises the dequantized cache. The cached rows (batch x key/value heads, or MLA's batch
rows) are read in blocks of at most ``quantization.BLOCK_BYTES`` of converted numbers, few enough to stay in
a CPU's cache between their conversion and the two matrix products that read them, and with one group per row
the scales act on the scores and on the attention weights instead of on the rows.

Notation: ``q`` a query row, ``c_t`` the codes of position t as numbers, ``s_t``, ``z_t`` the float16 scale
and offset of its one group (``z_t = 0`` but for int4; :mod:`litgpt_mka.attention.quantization`), so the
dequantized row is ``x^_t = s_t c_t + z_t``; ``p_t`` the attention weights::

    scores_t = scale q . x^_t = s_t (scale q . c_t) + z_t (scale sum(q))        keys
    o        = sum_t p_t x^_t = sum_t (p_t s_t) c_t + sum_t p_t z_t              values

A block costs one conversion of its codes (int4: two half-row unpacks) and two matrix products; with several
groups per row the block is scaled in place first. Other chunks (prefill, batched positions, a residual
window) read the dequantized rows of ``QuantizedSequence.update``; both give the same outputs to float error
(tested per variant, with blocks of one row and more).
"""

import torch
import torch.nn as nn
from litgpt.model import do_softcapping

from litgpt_mka.attention.kv_cache import attends_to_whole_cache
from litgpt_mka.attention.quantization import BLOCK_BYTES, QuantizedSequence


def reads_codes(cache: nn.Module, names: tuple[str, ...], T: int, input_pos: torch.Tensor | None,
                input_pos_maxp1: int | None) -> tuple[QuantizedSequence, ...] | None:
    """The quantized sequences `names` of `cache` when this chunk attends to their codes (:func:`decode_attention`):
    one query that sees every cached position (``attends_to_whole_cache``) and sequences without a residual
    window. None: the chunk reads the dequantized rows (``KVCacheBase.update``) or uses no cache (``input_pos``
    None)."""
    if input_pos is None or not attends_to_whole_cache(T, input_pos, input_pos_maxp1):
        return None
    sequences = tuple(getattr(cache, name, None) for name in names)
    if all(isinstance(sequence, QuantizedSequence) and not sequence.residual for sequence in sequences):
        return sequences
    return None


def _rows_per_block(row_bytes: int, N: int, device: torch.device) -> int:
    """Cached rows per block: about as many as fit ``BLOCK_BYTES`` on a CPU (at least one), rounded to a multiple
    of the torch threads, over which the matrix products split their batch (one layer of pythia-70m MHA at batch
    16 x 4096 on 2 threads: blocks of 3 rows 2.1x slower than of 4, of 2 rows 1.3x); one block of all N rows
    elsewhere."""
    if device.type != "cpu":
        return N
    per_block, threads = max(1, BLOCK_BYTES // row_bytes), torch.get_num_threads()
    return threads * round(per_block / threads) if per_block > threads else per_block


def decode_attention(
    q: torch.Tensor, keys: QuantizedSequence, values: QuantizedSequence, upto: int, scale: float,
    bias: torch.Tensor | None = None, softcapping: float | None = None,
) -> torch.Tensor:
    """Softmax attention over the first `upto` positions of quantized sequences, read block by block from their
    codes (the equations in the module docstring).

    Args:
        q: (N, Q, Fk): Q query rows for each of the N cached rows (the sequences' leading dimensions flattened:
            batch x key/value heads, whose group of query heads are the Q rows; MLA: batch, its heads).
        keys, values: sequences of rows (N, S, Fk) and (N, S, Fv); `values` may be `keys` (MLA's latent is
            both), then each block is converted once.
        upto: positions attended to (``input_pos_maxp1``).
        scale: the softmax scale.
        bias: (N, Q, upto) added to the scaled scores (MLA's RoPE part), or None.
        softcapping: litgpt's ``attention_logit_softcapping`` of the scores, or None.

    Returns:
        (N, Q, Fv) in q's dtype.
    """
    N, Q, _ = q.shape
    q = q * scale  # (N, Q, Fk)
    shared = values is keys
    key_scales = keys.row_scales(N, upto, q.dtype)  # 2x (N, upto) (offsets: int4), or None: blocks dequantized
    value_scales = key_scales if shared else values.row_scales(N, upto, q.dtype)
    q_sums = q.sum(-1, keepdim=True) if key_scales is not None and key_scales[1] is not None else None  # (N, Q, 1)
    out = q.new_empty(N, Q, values.width)
    per_block = _rows_per_block(upto * (keys.width + (0 if shared else values.width)) * q.element_size(), N, q.device)
    for start in range(0, N, per_block):
        rows = slice(start, min(start + per_block, N))
        k = keys.block(rows, upto, q.dtype)  # (r, upto, Fk)
        scores = _scores(q[rows], k, _rows_of(key_scales, rows), None if q_sums is None else q_sums[rows])
        if bias is not None:
            scores.add_(bias[rows])
        if softcapping is not None:
            scores = do_softcapping(scores, softcapping)
        p = scores.softmax(dim=-1) if q.dtype == torch.float32 else scores.softmax(-1, torch.float32).to(q.dtype)
        v = k if shared else values.block(rows, upto, q.dtype)  # (r, upto, Fv)
        _weighted_values(p, v, _rows_of(value_scales, rows), out=out[rows])
    return out


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
    # sum_t p_t z_t, (r, Q, 1): as a product and a sum, 5x faster than a bmm into one column on a CPU
    offset_sums = None if z is None else (p * z.unsqueeze(1)).sum(-1, keepdim=True)
    torch.bmm(p.mul_(s.unsqueeze(1)), v, out=out)  # sum_t (p_t s_t) c_t
    if offset_sums is not None:
        out += offset_sums


__all__ = ["decode_attention", "reads_codes"]
