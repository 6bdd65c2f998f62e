"""Every attention call of every variant goes through ``dispatch.sdpa`` with what a GPU's fused kernels need.

Recorded on the CPU in bfloat16 (``dispatch.record_calls``), per variant and call site:

* q, k, v of one dtype;
* TRAINING, PREFILL, DECODE: no mask, and q, k, v of equal head dims that are multiples of 8 (flash's and the
  memory-efficient kernel's conditions in PyTorch's ``sdp_utils.cpp``), for the tiny test models and for every
  preset at its own sizes;
* MASKED: an additive mask in the query's dtype, finite (never -inf);
* the CUDA policy of each site: no cuDNN where shapes vary (its plans are per shape), no flash where a mask is.

On a GPU (skipped here) the kernels that actually ran are fused, never the math fallback, and never cuDNN at a
decode step; which one ran is printed.
"""

import pytest
import torch
from litgpt.model import GPT
from torch.nn.attention import SDPBackend

from litgpt_mka.attention import dispatch
from litgpt_mka.attention.dispatch import Site, record_calls
from tests.helpers import TINY_VARIANTS, attention_kernels_run, preset_config, random_gpt, tiny_config, tokens

# our classes only (litgpt's CausalSelfAttention calls SDPA itself): MHA through GroupedQueryAttention
VARIANTS = {
    "mha": tiny_config("gqa", n_query_groups=4),
    **{name: tiny_config(name) for name in TINY_VARIANTS if name != "mha"},
    "mka-outputs": tiny_config("mka", memorized_key_attention={"routing": "outputs"}),
}
SIZES = ("14m", "70m", "160m", "410m", "1b", "1.4b")
PRESET_VARIANTS = ("gqa", "mqa", "mla", "mka", "fmka")
UNMASKED = (Site.TRAINING, Site.PREFILL, Site.DECODE)


def calls_at_each_site(model: GPT, prompt: int = 6) -> dict[str, list]:
    """The recorded SDPA calls of: a training forward, a prefill from 0, a decode step at the last position, a
    chunk at an offset, a step with rows at different positions, and a step without input_pos_maxp1."""
    B = 2
    idx = tokens(B, prompt + 3, vocab_size=model.config.vocab_size)
    recorded = {}
    with torch.no_grad():
        with record_calls() as recorded["training"]:
            model(idx)
        model.set_kv_cache(batch_size=B, dtype=next(model.parameters()).dtype)
        with record_calls() as recorded["prefill"]:
            model(idx[:, :prompt], torch.arange(prompt), input_pos_maxp1=prompt)
        with record_calls() as recorded["decode"]:
            model(idx[:, prompt : prompt + 1], torch.tensor([prompt]), input_pos_maxp1=prompt + 1)
        with record_calls() as recorded["offset chunk"]:
            model(idx[:, prompt + 1 : prompt + 3], torch.arange(prompt + 1, prompt + 3), input_pos_maxp1=prompt + 3)
        with record_calls() as recorded["rows at different positions"]:
            model(idx[:, :1], torch.tensor([[prompt + 2], [prompt + 1]]), input_pos_maxp1=prompt + 3)
        with record_calls() as recorded["no input_pos_maxp1"]:
            model(idx[:, :1], torch.tensor([prompt + 2]))
    return recorded


EXPECTED_SITES = {
    "training": Site.TRAINING,
    "prefill": Site.PREFILL,
    "decode": Site.DECODE,
    "offset chunk": Site.MASKED,
    "rows at different positions": Site.MASKED,
    "no input_pos_maxp1": Site.MASKED,
}


def assert_fused_kernel_arguments(call: dispatch.SdpaCall, where: str) -> None:
    q_dim, k_dim, v_dim = call.q[-1], call.k[-1], call.v[-1]
    assert len(set(call.dtypes)) == 1, f"{where}: q/k/v dtypes {call.dtypes}"
    if call.site in UNMASKED:
        assert call.mask is None, f"{where}: a mask at {call.site}"
        assert q_dim == k_dim == v_dim and q_dim % 8 == 0, f"{where}: head dims {q_dim}, {k_dim}, {v_dim}"
    else:
        assert call.mask is not None and call.mask.dtype == call.dtypes[0], f"{where}: mask {call.mask}"
        assert torch.isfinite(call.mask).all(), f"{where}: mask holds -inf or NaN"
        assert q_dim == k_dim and q_dim % 8 == 0 and v_dim % 8 == 0, f"{where}: head dims {q_dim}, {k_dim}, {v_dim}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_call_site_passes_what_fused_kernels_need(variant):
    config = VARIANTS[variant]
    model = random_gpt(config).to(torch.bfloat16)
    per_layer = 2 if variant == "mka-outputs" else 1
    for where, calls in calls_at_each_site(model).items():
        assert len(calls) == per_layer * config.n_layer, f"{where}: {len(calls)} SDPA calls"
        for call in calls:
            assert call.site is EXPECTED_SITES[where], f"{where}: site {call.site}"
            assert_fused_kernel_arguments(call, f"{variant}, {where}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", PRESET_VARIANTS)
def test_presets_are_flash_eligible_where_the_table_says(variant, size):
    """One layer of each preset at its own head sizes (MLA: L+R of the absorbed decode, P+R = V of training; at 1b
    and 1.4b L+R = 576 exceeds flash's 256 on CUDA, where the memory-efficient kernel serves the absorbed decode)."""
    config = preset_config(f"pythia-{size}-{variant}", n_layer=1, vocab_size=128, padded_vocab_size=128)
    model = GPT(config).to(torch.bfloat16).eval()
    for where, calls in calls_at_each_site(model).items():
        for call in calls:
            assert_fused_kernel_arguments(call, f"pythia-{size}-{variant}, {where}")


def test_cuda_policy_per_site():
    assert dispatch.backends_for(Site.TRAINING, "cuda")[0] is SDPBackend.CUDNN_ATTENTION  # PyTorch's sm90 order
    for site in (Site.PREFILL, Site.DECODE, Site.MASKED):
        assert SDPBackend.CUDNN_ATTENTION not in dispatch.backends_for(site, "cuda"), site  # a plan per shape
        assert dispatch.backends_for(site, "cuda")[-1] is SDPBackend.MATH  # the fallback, last
    assert SDPBackend.FLASH_ATTENTION not in dispatch.backends_for(Site.MASKED, "cuda")  # flash takes no mask
    assert all(dispatch.backends_for(site, "cpu") is None for site in Site)  # PyTorch's own CPU choice


def test_override_replaces_the_policy_and_is_recorded():
    q = torch.randn(1, 2, 1, 8)
    with dispatch.override_backends([SDPBackend.MATH]), record_calls() as calls:
        assert dispatch.backends_for(Site.DECODE, "cpu") == (SDPBackend.MATH,)
        dispatch.sdpa(q, q, q, site=Site.DECODE, scale=1.0)
    assert calls[0].backends == (SDPBackend.MATH,)
    assert dispatch.backends_for(Site.DECODE, "cpu") is None
    with pytest.raises(ValueError, match="override_backends needs at least one SDPBackend"):
        with dispatch.override_backends([]):
            pass


def test_additive_mask_is_finite_and_rows_without_a_visible_key_stay_finite():
    mask = torch.tensor([[True, False], [False, False]])
    additive = dispatch.additive_mask(mask, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and torch.isfinite(additive).all()
    assert additive[0, 0] == 0 and additive[0, 1] == torch.finfo(torch.bfloat16).min
    q = torch.randn(1, 1, 2, 8)
    out = dispatch.sdpa(q, q, q, site=Site.MASKED, scale=1.0, mask=mask[None, None])
    assert torch.isfinite(out).all()  # -inf would give NaN in the second row


def test_explicit_attention_scores_in_float32():
    """bf16 inputs: scores and softmax in float32, the same as a float32 computation of the bf16 numbers."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 8, generator=generator).bfloat16() for _ in range(3))
    ours = dispatch.explicit_attention(q, k, v, scale=0.3, softcapping=5.0, causal=True)
    scores = torch.tanh(q.float() @ k.float().mT * 0.3 / 5.0) * 5.0
    scores = scores.masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf"))
    expected = scores.softmax(-1).bfloat16() @ v
    torch.testing.assert_close(ours, expected)


# ------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", PRESET_VARIANTS)
def test_cuda_runs_fused_kernels_and_no_cudnn_at_decode(variant):
    with torch.device("cuda"):
        model = GPT(preset_config(f"pythia-70m-{variant}", n_layer=2)).to(torch.bfloat16).eval()
        idx = torch.zeros(2, 64, dtype=torch.long)
    training = attention_kernels_run(model, idx)
    model.set_kv_cache(batch_size=2)
    prefill = attention_kernels_run(model, idx[:, :63], torch.arange(63, device="cuda"), input_pos_maxp1=63)
    decode = attention_kernels_run(model, idx[:, 63:], torch.tensor([63], device="cuda"), input_pos_maxp1=64)
    print(f"pythia-70m-{variant}: training {training}, prefill {prefill}, decode {decode}")
    for where, kernels in (("training", training), ("prefill", prefill), ("decode", decode)):
        assert kernels and "math" not in kernels, f"{where}: {kernels}"
    assert "cuDNN" not in prefill + decode
