"""MHA -> MLA: shared RoPE key, joint SVD of non-rotary keys and values, calibrated kv_a_norm.

Exact where the maths says so: the linear part (kv_a_norm removed) at full rank when the heads' rotary
keys differ only by per-frequency complex gains, and the whole model (norm included) when, in addition,
every attention input has the same norm (a LayerNorm without affine part and L = C: the latent is an
orthogonal image of the input, so its RMS is constant and the calibrated norm weight undoes it). Bounded
error otherwise."""

import math

import pytest
import torch
from litgpt.model import apply_rope, build_rope_cache

from litgpt_mka.convert import convert_checkpoint
from litgpt_mka.convert.mla import (
    factorize_kv,
    fit_shared_rope_key,
    max_kv_lora_rank,
    mla_config_overrides,
    norm_weight,
    rms_norm,
    rotate_queries,
)
from tests.convert.convert_helpers import load_converted, mha_checkpoint, qkv_heads
from tests.helpers import assert_cached_decode_matches_full_forward, tiny_config, tokens

QUIET = dict(log=lambda message: None, calibration_tokens=1024, calibration_seq_length=32)


def with_gains(alpha: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per-head keys from one shared key: alpha (nh, R/2) complex, s (R, *) -> (nh, R, *), pair i = alpha_i s_i."""
    half = s.size(0) // 2
    shape = alpha.shape + (1,) * (s.dim() - 1)
    a, b = alpha.real.reshape(shape), alpha.imag.reshape(shape)
    s1, s2 = s[:half], s[half:]
    return torch.cat((a * s1 - b * s2, b * s1 + a * s2), dim=1)


def random_gains(nh: int, R: int, generator: torch.Generator) -> torch.Tensor:
    return torch.complex(*torch.randn(2, nh, R // 2, generator=generator, dtype=torch.float64))


def share_rotary_keys(model) -> None:
    """Edit: every head's rotary key (weight and bias) becomes head 0's times per-frequency complex gains."""
    config, generator = model.config, torch.Generator().manual_seed(3)
    R = config.rope_n_elem
    for layer in range(config.n_layer):
        _, k, _, _, bk, _ = qkv_heads(model, layer)
        alpha = random_gains(config.n_head, R, generator)
        k[:, :R] = with_gains(alpha, k[0, :R].double()).float()
        bk[:, :R] = with_gains(alpha, bk[0, :R].double()).float()


def constant_norm_inputs(model) -> None:
    """Edit: every norm_1 is a scaled LayerNorm without bias, so each attention input has norm 0.7 sqrt(C)."""
    for block in model.transformer.h:
        block.norm_1.weight.fill_(0.7)
        block.norm_1.bias.zero_()


# ------------------------------------------------------------------------------------ shared RoPE key
def test_per_head_gains_move_through_rope_into_the_queries():
    """q_h . RoPE_t(alpha_h s) == (A_h^H q_h) . RoPE_u(s) at any pair of positions: the fit's premise."""
    g = torch.Generator().manual_seed(0)
    nh, R, positions = 3, 8, 20
    q = torch.randn(nh, R, generator=g, dtype=torch.float64)
    s = torch.randn(R, generator=g, dtype=torch.float64)
    alpha = random_gains(nh, R, g)
    cos, sin = build_rope_cache(positions, n_elem=R)  # (positions, R)
    cos, sin = cos.double()[None], sin.double()[None]  # (1, positions, R)
    rope = lambda x: apply_rope(x.unsqueeze(-2).expand(*x.shape[:-1], positions, R), cos, sin)  # (..., positions, R)
    scores = torch.einsum("htr,hur->htu", rope(q), rope(with_gains(alpha, s)))  # (nh, t, u)
    moved = torch.einsum("htr,ur->htu", rope(rotate_queries(q, alpha)), rope(s)[0])
    torch.testing.assert_close(moved, scores)


def test_complex_fit_recovers_keys_that_share_one_key_up_to_gains():
    g = torch.Generator().manual_seed(1)
    nh, R, C = 4, 8, 16
    alpha = random_gains(nh, R, g)
    w = with_gains(alpha, torch.randn(R, C, generator=g, dtype=torch.float64))  # (nh, R, C)
    b = with_gains(alpha, torch.randn(R, generator=g, dtype=torch.float64)[:, None])[..., 0]  # (nh, R)
    W_r, b_r, fitted_alpha, error = fit_shared_rope_key(w, b, "complex")
    assert error < 1e-12
    torch.testing.assert_close(with_gains(fitted_alpha, W_r), w)
    torch.testing.assert_close(with_gains(fitted_alpha, b_r[:, None])[..., 0], b)
    assert fit_shared_rope_key(w, b, "mean")[3] > 0.3  # the mean cannot represent the gains


def test_a_frequency_pair_zero_in_every_head_fits_to_zero_not_nan():
    g = torch.Generator().manual_seed(3)
    nh, R, C = 4, 8, 16
    w, b = torch.randn(nh, R, C, generator=g, dtype=torch.float64), torch.randn(nh, R, generator=g, dtype=torch.float64)
    w[:, [0, R // 2]] = 0  # pair 0 (rows 0 and R/2, rotate-half) zero in every head
    b[:, [0, R // 2]] = 0
    W_r, b_r, alpha, error = fit_shared_rope_key(w, b, "complex")
    assert all(bool(torch.isfinite(t).all()) for t in (W_r, b_r, alpha)) and math.isfinite(error)
    assert not W_r[[0, R // 2]].any() and not b_r[[0, R // 2]].any()


def test_complex_fit_is_never_worse_than_the_mean():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        w = torch.randn(4, 8, 16, generator=g) + 2 * torch.randn(1, 8, 16, generator=g)  # correlated heads
        assert fit_shared_rope_key(w, None, "complex")[3] <= fit_shared_rope_key(w, None, "mean")[3] + 1e-12


def test_mean_fit_of_equal_heads_is_exact_with_unit_gains():
    w = torch.randn(1, 8, 16).expand(4, 8, 16)
    W_r, _, alpha, error = fit_shared_rope_key(w, None, "mean")
    assert error == 0
    torch.testing.assert_close(W_r, w[0].double())
    torch.testing.assert_close(alpha, torch.ones(4, 4, dtype=torch.complex128))


# --------------------------------------------------------------------------------- SVD and the norm
def test_factorization_is_exact_at_full_rank_and_improves_with_rank():
    torch.manual_seed(0)
    M = torch.randn(112, 64, dtype=torch.float64)
    D, U, error = factorize_kv(M, 64)
    torch.testing.assert_close(U @ D, M)
    torch.testing.assert_close(D @ D.T, torch.eye(64, dtype=torch.float64))  # orthonormal rows
    errors = [factorize_kv(M, L)[2] for L in (8, 16, 32, 63)]
    assert errors == sorted(errors, reverse=True) and errors[0] < 1


def test_randomized_svd_is_close_to_exact_on_a_decaying_spectrum():
    torch.manual_seed(0)
    M = torch.randn(112, 64, dtype=torch.float64) @ torch.diag(torch.logspace(0, -2, 64, dtype=torch.float64))
    for L in (8, 32):
        assert factorize_kv(M, L, "randomized")[2] == pytest.approx(factorize_kv(M, L)[2], rel=1e-3)


def test_calibrated_norm_weight_undoes_a_constant_rms():
    torch.manual_seed(0)
    z = torch.randn(100, 16, dtype=torch.float64)
    z = 3.0 * z / z.square().mean(dim=1, keepdim=True).sqrt()  # rms 3 on every row
    g = norm_weight(z, eps=1e-5)
    torch.testing.assert_close(rms_norm(z, g, eps=1e-5), z)


def test_calibrated_norm_weight_beats_ones_on_varying_rms():
    torch.manual_seed(0)
    z = torch.randn(500, 16, dtype=torch.float64) * torch.rand(500, 1, dtype=torch.float64).mul(4).add(0.5)
    best = (rms_norm(z, norm_weight(z, 1e-5, "calibrated"), 1e-5) - z).norm()
    assert best < (rms_norm(z, norm_weight(z, 1e-5, "ones"), 1e-5) - z).norm()
    for scalar in (0.5, 1.0, 2.0, 3.0):  # the per-dim least-squares optimum beats every scalar weight
        assert best <= (rms_norm(z, torch.full((16,), scalar, dtype=torch.float64), 1e-5) - z).norm()


# ----------------------------------------------------------------------------------- whole models
def test_linear_part_is_exact_at_full_rank(tmp_path):
    """kv_a_norm replaced by the identity, L = rank: the converted model is the source (fp32 rounding)."""
    config = tiny_config("mha")
    source, model = mha_checkpoint(tmp_path / "source", config, edit=share_rotary_keys)
    L = max_kv_lora_rank(config)
    report = convert_checkpoint(source, "mla", tmp_path / "out", kv_lora_rank=L, **QUIET)
    converted = load_converted(tmp_path / "out")
    for block in converted.transformer.h:
        block.attn.kv_a_norm = torch.nn.Identity()
    idx = tokens(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(converted(idx), model(idx), rtol=1e-5, atol=1e-5)
    for layer in report["layers"]:
        assert layer["kv_rel_error"] < 1e-12 and layer["rope_rel_error"] < 1e-6  # float32 source weights


def test_whole_model_is_exact_when_every_attention_input_has_the_same_norm(tmp_path):
    config = tiny_config("mha")
    L = max_kv_lora_rank(config)
    assert L == config.n_embd  # D is square and orthogonal: ||D x|| = ||x||

    def edit(model):
        share_rotary_keys(model)
        constant_norm_inputs(model)

    source, model = mha_checkpoint(tmp_path / "source", config, edit=edit)
    report = convert_checkpoint(source, "mla", tmp_path / "out", kv_lora_rank=L, **QUIET)
    converted = load_converted(tmp_path / "out")
    idx = tokens(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(converted(idx), model(idx), rtol=1e-4, atol=1e-4)
    assert all(layer["kv_act_rel_error"] < 1e-4 for layer in report["layers"])


def test_random_model_at_full_rank_has_a_small_bounded_error(tmp_path):
    """Only the shared RoPE key and the varying RMS of the latent differ: logits within 3% (relative)."""
    config = tiny_config("mha")
    source, model = mha_checkpoint(tmp_path / "source", config)
    report = convert_checkpoint(source, "mla", tmp_path / "out", kv_lora_rank=max_kv_lora_rank(config), **QUIET)
    converted = load_converted(tmp_path / "out")
    idx = tokens(2, 48)
    with torch.no_grad():
        expected, got = model(idx), converted(idx)
    assert float((got - expected).norm() / expected.norm()) < 0.03
    assert abs(report["calibration_loss"]["converted"] - report["calibration_loss"]["source"]) < 0.02
    for layer in report["layers"]:
        assert layer["kv_rel_error"] < 1e-12 and 0 < layer["kv_act_rel_error"] < 0.1 and 0 < layer["rope_rel_error"] < 1


@pytest.mark.parametrize("L", [8, 32])
def test_lower_ranks_lose_more_and_report_it(tmp_path, L):
    config = tiny_config("mha")
    source, model = mha_checkpoint(tmp_path / "source", config)
    report = convert_checkpoint(source, "mla", tmp_path / "out", kv_lora_rank=L, **QUIET)
    converted = load_converted(tmp_path / "out")
    assert converted.config.kv_lora_rank == L and converted.config.latent_attention["q_lora_rank"] is None
    for i, layer in enumerate(report["layers"]):
        qkv = model.transformer.h[i].attn.qkv.weight.detach().double().view(3, 4, 16, 64)
        stacked = torch.cat((qkv[1, :, 4:], qkv[2]), dim=1).reshape(-1, 64)  # (nh (P+V), C)
        singular = torch.linalg.svdvals(stacked)
        assert layer["kv_rel_error"] == pytest.approx(float(singular[L:].norm() / singular.norm()), rel=1e-6)
    # the converted checkpoint decodes with the compressed cache exactly as its own full forward
    assert_cached_decode_matches_full_forward(converted, tokens(2, 24), prompt=8, rtol=1e-4, atol=1e-4)


def test_kv_norm_calibration_brings_the_model_closer_than_ones(tmp_path):
    config = tiny_config("mha")
    source, model = mha_checkpoint(tmp_path / "source", config, edit=share_rotary_keys)
    L = max_kv_lora_rank(config)
    calibrated = convert_checkpoint(source, "mla", tmp_path / "a", kv_lora_rank=L, **QUIET)
    ones = convert_checkpoint(source, "mla", tmp_path / "b", kv_lora_rank=L, kv_norm="ones", **QUIET)
    for a, b in zip(calibrated["layers"], ones["layers"]):
        assert a["kv_act_rel_error"] < b["kv_act_rel_error"]
    idx = tokens(2, 48)
    with torch.no_grad():
        expected = model(idx)
        errors = [float((load_converted(tmp_path / p)(idx) - expected).norm()) for p in ("a", "b")]
    assert errors[0] < errors[1]


# ----------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("L", "message"),
    [
        (0, r"kv_lora_rank=0 must be an integer in \[1, 64\] \(min\(n_embd=64, n_head x \(P\+V\)=112\)"),
        (65, r"kv_lora_rank=65 must be an integer in \[1, 64\]"),
        (True, r"kv_lora_rank=True must be an integer in \[1, 64\]"),
    ],
)
def test_kv_lora_rank_out_of_range_is_refused(L, message):
    with pytest.raises(ValueError, match=message):
        mla_config_overrides(tiny_config("mha"), L)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(rotary_percentage=1.0), r"rope_n_elem=16 \(rotary_percentage=1.0 x head_size=16\) must be even and in \[2, 15\]"),
        (dict(rotary_percentage=0.0), r"rope_n_elem=0 .* must be even and in \[2, 15\]"),
        (dict(bias=False, attn_bias=True), r"attn_bias=True with bias=False"),
        (dict(rope_interleave=True), r"rope_interleave=True: .* allowed: rope_interleave=False"),
        (dict(sliding_window_size=8), r"sliding_window_size=8: MultiheadLatentAttention has no sliding window"),
    ],
)
def test_sources_mla_cannot_hold_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        mla_config_overrides(tiny_config("mha", **overrides), 16)


def test_mla_options_are_checked_before_any_work(tmp_path):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    with pytest.raises(ValueError, match=r"--to mla needs --kv_lora_rank, an integer in \[1, 64\]"):
        convert_checkpoint(source, "mla", tmp_path / "a", **QUIET)
    with pytest.raises(ValueError, match=r"rope_fit='median' must be one of \['complex', 'mean'\]"):
        convert_checkpoint(source, "mla", tmp_path / "a", kv_lora_rank=8, rope_fit="median", **QUIET)
    with pytest.raises(ValueError, match=r"svd='fast' must be one of \['exact', 'randomized'\]"):
        convert_checkpoint(source, "mla", tmp_path / "a", kv_lora_rank=8, svd="fast", **QUIET)
