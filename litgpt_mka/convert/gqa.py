"""MHA -> GQA / MQA by mean-pooling key and value heads (Ainslie et al. 2023, arXiv:2305.13245, sec. 2.1).

Notation (example sizes: ``config_hub/pretrain/pythia-14m-mha.yaml`` -> 2 groups)

====  ==============================================  =====
C     model width, ``n_embd``                         128
nh    query heads, ``n_head``                         4
hs    head size                                       32
G     key/value heads after conversion                2
m     query heads per key/value head, nh / G          2
====  ==============================================  =====

Weights (litgpt 0.5.13 ``CausalSelfAttention``; the fused ``qkv`` rows are [all q heads; all k heads;
all v heads], as ``forward`` splits them with ``qkv.split((nh hs, G hs, G hs))``)::

    qkv.weight  (nh hs + 2 nh hs, C)  ->  (nh hs + 2 G hs, C)
    qkv.bias    (3 nh hs,)            ->  (nh hs + 2 G hs,)
    proj        unchanged

Equations: litgpt's GQA lets query head h read key/value head ``h // m`` (``repeat_interleave``), so group
``g`` pools the consecutive source heads ``g m .. g m + m - 1``::

    W_K'[g] = (1/m) sum_{j<m} W_K[g m + j],   b_K'[g] = (1/m) sum_{j<m} b_K[g m + j]      (hs, C), (hs,)
    W_V'[g], b_V'[g] likewise; W_Q, b_Q, W_O, b_O unchanged

Biases are mean-pooled like the weights: a key is ``W_K x + b_K``, affine in x, so pooling weight and bias
pools the key itself (and RoPE, linear, commutes with the mean). With ``G == nh`` every group is one head
and the converted weights are the source's, bit for bit.
"""

from typing import Any

import torch

from litgpt_mka.validation import int_in_range


def kv_head_groups(n_head: int, n_query_groups: int) -> int:
    """m = nh / G, the query heads per key/value head.

    Raises:
        ValueError: G is not a divisor of nh in [1, nh].
    """
    int_in_range("n_query_groups", n_query_groups, 1, n_head, high_name="n_head")
    if n_head % n_query_groups:
        divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
        raise ValueError(f"n_query_groups={n_query_groups} must divide n_head={n_head}; allowed: {divisors}")
    return n_head // n_query_groups


def pool_qkv(
    weight: torch.Tensor, bias: torch.Tensor | None, n_head: int, head_size: int, n_query_groups: int
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """Mean-pools the key and value heads of one MHA ``qkv`` (weight (3 nh hs, C), bias (3 nh hs,) or None).

    Returns the GQA weight (nh hs + 2 G hs, C), bias, and the relative Frobenius error of the keys and of
    the values: ``||W - repeat(pool(W))||_F / ||W||_F`` (0 when G == nh).
    """
    m = kv_head_groups(n_head, n_query_groups)
    q, k, v = weight.split(n_head * head_size, dim=0)  # 3 x (nh hs, C)
    errors = {}

    def pool(w: torch.Tensor, name: str | None) -> torch.Tensor:
        heads = w.reshape(n_query_groups, m, head_size, *w.shape[1:])  # (nh hs, ...) -> (G, m, hs, ...)
        pooled = heads.mean(dim=1)  # (G, hs, ...)
        if name is not None:
            error = heads - pooled.unsqueeze(1)  # what each source head loses
            errors[name] = float(error.double().norm() / w.double().norm().clamp_min(1e-30))
        return pooled.reshape(n_query_groups * head_size, *w.shape[1:])  # (G hs, ...)

    new_weight = torch.cat((q, pool(k, "k_rel_error"), pool(v, "v_rel_error")))  # (nh hs + 2 G hs, C)
    new_bias = None
    if bias is not None:
        bq, bk, bv = bias.split(n_head * head_size)  # 3 x (nh hs,)
        new_bias = torch.cat((bq, pool(bk, None), pool(bv, None)))  # (nh hs + 2 G hs,)
    return new_weight, new_bias, errors


def gqa_config_overrides(source: Any, n_query_groups: int) -> dict[str, Any]:
    """Config fields that change: ``n_query_groups`` and the name (``<name>-gqa<G>``, ``<name>-mqa``)."""
    kv_head_groups(source.n_head, n_query_groups)
    suffix = "mqa" if n_query_groups == 1 else f"gqa{n_query_groups}"
    return {"n_query_groups": n_query_groups, "name": f"{source.name}-{suffix}"}


def convert_layer(
    attn_state: dict[str, torch.Tensor], config: Any, n_query_groups: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One layer's attention state dict (keys relative to ``attn.``) -> the GQA one, and its errors."""
    weight, bias, errors = pool_qkv(
        attn_state["qkv.weight"], attn_state.get("qkv.bias"), config.n_head, config.head_size, n_query_groups
    )
    out = dict(attn_state)
    out["qkv.weight"] = weight
    if bias is not None:
        out["qkv.bias"] = bias
    return out, errors
