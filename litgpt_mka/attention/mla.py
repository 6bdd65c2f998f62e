"""Multi-head latent attention (DeepSeek-V2) with a compressed latent KV cache and absorbed decoding.

Notation (example sizes: ``config_hub/pretrain/pythia-70m-mla.yaml``)

====  ==============================================  =====
B     batch size
T     query positions in this call (chunk length)
S     key positions attended to (cache length, ``input_pos_maxp1`` when given)
C     model width, ``n_embd``                         512
nh    heads, ``n_head`` (``n_query_groups`` == nh)    8
Lq    ``q_lora_rank``, query latent; None = full rank 256
L     ``kv_lora_rank``, the cached KV latent          128
P     ``qk_nope_head_dim``, per-head key without RoPE 48
R     ``qk_rope_head_dim``, RoPE key shared by heads  16
V     ``v_head_dim``, per-head value                  64
====  ==============================================  =====

Weights (litgpt's parameter names, so stock litgpt MLA checkpoints load unchanged)

========================  =================  ==================================================
``q_a_proj``              W_DQ  (Lq, C)      query down-projection (only when Lq is set)
``q_a_norm``              RMSNorm(Lq)
``q_b_proj``              W_UQ  (nh(P+R), Lq)
``q_proj``                W_Q   (nh(P+R), C) full-rank query projection (only when Lq is None)
``kv_a_proj_with_mqa``    W_DKV (L+R, C)     latent ``c`` and shared RoPE key ``k_r``
``kv_a_norm``             RMSNorm(L)
``kv_b_proj``             (nh(P+V), L)       per head ``[W_UK (P, L) ; W_UV (V, L)]``, bias ``[b_K ; b_V]``
``proj``                  W_O   (C, nh V)
========================  =================  ==================================================

Equations, per layer, for ``x`` of shape (B, T, C)::

    q = W_UQ norm(W_DQ x)  or  W_Q x                      (B, T, nh, P+R) = [q_nope (P) ; q_rope (R)]
    q_rope = RoPE(q_rope)
    [c ; k_r] = W_DKV x,  c = norm(c),  k_r = RoPE(k_r)    (B, T, L), (B, T, R)  <- cached, nothing else
    scale = mscale^2 / sqrt(P + R)                         (litgpt's ``attention_scores_scalar`` replaces P+R)

Expanded path (training, and chunks longer than ``absorb_max_queries``): materialise the heads, then SDPA::

    k_nope = W_UK c + b_K,  v = W_UV c + b_V              (B, nh, S, P), (B, nh, S, V)
    k = [k_nope ; k_r]  (k_r broadcast over heads)         (B, nh, S, P+R)
    o = softmax(scale q k^T + causal) v                    (B, nh, T, V)
    y = W_O o

Absorbed path (decode: chunks of at most ``absorb_max_queries`` queries against the cache): MQA with one
shared key ``[c ; k_r]`` (width L+R) and one shared value ``c`` (width L)::

    q_lat = q_nope W_UK                                    "bhtp,hpl->bhtl"  (B, nh, T, L)
    s = scale (q_lat c^T + q_rope k_r^T)                   "bhtl,bsl->bhts" + "bhtr,bsr->bhts"
    o_lat = softmax(s + mask) c                            "bhts,bsl->bhtl"  (B, nh, T, L)
    o = o_lat W_UV^T + b_V                                 "bhtl,hvl->bhtv"  (B, nh, T, V)
    y = W_O o

The middle two lines run as one SDPA call (:mod:`litgpt_mka.attention.dispatch`): the nh T query rows
``[q_lat ; q_rope]`` of all heads against one MQA head whose key and value are both the cached rows
``[c ; k_r]`` (width L+R): the scores are exactly ``scale (q_lat c^T + q_rope k_r^T)``, and the first L
columns of ``p [c ; k_r]`` are ``o_lat`` (FlashMLA's layout: K and V share the cache). At a decode step that
sees the whole cache no mask is passed, and q, k, v are all L+R wide, so the flash kernel is eligible; each
cached row is read once for scores and values. Under softcapping the softmax is explicit, in float32.

The key bias b_K adds ``q_nope . b_K`` to every score of a query row, which softmax ignores, so it is
dropped (kept only under ``attention_logit_softcapping``, which is not shift-invariant); the value bias
passes through unchanged because the attention weights sum to one. Folding W_UK into W_UQ, or W_UV
into W_O, would need nh·Lq·L and nh·L·C numbers instead of nh·P·(Lq+L) and nh·V·(L+C): more for every
preset here (and for DeepSeek-V2's own sizes), so it is not done. The derived weights (W_UK, W_UV, b_V
as contiguous per-head tensors) are computed in one method, :meth:`MultiheadLatentAttention.absorb_weights`,
and recomputed when ``kv_b_proj`` changes (data pointer, dtype, device or in-place version; loading a
state dict always; every call in a distributed process, where FSDP re-gathers weights: see
``variant.may_be_regathered``), never stored in the state dict. An in-place edit through ``.data`` bumps no
version: after one, call :meth:`MultiheadLatentAttention.clear_absorbed_weights` (litgpt's LoRA merge needs nothing:
the LoRA form reads the effective weight, see ``litgpt_mka.finetune.lora``).

Which path a cached chunk takes: absorbed iff ``T <= absorb_max_queries``. Per batch row and layer the
expanded path costs ``nh S [L (P+V) + T (P+R+V)]`` multiply-adds (expanding all S latents dominates),
the absorbed one ``nh T [S (2L+R) + L (P+V)]``; for S >> L they are equal at
``T* = L (P+V) / (2L - P - V)`` (99 for the 70m preset; unbounded when 2L <= P+V), the default.
``latent_attention: {absorb_max_queries: N}`` overrides it (0 = always expanded); so does setting the
module attribute of the same name. Both paths give the same outputs (tested to 1e-5 in fp32).

Cache layout (:class:`LatentKVCache`), per layer::

    rows    (B, S, L+R)  [c ; k_r]: c after kv_a_norm, k_r after RoPE (at its own position: relative
                         positions stay exact); ``latent`` and ``k_rope`` are its two views

    bytes per token per layer = (L + R) x dtype size     e.g. 70m fp32: (128 + 16) x 4 = 576
    (litgpt's stock MLA caches nh (P+R+V) = 1024 numbers, plain MHA 2 nh hs = 1024)

With ``kv_cache_quantization`` set, ``latent`` (B, S, L) is a quantized sequence (per token, groups along L;
:mod:`litgpt_mka.attention.quantization`) and ``k_rope`` (B, S, R) a buffer in the cache dtype, as FlashMLA
keeps its RoPE key in bf16: the latent's bytes drop, the R numbers of the RoPE key do not. An absorbed decode
step reads the latent block by block from its codes (:meth:`_absorbed_decode`).
"""

from typing import Any, NamedTuple

import litgpt.model
import torch
import torch.nn as nn
from litgpt.model import RMSNorm, yarn_get_mscale

from litgpt_mka.attention.dispatch import Site, attention_probabilities, cached_site_and_mask, sdpa, uncached_site
from litgpt_mka.attention.functional import (
    attention_at_site,
    attention_scale,
    quantized_decode_step,
    rope_function,
    tile_mask,
)
from litgpt_mka.attention.kv_cache import KVCacheBase
from litgpt_mka.attention.quantization import QuantizedSequence
from litgpt_mka.attention.quantized_attention import decode_attention, mask_bias, reads_codes
from litgpt_mka.attention.variant import (
    CachedAttention,
    QuantizedRows,
    WeightDerived,
    cache_quantization,
    check_keys,
)
from litgpt_mka.validation import int_in_range, positive_int

LATENT_ATTENTION_KEYS = (
    "q_lora_rank",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "absorb_max_queries",
)
_REQUIRED_DIMS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def validate_latent_attention(config: Any, variant: str, q_lora_rank_required: bool) -> None:
    """Checks ``config.latent_attention`` for an MLA class named `variant`; ValueError naming the key and value."""
    latent = config.latent_attention
    if not isinstance(latent, dict):
        raise ValueError(
            f"attention_class_name={variant!r} needs the latent_attention dict (kv_lora_rank, qk_rope_head_dim,"
            f" qk_nope_head_dim, v_head_dim, optional q_lora_rank); got latent_attention={latent!r}"
        )
    check_keys("latent_attention", latent, LATENT_ATTENTION_KEYS)
    for key in _REQUIRED_DIMS:
        positive_int(f"latent_attention[{key!r}]", latent.get(key))
    full_rank = None if q_lora_rank_required else "a full-rank query projection"
    positive_int("latent_attention['q_lora_rank']", latent.get("q_lora_rank"), allow_none=full_rank)
    if latent["qk_rope_head_dim"] % 2:
        raise ValueError(
            f"latent_attention['qk_rope_head_dim']={latent['qk_rope_head_dim']} must be even (RoPE rotates pairs)"
        )
    absorb = latent.get("absorb_max_queries")
    int_in_range("latent_attention['absorb_max_queries']", absorb, 0, allow_none="the cost-model default")
    if config.n_query_groups != config.n_head:
        raise ValueError(
            f"n_query_groups={config.n_query_groups} must equal n_head={config.n_head} for {variant}"
            " (heads share the latent, not key groups)"
        )


def default_absorb_max_queries(config: Any) -> int:
    """T* = L (P+V) / (2L - P - V): the chunk length where both paths cost the same (see module doc)."""
    L, P, V = config.kv_lora_rank, config.qk_nope_head_dim, config.v_head_dim
    if 2 * L <= P + V:
        return torch.iinfo(torch.int64).max  # absorbed is never more expensive
    return L * (P + V) // (2 * L - P - V)


def yarn_mscale(config: Any) -> float:
    """litgpt's YaRN attention factor (1.0 unless `rope_adjustments` sets `factor` and `mscale_all_dim`)."""
    adjustments = config.rope_adjustments or {}
    factor, mscale_all_dim = adjustments.get("factor"), adjustments.get("mscale_all_dim")
    return yarn_get_mscale(factor, mscale_all_dim) if factor and mscale_all_dim else 1.0


def _key_bias_scores(q_nope: torch.Tensor, b_k: torch.Tensor) -> torch.Tensor:
    """``q_nope . b_K`` per query row, "bhtp,hp->bht" in float32: q_nope (B, nh, T, P), b_K (nh, P) -> (B, nh, T).

    The same for every key of the row: softmax ignores it, softcapping does not (see the module doc)."""
    return torch.einsum("bhtp,hp->bht", q_nope.float(), b_k.float())


class AbsorbedWeights(NamedTuple):
    """Per-head views of ``kv_b_proj``, laid out for the absorbed path."""

    w_uk: torch.Tensor  # (nh, P, L)
    w_uv_t: torch.Tensor  # (nh, L, V): W_UV transposed, the layout its per-step product reads fastest
    b_k: torch.Tensor | None  # (nh, P), needed only with softcapping
    b_v: torch.Tensor | None  # (nh, 1, V)


class LatentKVCache(KVCacheBase):
    """The compressed MLA cache: the latent (B, S, L) and the shared RoPE key (B, S, R), nothing else.

    Unquantized, both live in one buffer ``rows`` (B, S, L+R) = ``[c ; k_r]`` (FlashMLA's layout: the absorbed
    decode attends with key = value = these rows, no copy), and ``latent``, ``k_rope`` are its views. With a
    ``KVQuantization`` the latent is a quantized sequence and ``k_rope`` a buffer of its own.

    litgpt's KV-cache contract through :class:`~litgpt_mka.attention.kv_cache.KVCacheBase`: writes at
    ``input_pos`` ((T,) or (B, T)), returns the first ``bs`` rows, sliced to ``input_pos_maxp1`` positions when
    given; the buffers follow the activation dtype.
    """

    def __init__(
        self, batch_size: int, max_seq_length: int, kv_lora_rank: int, qk_rope_head_dim: int, quantization=None,
        **placement,
    ):
        """`quantization`: a ``KVQuantization`` of the latent, or None; `placement`: ``device`` and ``dtype``."""
        super().__init__(batch_size, max_seq_length, **placement)
        self.kv_lora_rank = kv_lora_rank
        if quantization is None:
            self.add_buffer("rows", batch_size, max_seq_length, kv_lora_rank + qk_rope_head_dim)  # (B, S, L+R)
            self.activation_buffers = ("rows",)
        else:
            self.add_sequence("latent", batch_size, max_seq_length, kv_lora_rank, quantization=quantization)  # (B, S, L)
            self.add_buffer("k_rope", batch_size, max_seq_length, qk_rope_head_dim)  # (B, S, R)
            self.activation_buffers = ("k_rope",)

    @property
    def joined(self) -> bool:
        """Whether latent and RoPE key share the buffer ``rows`` (unquantized)."""
        return "rows" in self._buffers

    def __getattr__(self, name: str):
        if name in ("latent", "k_rope") and "rows" in self._buffers:  # views of the joined rows
            rows = self._buffers["rows"]
            return rows[..., : self.kv_lora_rank] if name == "latent" else rows[..., self.kv_lora_rank :]
        return super().__getattr__(name)

    def forward(
        self,
        input_pos: torch.Tensor,
        latent: torch.Tensor,
        k_rope: torch.Tensor,
        input_pos_maxp1: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes `latent` (bs, T, L) and `k_rope` (bs, T, R) at `input_pos`; returns (bs, S, L), (bs, S, R)."""
        bs, T = latent.shape[:2]
        self.check_chunk(input_pos, bs, T, input_pos_maxp1)
        self.follow_dtype(latent.dtype)
        if self.joined:
            rows = self.update("rows", input_pos, torch.cat((latent, k_rope), dim=-1), input_pos_maxp1)  # (bs, S, L+R)
            return rows[..., : self.kv_lora_rank], rows[..., self.kv_lora_rank :]
        latent_all = self.update("latent", input_pos, latent, input_pos_maxp1)  # (bs, S, L)
        k_rope_all = self.update("k_rope", input_pos, k_rope, input_pos_maxp1)  # (bs, S, R)
        return latent_all, k_rope_all

    def append(self, input_pos: torch.Tensor, input_pos_maxp1: int | None, **chunks: torch.Tensor) -> None:
        """Writes ``latent`` (bs, T, L) and ``k_rope`` (bs, T, R) without reading back (quantized decode)."""
        if self.joined:
            chunks = {"rows": torch.cat((chunks["latent"], chunks["k_rope"]), dim=-1)}  # (bs, T, L+R)
        super().append(input_pos, input_pos_maxp1, **chunks)


class MultiheadLatentAttention(CachedAttention, litgpt.model.MultiheadLatentAttention):
    """DeepSeek-V2 MLA, a drop-in for litgpt's class: same parameters, compressed cache, absorbed decode.

    See the module docstring for notation, weights, both paths and the cache layout.
    """

    label = "MLA"
    lora_target = "litgpt_mka.finetune.lora:LoRAMultiheadLatentAttention"
    litgpt_counterpart = "LitgptMultiheadLatentAttention"
    cache_class = LatentKVCache
    rope_width_field = "qk_rope_head_dim"

    def __init__(self, config: Any, block_idx: int) -> None:
        # litgpt's __init__ requires q_lora_rank; the modules below carry its names and shapes
        nn.Module.__init__(self)
        nh, C, L, R = config.n_head, config.n_embd, config.kv_lora_rank, config.qk_rope_head_dim
        P, V = config.qk_nope_head_dim, config.v_head_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(C, nh * (P + R), bias=config.bias)
        else:
            self.q_a_proj = nn.Linear(C, config.q_lora_rank, bias=config.attn_bias)
            self.q_a_norm = RMSNorm(config.q_lora_rank, eps=config.norm_eps)
            self.q_b_proj = nn.Linear(config.q_lora_rank, nh * (P + R), bias=config.bias)
        self.kv_a_proj_with_mqa = nn.Linear(C, L + R, bias=config.attn_bias)
        self.kv_a_norm = RMSNorm(L, eps=config.norm_eps)
        self.kv_b_proj = nn.Linear(L, nh * (P + V), bias=config.bias)
        self.proj = nn.Linear(nh * V, C, bias=config.bias)
        self.kv_cache: LatentKVCache | None = None

        self.mscale = yarn_mscale(config)
        self.scale = attention_scale(config, self.mscale, key_width=P + R)
        absorb_max_queries = config.latent_attention.get("absorb_max_queries")
        self.absorb_max_queries = (
            default_absorb_max_queries(config) if absorb_max_queries is None else absorb_max_queries
        )
        self._rope = rope_function(config)
        self._absorbed = WeightDerived()  # absorb_weights() of the current kv_b_proj
        self.config = config
        self.block_idx = block_idx

    # ---------------------------------------------------------------------------------------- config
    @classmethod
    def validate_config(cls, config: Any) -> None:
        """Raises ValueError for a `latent_attention` dict or config this module cannot run."""
        validate_latent_attention(config, cls.__name__, q_lora_rank_required=False)

    @classmethod
    def kv_cache_elements_per_token(cls, config: Any) -> int:
        """Numbers cached per token per layer: the latent (L) and the shared RoPE key (R)."""
        return config.kv_lora_rank + config.qk_rope_head_dim

    @classmethod
    def kv_cache_quantized_rows(cls, config: Any) -> tuple[QuantizedRows, ...]:
        """The latent (one row of L per token); the RoPE key stays in the cache dtype."""
        return (QuantizedRows("latent (kv_lora_rank)", config.kv_lora_rank, 1, 1),)

    # --------------------------------------------------------------------------------------- forward
    def attend(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """litgpt's attention forward (see ``CachedAttention.forward``); x (B, T, C) -> (B, T, C)."""
        B, T, _ = x.shape
        q_nope, q_rope = self._queries(x, cos, sin)  # (B, nh, T, P), (B, nh, T, R)
        latent, k_rope = self._latent_keys(x, cos, sin)  # (B, T, L), (B, T, R)
        codes = reads_codes(self.kv_cache, ("latent",), T, input_pos)
        if input_pos is None:  # training / no cache: causal over this chunk
            o = self._expanded_attention(q_nope, q_rope, latent, k_rope, uncached_site(mask), mask)
        elif codes and T <= self.absorb_max_queries:  # a decode step over a quantized latent: attend to its codes
            upto, mask = quantized_decode_step(self.kv_cache, input_pos, input_pos_maxp1, mask, latent=latent,
                                               k_rope=k_rope)
            k_rope = self.kv_cache.k_rope[:B, :upto]  # (B, S, R)
            o = self._absorbed_decode(q_nope, q_rope, codes[0], k_rope, upto, mask)  # (B, nh, 1, V)
        else:
            latent, k_rope = self.kv_cache(input_pos, latent, k_rope, input_pos_maxp1)  # (B, S, L), (B, S, R)
            S = latent.size(1)
            site, mask = cached_site_and_mask(T, input_pos, input_pos_maxp1, mask, S)
            if T > self.absorb_max_queries:
                o = self._expanded_attention(q_nope, q_rope, latent, k_rope, site, mask)
            else:
                o = self._absorbed_attention(q_nope, q_rope, self._cached_rows(latent, k_rope), site, mask)
        o = o.transpose(1, 2).reshape(B, T, -1)  # (B, nh, T, V) -> (B, T, nh V)
        return self.proj(o)  # (B, T, C)

    def _queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        c = self.config
        if c.q_lora_rank is None:
            q = self.q_proj(x)  # (B, T, nh (P+R))
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))  # (B, T, Lq) -> (B, T, nh (P+R))
        q = q.view(B, T, c.n_head, c.qk_head_dim).transpose(1, 2)  # (B, T, nh, P+R) -> (B, nh, T, P+R)
        q_nope, q_rope = q.split((c.qk_nope_head_dim, c.qk_rope_head_dim), dim=-1)  # (B, nh, T, P), (B, nh, T, R)
        return q_nope, self._rope(q_rope, cos, sin)

    def _latent_keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent, k_rope = self.kv_a_proj_with_mqa(x).split(
            (self.config.kv_lora_rank, self.config.qk_rope_head_dim), dim=-1
        )  # (B, T, L+R) -> (B, T, L), (B, T, R)
        return self.kv_a_norm(latent), self._rope(k_rope, cos, sin)

    def _expanded_attention(self, q_nope, q_rope, latent, k_rope, site: Site, mask) -> torch.Tensor:
        """Materialises per-head keys and values from the S latents, then attends at `site` (flash-eligible
        when P+R == V and no mask; :func:`~litgpt_mka.attention.functional.attention_at_site`).

        q_nope (B, nh, T, P), q_rope (B, nh, T, R), latent (B, S, L), k_rope (B, S, R) -> (B, nh, T, V).
        """
        B, S, _ = latent.shape
        nh, P, V = self.config.n_head, self.config.qk_nope_head_dim, self.config.v_head_dim
        kv = self.kv_b_proj(latent).view(B, S, nh, P + V).transpose(1, 2)  # (B, S, nh (P+V)) -> (B, nh, S, P+V)
        k_nope, v = kv.split((P, V), dim=-1)  # (B, nh, S, P), (B, nh, S, V)
        k_rope = k_rope.unsqueeze(1).expand(B, nh, S, -1)  # (B, S, R) -> (B, nh, S, R)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, nh, T, P+R)
        k = torch.cat((k_nope, k_rope), dim=-1)  # (B, nh, S, P+R)
        softcapping = self.config.attention_logit_softcapping
        return attention_at_site(q, k, v, scale=self.scale, site=site, mask=mask, softcapping=softcapping)

    def _cached_rows(self, latent: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        """``[c ; k_r]`` (B, S, L+R) of the cached positions: a view of the cache's joined rows (unquantized),
        else joined here from the dequantized latent (B, S, L) and k_rope (B, S, R)."""
        if self.kv_cache.joined:
            B, S, _ = latent.shape
            return self.kv_cache.rows[:B, :S]  # (B, S, L+R), no copy
        return torch.cat((latent, k_rope), dim=-1)  # (B, S, L+R)

    def _absorbed_attention(self, q_nope, q_rope, rows, site: Site, mask) -> torch.Tensor:
        """MQA over the cached rows themselves: one key = value head ``[c ; k_r]`` (L+R) for all heads.

        q_nope (B, nh, T, P), q_rope (B, nh, T, R), rows (B, S, L+R) -> (B, nh, T, V).

        Without softcapping: one SDPA call, the nh T query rows ``[q_lat ; q_rope]`` of all heads against key =
        value = rows (q, k, v all L+R wide: flash-eligible without a mask, at DECODE). The scores are
        ``scale (q_lat c^T + q_rope k_r^T)``, exactly MLA's; of the output ``p [c ; k_r]`` the first L columns
        are ``o_lat = p c`` (FlashMLA's layout: K and V share the cache, V is K's first L columns). A mask
        (1 or B, 1, T, S) is tiled over the heads' rows; a prefill from position 0 (PREFILL) keeps the heads
        apart instead, each causal over the chunk, against the one shared head (SDPA's ``enable_gqa``).
        """
        w = self._absorbed_weights()
        B, nh, T, P = q_nope.shape
        L, R = self.config.kv_lora_rank, self.config.qk_rope_head_dim
        q_lat = self._latent_queries(q_nope, w)  # (B, nh, T, L)
        softcapping = self.config.attention_logit_softcapping
        if softcapping is None:
            q = torch.cat((q_lat, q_rope), dim=-1)  # (B, nh, T, L+R)
            shared = rows.unsqueeze(1)  # (B, S, L+R) -> (B, 1, S, L+R): key and value of one MQA head
            if site is Site.PREFILL:  # causal over the chunk: one diagonal per head, the head shared (no copy)
                o = sdpa(q, shared, shared, site=site, scale=self.scale, enable_gqa=True)  # (B, nh, T, L+R)
            else:  # the heads as rows of the one head; a mask (mb, 1, T, S) tiled over them
                q = q.reshape(B, 1, nh * T, L + R)  # (B, nh, T, L+R) -> (B, 1, nh T, L+R)
                mask = tile_mask(mask, nh)  # (mb, 1, T, S) -> (mb, 1, nh T, S)
                o = sdpa(q, shared, shared, site=site, scale=self.scale, mask=mask)  # (B, 1, nh T, L+R)
            o_lat = o[..., :L].reshape(B, nh, T, L)  # p c: the latent columns
        else:
            latent, k_rope = rows.split((L, R), dim=-1)  # (B, S, L), (B, S, R)
            scores = torch.einsum("bhtl,bsl->bhts", q_lat.float(), latent.float())  # (B, nh, T, S)
            scores += torch.einsum("bhtr,bsr->bhts", q_rope.float(), k_rope.float())
            if w.b_k is not None:  # softcapping is not shift-invariant: keep q_nope . b_K
                scores += _key_bias_scores(q_nope, w.b_k).unsqueeze(-1)  # (B, nh, T, 1)
            causal = site is Site.PREFILL
            p = attention_probabilities(scores * self.scale, mask, softcapping, causal)  # (B, nh, T, S) float32
            o_lat = torch.einsum("bhts,bsl->bhtl", p.to(latent.dtype), latent)  # (B, nh, T, L)
        return self._latent_values(o_lat, w)  # (B, nh, T, V)

    def _absorbed_decode(self, q_nope, q_rope, latent: QuantizedSequence, k_rope, upto: int, mask) -> torch.Tensor:
        """:meth:`_absorbed_attention` of one decode step, reading the quantized latent block by block from its codes
        (``quantization.decode_attention``; the latent is key and value), in float32.

        q_nope (B, nh, 1, P), q_rope (B, nh, 1, R), k_rope (B, S, R) of the `upto` cached positions, mask (1 or B,
        1, 1, S) or None (every position visible) -> (B, nh, 1, V).
        """
        w = self._absorbed_weights()
        B, nh, T, P = q_nope.shape
        q_lat = self._latent_queries(q_nope, w)  # (B, nh, T, L)
        q_rope = (q_rope.float() * self.scale).reshape(B, nh * T, -1)  # (B, nh T, R): heads as rows
        bias = torch.bmm(q_rope, k_rope.float().mT)  # (B, nh T, R) @ (B, R, S) -> (B, nh T, S) float32
        softcapping = self.config.attention_logit_softcapping
        if softcapping is not None and w.b_k is not None:  # softcapping is not shift-invariant: keep q_nope . b_K
            bias += _key_bias_scores(q_nope, w.b_k).reshape(B, nh * T, 1) * self.scale  # (B, nh T, 1)
        o_lat = decode_attention(
            q_lat.reshape(B, nh * T, -1), latent, latent, upto, self.scale, bias=bias, softcapping=softcapping,
            mask=mask_bias(mask, B, 1, nh * T),  # (B, nh T, S) or None: added after softcapping
        )  # (B, nh T, L): heads as query rows of the one shared latent
        return self._latent_values(o_lat.view(B, nh, T, -1), w)  # (B, nh, T, V)

    def _latent_queries(self, q_nope: torch.Tensor, w: AbsorbedWeights) -> torch.Tensor:
        """q_lat = q_nope W_UK, "bhtp,hpl->bhtl": one matmul batched over heads (cheaper than einsum's dispatch).

        q_nope (B, nh, T, P) -> (B, nh, T, L).
        """
        B, nh, T, P = q_nope.shape
        q_lat = torch.bmm(q_nope.transpose(0, 1).reshape(nh, B * T, P), w.w_uk)  # (nh, B T, P) @ (nh, P, L)
        return q_lat.view(nh, B, T, -1).transpose(0, 1)  # (nh, B T, L) -> (B, nh, T, L)

    def _latent_values(self, o_lat: torch.Tensor, w: AbsorbedWeights) -> torch.Tensor:
        """o = o_lat W_UV^T + b_V, "bhtl,hvl->bhtv", batched over heads like the queries: (B, nh, T, L) -> (B, nh, T, V)."""
        B, nh, T, L = o_lat.shape
        o_lat = o_lat.transpose(0, 1).reshape(nh, B * T, L)  # (B, nh, T, L) -> (nh, B T, L)
        if w.b_v is None:
            o = torch.bmm(o_lat, w.w_uv_t)  # (nh, B T, L) @ (nh, L, V) -> (nh, B T, V)
        else:
            o = torch.baddbmm(w.b_v, o_lat, w.w_uv_t)  # b_V (nh, 1, V) + (nh, B T, V)
        return o.view(nh, B, T, -1).transpose(0, 1)  # (nh, B T, V) -> (B, nh, T, V)

    # ------------------------------------------------------------------------------- derived weights
    def absorb_weights(self) -> AbsorbedWeights:
        """Computes the absorbed-path weights from ``kv_b_proj``: W_UK (nh, P, L), W_UV^T (nh, L, V), b_K, b_V.

        Laid out once here for the per-step products (contiguous, batched over heads); b_K (nh, P) is only
        needed with softcapping (see the module doc); b_V is (nh, 1, V), broadcast over a head's query rows.
        """
        nh, L = self.config.n_head, self.config.kv_lora_rank
        P, V = self.config.qk_nope_head_dim, self.config.v_head_dim
        weight = self.kv_b_proj.weight.view(nh, P + V, L)  # (nh (P+V), L) -> (nh, P+V, L)
        w_uk, w_uv = weight.split((P, V), dim=1)  # (nh, P, L), (nh, V, L)
        b_k = b_v = None
        if self.kv_b_proj.bias is not None:
            b_k, b_v = self.kv_b_proj.bias.view(nh, P + V).split((P, V), dim=1)  # (nh (P+V),) -> (nh, P), (nh, V)
            b_k = b_k.clone() if self.config.attention_logit_softcapping is not None else None
            b_v = b_v.unsqueeze(1).clone()  # (nh, V) -> (nh, 1, V)
        contiguous = torch.contiguous_format
        w_uv_t = w_uv.transpose(1, 2).clone(memory_format=contiguous)  # (nh, V, L) -> (nh, L, V)
        return AbsorbedWeights(w_uk.clone(memory_format=contiguous), w_uv_t, b_k, b_v)

    def _absorbed_weights(self) -> AbsorbedWeights:
        """`absorb_weights()`, cached until ``kv_b_proj``'s tensors change (data_ptr, dtype, device, version).

        Uncached while autograd records (gradients flow into ``kv_b_proj``), inside torch.compile, and in a process
        of a distributed job, where FSDP re-gathers ``kv_b_proj`` without a new pointer or version.
        """
        return self._absorbed.get(self.absorb_weights, self.kv_b_proj.weight, self.kv_b_proj.bias)

    def clear_absorbed_weights(self) -> None:
        """Forgets the cached absorbed weights; the next absorbed step derives them again from ``kv_b_proj``."""
        self._absorbed.clear()

    # ----------------------------------------------------------------------------------------- cache
    def new_kv_cache(self, batch_size: int, max_seq_length: int, device, dtype) -> LatentKVCache:
        c = self.config
        return LatentKVCache(
            batch_size, max_seq_length, c.kv_lora_rank, c.qk_rope_head_dim, cache_quantization(c),
            device=device, dtype=dtype,
        )


__all__ = [
    "validate_latent_attention",
    "AbsorbedWeights",
    "LatentKVCache",
    "MultiheadLatentAttention",
    "default_absorb_max_queries",
]
