"""Quantized KV caches: fewer bits per cached number, for every variant's cache (``kv_cache_quantization``).

The architectures compress the cache by caching fewer numbers per token (GQA/MQA share heads, MLA caches a
latent); this module compresses it the second way serving systems do, by storing each number in fewer bits.
One ``Config`` key selects it (YAML, ``model_config.yaml`` of a checkpoint, or an override)::

    kv_cache_quantization: null            # default: the unquantized caches, bit for bit
    kv_cache_quantization: int8            # a name: the documented defaults below
    kv_cache_quantization: {dtype: int4, group_size: 32, residual: 128}

Notation

=====  ===============================================================================
x      one cached row: a token's key or value of one head (hs numbers), or MLA's latent (L)
F      width of the row (the last dimension of the cache buffer)
G      ``group_size``: consecutive numbers of a row that share one scale (G divides F)
b      bits per stored number: 8 (int8, float8_e4m3fn) or 4 (int4, two numbers per byte)
R      ``residual``: the most recent positions also kept in full precision (0: none)
=====  ===============================================================================

Equations, per group ``g`` (G numbers of one row; scales and offsets stored in float16)::

    int8           s = max|x_g| / 127            q = round(x / s)  in [-127, 127]      x^ = s q
    int4           z = min x_g                   s = (max x_g - z) / 15
                   q = round((x - z) / s)  in [0, 15]                                  x^ = s q + z
    float8_e4m3fn  s = max|x_g| / 448            q = float8_e4m3fn(x / s)              x^ = s q

(``s`` and ``z`` are rounded to float16 first, ``z`` down (and clamped to float16's range, +-65504) and then ``s``
up from the rounded ``z``, so that every code stays in range; ``q`` is computed with the rounded values, so x^ is
what the stored numbers give back.) Quantization is per token: every group lies inside one row, so writing a
position never changes another one; chunked prefill, batched ``(B, T)`` positions and rewriting earlier
positions (speculative decoding) work exactly as with the unquantized cache. The error of one number is at
most ``s / 2`` (int8, int4; int4 numbers below -65504, the most negative float16 offset, come back as -65504); float8's
relative error is at most 2^-4 of the number (3 mantissa bits) where ``x / s`` is a normal float8 number, at
least 2^-6 in magnitude; smaller numbers of a group (below max|x_g| / 28672) fall into float8's subnormals and,
below max|x_g| / 458752, to zero: their absolute error is at most ``s`` 2^-10 (half float8's subnormal step).
Per-channel key scales (KIVI, KVQuantS) need a block of tokens before they can be computed and are not
implemented.

Residual window: with R > 0, the rows of the last R positions written are also kept exactly in a ring
(slot ``position mod R``, with the position it holds); reading the cache returns those rows exactly and every
other row dequantized. Appending (prefill, decoding) therefore keeps the newest R positions exact.

Layout of one quantized buffer (:class:`QuantizedSequence`; shape ``(*lead, S, F)``, time at dim -2)::

    codes     (*lead, S, F b / 8)   int8 | uint8 (int4: two per byte, number i in the low nibble of byte i
                                    and number i + F/2 in its high nibble, so each half unpacks into one
                                    contiguous half of the row; float8_e4m3fn: its bytes, since torch's CPU
                                    scatter has no float8 kernel)
    scales    (*lead, S, F / G)     float16
    offsets   (*lead, S, F / G)     float16, int4 only
    recent    (*lead, R, F)         cache dtype (follows the activation dtype), only when R > 0
    recent_positions (B, R)         int64, -1 = empty

    bytes per token per row = F b / 8 + 2 F / G (x 2 with offsets)     hs 64, G 64: int8 66 B, int4 36 B
    (fp32 256 B, bf16 128 B); bytes per sequence = R (F x dtype size) per row + 8 R per buffer

A decode step whose one query sees every cached position attends to the codes block by block, never
materialising the dequantized cache (:mod:`litgpt_mka.attention.quantized_attention`); other chunks read
the dequantized rows of :meth:`QuantizedSequence.update`.

Which buffers are quantized (each variant lists its cached rows, :meth:`AttentionVariant.kv_cache_quantized_rows`):
GQA/MQA/MHA (``GroupedQueryAttention``) keys and values; MLA the latent, its RoPE key stays in the cache
dtype (as FlashMLA keeps it in bf16); MKA/FMKA keys and values (and the ``outputs`` session branch), the
ring of running sums stays float32. litgpt's own classes keep litgpt's cache and refuse the key.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from litgpt_mka.attention.kv_cache import write_positions
from litgpt_mka.validation import int_in_range, positive_int

FIELD = "kv_cache_quantization"
# bits of one stored number, and the largest magnitude its code holds
DTYPES = {"int8": 8, "int4": 4, "float8_e4m3fn": 8}
DEFAULT_GROUP_SIZE = 64
KEYS = ("dtype", "group_size", "residual")
SCALE_DTYPE = torch.float16
_SCALE_MIN, _SCALE_MAX = 2.0**-24, 65504.0  # float16's smallest subnormal and largest number
_FLOAT8_MAX = 448.0
@dataclass(frozen=True)
class KVQuantization:
    """A parsed ``kv_cache_quantization``: the stored dtype, the group size (capped at a row's width), the
    residual window."""

    dtype: str
    group_size: int = DEFAULT_GROUP_SIZE
    residual: int = 0

    @property
    def bits(self) -> int:
        return DTYPES[self.dtype]

    @property
    def has_offsets(self) -> bool:
        return self.dtype == "int4"

    def group_for(self, width: int) -> int:
        """The group size used for rows `width` wide: ``group_size``, or the whole row when it is narrower."""
        return min(self.group_size, width)

    def bytes_per_row(self, width: int) -> int:
        """Stored bytes of one quantized row `width` wide: codes, scales and (int4) offsets."""
        groups = width // self.group_for(width)
        return width * self.bits // 8 + groups * SCALE_DTYPE.itemsize * (2 if self.has_offsets else 1)

    def new_sequence(
        self, name: str, shape: tuple[int, ...], device=None, dtype: torch.dtype | None = None
    ) -> "QuantizedSequence":
        """An empty quantized cache buffer `name` of `shape` (``KVCacheBase.add_sequence`` calls this)."""
        return QuantizedSequence(shape, self, device=device, dtype=dtype, name=name)


def parse_quantization(value: Any) -> KVQuantization | None:
    """``kv_cache_quantization`` as a :class:`KVQuantization` (None: off).

    Raises:
        ValueError: an unknown dtype, an unknown key, a group size or residual that is not a positive /
            non-negative integer, or an int4 group size that is odd (two numbers share a byte).
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = {"dtype": value}
    if not isinstance(value, dict):
        raise ValueError(
            f"{FIELD}={value!r} must be null, one of {list(DTYPES)}, or a dict with keys {list(KEYS)}"
        )
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValueError(f"{FIELD} has unknown key(s) {unknown}; allowed keys are {list(KEYS)}")
    dtype = value.get("dtype")
    if dtype not in DTYPES:
        raise ValueError(f"{FIELD}.dtype={dtype!r} must be one of {list(DTYPES)}")
    group_size = value.get("group_size", DEFAULT_GROUP_SIZE)
    positive_int(f"{FIELD}.group_size", group_size)
    if dtype == "int4" and group_size % 2:
        raise ValueError(f"{FIELD}.group_size={group_size} must be even for int4 (two numbers share a byte)")
    residual = value.get("residual", 0)
    int_in_range(f"{FIELD}.residual", residual, 0, note=" (0: no residual window)")
    return KVQuantization(dtype, group_size, residual)


def check_row_width(quantization: KVQuantization, width: int, row: str) -> None:
    """Raises ValueError unless the group size divides a cached row of `width` numbers (named `row`)."""
    group = quantization.group_for(width)
    if width % group or (quantization.has_offsets and group % 2):
        raise ValueError(
            f"{FIELD}.group_size={quantization.group_size} must divide the cached {row} width {width}"
            f" (groups lie inside one row{'; even for int4' if quantization.has_offsets else ''})"
        )


# ------------------------------------------------------------------------------------------- quantizers
def _float16_rounded(value: torch.Tensor, toward: float) -> torch.Tensor:
    """float32 `value` as float16, rounded toward ``toward`` (+inf or -inf) where rounding to nearest went the other
    way, so that the stored number is never on the wrong side of the exact one. `value` must be within float16's
    range."""
    nearest = value.to(SCALE_DTYPE)
    wrong_side = nearest.float() < value if toward > 0 else nearest.float() > value
    return torch.where(wrong_side, torch.nextafter(nearest, torch.full_like(nearest, toward)), nearest)


def _rounded_scale(value: torch.Tensor) -> torch.Tensor:
    """A scale in float16, never zero or infinite, rounded up: every code of its group then stays in range (a
    scale rounded down, in float16's subnormal range by as much as a third, would clamp the largest codes)."""
    return _float16_rounded(value.clamp(_SCALE_MIN, _SCALE_MAX), math.inf)


def quantize(x: torch.Tensor, quantization: KVQuantization) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rows x (..., F) -> codes (..., F b/8), scales (..., F/G) and offsets (int4; else None); see the equations."""
    F = x.size(-1)
    G = quantization.group_for(F)
    groups = x.float().unflatten(-1, (F // G, G))  # (..., F/G, G)
    if quantization.dtype == "int4":
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)  # (..., F/G, 1)
        # z at or below the minimum (rounded down, within float16's range), s from z: codes of [z, max] fit 0..15
        offsets = _float16_rounded(low.clamp(-_SCALE_MAX, _SCALE_MAX), -math.inf)
        scales = _rounded_scale((high - offsets.float()) / 15)
        q = ((groups - offsets.float()) / scales.float()).round_().clamp_(0, 15).to(torch.uint8)  # (..., F/G, G)
        q = q.flatten(-2)  # (..., F)
        codes = q[..., : F // 2] | (q[..., F // 2 :] << 4)  # (..., F/2): number i low, i + F/2 high
        return codes, scales.squeeze(-1), offsets.squeeze(-1)
    limit = 127.0 if quantization.dtype == "int8" else _FLOAT8_MAX
    scales = _rounded_scale(groups.abs().amax(-1, keepdim=True) / limit)  # (..., F/G, 1)
    scaled = groups / scales.float()
    if quantization.dtype == "int8":
        codes = scaled.round_().clamp_(-127, 127).to(torch.int8)
    else:
        # stored as its bytes: torch's CPU scatter has no float8 kernel
        codes = scaled.clamp_(-_FLOAT8_MAX, _FLOAT8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    return codes.flatten(-2), scales.squeeze(-1), None


def convert_codes(codes: torch.Tensor, quantization: KVQuantization, out: torch.Tensor) -> torch.Tensor:
    """codes (..., F b/8) -> their numbers q (..., F) written into `out` (exact: small integers or float8 numbers)."""
    if quantization.dtype == "int4":
        half = out.size(-1) // 2
        out[..., :half].copy_(codes & 0xF)  # numbers 0 .. F/2 - 1
        out[..., half:].copy_(codes >> 4)  # numbers F/2 .. F - 1
    elif quantization.dtype == "float8_e4m3fn":
        out.copy_(codes.view(torch.float8_e4m3fn))  # the bytes back as float8
    else:
        out.copy_(codes)
    return out


def apply_scales(x: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """x (..., F) <- s x + z per group, in place; scales and offsets (..., F/G)."""
    groups = x.unflatten(-1, (scales.size(-1), -1))  # (..., F/G, G), a view
    groups.mul_(scales.to(x.dtype).unsqueeze(-1))
    if offsets is not None:
        groups.add_(offsets.to(x.dtype).unsqueeze(-1))
    return x


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, quantization: KVQuantization,
    dtype: torch.dtype, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """codes (..., F b/8), scales and offsets (..., F/G) -> rows (..., F) in `dtype`.

    Two passes over the output (convert, then scale in place; int4 a third for the offsets). `out`: a tensor
    of the rows' shape and `dtype` to write into (a reused workspace) instead of a new one.
    """
    if out is None:
        width = codes.size(-1) * 8 // quantization.bits  # F
        out = torch.empty(*codes.shape[:-1], width, dtype=dtype, device=codes.device)
    return apply_scales(convert_codes(codes, quantization, out), scales, offsets)


# ------------------------------------------------------------------------------------------------ store
class Workspace:
    """Scratch memory for reading quantized sequences, owned by the caches that read through it.

    One per cache, and one for all the caches of a model once ``GPT.set_kv_cache`` has built them (the plugin
    links them: :func:`share_workspace`), since a layer's attention consumes its rows before the next layer
    reads: then it costs one layer's scratch, not ``n_layer``. Each role (a sequence's name: "k", "v",
    "latent", ...; "/block" for a decode step's block) holds one flat tensor, allocated once at the largest size
    the role asks for (its `capacity`: a whole sequence's rows, or a decode block's byte budget), so decode
    steps never allocate; a new dtype or device allocates again.
    """

    def __init__(self) -> None:
        self._held: dict[str, torch.Tensor] = {}

    def get(self, role: str, numel: int, dtype: torch.dtype, device: torch.device, capacity: int) -> torch.Tensor:
        """A flat tensor of `numel` numbers for `role` (at least `capacity` allocated, once).

        Allocated outside inference mode (a normal tensor, as the cache's own buffers are), so that a cache first
        read under ``torch.inference_mode`` (litgpt generate, chat, serve) stays writable under ``no_grad``."""
        held = self._held.get(role)
        if held is None or held.numel() < numel or held.dtype != dtype or held.device != device or held.is_inference():
            with torch.inference_mode(False):
                held = self._held[role] = torch.empty(max(numel, capacity), dtype=dtype, device=device)
        return held[:numel]

    @property
    def nbytes(self) -> int:
        """Bytes held now (every role)."""
        return sum(t.numel() * t.element_size() for t in self._held.values())

    def release(self) -> None:
        """Frees the scratch memory (the next read allocates it again)."""
        self._held.clear()


def share_workspace(model: nn.Module) -> Workspace:
    """Gives every quantized sequence of `model`'s caches one :class:`Workspace` (``GPT.set_kv_cache`` calls this
    through the plugin) and returns it."""
    shared = Workspace()
    for module in model.modules():
        if isinstance(module, QuantizedSequence):
            module.workspace = shared
    return shared


def _write(buffer: torch.Tensor, input_pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``buffer[b, ..., input_pos[b, t], :] = new[b, ..., t, :]`` (time at dim -2), in place."""
    return write_positions(buffer, new.dim() - 2, input_pos, new)


class QuantizedSequence(nn.Module):
    """One quantized cache buffer of shape ``(B, *heads, S, F)``, time at dim -2; layout in the module docstring.

    :meth:`write` stores a chunk at its positions; :meth:`update` writes and returns the first ``upto``
    positions dequantized (the rows of the residual window exact), in the chunk's dtype; :meth:`block` gives
    a decode step (``quantized_attention.decode_attention``) a block of rows as converted codes and the scales
    still to apply.
    """

    def __init__(
        self, shape: tuple[int, ...], quantization: KVQuantization, device=None, dtype: torch.dtype | None = None,
        name: str = "rows",
    ) -> None:
        super().__init__()
        *lead, S, F = shape
        self.quantization, self.width, self.name = quantization, F, name
        G = quantization.group_for(F)
        code_dtype = torch.int8 if quantization.dtype == "int8" else torch.uint8  # float8: its bytes
        code_width = F * quantization.bits // 8
        self.register_buffer("codes", torch.zeros(*lead, S, code_width, device=device, dtype=code_dtype), persistent=False)
        self.register_buffer("scales", torch.zeros(*lead, S, F // G, device=device, dtype=SCALE_DTYPE), persistent=False)
        offsets = torch.zeros(*lead, S, F // G, device=device, dtype=SCALE_DTYPE) if quantization.has_offsets else None
        self.register_buffer("offsets", offsets, persistent=False)
        R = min(quantization.residual, S)
        self.residual = R
        recent = torch.zeros(*lead, R, F, device=device, dtype=dtype) if R else None
        positions = torch.full((lead[0], R), -1, device=device, dtype=torch.int64) if R else None
        self.register_buffer("recent", recent, persistent=False)  # (B, *heads, R, F)
        self.register_buffer("recent_positions", positions, persistent=False)  # (B, R)
        self.workspace = Workspace()  # replaced by the model's shared one (share_workspace)

    def reset(self) -> None:
        for buffer in (self.codes, self.scales, self.offsets, self.recent):
            if buffer is not None:
                buffer.zero_()
        if self.recent_positions is not None:
            self.recent_positions.fill_(-1)

    def write(self, input_pos: torch.Tensor, new: torch.Tensor) -> None:
        """Quantizes `new` (bs, *heads, T, F) and stores it at `input_pos` ((T,) or (bs, T)); the chunk's last
        R rows also go exactly into the residual window."""
        bs = new.size(0)
        codes, scales, offsets = quantize(new, self.quantization)
        _write(self.codes[:bs], input_pos, codes)
        _write(self.scales[:bs], input_pos, scales)
        if offsets is not None:
            _write(self.offsets[:bs], input_pos, offsets)
        if self.residual:
            self._remember_recent(input_pos, new)

    def update(self, input_pos: torch.Tensor, new: torch.Tensor, upto: int | None) -> torch.Tensor:
        """Writes `new` (bs, *heads, T, F) at `input_pos` ((T,) or (bs, T)); returns (bs, *heads, upto, F)."""
        self.write(input_pos, new)
        bs = new.size(0)
        upto = self.codes.size(-2) if upto is None else upto
        lead = self.codes.shape[1:-2]
        # one spare position at `upto` takes the residual window's writes of empty slots (_exact_recent)
        shape = (bs, *lead, upto + 1, self.width)
        capacity = math.prod((self.codes.size(0), *lead, self.codes.size(-2) + 1, self.width))  # the whole sequence
        rows = self.workspace.get(self.name, math.prod(shape), new.dtype, new.device, capacity).view(shape)
        dequantize(
            self.codes[:bs, ..., :upto, :], self.scales[:bs, ..., :upto, :],
            None if self.offsets is None else self.offsets[:bs, ..., :upto, :], self.quantization, new.dtype,
            out=rows[..., :upto, :],
        )  # (bs, *heads, upto, F)
        if self.residual:
            self._exact_recent(rows, upto)
        return rows[..., :upto, :]

    def row_scales(self, n_rows: int, upto: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """With one group per row: the scales and offsets (or None) of the first `n_rows` rows of the flattened
        ``(B * heads, S, F)`` view, first `upto` positions, (n_rows, upto) in `dtype`, for a decode step to fold
        into its attention (``quantized_attention.decode_attention``). None with several groups per row:
        :meth:`block` then returns the rows dequantized."""
        if self.scales.size(-1) > 1:
            return None
        scales = self.scales.flatten(0, -3)[:n_rows, :upto, 0].to(dtype)  # (n_rows, upto)
        offsets = None if self.offsets is None else self.offsets.flatten(0, -3)[:n_rows, :upto, 0].to(dtype)
        return scales, offsets

    def block(self, rows: slice, upto: int, dtype: torch.dtype, capacity: int) -> torch.Tensor:
        """Rows `rows` of the flattened ``(B * heads, S, F)`` view, first `upto` positions, as (r, upto, F) in
        `dtype` (the workspace's "/block" role, `capacity` numbers; no residual window): the codes as numbers
        when :meth:`row_scales` gives the scales to fold, the dequantized rows otherwise."""
        codes = self.codes.flatten(0, -3)[rows, :upto]  # (r, upto, F b/8)
        shape = (codes.size(0), upto, self.width)
        x = self.workspace.get(self.name + "/block", math.prod(shape), dtype, codes.device, capacity).view(shape)
        convert_codes(codes, self.quantization, out=x)  # (r, upto, F)
        if self.scales.size(-1) == 1:
            return x
        offsets = None if self.offsets is None else self.offsets.flatten(0, -3)[rows, :upto]  # (r, upto, F/G)
        return apply_scales(x, self.scales.flatten(0, -3)[rows, :upto], offsets)

    def _remember_recent(self, input_pos: torch.Tensor, new: torch.Tensor) -> None:
        """Keeps the chunk's last R rows (bs, *heads, T, F) in the ring, slot ``position mod R``.

        A slot that holds a position this chunk rewrites (but does not keep) is emptied first, so an older exact row
        never returns in place of the new codes; kept positions that share a slot (a chunk whose positions are not
        consecutive) leave it empty, so no scatter has to choose between them. Empty slots read from the codes.
        """
        bs, T, R = new.size(0), new.size(-2), self.residual
        if self.recent.dtype != new.dtype:
            self.recent = self.recent.to(new.dtype)
        written = input_pos.expand(bs, -1)  # (bs, T)
        held = self.recent_positions[:bs]  # (bs, R)
        held.masked_fill_((held.unsqueeze(-1) == written.unsqueeze(1)).any(-1), -1)  # rewritten: no longer exact
        kept = min(T, R)
        positions = written[:, T - kept:]  # (bs, kept): the chunk's last positions
        slots = positions.remainder(R)
        shared = (slots.unsqueeze(-1) == slots.unsqueeze(1)).sum(-1) > 1  # (bs, kept): two kept rows, one slot
        _write(self.recent[:bs], slots, new[..., T - kept:, :])
        held.scatter_(1, slots, torch.where(shared, -1, positions))

    def _exact_recent(self, rows: torch.Tensor, upto: int) -> None:
        """Puts every ring row below `upto` back into `rows` ((bs, *heads, upto + 1, F); empty and
        out-of-range slots write the spare last row)."""
        bs, R = rows.size(0), self.residual
        held_positions = self.recent_positions[:bs]  # (bs, R)
        index = torch.where((held_positions >= 0) & (held_positions < upto), held_positions, upto)  # (bs, R)
        shape = [bs] + [1] * (rows.dim() - 3) + [R, 1]
        index = index.view(shape).expand_as(self.recent[:bs])  # (bs, *heads, R, F)
        rows.scatter_(-2, index, self.recent[:bs])


__all__ = [
    "DTYPES",
    "FIELD",
    "KVQuantization",
    "QuantizedSequence",
    "Workspace",
    "apply_scales",
    "check_row_width",
    "convert_codes",
    "dequantize",
    "parse_quantization",
    "quantize",
    "share_workspace",
]
