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
SDPA call per layer with equal q/k/v widths (GQA/MQA heads repeated as litgpt does), so the
FlashAttention kernel is dispatched in training. ``outputs`` runs two SDPA calls: the long-term branch
attends to one key/value pair repeated at every position, so its output is exactly ``v(p)``
whatever the attention weights are; the module uses that closed form (the reference implementation in
the tests runs the third branch naively and agrees).

KV cache (:class:`MemorizedKeyCache`), per layer
------------------------------------------------
===============  ========================  =========================================  ============
buffer           shape                     content                                    dtype
===============  ========================  =========================================  ============
``k``            (B, nh_kv, S, hs)         the attended keys, mixed and roped         cache dtype
                                           (``outputs``: the local branch's keys)
``v``            (B, nh_kv, S, hs)         the attended values (``outputs``: local)   cache dtype
``k_session``    (B, nh_kv, S, hs)         ``outputs`` only: roped session keys       cache dtype
                                           ``rope(k(m2_t))``
``sums``         (B, S, w)                 running sums ``sum_{s<=t} k(x_s)`` (and    float32 (or
                                           ``v(x_s)``) at every position t            wider)
===============  ========================  =========================================  ============

Numbers per token per layer (``kv_cache_elements_per_token``) and bytes per token per layer with a
cache dtype of ``b`` bytes (``kv_cache_bytes_per_token``); litgpt's MHA/GQA cache is ``2 D`` numbers,
``2 D b`` bytes:

==============  =====================  ======================  =====================  ==============
routing         cache-dtype numbers    float32 numbers         bytes                  14m, bf16, 6 layers
==============  =====================  ======================  =====================  ==============
``keys``        2 D                    D                       (2 b + 4) D            6144 B (MHA 3072)
``keys_values`` 2 D                    2 D                     (2 b + 8) D            9216 B
``outputs``     3 D                    2 D                     (3 b + 8) D            10752 B
==============  =====================  ======================  =====================  ==============

Why a sum per position, and why float32: ``input_pos`` may start a chunk anywhere (chunked prefill),
differ per row (batched ``(B, T)`` positions) and rewrite earlier positions; the running sum at the
position just before a chunk is always in the cache, so the mean at any position is exact whatever the
chunking. The full forward accumulates in float32, and a bfloat16 running sum drifts: for keys of mean
0.5 and unit noise, a bf16-stored sum gives the running mean at position 2048 a mean absolute error of
0.13 (0.0007 with float32), so the sums are kept in ``promote_types(dtype, float32)``.
The session values of ``outputs`` are not stored: ``v(m2_s) = sums_s / (s+1)`` is read from ``sums``.
There is no per-sequence constant state (``p`` is a weight). A chunk's positions must be consecutive
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
from litgpt.model import CausalSelfAttention, apply_rope, apply_rope_interleave

ROUTINGS = ("keys", "keys_values", "outputs")
MEMORY_SOURCES = ("local", "session", "long_term")
DEFAULT_ROUTING = "keys"
# parameters of the router ~ C * H = C^2 / 8, about 1% of a Pythia block's 12 C^2 (attention 4 C^2 + MLP 8 C^2)
ROUTER_HIDDEN_FRACTION = 8
CONFIG_KEYS = ("routing", "router_hidden")
# numbers per token per layer: (in the cache dtype, in float32), in units of D = n_query_groups * head_size
_CACHE_UNITS = {"keys": (2, 1), "keys_values": (2, 2), "outputs": (3, 2)}
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


def running_mean(sums: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Session memory: running sums (B, T, w) divided by the absolute position + 1, (T,) or (B, T)."""
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
        logits = F.linear(F.gelu(self.fc(x)), self.out_weight, self.out_bias)  # (B, T, H) -> (B, T, M)
        return torch.softmax(logits, dim=-1, dtype=torch.float32).to(x.dtype)  # (B, T, M)


# ------------------------------------------------------------------------------------------- attention
class MemorizedKeyAttention(CausalSelfAttention):
    """MKA / FMKA / multi-branch memorized-key attention; equations, cache and init in the module docstring.

    Subclasses litgpt's ``CausalSelfAttention``: the fused ``qkv``, ``proj`` and
    ``scaled_dot_product_attention`` (scale, softcapping, SDPA) are litgpt's.
    """

    def __init__(self, config: Config, block_idx: int) -> None:
        super().__init__(config, block_idx)
        settings = config.memorized_key_attention
        self.routing: str = settings["routing"]
        self.router = Router(config.n_embd, settings["router_hidden"])
        self.memory = nn.Parameter(torch.empty(config.n_embd))  # p (C,)
        self.kv_cache: MemorizedKeyCache | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises the parameters this module owns directly (``p``); submodules reset their own."""
        nn.init.normal_(self.memory, mean=0.0, std=1.0)

    # --------------------------------------------------------------------------------- configuration
    @staticmethod
    def validate_config(config: Config) -> None:
        """Validates ``config.memorized_key_attention`` and writes its defaults into it.

        Raises:
            ValueError: unknown key, unknown ``routing``, non-positive ``router_hidden``, or a litgpt
                option this module does not implement (``norm_qk``, ``sliding_window_size``).
        """
        settings = dict(config.memorized_key_attention)
        unknown = sorted(set(settings) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"memorized_key_attention has unknown key(s) {unknown}; allowed keys are {list(CONFIG_KEYS)}"
            )
        routing = settings.setdefault("routing", DEFAULT_ROUTING)
        if routing not in ROUTINGS:
            raise ValueError(f"memorized_key_attention.routing={routing!r} must be one of {list(ROUTINGS)}")
        hidden = settings.setdefault("router_hidden", max(1, config.n_embd // ROUTER_HIDDEN_FRACTION))
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"memorized_key_attention.router_hidden={hidden!r} must be a positive integer")
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
    def kv_cache_elements_per_token(cls, config: Config) -> int:
        """Numbers :meth:`build_kv_cache` allocates per token per layer, all buffers and dtypes together.

        ``(2 + 1) D`` for ``keys``, ``(2 + 2) D`` for ``keys_values``, ``(3 + 2) D`` for ``outputs``, with
        ``D = n_query_groups * head_size``; the second term is held in float32 (see
        :meth:`kv_cache_bytes_per_token`). No per-sequence constant state.
        """
        in_dtype, in_float32 = _CACHE_UNITS[config.memorized_key_attention["routing"]]
        return (in_dtype + in_float32) * config.n_query_groups * config.head_size

    @classmethod
    def kv_cache_bytes_per_token(cls, config: Config, dtype: torch.dtype) -> int:
        """Bytes :meth:`build_kv_cache` allocates per token per layer for a cache of ``dtype``."""
        in_dtype, in_float32 = _CACHE_UNITS[config.memorized_key_attention["routing"]]
        sum_bytes = _sum_dtype(dtype).itemsize
        return (in_dtype * dtype.itemsize + in_float32 * sum_bytes) * config.n_query_groups * config.head_size

    def build_kv_cache(
        self,
        batch_size: int,
        max_seq_length: int,
        rope_cache_length: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "MemorizedKeyCache":
        if rope_cache_length is not None and rope_cache_length != self.config.rope_n_elem:
            raise ValueError(
                f"rope_cache_length={rope_cache_length} must equal rope_n_elem={self.config.rope_n_elem}"
                " for MemorizedKeyAttention (or be None)"
            )
        width = self._sum_width()
        return MemorizedKeyCache(
            batch_size,
            max_seq_length,
            self.config.n_query_groups,
            self.config.head_size,
            sum_width=width,
            session_keys=self.routing == "outputs",
            device=device,
            dtype=dtype,
        )

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        """litgpt's attention contract; x (B, T, C) -> (B, T, C)."""
        if input_pos is not None and not isinstance(self.kv_cache, MemorizedKeyCache):
            raise TypeError("You need to call `gpt.set_kv_cache()`")
        return getattr(self, _FORWARDS[self.routing])(x, cos, sin, mask, input_pos, input_pos_maxp1)

    def _forward_mixed(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """``keys`` (mix K) and ``keys_values`` (mix K and V): one SDPA call."""
        B, T, _ = x.shape
        D = self.config.n_query_groups * self.config.head_size
        q, kv = self._project(x)  # (B, T, nh_q hs), (B, T, 2D)
        w = self._sum_width()  # D: keys only; 2D: keys and values
        local = kv[..., :w]  # (B, T, w)
        session = self._session_memory(local, input_pos)  # (B, T, w)
        mixed = mix_memories(self.router(x), local, session, self._long_term_memory()[:w])  # (B, T, w)
        k = mixed[..., :D]  # (B, T, D)
        v = (mixed if w == 2 * D else kv)[..., D:]  # (B, T, D)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, nh_q, T, hs), 2x (B, nh_kv, T, hs)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        if input_pos is not None:
            k, v = self.kv_cache(input_pos, k, v, input_pos_maxp1)  # 2x (B, nh_kv, S', hs)
        y = self._attend(q, k, v, mask, input_pos)  # (B, T, nh_q, hs)
        return self.proj(y.reshape(B, T, -1))  # (B, T, nh_q hs) -> (B, T, C)

    def _forward_branches(self, x, cos, sin, mask, input_pos, input_pos_maxp1) -> torch.Tensor:
        """``outputs``: local and session branches by SDPA, the long-term branch in closed form ``v(p)``."""
        B, T, _ = x.shape
        D = self.config.n_query_groups * self.config.head_size
        q, kv = self._project(x)  # (B, T, nh_q hs), (B, T, 2D)
        session = self._session_memory(kv, input_pos)  # (B, T, 2D): (k(m2), v(m2))
        q = self._rope(self._heads(q), cos, sin)  # (B, nh_q, T, hs)
        k_local = self._rope(self._heads(kv[..., :D]), cos, sin)  # (B, nh_kv, T, hs)
        v_local = self._heads(kv[..., D:])  # (B, nh_kv, T, hs)
        k_session = self._rope(self._heads(session[..., :D]), cos, sin)  # (B, nh_kv, T, hs)
        v_session = self._heads(session[..., D:])  # (B, nh_kv, T, hs)
        if input_pos is not None:
            k_local, v_local, k_session, v_session = self.kv_cache.branches(
                input_pos, k_local, v_local, k_session, input_pos_maxp1
            )  # 4x (B, nh_kv, S', hs)
        y_local = self._attend(q, k_local, v_local, mask, input_pos)  # (B, T, nh_q, hs)
        y_session = self._attend(q, k_session, v_session, mask, input_pos)  # (B, T, nh_q, hs)
        y_long_term = self._expand_groups(self._long_term_memory()[D:])  # (nh_q, hs): exactly v(p) per head
        y_local, y_session = y_local.reshape(B, T, -1), y_session.reshape(B, T, -1)  # 2x (B, T, nh_q hs)
        y = mix_memories(self.router(x), y_local, y_session, y_long_term.flatten())  # (B, T, nh_q hs)
        return self.proj(y)  # (B, T, C)

    # ------------------------------------------------------------------------------------------- pieces
    def _sum_width(self) -> int:
        """w: columns of ``(k(x), v(x))`` that need a running mean."""
        D = self.config.n_query_groups * self.config.head_size
        return D if self.routing == "keys" else 2 * D

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """litgpt's fused projection: (B, T, C) -> q (B, T, nh_q hs), kv (B, T, 2D) = (k(x), v(x))."""
        q_size = self.config.n_head * self.config.head_size
        qkv = self.qkv(x)  # (B, T, nh_q hs + 2D)
        return qkv[..., :q_size], qkv[..., q_size:]

    def _long_term_memory(self) -> torch.Tensor:
        """(k(p), v(p)) = (W_K p + b_K, W_V p + b_V), shape (2D,)."""
        q_size = self.config.n_head * self.config.head_size
        bias = None if self.qkv.bias is None else self.qkv.bias[q_size:]
        return F.linear(self.memory, self.qkv.weight[q_size:], bias)  # (C,) -> (2D,)

    def _session_memory(self, local: torch.Tensor, input_pos: torch.Tensor | None) -> torch.Tensor:
        """Running mean over positions <= t of ``local`` (B, T, w); sums read from/written to the cache."""
        if input_pos is None:
            sums = running_sums(local)  # (B, T, w)
            input_pos = torch.arange(local.size(1), device=local.device)  # (T,)
        else:
            sums = self.kv_cache.running_sums(input_pos, local)  # (B, T, w)
        return running_mean(sums, input_pos).to(local.dtype)  # (B, T, w)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        hs = self.config.head_size
        return t.view(B, T, -1, hs).transpose(1, 2)  # (B, T, n hs) -> (B, T, n, hs) -> (B, n, T, hs)

    def _rope(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on the first ``rope_n_elem`` features of (B, n, T, hs), as litgpt does."""
        n_elem = self.config.rope_n_elem
        rope = apply_rope_interleave if self.config.rope_interleave else apply_rope
        return torch.cat((rope(t[..., :n_elem], cos, sin), t[..., n_elem:]), dim=-1)  # (B, n, T, hs)

    def _expand_groups(self, t: torch.Tensor) -> torch.Tensor:
        """Per-group vector (D,) -> per-query-head (nh_q, hs), query heads of a group sharing it."""
        q_per_kv = self.config.n_head // self.config.n_query_groups
        return t.view(self.config.n_query_groups, -1).repeat_interleave(q_per_kv, dim=0)  # (nh_kv, hs) -> (nh_q, hs)

    def _attend(self, q, k, v, mask, input_pos) -> torch.Tensor:
        """litgpt's GQA head balancing + SDPA: q (B, nh_q, T, hs), k/v (B, nh_kv, S, hs) -> (B, T, nh_q, hs)."""
        n_head, n_query_groups = self.config.n_head, self.config.n_query_groups
        # equal q/k/v widths in training (FlashAttention needs them); MQA decoding broadcasts instead
        if n_query_groups != n_head and (input_pos is None or n_query_groups != 1):
            q_per_kv = n_head // n_query_groups
            k = k.repeat_interleave(q_per_kv, dim=1)  # (B, nh_kv, S, hs) -> (B, nh_q, S, hs)
            v = v.repeat_interleave(q_per_kv, dim=1)  # (B, nh_kv, S, hs) -> (B, nh_q, S, hs)
        return self.scaled_dot_product_attention(q, k, v, mask)  # (B, T, nh_q, hs)


# --------------------------------------------------------------------------------------------- cache
def _sum_dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)


class MemorizedKeyCache(nn.Module):
    """KV cache of :class:`MemorizedKeyAttention`; buffer layout and bytes per token in the module docstring.

    Raises ``ValueError`` when a forward's batch exceeds the cache's batch size, a position is beyond
    its length, or a chunk's positions are not consecutive.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_length: int,
        n_query_groups: int,
        head_size: int,
        sum_width: int,
        session_keys: bool,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kv_shape = (batch_size, n_query_groups, max_seq_length, head_size)  # (B, nh_kv, S, hs)
        self.register_buffer("k", torch.zeros(kv_shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(kv_shape, device=device, dtype=dtype), persistent=False)
        k_session = torch.zeros(kv_shape, device=device, dtype=dtype) if session_keys else None
        self.register_buffer("k_session", k_session, persistent=False)
        sums = torch.zeros(batch_size, max_seq_length, sum_width, device=device, dtype=_sum_dtype(dtype))  # (B, S, w)
        self.register_buffer("sums", sums, persistent=False)
        self.batch_size = batch_size
        self.max_cache_len = max_seq_length

    def reset_parameters(self) -> None:
        for buffer in (self.k, self.v, self.k_session, self.sums):
            if buffer is not None:
                nn.init.zeros_(buffer)

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos_maxp1: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k, v (bs, nh_kv, T, hs) at ``input_pos``; returns the buffers (bs, nh_kv, S', hs).

        S' is ``input_pos_maxp1`` when given, else S. ``input_pos`` was checked by :meth:`running_sums`,
        which the attention module calls first.
        """
        self._match_dtype(k.dtype)
        k_full = _write_time(self.k[: k.size(0)], 2, input_pos, k)
        v_full = _write_time(self.v[: v.size(0)], 2, input_pos, v)
        return k_full[:, :, :input_pos_maxp1], v_full[:, :, :input_pos_maxp1]

    def branches(
        self,
        input_pos: torch.Tensor,
        k_local: torch.Tensor,
        v_local: torch.Tensor,
        k_session: torch.Tensor,
        input_pos_maxp1: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``outputs`` mode: writes the local keys/values and the session keys, returns all four branches.

        The session values ``sums_s / (s + 1)`` are read from ``sums``, which :meth:`running_sums` has
        already updated for this chunk. Returns 4x (bs, nh_kv, S', hs).
        """
        k_local, v_local = self(input_pos, k_local, v_local, input_pos_maxp1)
        bs, n_query_groups, _, head_size = k_session.shape
        k_session = _write_time(self.k_session[:bs], 2, input_pos, k_session)[:, :, :input_pos_maxp1]
        sums = self.sums[:bs, :input_pos_maxp1, -n_query_groups * head_size :]  # (bs, S', D)
        positions = torch.arange(sums.size(1), device=sums.device)  # (S',)
        v_session = running_mean(sums, positions).to(v_local.dtype)  # (bs, S', D)
        v_session = v_session.view(bs, -1, n_query_groups, head_size).transpose(1, 2)  # (bs, nh_kv, S', hs)
        return k_local, v_local, k_session, v_session

    def running_sums(self, input_pos: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Running sums (bs, T, w) of ``src`` (bs, T, w) at ``input_pos``, continuing the cached prefix.

        The prefix is the cached sum at ``input_pos[..., 0] - 1`` (none at position 0); the chunk's
        sums are written at ``input_pos`` so that a later chunk, or a rewrite, can continue from them.
        """
        bs, T, width = src.shape
        self._check(input_pos, bs)
        sums = self.sums[:bs]  # (bs, S, w)
        start = input_pos[..., :1].expand(bs, 1)  # (T,) | (bs, T) -> (bs, 1)
        previous = (start - 1).clamp(min=0).unsqueeze(-1).expand(bs, 1, width)  # (bs, 1, w)
        prefix = torch.where(start.unsqueeze(-1) > 0, sums.gather(1, previous), 0.0)  # (bs, 1, w)
        chunk = running_sums(src, prefix)  # (bs, T, w)
        _write_time(sums, 1, input_pos, chunk)
        return chunk

    def _check(self, input_pos: torch.Tensor, bs: int) -> None:
        if bs > self.batch_size:
            raise ValueError(
                f"batch size {bs} exceeds the KV cache's batch size {self.batch_size};"
                f" call `model.set_kv_cache(batch_size={bs})`"
            )
        if input_pos.dim() == 2 and input_pos.size(0) != bs:
            raise ValueError(f"input_pos has {input_pos.size(0)} rows, but the batch has {bs}")
        if input_pos.numel() == 0:
            return
        first, last = int(input_pos.min()), int(input_pos.max())
        if first < 0 or last >= self.max_cache_len:
            raise ValueError(
                f"input_pos must lie in [0, {self.max_cache_len}), the KV cache's length; got {first} to {last}."
                " Call `model.set_kv_cache(max_seq_length=...)` with a longer length"
            )
        if input_pos.size(-1) > 1 and bool((input_pos.diff(dim=-1) != 1).any()):
            raise ValueError(
                "input_pos must hold consecutive positions within a forward"
                " (input_pos[..., j+1] = input_pos[..., j] + 1):"
                " the session memory continues the running sum of the position before the chunk"
            )

    def _match_dtype(self, dtype: torch.dtype) -> None:
        """Moves the key/value buffers to the activation dtype (AMP), as litgpt's KVCache does; sums stay wide."""
        if self.k.dtype != dtype:
            self.k, self.v = self.k.to(dtype), self.v.to(dtype)
            if self.k_session is not None:
                self.k_session = self.k_session.to(dtype)


def _write_time(buffer: torch.Tensor, dim: int, input_pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``buffer[b, ..., input_pos[b, t], ...] = new[b, ..., t, ...]`` along the time dimension ``dim``; in place."""
    shape = [1] * new.dim()
    shape[0], shape[dim] = new.size(0), new.size(dim)
    index = input_pos.expand(new.size(0), -1).reshape(shape).expand_as(new)  # (T,) | (bs, T) -> new's shape
    return buffer.scatter_(dim, index, new.to(buffer.dtype))


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
