"""Memorized-key attention (MKA) and its fast form (FMKA): exactly causal, exactly cacheable.

A small router decides, token by token, how much each key is drawn from three memory sources.
Selected with ``attention_class_name: MemorizedKeyAttention``; configured by the
``memorized_key_attention`` dict (see :meth:`MemorizedKeyAttention.validate_config`).

Notation (example sizes: pythia-14m)
------------------------------------
=========  ==============================================================  =====
letter     meaning                                                         14m
=========  ==============================================================  =====
B          batch size
T          tokens in this forward (sequence length, or a chunk of it)
S          KV-cache length (``max_seq_length`` of ``set_kv_cache``)
C          model width, ``n_embd``                                         128
nh_q       query heads, ``n_head``                                         4
nh_kv      key/value heads, ``n_query_groups`` (MHA = nh_q, MQA = 1)        4
hs         head size                                                       32
D          key (= value) width, ``nh_kv * hs``                             128
H          router hidden width, ``router_hidden`` (default ``C // 8``)     16
M          memory sources (local, session, long-term)                      3
w          width of the running mean: D (``keys``) or 2D (``keys_values``, ``outputs``)
=========  ==============================================================  =====

Weights of one layer
--------------------
* ``qkv``: litgpt's fused projection, ``W_Q`` (nh_q hs, C), ``W_K`` (D, C), ``W_V`` (D, C) and their
  biases; ``k(m) = W_K m + b_K`` and ``v(m) = W_V m + b_V``.
* ``proj``: litgpt's output projection (C, nh_q hs).
* ``memory``: the long-term memory ``p`` (C,), learned, shared by all sequences.
* ``router``: ``Linear(C, H) -> GELU -> Linear(H, M)`` then a softmax over the M sources.

Equations (position t counted from 0; the running mean divides by t + 1)
------------------------------------------------------------------------
Memory sources at position t, and the per-token routing weights::

    m1_t = x_t                                  local memory
    m2_t = 1/(t+1) sum_{s<=t} x_s               session memory: a causal running mean
    m3   = p                                    long-term memory
    lam_t = softmax(router(x_t))                (M,), sums to 1; shared by the heads

``routing="keys"`` (MKA)::

    K_t = sum_i lam_t,i k(m_i,t)      V_t = v(x_t)      Q_t = W_Q x_t + b_Q
    y_t = proj(causal_attention(rope(Q)_t, rope(K)_{<=t}, V_{<=t}))

``routing="keys_values"`` (FMKA)::

    u_t = sum_i lam_t,i m_i,t         K_t = k(u_t)      V_t = v(u_t)       Q_t as above

``routing="outputs"`` (one causal branch per source, mixed per query)::

    y_t = proj(sum_i lam_t,i attention(rope(Q)_t, rope(k(m_i))_{<=t}, v(m_i)_{<=t}))

RoPE is applied to the keys actually attended to, at their own positions, as litgpt does.

How it is computed
------------------
``k`` and ``v`` are affine and the weights of a mean (and ``lam``) sum to 1, so mixing commutes with
the projections: ``k(m2_t) = 1/(t+1) sum_{s<=t} k(x_s)`` and ``k(sum_i lam_i m_i) = sum_i lam_i
k(m_i)``. The module therefore runs litgpt's one fused ``qkv`` call on ``x``, projects ``p`` once
(``(W_K p + b_K, W_V p + b_V)``, 2D numbers), takes a float32 ``cumsum`` over time of the w projected
columns that need a running mean, and mixes in key space: ``keys`` and ``keys_values`` then run one
SDPA call per layer with equal q/k/v widths in training (GQA/MQA heads read shared through SDPA's
``enable_gqa``), so a fused kernel serves it; cached decoding runs the grouped path of ``functional.py`` (a
group's query heads as rows against its one key/value head, the cache never repeated), without a mask at
the last cached position (call sites and kernels: :mod:`litgpt_mka.attention.dispatch`). ``outputs`` runs two
SDPA calls: the long-term branch attends to one key/value pair repeated at every position, so its output
is exactly ``v(p)`` whatever the attention weights are; the module uses that closed form (the reference
implementation in the tests runs the third branch naively and agrees).

KV cache (:class:`MemorizedKeyCache`), per layer
------------------------------------------------
===============  ========================  =========================================  ============
buffer           shape                     content                                    dtype
===============  ========================  =========================================  ============
``k``            (B, nh_kv, S, hs)         the attended keys, mixed and roped         cache dtype
                                           (``outputs``: the local branch's keys)
``v``            (B, nh_kv, S, hs)         the attended values (``outputs``: local)   cache dtype
``k_session``    (B, nh_kv, S, hs)         ``outputs`` only: ``rope(k(m2_t))``        cache dtype
``v_session``    (B, nh_kv, S, hs)         ``outputs`` only: ``v(m2_t)``              cache dtype
``sums``         (B, W, w)                 ring of running sums ``sum_{s<=t} k(x_s)``  float32 (or
                                           (and ``v(x_s)``) of the last W positions   wider)
``sum_positions`` (B, W)                   the position each ring slot holds (-1:     int64
                                           empty)
===============  ========================  =========================================  ============

With ``kv_cache_quantization`` set, ``k``, ``v`` (and ``k_session``, ``v_session``) are quantized sequences
(:mod:`litgpt_mka.attention.quantization`); the ring of sums stays float32: it is per sequence, and a
quantized running sum would carry its error into every later position. A decode step that sees the whole
cache attends to the codes block by block (``functional.grouped_decode``,
:mod:`litgpt_mka.attention.quantized_attention`).

The running sum of position t lives in ring slot ``t mod W``; W is ``sum_window`` (default 16, at most
S). A chunk starting at position s continues the sum of position s - 1, so a chunk may start anywhere
the ring still holds: appending (every decode step, chunked prefill) and rewriting any of the last
W - 1 positions written (litgpt's speculative decoding rewrites up to ``speculative_k``, so it needs
W > speculative_k) are exact. Starting a chunk further back raises ``ValueError`` naming
``memorized_key_attention.sum_window``, checked without a host-device synchronisation wherever the host knows
the positions (``input_pos_maxp1`` given, as ``litgpt generate`` does: :class:`HostRing`); on an accelerator
without it, the chunk's outputs become NaN instead (:meth:`MemorizedKeyCache.running_sums`).

Bytes per token per layer with a cache dtype of ``b`` bytes (``kv_cache_bytes_per_token``), plus a
constant per sequence and layer (``kv_cache_bytes_per_sequence``, the ring); litgpt's MHA/GQA cache is
``2 D b`` bytes per token:

==============  =====================  ====================================  =========================
routing         bytes per token        bytes per sequence (ring)             14m, bf16, context 2048
==============  =====================  ====================================  =========================
``keys``        2 D b (= MHA)          W (4 D + 8)                           MHA + 0.8%
``keys_values`` 2 D b (= MHA)          W (8 D + 8)                           MHA + 1.6%
``outputs``     4 D b                  W (8 D + 8)                           2 MHA + 1.6%
==============  =====================  ====================================  =========================

Why float32 sums: the full forward accumulates in float32, and a bfloat16 running sum drifts: bf16 keeps 8
significant bits, so a sum of magnitude ``|S|`` rounds every addition to a multiple of ``2^(floor(log2|S|) - 7)``,
and once the sum of t keys of mean ``mu`` passes ``2^8`` the unit-sized terms added to it are mostly rounded away
(float32: ``2^24``). So the sums are kept in ``promote_types(dtype, float32)`` (the error measured at position
2048: ``docs/variants.md``, MKA's KV cache).
There is no other per-sequence state (``p`` is a weight). A chunk's positions must be consecutive
(``input_pos[..., j+1] = input_pos[..., j] + 1``), which every litgpt generation path satisfies.

Router initialisation
---------------------
The router's output layer (``router.out_weight`` (M, H), ``router.out_bias`` (M,)) is initialised to
zero in ``Router.reset_parameters``, so every layer starts with ``lam = (1/3, 1/3, 1/3)`` and the
output layer receives gradients from the first step. It is held as raw parameters rather than an
``nn.Linear`` so that litgpt pretrain's ``initialize_weights``, which re-initialises every
``nn.Linear``, leaves it at zero. The hidden layer ``router.fc`` is an ``nn.Linear`` and gets the
same init as every other linear layer (GPT-NeoX N(0, sqrt(2/(5C))) under ``litgpt pretrain``).
``p`` is drawn from N(0, 1), the scale of a normalised token ``x_t`` at init, so the three sources
start at comparable magnitudes. :func:`routing_weights` returns the mean ``lam`` per layer on a batch.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import CausalSelfAttention

from litgpt_mka.attention.dispatch import Site, cached_site_and_mask, uncached_site
from litgpt_mka.attention.functional import (
    attention_scale,
    grouped_attention,
    grouped_decode,
    partial_rope,
    quantized_decode_step,
)
from litgpt_mka.attention.kv_cache import KVCacheBase, host_reads_are_free, write_positions
from litgpt_mka.attention.quantized_attention import reads_codes
from litgpt_mka.attention.variant import (
    CachedAttention,
    QuantizedRows,
    WeightDerived,
    cache_quantization,
    check_keys,
)
from litgpt_mka.validation import positive_int

ROUTINGS = ("keys", "keys_values", "outputs")
MEMORY_SOURCES = ("local", "session", "long_term")
DEFAULT_ROUTING = "keys"
# parameters of the router ~ C * H = C^2 / 8, about 1% of a Pythia block's 12 C^2 (attention 4 C^2 + MLP 8 C^2)
ROUTER_HIDDEN_FRACTION = 8
# running sums kept for rewriting recent positions: litgpt's speculative decoding rewrites up to
# speculative_k (default 3) positions; 16 costs under 2% of an MHA cache at context 2048
DEFAULT_SUM_WINDOW = 16
CONFIG_KEYS = ("routing", "router_hidden", "sum_window")
# per token per layer, in units of D = n_query_groups * head_size: buffers of the cache dtype
_CACHE_UNITS = {"keys": 2, "keys_values": 2, "outputs": 4}
# forward method per routing mode
_FORWARDS = {"keys": "_forward_mixed", "keys_values": "_forward_mixed", "outputs": "_forward_branches"}


# ------------------------------------------------------------------------------------------- the math
def running_sums(src: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Causal running sums over time, accumulated in float32 (or wider).

    Args:
        src: (B, T, w) projected memories of T consecutive positions.
        prefix: (B, 1, w) running sum at the position before the first one, or None at position 0.

    Returns:
        (B, T, w): ``prefix + sum_{s<=t} src_s``. The prefix joins the same sequential scan, so a
        chunked computation adds in the same order as the full one.
    """
    acc_dtype = torch.promote_types(src.dtype, torch.float32)
    src = src.to(acc_dtype)
    if prefix is None:
        return torch.cumsum(src, dim=1)  # (B, T, w)
    return torch.cumsum(torch.cat((prefix.to(acc_dtype), src), dim=1), dim=1)[:, 1:]  # (B, 1+T, w) -> (B, T, w)


def running_mean(sums: torch.Tensor, input_pos: torch.Tensor | int) -> torch.Tensor:
    """Session memory: running sums (B, T, w) divided by the absolute position + 1, (T,) or (B, T), or one
    position (an int) shared by the chunk's one token."""
    if isinstance(input_pos, int):
        return sums / (input_pos + 1)  # (B, 1, w)
    return sums / (input_pos.unsqueeze(-1) + 1)  # (B, T, w) / ((B|1), T, 1)


def mix_memories(
    lam: torch.Tensor, local: torch.Tensor, session: torch.Tensor, long_term: torch.Tensor
) -> torch.Tensor:
    """``sum_i lam_i m_i``: lam (B, T, M); local, session (B, T, w); long_term (w,) -> (B, T, w)."""
    lam = lam.unsqueeze(-1)  # (B, T, M) -> (B, T, M, 1)
    return lam[:, :, 0] * local + lam[:, :, 1] * session + lam[:, :, 2] * long_term


# ---------------------------------------------------------------------------------------------- router
class Router(nn.Module):
    """``lam_t = softmax(W_2 gelu(W_1 x_t + b_1) + b_2)``, (B, T, C) -> (B, T, M); see the module docstring."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden)  # W_1 (H, C), b_1 (H,)
        # W_2 (M, H), b_2 (M,): raw parameters, zero-initialised (see "Router initialisation")
        self.out_weight = nn.Parameter(torch.empty(len(MEMORY_SOURCES), hidden))
        self.out_bias = nn.Parameter(torch.empty(len(MEMORY_SOURCES)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.out_weight)
        nn.init.zeros_(self.out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights_from_hidden(self.fc(x), x.dtype)  # (B, T, C) -> (B, T, H) -> (B, T, M)

    def weights_from_hidden(self, hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``softmax(W_2 gelu(hidden) + b_2)`` in `dtype` (the input's: under autocast the hidden layer's output is
        bf16, the mix stays in the input's dtype): the router after its hidden layer, (B, T, H) -> (B, T, M)."""
        logits = F.linear(F.gelu(hidden), self.out_weight, self.out_bias)  # (B, T, H) -> (B, T, M)
        return torch.softmax(logits, dim=-1, dtype=torch.float32).to(dtype)  # (B, T, M)


# --------------------------------------------------------------------------------------------- cache
def _sum_width(routing: str, D: int) -> int:
    """w: columns of ``(k(x), v(x))`` that need a running mean: D for ``keys``, 2D otherwise."""
    return D if routing == "keys" else 2 * D


def _sum_dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)


class MemorizedKeyCache(KVCacheBase):
    """KV cache of :class:`MemorizedKeyAttention`; buffer layout and bytes in the module docstring.

    litgpt's contract through :class:`~litgpt_mka.attention.kv_cache.KVCacheBase`. Per forward the module
    calls :meth:`running_sums` (the session memory of the chunk) and then the cache itself (``keys``,
    ``keys_values``) or :meth:`branches` (``outputs``); each checks the chunk.

    Raises:
        ValueError: the contract's errors (batch, length, positions), positions of a chunk that are not
            consecutive, or a chunk that starts more than ``sum_window`` positions behind the latest written.
    """

    activation_buffers = ("k", "v", "k_session", "v_session")

    def __init__(
        self,
        batch_size: int,
        max_seq_length: int,
        n_query_groups: int,
        head_size: int,
        sum_width: int,
        sum_window: int,
        session_branch: bool,
        quantization=None,
        **placement,
    ) -> None:
        """`quantization`: a ``KVQuantization`` of the keys and values (never the sums), or None; `placement`:
        ``device`` and ``dtype`` (the cache dtype) of the buffers; the sums are float32 or wider."""
        super().__init__(batch_size, max_seq_length, **placement)
        kv_shape = (batch_size, n_query_groups, max_seq_length, head_size)  # (B, nh_kv, S, hs)
        self.add_sequence("k", *kv_shape, quantization=quantization)
        self.add_sequence("v", *kv_shape, quantization=quantization)
        if session_branch:
            self.add_sequence("k_session", *kv_shape, quantization=quantization)
            self.add_sequence("v_session", *kv_shape, quantization=quantization)
        else:
            self.k_session = self.v_session = None
        self.sum_window = min(sum_window, max_seq_length)  # W
        self.add_buffer("sums", batch_size, self.sum_window, sum_width, dtype=_sum_dtype(placement.get("dtype")))
        self.add_buffer("sum_positions", batch_size, self.sum_window, dtype=torch.int64, fill=-1)  # (B, W)
        self.host_ring = HostRing(self.sum_window, batch_size)  # sum_positions as the host knows it

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.sum_positions.fill_(-1)
        self.host_ring.reset(self.batch_size)

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos_maxp1: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k, v (bs, nh_kv, T, hs) at ``input_pos``; returns the buffers (bs, nh_kv, S', hs).

        S' is ``input_pos_maxp1`` when given, else S.
        """
        bs, _, T, _ = k.shape
        self.check_chunk(input_pos, bs, T, input_pos_maxp1)
        self.follow_dtype(k.dtype)
        return self.update("k", input_pos, k, input_pos_maxp1), self.update("v", input_pos, v, input_pos_maxp1)

    def branches(
        self,
        input_pos: torch.Tensor,
        k_local: torch.Tensor,
        v_local: torch.Tensor,
        k_session: torch.Tensor,
        v_session: torch.Tensor,
        input_pos_maxp1: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``outputs`` mode: writes both branches' keys and values, returns them: 4x (bs, nh_kv, S', hs)."""
        k_local, v_local = self(input_pos, k_local, v_local, input_pos_maxp1)
        k_session = self.update("k_session", input_pos, k_session, input_pos_maxp1)
        v_session = self.update("v_session", input_pos, v_session, input_pos_maxp1)
        return k_local, v_local, k_session, v_session

    def running_sums(
        self, input_pos: torch.Tensor, src: torch.Tensor, input_pos_maxp1: int | None = None
    ) -> torch.Tensor:
        """Running sums (bs, T, w) of ``src`` (bs, T, w) at ``input_pos``, continuing the sum of the position
        before the chunk (none at position 0), which the ring must still hold; the chunk's last W sums are
        written to the ring.

        Whether the ring holds it is decided without reading a tensor where the host knows the positions
        (``input_pos`` (T,) with ``input_pos_maxp1``: the chunk is ``input_pos_maxp1 - T`` onwards, and
        :class:`HostRing` mirrors the ring), by reading the ring where that is free (the CPU), and otherwise
        (an accelerator without ``input_pos_maxp1``) not at all: a sum the ring no longer holds then turns the
        chunk's outputs into NaN instead of synchronising or killing the device with an assert.
        """
        bs, T, width = src.shape
        self.check_chunk(input_pos, bs, T, input_pos_maxp1)
        first = input_pos_maxp1 - T if input_pos.dim() == 1 and input_pos_maxp1 is not None else None
        if T == 1 and first is not None and self.host_ring.holds(first - 1, bs):
            return self._append_sum(first, src)  # a decode step: O(1) work, no index tensors
        reads = host_reads_are_free(input_pos)
        if T > 1 and reads and bool((input_pos.diff(dim=-1) != 1).any()):
            raise ValueError(
                "input_pos must hold consecutive positions within a forward"
                " (input_pos[..., j+1] = input_pos[..., j] + 1):"
                " the session memory continues the running sum of the position before the chunk"
            )
        W = self.sum_window
        sums, held = self.sums[:bs], self.sum_positions[:bs]  # (bs, W, w), (bs, W)
        previous = input_pos[..., :1].expand(bs, 1) - 1  # (T,) | (bs, T) -> (bs, 1)
        slot = previous.remainder(W)  # (bs, 1)
        found = (previous < 0) | (held.gather(1, slot) == previous)  # (bs, 1)
        holds = None if first is None else self.host_ring.holds(first - 1, bs)
        if holds is None and reads:
            holds = bool(found.all())
            if not holds:
                row = int((~found).nonzero()[0, 0])
                raise ValueError(self._window_error(row, int(previous[row, 0]) + 1))
        if holds is False:
            raise ValueError(self._window_error(0, first))
        prefix = sums.gather(1, slot.unsqueeze(-1).expand(bs, 1, width))  # (bs, 1, w)
        prefix = torch.where((previous >= 0).unsqueeze(-1), prefix, 0.0)  # nothing before position 0
        if holds is None:  # unchecked (see the docstring): a sum the ring lost poisons the chunk
            prefix = torch.where(found.unsqueeze(-1), prefix, float("nan"))
        chunk = running_sums(src, prefix)  # (bs, T, w)
        kept = min(T, W)  # a chunk longer than the ring keeps its last W sums
        kept_pos = input_pos[..., T - kept :].expand(bs, kept)  # (bs, kept)
        write_positions(sums, 1, kept_pos.remainder(W), chunk[:, T - kept :])
        held.scatter_(1, kept_pos.remainder(W), kept_pos)
        self.host_ring.record(first, T, bs)
        return chunk

    def _append_sum(self, position: int, src: torch.Tensor) -> torch.Tensor:
        """:meth:`running_sums` of one token (bs, 1, w) at `position`, the host knowing that the ring holds the sum
        of ``position - 1``: the scan's one addition ``sums[position - 1] + src`` (nothing before position 0),
        read and written at slots the host computes, without gather, scatter or index tensors."""
        bs = src.size(0)
        W = self.sum_window
        total = src.to(torch.promote_types(src.dtype, torch.float32))  # (bs, 1, w)
        if position > 0:
            total = self.sums[:bs, (position - 1) % W].unsqueeze(1) + total  # (bs, w) -> (bs, 1, w)
        self.sums[:bs, position % W] = total[:, 0]
        self.sum_positions[:bs, position % W] = position
        self.host_ring.record(position, 1, bs)
        return total

    def _write(self, name: str, input_pos: torch.Tensor, new: torch.Tensor) -> None:
        """:meth:`KVCacheBase._write`; positions shared by the rows ((T,) ``input_pos``) of a plain buffer are written
        by one ``index_copy_`` along time (``write_positions`` builds a (bs, ..., T, F) index for its scatter)."""
        store = getattr(self, name)
        if input_pos.dim() == 1 and isinstance(store, torch.Tensor):
            store[: new.size(0)].index_copy_(new.dim() - 2, input_pos, new.to(store.dtype))
        else:
            super()._write(name, input_pos, new)

    def _window_error(self, row: int, position: int) -> str:
        return (
            f"batch row {row} writes position {position}, but the running sum of position {position - 1} is"
            f" no longer cached: the cache keeps the sums of the last memorized_key_attention.sum_window="
            f"{self.sum_window} positions written. Set memorized_key_attention.sum_window larger to rewrite"
            " further back (litgpt's speculative decoding needs speculative_k + 1)"
        )


class HostRing:
    """The positions the ring's W slots hold, as the host knows them without reading a tensor.

    Known while every write's positions were known on the host (``first`` .. ``first + T - 1``, the same for
    each batch row), for the first ``rows`` batch rows; ``rows`` None: unknown. An empty cache is known.
    """

    def __init__(self, window: int, rows: int) -> None:
        self.window = window
        self.reset(rows)

    def reset(self, rows: int) -> None:
        self.held, self.rows = [-1] * self.window, rows

    def record(self, first: int | None, T: int, bs: int) -> None:
        """A write of T positions from `first` (None: not known on the host) to the first `bs` rows."""
        covers_ring = T >= self.window  # every slot rewritten: the other rows' history no longer matters
        if first is None or (not covers_ring and (self.rows is None or bs > self.rows)):
            self.rows = None
            return
        for position in range(first + T - min(T, self.window), first + T):
            self.held[position % self.window] = position
        self.rows = bs

    def holds(self, position: int, bs: int) -> bool | None:
        """Whether the first `bs` rows' ring holds the sum of `position` (always before position 0); None: unknown."""
        if position < 0:
            return True
        if self.rows is None or bs > self.rows:
            return None
        return self.held[position % self.window] == position


# ------------------------------------------------------------------------------------------- attention
class MemorizedKeyAttention(CachedAttention, CausalSelfAttention):
    """MKA / FMKA / multi-branch memorized-key attention; equations, cache and init in the module docstring.

    Subclasses litgpt's ``CausalSelfAttention``: the fused ``qkv``, ``proj`` and
    ``scaled_dot_product_attention`` (scale, softcapping, SDPA) are litgpt's.
    """

    label = "MKA"
    lora_target = "litgpt_mka.finetune.lora:LoRAMemorizedKeyAttention"
    memory_routing = True
    memory_sources = MEMORY_SOURCES
    # the defaults validate_config writes (router_hidden: n_embd // ROUTER_HIDDEN_FRACTION), and the label per routing
    default_settings = {"routing": DEFAULT_ROUTING, "sum_window": DEFAULT_SUM_WINDOW}
    routing_labels = {"keys": "MKA", "keys_values": "FMKA"}
    cache_class = MemorizedKeyCache
    rope_width_field = "rope_n_elem"

    def __init__(self, config: Config, block_idx: int) -> None:
        super().__init__(config, block_idx)
        settings = config.memorized_key_attention
        self.routing: str = settings["routing"]
        self.router = Router(config.n_embd, settings["router_hidden"])
        self.memory = nn.Parameter(torch.empty(config.n_embd))  # p (C,)
        self._long_term = WeightDerived()  # (k(p), v(p)) of the current weights
        self.kv_cache: MemorizedKeyCache | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises the parameters this module owns directly (``p``); submodules reset their own."""
        nn.init.normal_(self.memory, mean=0.0, std=1.0)

    # --------------------------------------------------------------------------------- configuration
    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Validates ``config.memorized_key_attention`` (None means all defaults) and writes its defaults into it.

        Raises:
            ValueError: unknown key, unknown ``routing``, non-positive ``router_hidden`` or ``sum_window``,
                or a litgpt option this module does not implement (``norm_qk``, ``sliding_window_size``).
        """
        if config.memorized_key_attention is None:
            config.memorized_key_attention = {}
        if not isinstance(config.memorized_key_attention, dict):
            raise ValueError(f"memorized_key_attention={config.memorized_key_attention!r} must be a dict or null")
        settings = dict(config.memorized_key_attention)
        check_keys("memorized_key_attention", settings, CONFIG_KEYS)
        routing = settings.setdefault("routing", cls.default_settings["routing"])
        if routing not in ROUTINGS:
            raise ValueError(f"memorized_key_attention.routing={routing!r} must be one of {list(ROUTINGS)}")
        settings.setdefault("router_hidden", max(1, config.n_embd // ROUTER_HIDDEN_FRACTION))
        settings.setdefault("sum_window", cls.default_settings["sum_window"])
        for key in ("router_hidden", "sum_window"):
            positive_int(f"memorized_key_attention.{key}", settings[key])
        if config.norm_qk:
            raise ValueError(
                "norm_qk=True is not supported with attention_class_name='MemorizedKeyAttention'"
                " (the design defines no normalisation of mixed keys); set norm_qk: false"
            )
        if config.sliding_window_size is not None:
            raise ValueError(
                f"sliding_window_size={config.sliding_window_size} is not supported with"
                " attention_class_name='MemorizedKeyAttention' (the session memory spans the whole prefix);"
                " set sliding_window_size: null"
            )
        config.memorized_key_attention = {key: settings[key] for key in CONFIG_KEYS}

    @classmethod
    def variant_label(cls, config: Config) -> str:
        """MKA (``routing: keys``, the default), FMKA (``keys_values``), or MKA with its other routing named."""
        routing = (config.memorized_key_attention or {}).get("routing", cls.default_settings["routing"])
        return cls.routing_labels.get(routing, f"MKA (routing: {routing})")

    @staticmethod
    def routing_weights(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """:func:`routing_weights`: (n_layer, M), one column per source of ``memory_sources``."""
        return routing_weights(model, idx)

    @classmethod
    def kv_cache_elements_per_token(cls, config: Config) -> int:
        """Numbers per token per layer, all in the cache dtype: ``2 D`` (``keys``, ``keys_values``), ``4 D``
        (``outputs``), ``D = n_query_groups * head_size``. The ring of sums is per sequence."""
        return _CACHE_UNITS[config.memorized_key_attention["routing"]] * config.n_query_groups * config.head_size

    @classmethod
    def kv_cache_bytes_per_sequence(cls, config: Config, dtype: torch.dtype, max_seq_length: int | None = None) -> int:
        """The ring of running sums per sequence and layer: ``W (w * 4 + 8)`` bytes (float32 sums, int64 positions).

        ``W = sum_window``, capped at the cache length `max_seq_length` as :meth:`build_kv_cache` caps it (None: the
        full window).
        """
        settings = config.memorized_key_attention
        width = _sum_width(settings["routing"], config.n_query_groups * config.head_size)
        W = settings["sum_window"] if max_seq_length is None else min(settings["sum_window"], max_seq_length)
        ring = W * (width * _sum_dtype(dtype).itemsize + torch.int64.itemsize)
        return ring + super().kv_cache_bytes_per_sequence(config, dtype, max_seq_length)  # + the residual window

    @classmethod
    def kv_cache_quantized_rows(cls, config: Config) -> tuple[QuantizedRows, ...]:
        """Keys and values (and the ``outputs`` session branch's): nh_kv rows of hs per buffer; never the sums."""
        buffers = _CACHE_UNITS[config.memorized_key_attention["routing"]]
        return (QuantizedRows("key/value head", config.head_size, config.n_query_groups, buffers),)

    def new_kv_cache(self, batch_size: int, max_seq_length: int, device, dtype) -> MemorizedKeyCache:
        return MemorizedKeyCache(
            batch_size,
            max_seq_length,
            self.config.n_query_groups,
            self.config.head_size,
            sum_width=self._sum_width(),
            sum_window=self.config.memorized_key_attention["sum_window"],
            session_branch=self.routing == "outputs",
            quantization=cache_quantization(self.config),
            device=device,
            dtype=dtype,
        )

    # ------------------------------------------------------------------------------------------ forward
    def attend(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """litgpt's attention forward (see ``CachedAttention.forward``); x (B, T, C) -> (B, T, C)."""
        return getattr(self, _FORWARDS[self.routing])(x, cos, sin, mask, input_pos, input_pos_maxp1)

    def _forward_mixed(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """``keys`` (mix K) and ``keys_values`` (mix K and V): one SDPA call."""
        B, T, _ = x.shape
        if self._is_decode_step(x, input_pos, input_pos_maxp1):
            q, k, v = self._decode_step_qkv(x, cos, sin, input_pos, input_pos_maxp1)
        else:
            q, k, v = self._mixed_qkv(x, cos, sin, input_pos, input_pos_maxp1)
        codes = reads_codes(self.kv_cache, ("k", "v"), T, input_pos)
        if codes:  # a decode step over a quantized cache: attend to the codes
            upto, mask = quantized_decode_step(self.kv_cache, input_pos, input_pos_maxp1, mask, k=k, v=v)
            y = self._decode(q, codes, upto, mask)  # (B, 1, nh_q, hs)
            return self.proj(y.reshape(B, T, -1))  # (B, T, C)
        site = uncached_site(mask)
        if input_pos is not None:
            k, v = self.kv_cache(input_pos, k, v, input_pos_maxp1)  # 2x (B, nh_kv, S', hs)
            site, mask = cached_site_and_mask(T, input_pos, input_pos_maxp1, mask, k.size(2))
        y = self._attend(q, k, v, site, mask)  # (B, T, nh_q, hs)
        return self.proj(y.reshape(B, T, -1))  # (B, T, nh_q hs) -> (B, T, C)

    def _forward_branches(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """``outputs``: local and session branches by SDPA, the long-term branch in closed form ``v(p)``."""
        B, T, _ = x.shape
        D = self.config.n_query_groups * self.config.head_size
        q, kv = self._project(x)  # (B, T, nh_q hs), (B, T, 2D)
        session = self._session_memory(kv, input_pos, input_pos_maxp1)  # (B, T, 2D): (k(m2), v(m2))
        q = partial_rope(self._heads(q), cos, sin, self.config)  # (B, nh_q, T, hs)
        k_local = partial_rope(self._heads(kv[..., :D]), cos, sin, self.config)  # (B, nh_kv, T, hs)
        v_local = self._heads(kv[..., D:])  # (B, nh_kv, T, hs)
        k_session = partial_rope(self._heads(session[..., :D]), cos, sin, self.config)  # (B, nh_kv, T, hs)
        v_session = self._heads(session[..., D:])  # (B, nh_kv, T, hs)
        names = ("k", "v", "k_session", "v_session")
        codes = reads_codes(self.kv_cache, names, T, input_pos)
        if codes:  # a decode step over a quantized cache: attend to the codes
            upto, mask = quantized_decode_step(self.kv_cache, input_pos, input_pos_maxp1, mask, k=k_local,
                                               v=v_local, k_session=k_session, v_session=v_session)
            y_local = self._decode(q, codes[:2], upto, mask)  # (B, 1, nh_q, hs)
            y_session = self._decode(q, codes[2:], upto, mask)  # (B, 1, nh_q, hs)
        else:
            site = uncached_site(mask)
            if input_pos is not None:
                k_local, v_local, k_session, v_session = self.kv_cache.branches(
                    input_pos, k_local, v_local, k_session, v_session, input_pos_maxp1
                )  # 4x (B, nh_kv, S', hs)
                site, mask = cached_site_and_mask(T, input_pos, input_pos_maxp1, mask, k_local.size(2))
            y_local = self._attend(q, k_local, v_local, site, mask)  # (B, T, nh_q, hs)
            y_session = self._attend(q, k_session, v_session, site, mask)  # (B, T, nh_q, hs)
        y_long_term = self._expand_groups(self._long_term_memory()[D:])  # (nh_q, hs): exactly v(p) per head
        y_local, y_session = y_local.reshape(B, T, -1), y_session.reshape(B, T, -1)  # 2x (B, T, nh_q hs)
        y = mix_memories(self.router(x), y_local, y_session, y_long_term.flatten())  # (B, T, nh_q hs)
        return self.proj(y)  # (B, T, C)

    def _mixed_qkv(self, x, cos, sin, input_pos, input_pos_maxp1) -> tuple[torch.Tensor, ...]:
        """Queries, mixed keys (and values) of ``keys``/``keys_values``, roped: (B, nh_q, T, hs), 2x (B, nh_kv, T, hs)."""
        D = self.config.n_query_groups * self.config.head_size
        q, kv = self._project(x)  # (B, T, nh_q hs), (B, T, 2D)
        w = self._sum_width()  # D: keys only; 2D: keys and values
        local = kv[..., :w]  # (B, T, w)
        session = self._session_memory(local, input_pos, input_pos_maxp1)  # (B, T, w)
        mixed = mix_memories(self.router(x), local, session, self._long_term_memory()[:w])  # (B, T, w)
        k = mixed[..., :D]  # (B, T, D)
        v = (mixed if w == 2 * D else kv)[..., D:]  # (B, T, D)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, nh_q, T, hs), 2x (B, nh_kv, T, hs)
        return partial_rope(q, cos, sin, self.config), partial_rope(k, cos, sin, self.config), v

    # ------------------------------------------------------------------------------------ decode step
    def _is_decode_step(self, x: torch.Tensor, input_pos, input_pos_maxp1) -> bool:
        """One token at a position the host knows (``litgpt generate``: ``input_pos`` (1,), ``input_pos_maxp1``),
        without autograd and outside autocast (where the projection's output is in another dtype than ``x``, and
        the general path mixes in ``x``'s): :meth:`_decode_step_qkv` may serve it."""
        return (
            x.size(1) == 1
            and input_pos is not None
            and input_pos.dim() == 1
            and input_pos_maxp1 is not None
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type)
        )

    def _decode_step_qkv(self, x, cos, sin, input_pos, input_pos_maxp1) -> tuple[torch.Tensor, ...]:
        """:meth:`_mixed_qkv` of one decode step in fewer, smaller operations (the same equations and order of
        operations, so the same numbers up to rounding): the ring adds one running sum
        (:meth:`MemorizedKeyCache.running_sums`), the mix is written in place into the projection's output, where
        the mixed keys then sit beside the queries, so one RoPE call serves both::

            [q ; k(x) ; v(x)] = qkv(x),  h = fc(x)                         (B, 1, nh_q hs + 2D), (B, 1, H)
            lam = softmax(W_2 gelu(h) + b_2)                               (B, 1, M)
            [k(x) ; v(x)][:w] <- lam_1 local + lam_2 session + lam_3 (k(p), v(p))[:w]   in place
            [q ; K] -> (B, nh_q + nh_kv, 1, hs) -> RoPE -> q, K

        ``qkv`` and ``router.fc`` are called as modules (a LoRA ``qkv`` adds its delta), and no weight is copied.
        """
        c = self.config
        B = x.size(0)
        q_size, D, w = c.n_head * c.head_size, c.n_query_groups * c.head_size, self._sum_width()
        qkv = self.qkv(x)  # (B, 1, nh_q hs + 2D)
        lam = self.router.weights_from_hidden(self.router.fc(x), x.dtype).unsqueeze(-1)  # (B, 1, M) -> (B, 1, M, 1)
        long_term = self._long_term_memory()  # (2D,)
        local = qkv[..., q_size : q_size + w]  # (B, 1, w), a view into qkv
        position = input_pos_maxp1 - 1
        sums = self.kv_cache.running_sums(input_pos, local, input_pos_maxp1)  # (B, 1, w)
        session = running_mean(sums, position).to(local.dtype)  # (B, 1, w)
        local.mul_(lam[:, :, 0]).addcmul_(lam[:, :, 1], session).addcmul_(lam[:, :, 2], long_term[:w])  # mix_memories
        qk = qkv[..., : q_size + D].view(B, 1, -1, c.head_size).transpose(1, 2)  # (B, 1, nh_q + nh_kv, hs) -> (B, nh_q + nh_kv, 1, hs)
        qk = partial_rope(qk, cos, sin, self.config)
        v = self._heads(qkv[..., q_size + D :])  # (B, nh_kv, 1, hs): mixed (keys_values) or v(x) (keys)
        return qk[:, : c.n_head], qk[:, c.n_head :], v  # (B, nh_q, 1, hs), (B, nh_kv, 1, hs)

    # ------------------------------------------------------------------------------------------- pieces
    def _sum_width(self) -> int:
        return _sum_width(self.routing, self.config.n_query_groups * self.config.head_size)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """litgpt's fused projection: (B, T, C) -> q (B, T, nh_q hs), kv (B, T, 2D) = (k(x), v(x))."""
        q_size = self.config.n_head * self.config.head_size
        qkv = self.qkv(x)  # (B, T, nh_q hs + 2D)
        return qkv[..., :q_size], qkv[..., q_size:]

    def _long_term_memory(self) -> torch.Tensor:
        """(k(p), v(p)) = (W_K p + b_K, W_V p + b_V), shape (2D,); computed once per weight change when decoding."""
        return self._long_term.get(self._project_memory, self.memory, self.qkv.weight, self.qkv.bias)

    def _project_memory(self) -> torch.Tensor:
        q_size = self.config.n_head * self.config.head_size
        bias = None if self.qkv.bias is None else self.qkv.bias[q_size:]
        return F.linear(self.memory, self.qkv.weight[q_size:], bias)  # (C,) -> (2D,)

    def _session_memory(
        self, local: torch.Tensor, input_pos: torch.Tensor | None, input_pos_maxp1: int | None
    ) -> torch.Tensor:
        """Running mean over positions <= t of ``local`` (B, T, w); sums read from/written to the cache."""
        if input_pos is None:
            sums = running_sums(local)  # (B, T, w)
            input_pos = torch.arange(local.size(1), device=local.device)  # (T,)
        else:
            sums = self.kv_cache.running_sums(input_pos, local, input_pos_maxp1)  # (B, T, w)
        return running_mean(sums, input_pos).to(local.dtype)  # (B, T, w)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        hs = self.config.head_size
        return t.view(B, T, -1, hs).transpose(1, 2)  # (B, T, n hs) -> (B, T, n, hs) -> (B, n, T, hs)

    def _expand_groups(self, t: torch.Tensor) -> torch.Tensor:
        """Per-group vector (D,) -> per-query-head (nh_q, hs), query heads of a group sharing it."""
        q_per_kv = self.config.n_head // self.config.n_query_groups
        return t.view(self.config.n_query_groups, -1).repeat_interleave(q_per_kv, dim=0)  # (nh_kv, hs) -> (nh_q, hs)

    def _attend(self, q, k, v, site: Site, mask) -> torch.Tensor:
        """``functional.grouped_attention`` at `site`: q (B, nh_q, T, hs), k/v (B, nh_kv, S, hs) -> (B, T, nh_q, hs).

        Training is causal with SDPA's GQA (k and v read shared); a cached chunk runs the query heads of a group as
        query rows against their one key/value head, never repeating the cache.
        """
        return grouped_attention(
            q,
            k,
            v,
            scale=attention_scale(self.config, self.mscale),
            site=site,
            mask=mask,
            softcapping=self.config.attention_logit_softcapping,
        )  # (B, T, nh_q, hs)

    def _decode(self, q, codes, upto: int, mask) -> torch.Tensor:
        """``functional.grouped_decode`` of one decode step over quantized (keys, values) `codes`, the first `upto`
        positions: q (B, nh_q, 1, hs) -> (B, 1, nh_q, hs) (`mask` None: the step sees every position)."""
        return grouped_decode(
            q, *codes, upto, scale=attention_scale(self.config, self.mscale),
            softcapping=self.config.attention_logit_softcapping, mask=mask,
        )


# ---------------------------------------------------------------------------------------- inspection
@torch.no_grad()
def routing_weights(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Mean routing weights per layer on a batch of token ids ``idx`` (B, T), without a KV cache.

    Returns:
        (n_layer, M) float32; columns are :data:`MEMORY_SOURCES` (local, session, long-term), each row
        sums to 1: which memory each layer draws its keys (or outputs) from, on average over B x T tokens.

    Raises:
        ValueError: a block of ``model`` does not use :class:`MemorizedKeyAttention`.
    """
    captured: list[torch.Tensor] = []
    handles = []
    for block_idx, block in enumerate(model.transformer.h):
        if not isinstance(block.attn, MemorizedKeyAttention):
            raise ValueError(
                f"block {block_idx} uses {type(block.attn).__name__}; routing_weights needs"
                " attention_class_name='MemorizedKeyAttention'"
            )
        handles.append(block.attn.router.register_forward_hook(lambda _m, _i, lam: captured.append(lam)))
    try:
        model(idx)
    finally:
        for handle in handles:
            handle.remove()
    # `outputs` and the mixed modes call the router once per layer and forward
    return torch.stack([lam.float().mean(dim=(0, 1)) for lam in captured])  # n_layer x (B, T, M) -> (n_layer, M)
