"""MHA -> MLA: partial-RoPE split, one shared RoPE key, joint low-rank SVD of non-rotary keys and values.

Targets :class:`litgpt_mka.attention.mla.MultiheadLatentAttention` with a full-rank query (``q_lora_rank``
null), following MHA2MLA (Ji et al. 2025, arXiv:2502.14837): the rotary part of each head stays a RoPE
key, the non-rotary keys and the values of all heads are compressed jointly into the latent.

Notation (example sizes: ``config_hub/pretrain/pythia-14m-mha.yaml`` at ``--kv_lora_rank 32``)

====  ========================================================  =====
N     calibration tokens (attention inputs of the source model)  8192
C     model width, ``n_embd``                                    128
nh    heads, ``n_head`` (the source must be MHA)                 4
hs    head size                                                  32
R     rotary dims per head, ``rope_n_elem`` (Pythia: hs / 4)      8
P     non-rotary key dims per head, hs - R                       24
V     value dims per head, hs                                    32
L     ``kv_lora_rank``, 1 <= L <= min(C, nh (P+V))               32
====  ========================================================  =====

Source weights (litgpt 0.5.13 ``CausalSelfAttention``: ``qkv`` rows are [all q heads; all k heads; all v
heads]; within a head the first R dims are rotated, rotate-half pairs ``(i, i + R/2)``)::

    W_Q,h = [W_Qr,h (R, C) ; W_Qn,h (P, C)]    W_K,h = [W_Kr,h (R, C) ; W_Kn,h (P, C)]    W_V,h (V, C)
    biases b_Q,h, b_K,h, b_V,h likewise; W_O (C, nh V)

Target weights, and where they come from::

    q_proj.weight               (nh (P+R), C)   head h: [W_Qn,h ; A_h^H W_Qr,h]       (bias alike)
    kv_a_proj_with_mqa.weight   (L+R, C)        [D (L, C) ; W_r (R, C)]               bias [0 ; b_r]
    kv_a_norm.weight            (L,)            g (calibrated, below)
    kv_b_proj.weight            (nh (P+V), L)   U (head h: [U_K,h (P, L) ; U_V,h (V, L)])
    kv_b_proj.bias              (nh (P+V),)     head h: [b_Kn,h ; b_V,h]  (exact: kv_b_proj carries biases)
    proj                        unchanged (V = hs, the same heads)

``attn_bias`` is switched on when the source ``qkv`` has a bias, so ``kv_a_proj_with_mqa`` can carry the
RoPE key's bias ``b_r`` (the latent's part of that bias is 0). The attention scale stays
``1/sqrt(hs)`` since P + R = hs.

1. **Joint low-rank factorisation** of the stacked non-rotary keys and values::

       M = stack_h [W_Kn,h ; W_V,h]                 (nh (P+V), C)
       M = U_s S V_s^T  (SVD; ``svd="randomized"``: torch.svd_lowrank with q = L + 8, 4 power iterations)
       D = V_s[:, :L]^T                             (L, C)   orthonormal rows
       U = U_s[:, :L] S[:L]                         (nh (P+V), L)   orthogonal columns, norms S[:L]

   ``||M - U D||_F / ||M||_F`` is the ``kv_rel_error`` per layer; it is 0 at ``L = rank(M)``, i.e.
   ``L = min(C, nh (P+V))``, where the linear part is exact.

2. **kv_a_norm** computes ``c = g * z / r(z)`` with ``z = D x`` and ``r(z) = sqrt(mean_j z_j^2 + eps)``: not
   linear, so no choice of weights makes it the identity. Because the columns of U are orthogonal with
   norms S_j, the activation error ``E ||U (g z / r) - U z||^2 = sum_j S_j^2 E[(g_j z_j / r - z_j)^2]``
   separates per latent dim; its minimiser over the calibration activations is::

       g_j = E[z_j^2 / r] / E[z_j^2 / r^2]          (``kv_norm="calibrated"``, the default)

   ``kv_norm="ones"`` keeps RMSNorm's own init g = 1 (for comparison). The activation error
   ``||U (g z/r) - M x|| / ||M x||`` over the N calibration tokens is reported as ``kv_act_rel_error``
   (with ``kv_act_rel_error_linear`` for ``U D x``: what the norm adds).

3. **One shared RoPE key.** MHA has a rotary key per head, MLA one ``k_r`` for all heads. RoPE rotates
   each pair ``(i, i + R/2)`` as the complex number ``w = W[i] + j W[i + R/2]`` by ``e^{j pos theta_i}``,
   so a per-head complex gain ``alpha_{h,i}`` commutes with it and can move into that head's query::

       q_h . RoPE(k_h) = Re sum_i conj(q_{h,i}) k_{h,i} e^{j(...)},   k_{h,i} ~ alpha_{h,i} s_i
                      = Re sum_i conj(conj(alpha_{h,i}) q_{h,i}) s_i e^{j(...)}

   i.e. ``W_Qr,h`` becomes ``A_h^H W_Qr,h`` (rows i, i+R/2: ``a W[i] + b W[i+R/2]``, ``a W[i+R/2] - b W[i]``
   for ``alpha = a + jb``): exact, no approximation on the query side. The shared key is then fitted per
   frequency pair i on the (nh, C) complex matrix ``Z_i[h] = w_{h,i}``:

   - ``rope_fit="complex"`` (default): the best rank-1 complex fit ``Z_i ~ alpha_i s_i^T`` (top singular
     pair), alpha normalised to RMS 1 over heads with ``sum_h alpha_{h,i}`` real positive; optimal in
     Frobenius norm among all shared keys that commute with RoPE, so never worse than the mean;
   - ``rope_fit="mean"``: ``alpha = 1``, ``s_i = mean_h Z_i[h]``.

   The bias follows by least squares, ``b_r,i = sum_h conj(alpha_{h,i}) b_{h,i} / sum_h |alpha_{h,i}|^2``.
   ``sum_{h,i} |Z_i[h] - alpha_{h,i} s_i|^2 / ||W_Kr||_F^2`` (square-rooted) is ``rope_rel_error``.
   A general (R, R) map per head would fit better but does not commute with RoPE, so it cannot move into
   the query; keeping one RoPE key per head would cache nh R instead of R numbers per token and needs an
   MLA variant this project does not have.

Cached numbers per token and layer: ``L + R`` (MHA: ``2 nh hs``).
"""

import math
from typing import Any

import torch

from litgpt_mka.validation import int_in_range

ROPE_FITS = ("complex", "mean")
KV_NORMS = ("calibrated", "ones")
SVDS = ("exact", "randomized")


# --------------------------------------------------------------------------------------------- config
def mla_dims(config: Any) -> tuple[int, int, int, int, int]:
    """(nh, hs, R, P, V) of an MHA source with partial RoPE.

    Raises:
        ValueError: no rotary or no non-rotary dims, an odd rotary width, interleaved RoPE, a sliding window.
    """
    nh, hs, R = config.n_head, config.head_size, config.rope_n_elem
    if config.rope_interleave:
        raise ValueError(
            "rope_interleave=True: the shared-key fit pairs rotary dims (i, i + R/2) (rotate-half RoPE);"
            " allowed: rope_interleave=False"
        )
    if config.sliding_window_size is not None:
        raise ValueError(
            f"sliding_window_size={config.sliding_window_size}: MultiheadLatentAttention has no sliding window;"
            " allowed: null"
        )
    if R <= 0 or R % 2 or R >= hs:
        raise ValueError(
            f"rope_n_elem={R} (rotary_percentage={config.rotary_percentage} x head_size={hs}) must be even and in"
            f" [2, {hs - 1}]: MLA needs rotary dims for the shared RoPE key and non-rotary dims for the latent"
        )
    return nh, hs, R, hs - R, hs


def max_kv_lora_rank(config: Any) -> int:
    """The rank of M = stack_h [W_Kn,h ; W_V,h] is at most min(C, nh (P+V)); a larger L adds nothing."""
    nh, _, _, P, V = mla_dims(config)
    return min(config.n_embd, nh * (P + V))


def mla_config_overrides(source: Any, kv_lora_rank: int) -> dict[str, Any]:
    """Config fields of the MLA target (full-rank query, ``attn_bias`` on when ``qkv`` has a bias).

    Raises:
        ValueError: `kv_lora_rank` outside [1, min(C, nh (P+V))], or a source bias layout MLA cannot hold.
    """
    nh, _, R, P, V = mla_dims(source)
    upper = max_kv_lora_rank(source)
    int_in_range("kv_lora_rank", kv_lora_rank, 1, upper, note=(
        f" (min(n_embd={source.n_embd}, n_head x (P+V)={nh * (P + V)}): the rank of the stacked non-rotary key and"
        " value weights)"
    ))
    if source.attn_bias and not source.bias:
        raise ValueError(
            "attn_bias=True with bias=False: the source's query, key and value biases have no place in MLA,"
            " whose q_proj and kv_b_proj carry a bias only when bias=True; allowed: bias=True, or no attention bias"
        )
    return {
        "name": f"{source.name}-mla{kv_lora_rank}",
        "attention_class_name": "MultiheadLatentAttention",
        "attn_bias": bool(source.bias or source.attn_bias),
        "latent_attention": {
            "q_lora_rank": None,
            "kv_lora_rank": kv_lora_rank,
            "qk_rope_head_dim": R,
            "qk_nope_head_dim": P,
            "v_head_dim": V,
        },
    }


# --------------------------------------------------------------------------------- the three fits
def factorize_kv(M: torch.Tensor, L: int, svd: str = "exact", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """M (nh (P+V), C) -> D (L, C) with orthonormal rows, U (nh (P+V), L), and ||M - U D||_F / ||M||_F."""
    M = M.double()
    if svd == "exact":
        U_s, S, Vh = torch.linalg.svd(M, full_matrices=False)  # (n, k), (k,), (k, C) with k = min(n, C)
    elif svd == "randomized":
        torch.manual_seed(seed)
        U_s, S, V_s = torch.svd_lowrank(M, q=min(L + 8, *M.shape), niter=4)  # (n, q), (q,), (C, q)
        Vh = V_s.T  # (q, C)
    else:
        raise ValueError(f"svd={svd!r} must be one of {list(SVDS)}")
    D = Vh[:L]  # (L, C)
    U = U_s[:, :L] * S[:L]  # (n, L)
    error = float((M - U @ D).norm() / M.norm().clamp_min(1e-300))
    return D, U, error


def norm_weight(z: torch.Tensor, eps: float, kv_norm: str = "calibrated") -> torch.Tensor:
    """g (L,) for kv_a_norm from latents z = D x (N, L): g_j = E[z_j^2 / r] / E[z_j^2 / r^2], r = rms(z)."""
    if kv_norm == "ones":
        return torch.ones(z.size(1), dtype=torch.float64)
    if kv_norm != "calibrated":
        raise ValueError(f"kv_norm={kv_norm!r} must be one of {list(KV_NORMS)}")
    z = z.double()
    r = (z.square().mean(dim=1, keepdim=True) + eps).sqrt()  # (N, 1)
    numerator = (z.square() / r).sum(dim=0)  # (L,)
    denominator = (z.square() / r.square()).sum(dim=0)  # (L,)
    # a latent dim that is 0 on every calibration token: its weight does not matter, keep RMSNorm's 1
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.ones_like(numerator))


def rms_norm(z: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """litgpt's RMSNorm, z (N, L) -> g z / sqrt(mean(z^2) + eps), in float64."""
    return z * torch.rsqrt(z.square().mean(dim=-1, keepdim=True) + eps) * g


def fit_shared_rope_key(
    w: torch.Tensor, b: torch.Tensor | None, rope_fit: str = "complex"
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, float]:
    """Per-head rotary keys w (nh, R, C), b (nh, R) -> shared W_r (R, C), b_r (R,), gains alpha (nh, R/2) complex.

    k_{h,i} ~ alpha_{h,i} s_i for every head h and frequency pair i; returns the relative Frobenius error of
    the weights, ``sqrt(sum |Z_i[h] - alpha_{h,i} s_i|^2) / ||w||_F``.
    """
    nh, R, C = w.shape
    Z = torch.complex(*w.double().split(R // 2, dim=1)).transpose(0, 1)  # (nh, R, C) -> (R/2, nh, C)
    if rope_fit == "mean":
        alpha = torch.ones(R // 2, nh, dtype=Z.dtype)  # (R/2, nh)
        s = Z.mean(dim=1)  # (R/2, C)
    elif rope_fit == "complex":
        U, S, Vh = torch.linalg.svd(Z, full_matrices=False)  # (R/2, nh, k), (R/2, k), (R/2, k, C)
        alpha = U[:, :, 0] * math.sqrt(nh)  # (R/2, nh): RMS 1 over the heads
        s = Vh[:, 0, :] * (S[:, :1] / math.sqrt(nh))  # (R/2, C): 0 for a pair whose rows are 0 in every head
        phase = alpha.sum(dim=1, keepdim=True)  # (R/2, 1): rotate so that sum_h alpha is real positive
        phase = torch.where(phase.abs() > 0, phase / phase.abs().clamp_min(1e-300), torch.ones_like(phase))
        alpha, s = alpha * phase.conj(), s * phase
    else:
        raise ValueError(f"rope_fit={rope_fit!r} must be one of {list(ROPE_FITS)}")
    fitted = alpha.unsqueeze(-1) * s.unsqueeze(1)  # (R/2, nh, C)
    error = float((Z - fitted).abs().square().sum().sqrt() / w.double().norm().clamp_min(1e-300))
    W_r = torch.cat((s.real, s.imag))  # (R, C)
    b_r = None
    if b is not None:
        bz = torch.complex(*b.double().split(R // 2, dim=1)).T  # (nh, R) -> (R/2, nh)
        beta = (alpha.conj() * bz).sum(dim=1) / alpha.abs().square().sum(dim=1)  # (R/2,)
        b_r = torch.cat((beta.real, beta.imag))  # (R,)
    return W_r, b_r, alpha.T, error  # alpha: (R/2, nh) -> (nh, R/2)


def rotate_queries(w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Rotary query rows w (nh, R, *) -> A_h^H w: pair i becomes conj(alpha_{h,i}) (w[i] + j w[i + R/2])."""
    R = w.size(1)
    shape = (alpha.size(0), R // 2) + (1,) * (w.dim() - 2)
    a, b = alpha.real.reshape(shape), alpha.imag.reshape(shape)  # (nh, R/2, 1...)
    first, second = w.double().split(R // 2, dim=1)  # (nh, R/2, *) each
    return torch.cat((a * first + b * second, a * second - b * first), dim=1)  # (nh, R, *)


# ----------------------------------------------------------------------------------------- a layer
def convert_layer(
    attn_state: dict[str, torch.Tensor],
    config: Any,
    kv_lora_rank: int,
    x: torch.Tensor | None,
    rope_fit: str = "complex",
    kv_norm: str = "calibrated",
    svd: str = "exact",
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One layer's MHA attention state (keys relative to ``attn.``) -> MLA state, and its errors.

    Args:
        attn_state: ``qkv.weight`` (3 nh hs, C), ``qkv.bias`` (optional), ``proj.*``.
        config: the source `Config` (MHA).
        kv_lora_rank: L.
        x: calibration inputs of this layer's attention (N, C), needed for ``kv_norm="calibrated"`` and for
            the activation errors; None skips both (g = 1).
    """
    nh, hs, R, P, V = mla_dims(config)
    L = kv_lora_rank
    dtype = attn_state["qkv.weight"].dtype
    weight, bias = attn_state["qkv.weight"].double(), attn_state.get("qkv.bias")
    q, k, v = weight.view(3, nh, hs, -1).unbind(0)  # (3 nh hs, C) -> 3 x (nh, hs, C)
    qb = kb = vb = None
    if bias is not None:
        qb, kb, vb = bias.double().view(3, nh, hs).unbind(0)  # 3 x (nh, hs)

    # shared RoPE key; the per-head gains move into the queries
    W_r, b_r, alpha, rope_error = fit_shared_rope_key(k[:, :R], None if kb is None else kb[:, :R], rope_fit)
    q_heads = torch.cat((q[:, R:], rotate_queries(q[:, :R], alpha)), dim=1)  # (nh, P+R, C)
    out = {"q_proj.weight": q_heads.reshape(nh * (P + R), -1)}  # (nh (P+R), C)
    if qb is not None:
        out["q_proj.bias"] = torch.cat((qb[:, R:], rotate_queries(qb[:, :R], alpha)), dim=1).reshape(-1)

    # joint low-rank factorisation of the non-rotary keys and the values
    M = torch.cat((k[:, R:], v), dim=1).reshape(nh * (P + V), -1)  # (nh, P+V, C) -> (nh (P+V), C)
    D, U, kv_error = factorize_kv(M, L, svd, seed)
    out["kv_a_proj_with_mqa.weight"] = torch.cat((D, W_r))  # (L+R, C)
    if config.bias or config.attn_bias:
        out["kv_a_proj_with_mqa.bias"] = torch.cat((torch.zeros(L, dtype=torch.float64), b_r))  # (L+R,)
    out["kv_b_proj.weight"] = U  # (nh (P+V), L)
    if kb is not None:
        out["kv_b_proj.bias"] = torch.cat((kb[:, R:], vb), dim=1).reshape(-1)  # (nh (P+V),)
    errors = {"kv_rel_error": kv_error, "rope_rel_error": rope_error}

    g = torch.ones(L, dtype=torch.float64)
    if x is not None:
        x = x.double()
        z = x @ D.T  # (N, L)
        g = norm_weight(z, config.norm_eps, kv_norm)
        target = x @ M.T  # (N, nh (P+V)): source non-rotary keys and values, without bias
        scale = target.norm().clamp_min(1e-300)
        errors["kv_act_rel_error"] = float((rms_norm(z, g, config.norm_eps) @ U.T - target).norm() / scale)
        errors["kv_act_rel_error_linear"] = float((z @ U.T - target).norm() / scale)
    elif kv_norm == "calibrated":
        raise ValueError("kv_norm='calibrated' needs calibration inputs x (N, C); pass them, or kv_norm='ones'")
    out["kv_a_norm.weight"] = g  # (L,)
    for name in ("proj.weight", "proj.bias"):
        if name in attn_state:
            out[name] = attn_state[name]
    return {name: t.to(dtype) for name, t in out.items()}, errors
