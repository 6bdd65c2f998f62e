"""Every attention product of the package, and which kernels may serve it: the one module that calls SDPA.

Each variant decides *what* it attends to (its queries, keys, values); this module decides *how*: the
arguments of ``F.scaled_dot_product_attention`` (mask or ``is_causal``, finite mask values, GQA without
copies) and the backends PyTorch may pick, per call site. A call site is named by a :class:`Site`, chosen
from shapes alone (:func:`cached_site`: no tensor is read, so no host-device synchronisation).

Notation: B batch, T queries in the call, S keys attended to, nh_q query heads, nh_kv key/value heads,
g = nh_q / nh_kv, hs head size; MLA: L latent width, R RoPE width.

==========  ==================================  ====================================  ============  =======================
site        when                                arguments                             CPU kernel    CUDA backends, in order
==========  ==================================  ====================================  ============  =======================
TRAINING    no KV cache: pretrain, fine-tune,   ``is_causal``, no mask; GQA/MQA       flash (cpu)   cuDNN, flash, efficient,
            evaluation (T == S)                 ``enable_gqa`` (k, v never repeated)                math
PREFILL     a cached chunk from position 0:     ``is_causal``, no mask                flash (cpu)   flash, efficient, math
            ``input_pos`` (T,),
            ``input_pos_maxp1 == T``
DECODE      one query at the last cached        no mask; GQA/MQA: a group's g query   flash (cpu)   flash, efficient, math
            position: T = 1, ``input_pos``      heads as g rows of its one key/value
            (1,), ``input_pos_maxp1`` given     head; MLA absorbed: q = [q_lat ;
            (``litgpt generate``, ``chat``)     q_rope], k = v = [c ; k_r] (L+R)
MASKED      any other cached chunk: chunks at   additive float mask, 0 or the dtype's  flash (cpu)   efficient, math
            an offset, rows at different        finite minimum (never -inf)
            positions ((B, T) ``input_pos``),
            no ``input_pos_maxp1`` (litgpt's
            ``batched_generate_fn``, ``serve``)
==========  ==================================  ====================================  ============  =======================

Why this order on CUDA:

* **No cuDNN for PREFILL, DECODE, MASKED.** PyTorch ranks its cuDNN attention first on sm90/sm100 with a
  recent cuDNN (``check_prefer_cudnn_attention`` in ``sdp_utils.cpp``), and cuDNN builds and keeps one
  execution plan per exact shape, never evicted: a decode loop whose key length grows by one per step would
  build a plan per token, and a server a plan per prompt length. Flash and the memory-efficient kernel take
  any length without a plan. TRAINING has one shape per run (the block size), so PyTorch's own order stands.
* **Flash needs no mask, equal head dims (<= 256) and half precision**; the memory-efficient kernel takes a
  mask, fp32, and head dims that are multiples of 8 (bf16/fp16) or 4 (fp32). Hence the mask-free forms of
  DECODE and PREFILL, and a MASKED site that lists only the efficient kernel and the fallback.
* **Math last**, as the fallback for shapes no fused kernel takes (a tiny test model's odd head size, fp32
  where only flash was allowed): a run never fails for lack of a kernel. The CUDA tests and
  ``benchmarks/gpu.sh`` check that the presets never reach it.

On the CPU PyTorch has one fused kernel (``_scaled_dot_product_flash_attention_for_cpu``, which takes masks,
GQA and fp32) and the math fallback; its own choice is left alone (no context manager per call).

The explicit path (:func:`explicit_attention`, :func:`attention_probabilities`) serves what SDPA cannot:
``attention_logit_softcapping``; its scores and softmax run in float32 whatever the compute dtype, masked
entries get float32's finite minimum. The quantized decode of :mod:`~litgpt_mka.attention.quantized_attention`
is the other non-SDPA path (float32 scores too).

For benchmarks and tests: :func:`override_backends` makes every site use given backends, and
:func:`record_calls` lists the calls made (site, shapes, dtypes, mask) without changing them.
"""

import contextlib
import contextvars
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from litgpt.model import do_softcapping
from torch.nn.attention import SDPBackend, sdpa_kernel

from litgpt_mka.attention.kv_cache import causal_mask


class Site(enum.Enum):
    """Where an attention product is computed (see the module docstring's table)."""

    TRAINING = "training"
    PREFILL = "prefill"
    DECODE = "decode"
    MASKED = "masked"


FUSED_TRAINING = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
# no cuDNN: a plan per sequence length (see the module docstring)
FUSED_WITHOUT_PLANS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
CUDA_BACKENDS: dict[Site, tuple[SDPBackend, ...]] = {
    Site.TRAINING: (*FUSED_TRAINING, SDPBackend.MATH),
    Site.PREFILL: (*FUSED_WITHOUT_PLANS, SDPBackend.MATH),
    Site.DECODE: (*FUSED_WITHOUT_PLANS, SDPBackend.MATH),
    Site.MASKED: (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH),  # flash takes no mask
}


def backends_for(site: Site, device_type: str) -> tuple[SDPBackend, ...] | None:
    """The backends `site` may use on `device_type`, in priority order; None: PyTorch's own choice (CPU)."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    return CUDA_BACKENDS[site] if device_type == "cuda" else None


# ------------------------------------------------------------------------------------------- call sites
def cached_site(T: int, input_pos: torch.Tensor, input_pos_maxp1: int | None) -> Site:
    """The site of a cached chunk of T queries, decided from shapes and ``input_pos_maxp1`` alone.

    litgpt's contract makes ``input_pos_maxp1`` ``max(input_pos) + 1``, so one query at (1,) positions sits at
    the last returned position (DECODE: it sees every key), and T positions (T,) with ``input_pos_maxp1 == T``
    are 0 .. T-1 (PREFILL: causal over the chunk itself, S == T).
    """
    if input_pos.dim() == 1 and input_pos_maxp1 is not None:
        if T == 1:
            return Site.DECODE
        if input_pos_maxp1 == T:
            return Site.PREFILL
    return Site.MASKED


def uncached_site(mask: torch.Tensor | None) -> Site:
    """A forward without a KV cache: TRAINING (causal over the chunk), or MASKED when the caller passes a mask."""
    return Site.TRAINING if mask is None else Site.MASKED


def cached_site_and_mask(
    T: int, input_pos: torch.Tensor, input_pos_maxp1: int | None, mask: torch.Tensor | None, S: int
) -> tuple[Site, torch.Tensor | None]:
    """A cached chunk's site (:func:`cached_site`) and the mask it attends with: none at PREFILL and DECODE
    (the causal mask litgpt's GPT passes has no False entry there, or is ``is_causal``), else the given mask or,
    when the caller passed none, :func:`~litgpt_mka.attention.kv_cache.causal_mask` over the S cached keys."""
    site = cached_site(T, input_pos, input_pos_maxp1)
    if site is not Site.MASKED:
        return site, None
    return site, causal_mask(input_pos, S) if mask is None else mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True: visible) -> 0 where visible, ``dtype``'s finite minimum elsewhere; same shape.

    Finite, as PyTorch's own cuDNN path converts boolean masks: a row with no visible key gives uniform weights
    instead of NaN, and adding a score to the minimum cannot overflow past it by more than one rounding.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


# ----------------------------------------------------------------------------------------------- SDPA
def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    site: Site,
    scale: float,
    mask: torch.Tensor | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` of one call site, under that site's backends.

    Args:
        q: (B, n_q, R, E) query rows; k: (B, n_kv, S, E); v: (B, n_kv, S, Ev) (n_kv == n_q unless `enable_gqa`).
        site: TRAINING and PREFILL are causal over the chunk itself (R == S, no mask); DECODE has no mask;
            MASKED needs `mask`.
        scale: the softmax scale.
        mask: (1 or B, 1, R, S), boolean (True: visible) or additive float; MASKED only.
        enable_gqa: n_q query heads over n_kv shared key/value heads (TRAINING, never copied).

    Returns:
        (B, n_q, R, Ev).

    Raises:
        ValueError: a mask at a site that takes none, or none at MASKED.
    """
    if (mask is None) == (site is Site.MASKED):
        raise ValueError(f"attention at site {site.value!r} {'needs' if mask is None else 'takes no'} mask")
    if mask is not None and mask.dtype == torch.bool:
        mask = additive_mask(mask, q.dtype)
    is_causal = site in (Site.TRAINING, Site.PREFILL)
    if torch.compiler.is_compiling():  # no context variables in a graph: the policy alone
        backends = CUDA_BACKENDS[site] if q.device.type == "cuda" else None
    else:
        _notify(site, q, k, v, mask, is_causal, enable_gqa)
        backends = backends_for(site, q.device.type)
    with sdpa_kernel(list(backends), set_priority=True) if backends else contextlib.nullcontext():
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, is_causal=is_causal, enable_gqa=enable_gqa
        )


# ------------------------------------------------------------------------------------- explicit softmax
def attention_probabilities(
    scores: torch.Tensor, mask: torch.Tensor | None, softcapping: float | None, causal: bool = False
) -> torch.Tensor:
    """Softcapping (if set), mask, softmax over the last dimension, all in float32: scores (..., R, S) -> float32.

    `mask`: boolean (..., R, S), True where visible; `causal`: the chunk over itself (R == S) instead.
    """
    scores = scores.float()
    if softcapping is not None:
        scores = do_softcapping(scores, softcapping)
    if causal:
        R, S = scores.shape[-2:]
        mask = torch.ones(R, S, dtype=torch.bool, device=scores.device).tril()  # (R, S), R == S
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    return scores.softmax(dim=-1)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    softcapping: float | None,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Attention without SDPA (softcapping): q (B, n, R, E), k (B, n, S, E), v (B, n, S, Ev) -> (B, n, R, Ev).

    Scores ``scale q k^T`` and the softmax in float32; the weights meet v in v's dtype.
    """
    scores = torch.matmul(q.float(), k.float().mT) * scale  # (B, n, R, S)
    p = attention_probabilities(scores, mask, softcapping, causal)  # (B, n, R, S) float32
    return torch.matmul(p.to(v.dtype), v)  # (B, n, R, Ev)


# ------------------------------------------------------------------------------- benchmarks and tests
_OVERRIDE: contextvars.ContextVar[tuple[SDPBackend, ...] | None] = contextvars.ContextVar(
    "litgpt_mka_sdpa_override", default=None
)
_RECORDERS: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("litgpt_mka_sdpa_recorders", default=())


@contextlib.contextmanager
def override_backends(backends: Sequence[SDPBackend]) -> Iterator[None]:
    """Every site uses `backends` (in this order, on every device) while the context is open: to measure a
    kernel the policy would not choose (``benchmarks/gpu.sh``). Raises ValueError for an empty list."""
    if not backends:
        raise ValueError("override_backends needs at least one SDPBackend")
    token = _OVERRIDE.set(tuple(backends))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


@dataclass(frozen=True)
class SdpaCall:
    """One SDPA call as :func:`record_calls` saw it (before the kernel ran)."""

    site: Site
    q: torch.Size
    k: torch.Size
    v: torch.Size
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype]
    mask: torch.Tensor | None  # the additive float mask passed, or None
    is_causal: bool
    enable_gqa: bool
    backends: tuple[SDPBackend, ...] | None  # what the CUDA policy allows at this site (None: PyTorch's choice)


@contextlib.contextmanager
def record_calls() -> Iterator[list[SdpaCall]]:
    """The SDPA calls made inside the context, appended to the yielded list as they happen."""
    calls: list[SdpaCall] = []
    token = _RECORDERS.set((*_RECORDERS.get(), calls))
    try:
        yield calls
    finally:
        _RECORDERS.reset(token)


def _notify(site, q, k, v, mask, is_causal, enable_gqa) -> None:
    recorders = _RECORDERS.get()
    if not recorders:
        return
    call = SdpaCall(site, q.shape, k.shape, v.shape, (q.dtype, k.dtype, v.dtype), mask, is_causal, enable_gqa,
                    backends_for(site, "cuda"))
    for calls in recorders:
        calls.append(call)


__all__ = [
    "CUDA_BACKENDS",
    "SdpaCall",
    "Site",
    "additive_mask",
    "attention_probabilities",
    "backends_for",
    "cached_site",
    "cached_site_and_mask",
    "explicit_attention",
    "override_backends",
    "record_calls",
    "sdpa",
    "uncached_site",
]
