"""bfloat16: cached decoding gives the full forward's logits, for every variant (correctness only; on the CPU,
and on CUDA where present: ``benchmarks/gpu.sh`` runs it there).

bf16 keeps 8 significant bits: neighbouring bf16 numbers are 2^-7 = 0.0078 apart between 1 and 2 and
2^-6 = 0.0156 between 2 and 4 (the logits of these tiny random models reach about 2.5). The cached and
the full forward round at different points (the cache stores k and v in bf16, attention accumulates
over different chunks), so their logits may differ by a few such steps, never by more. Two checks:

- ``BF16_TOLERANCE`` (atol 2^-5 = 0.031, rtol 2^-6): four steps at the largest logits. A wrong mask,
  position or cache entry moves logits by 0.1-1 (litgpt's own softcapped cached decoding is 0.5 off in
  float32), far outside it.
- the mean absolute difference is at most the mean difference between the bf16 and the float32 full
  forward of the same weights: decoding from the cache adds no more error than running in bf16 at all.
"""

import pytest
import torch
from litgpt.model import GPT

import litgpt_mka  # noqa: F401  (activates the plugin)
from tests.helpers import (
    TINY_VARIANTS,
    decode_token_by_token,
    prefill_in_chunks,
    preset_config,
    random_gpt,
    tiny_config,
    tokens,
)

BF16_TOLERANCE = dict(atol=2**-5, rtol=2**-6)
# TINY_VARIANTS (GQA and MQA with our grouped class, as the presets), plus litgpt's own CausalSelfAttention on
# the grouped layouts (it repeats the cache per query head), litgpt's own MLA and MKA's third routing
VARIANTS = {
    **{name: (name, {}) for name in TINY_VARIANTS},
    "gqa-litgpt": ("gqa", {"attention_class_name": "CausalSelfAttention"}),
    "mqa-litgpt": ("mqa", {"attention_class_name": "CausalSelfAttention"}),
    "mla-litgpt": ("mla", {"attention_class_name": "LitgptMultiheadLatentAttention"}),
    "mka-outputs": ("mka", {"memorized_key_attention": {"routing": "outputs"}}),
}


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def bf16_and_fp32_models(variant: str, device: str):
    layout, overrides = VARIANTS[variant]
    config = tiny_config(layout, **overrides)
    # the same weights (seed 0) in two dtypes
    return random_gpt(config).to(device, torch.bfloat16), random_gpt(config).to(device)


def test_every_case_is_a_different_attention():
    """No two cases may collapse into one (as gqa-grouped once became gqa): each builds its own class, layout or
    variant dict, and the litgpt cases build litgpt's own class."""
    from litgpt.model import CausalSelfAttention

    built = {}
    for name, (layout, overrides) in VARIANTS.items():
        config = tiny_config(layout, **overrides)
        attention = type(random_gpt(config).transformer.h[0].attn)
        built[name] = (attention, config.n_query_groups, repr(config.latent_attention), repr(config.memorized_key_attention))
    assert len(set(built.values())) == len(built), built
    assert built["gqa-litgpt"][:2] == (CausalSelfAttention, 2) and built["mqa-litgpt"][:2] == (CausalSelfAttention, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_cached_decode_equals_full_forward(variant, device):
    model, reference = bf16_and_fp32_models(variant, device)
    idx = tokens(2, 40).to(device)
    with torch.no_grad():
        full, full_fp32 = model(idx), reference(idx)
    with torch.device(device):  # the helper's positions and cache on the model's device
        decoded = decode_token_by_token(model, idx, prompt=5, dtype=torch.bfloat16)
    assert decoded.dtype == full.dtype == torch.bfloat16
    torch.testing.assert_close(decoded, full, **BF16_TOLERANCE)
    decode_error = (decoded.float() - full.float()).abs().mean()
    bf16_error = (full.float() - full_fp32).abs().mean()
    assert decode_error <= bf16_error, f"cached decode adds {decode_error:.5f} mean error, bf16 itself {bf16_error:.5f}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_chunked_prefill_equals_single_prefill(variant, device):
    model, _ = bf16_and_fp32_models(variant, device)
    idx = tokens(2, 40).to(device)
    with torch.device(device):
        single = prefill_in_chunks(model, idx, [40], dtype=torch.bfloat16)
        chunked = prefill_in_chunks(model, idx, [7, 3, 1, 29], dtype=torch.bfloat16)
    torch.testing.assert_close(chunked, single, **BF16_TOLERANCE)


# ------------------------------------------------------------------ bf16 against float32, quantized caches too
# Relative error (Frobenius norm) of bf16 cached decoding against the float32 full forward of the same weights,
# on the 14m presets' attention sizes (two layers, vocabulary 512, litgpt's init). bf16's own full forward is 0.7% off float32
# there; an unquantized or int8 cache adds nothing measurable (0.7%), float8's 3 mantissa bits about 0.3 points
# (1.0%), int4's 16 levels per group 1 to 2 points (1.5-2.4%). Each bound is about 1.5x the largest measured.
PRESET_VARIANTS = {"mha": ("gqa", {"n_query_groups": 4}), **{v: (v, {}) for v in ("gqa", "mqa", "mla", "mka", "fmka")}}
RELATIVE_TO_FP32 = {None: 0.01, "int8": 0.01, "float8_e4m3fn": 0.015, "int4": 0.035}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).norm() / expected.norm())


@pytest.mark.parametrize("quantization", RELATIVE_TO_FP32, ids=str)
@pytest.mark.parametrize("variant", PRESET_VARIANTS)
def test_bf16_cached_decode_stays_close_to_the_float32_forward(variant, quantization):
    """Scores and softmax run in float32 on every path (SDPA's kernels accumulate so; the explicit and quantized
    paths compute so), so a bf16 model decodes from any cache about as close to float32 as bf16 itself is."""
    layout, overrides = PRESET_VARIANTS[variant]
    config = preset_config(
        f"pythia-14m-{layout}", n_layer=2, vocab_size=512, padded_vocab_size=512, kv_cache_quantization=quantization,
        **overrides,
    )  # the preset's attention sizes; a small vocabulary keeps the logits cheap
    torch.manual_seed(0)
    reference = GPT(config).eval()
    model = GPT(config).eval()
    model.load_state_dict(reference.state_dict())
    model = model.to(torch.bfloat16)
    idx = tokens(2, 24, vocab_size=config.vocab_size)
    with torch.no_grad():
        full_fp32 = reference(idx)
    decoded = decode_token_by_token(model, idx, prompt=5, dtype=torch.bfloat16)
    error = relative_error(decoded, full_fp32)
    assert error <= RELATIVE_TO_FP32[quantization], f"{variant}, {quantization}: {error:.4f} relative to float32"
