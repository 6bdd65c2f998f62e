"""Tests of litgpt_mka/attention/grouped.py: GroupedQueryAttention against litgpt's CausalSelfAttention, cached
decoding, the grouped evaluation (no repeated cache), FlashAttention dispatch, checkpoints in both directions.

Numerical checks run in float32 on the CPU with fixed seeds and compare whole tensors with
``torch.testing.assert_close`` (default float32 tolerances: rtol 1.3e-6, atol 1e-5).
"""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from litgpt.generate.base import generate
from litgpt.model import GPT, CausalSelfAttention
from torch.profiler import ProfilerActivity, profile

import litgpt_mka  # noqa: F401  (activates the plugin for litgpt modules imported below)
from litgpt_mka.attention.dispatch import Site, cached_site
from litgpt_mka.attention.functional import grouped_attention
from litgpt_mka.attention.grouped import GroupedQueryAttention
from litgpt_mka.measure.kv_cache_size import allocated_kv_cache_bytes, kv_cache_bytes_per_token
from tests.helpers import (
    assert_cached_decode_matches_full_forward,
    assert_chunked_prefill_matches_single_prefill,
    assert_rows_at_different_positions_match_full_forward,
    attention_kernels_run,
    build_gpt,
    preset_config,
    random_gpt,
    run_with_plugin,
    save_stock_checkpoint,
    tiny_config,
    tokens,
)

LAYOUTS = ("mha", "gqa", "mqa")  # n_query_groups 4, 2, 1 of 4 heads
OURS = {"attention_class_name": "GroupedQueryAttention"}
LITGPT_OPTIONS = {
    "plain": {},
    "softcapping": {"attention_logit_softcapping": 2.0},
    "norm_qk": {"norm_qk": True},
    "norm_qk_olmo2": {"norm_qk": True, "norm_qk_type": "olmo2"},
    "rope_interleave": {"rope_interleave": True},
    "scores_scalar": {"attention_scores_scalar": 20},
    "yarn_mscale": {
        "rope_adjustments": {
            "factor": 4.0, "beta_fast": 32, "beta_slow": 1, "original_max_seq_len": 16, "mscale_all_dim": 1.0
        }
    },
}


def ours_and_litgpts(layout: str, **overrides) -> tuple[GPT, GPT]:
    """Our model (random weights) and litgpt's CausalSelfAttention model holding the same state dict."""
    config = tiny_config(layout, **OURS, **overrides)
    ours = random_gpt(config)
    litgpt = build_gpt(config, CausalSelfAttention).eval()
    assert type(litgpt.transformer.h[0].attn) is CausalSelfAttention
    litgpt.load_state_dict(ours.state_dict(), strict=True)
    return ours, litgpt


def repeated_reference(q, k, v, scale, mask=None, is_causal=False):
    """litgpt's evaluation: k, v repeated to every query head, then SDPA; (B, nh_q, T, hs) -> (B, T, nh_q, hs)."""
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, nh_kv, S, hs) -> (B, nh_q, S, hs)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=is_causal).transpose(1, 2)


# --------------------------------------------------------------------------------- equal to litgpt's class
@pytest.mark.parametrize("option", LITGPT_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_forward_equals_litgpt_causal_self_attention(layout, option):
    ours, litgpt = ours_and_litgpts(layout, **LITGPT_OPTIONS[option])
    assert all(type(block.attn) is GroupedQueryAttention for block in ours.transformer.h)
    idx = tokens(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), litgpt(idx))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_gradients_equal_litgpts_repeated_heads(layout):
    """SDPA's enable_gqa reads the shared key/value heads without litgpt's repeat_interleave: the same gradients."""
    ours, litgpt = ours_and_litgpts(layout)
    idx = tokens(2, 20)
    for model in (ours, litgpt):
        model.train()
        model(idx).logsumexp(-1).mean().backward()
    grads = {name: p.grad for name, p in litgpt.named_parameters()}
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_decode_equals_litgpt_cached_decode(layout):
    """Prefill 7 tokens, then 9 single-token steps: the same logits from both classes' caches."""
    ours, litgpt = ours_and_litgpts(layout)
    idx = tokens(2, 16)
    logits = []
    for model in (ours, litgpt):
        model.set_kv_cache(batch_size=2)
        with torch.no_grad():
            steps = [model(idx[:, :7], torch.arange(7), input_pos_maxp1=7)]
            steps += [model(idx[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1) for t in range(7, 16)]
        logits.append(torch.cat(steps, dim=1))
    torch.testing.assert_close(logits[0], logits[1])


def test_state_dict_and_cache_are_litgpts():
    ours, litgpt = ours_and_litgpts("gqa")
    assert list(ours.state_dict()) == list(litgpt.state_dict())
    ours.set_kv_cache(batch_size=3, max_seq_length=10)
    litgpt.set_kv_cache(batch_size=3, max_seq_length=10)
    for mine, theirs in zip(ours.transformer.h, litgpt.transformer.h):
        assert type(mine.attn.kv_cache) is type(theirs.attn.kv_cache)
        assert mine.attn.kv_cache.k.shape == theirs.attn.kv_cache.k.shape == (3, 2, 10, 16)  # (B, nh_kv, S, hs)
    config = ours.config
    assert allocated_kv_cache_bytes(ours) == 3 * 10 * kv_cache_bytes_per_token(config, torch.float32)
    assert kv_cache_bytes_per_token(config, torch.float32) == config.n_layer * 2 * 2 * 16 * 4  # 2 nh_kv hs x 4 B


@pytest.mark.parametrize("layout", ("gqa", "mqa"))
def test_stock_litgpt_checkpoint_decodes_to_the_same_greedy_tokens(layout, tmp_path):
    """A checkpoint saved by litgpt's class loads into ours; litgpt's generate() gives the same greedy tokens."""
    torch.manual_seed(0)
    stock = GPT(tiny_config(layout, attention_class_name="CausalSelfAttention"))
    assert type(stock.transformer.h[0].attn) is CausalSelfAttention
    torch.save(stock.state_dict(), tmp_path / "lit_model.pth")
    ours = GPT(tiny_config(layout, **OURS))
    ours.load_state_dict(torch.load(tmp_path / "lit_model.pth"), strict=True)
    assert type(ours.transformer.h[0].attn) is GroupedQueryAttention
    prompt = tokens(1, 9)[0]
    outputs = []
    for model in (stock, ours):
        model.eval()
        model.max_seq_length = 40
        model.set_kv_cache(batch_size=1)
        outputs.append(generate(model, prompt, max_returned_tokens=40, temperature=0.0, top_k=1))
    assert outputs[0].shape == (40,)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.slow
@pytest.mark.parametrize("n_query_groups", [2, 1], ids=["gqa", "mqa"])
def test_litgpt_generate_on_a_stock_checkpoint_same_tokens_with_our_class(n_query_groups, tmp_path, tokenizer_dir):
    """Saved with the plugin off; `litgpt generate` with stock litgpt, then with our class named in the config."""
    stock_dir, ours_dir = tmp_path / "stock", tmp_path / "ours"
    stock_dir.mkdir()
    tiny = dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=n_query_groups, block_size=96)
    save_stock_checkpoint(stock_dir, tokenizer_dir, **tiny)
    shutil.copytree(stock_dir, ours_dir)
    model_config = yaml.safe_load((ours_dir / "model_config.yaml").read_text())
    (ours_dir / "model_config.yaml").write_text(yaml.safe_dump({**model_config, **OURS}))
    litgpt = shutil.which("litgpt") or str(Path(sys.executable).parent / "litgpt")
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play"
    # float32: litgpt generate's CPU default, bf16-true, rounds the grouped and the repeated kernels differently
    # enough to flip a near-tie of this random model's 50k logits
    options = ["--prompt", prompt, "--max_new_tokens", "24", "--temperature", "0", "--top_k", "1"]
    options += ["--precision", "32-true"]
    stock = run_with_plugin([litgpt, "generate", str(stock_dir), *options], plugin=False)
    ours = run_with_plugin([litgpt, "generate", str(ours_dir), *options], plugin=True)
    stock_text, ours_text = stock.stdout.splitlines()[-1], ours.stdout.splitlines()[-1]
    assert stock_text.startswith(prompt) and len(stock_text) > len(prompt) + 24
    assert ours_text == stock_text
    assert "'attention_class_name': 'GroupedQueryAttention'" in ours.stderr


# ------------------------------------------------------------------------------------------ cached decode
@pytest.mark.parametrize("option", ("plain", "softcapping", "norm_qk"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_token_by_token_decode_equals_full_forward(layout, option):
    model = random_gpt(tiny_config(layout, **OURS, **LITGPT_OPTIONS[option]))
    assert_cached_decode_matches_full_forward(model, tokens(3, 24), prompt=5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_prefill_equals_single_prefill(layout):
    model = random_gpt(tiny_config(layout, **OURS))
    assert_chunked_prefill_matches_single_prefill(model, tokens(2, 24), [7, 3, 1, 13])


@pytest.mark.parametrize("layout", ("gqa", "mqa"))
def test_batched_input_pos_with_rows_at_different_positions(layout):
    """Row 0 decodes on at positions 6..11; row 1 rolls back to position 3 and decodes other tokens."""
    assert_rows_at_different_positions_match_full_forward(random_gpt(tiny_config(layout, **OURS)))


@pytest.mark.parametrize("layout", ("gqa", "mqa"))
def test_module_called_without_mask_is_right_at_any_offset(layout):
    """A cached chunk at positions 6..9 with mask=None equals the same rows of one 10-token forward."""
    model = random_gpt(tiny_config(layout, **OURS))
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(4))
    cos, sin = model.cos[:10][None], model.sin[:10][None]
    attn.kv_cache = attn.build_kv_cache(2, 16, rope_cache_length=model.cos.size(-1))
    with torch.no_grad():
        full = attn(x, cos, sin)  # (2, 10, C), causal
        attn(x[:, :6], cos[:, :6], sin[:, :6], None, torch.arange(6))
        chunk = attn(x[:, 6:], cos[:, 6:], sin[:, 6:], None, torch.arange(6, 10))  # no input_pos_maxp1: S = 16
    torch.testing.assert_close(chunk, full[:, 6:])


def test_forward_without_cache_raises_litgpts_type_error():
    model = random_gpt(tiny_config("gqa", **OURS))
    attn = model.transformer.h[0].attn
    x, cos, sin = torch.zeros(1, 1, 64), model.cos[:1][None], model.sin[:1][None]
    with pytest.raises(TypeError, match=r"You need to call `gpt.set_kv_cache\(\)`"):
        attn(x, cos, sin, None, torch.tensor([0]))


# ------------------------------------------------------------------------------------ grouped evaluation
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("nh_kv", [4, 2, 1])
def test_grouped_attention_equals_repeated_heads(nh_kv, T):
    """Against litgpt's repeat_interleave + SDPA, with a per-row boolean mask (B, 1, T, S) and without."""
    generator = torch.Generator().manual_seed(0)
    B, nh_q, S, hs = 3, 4, 11, 16
    q = torch.randn(B, nh_q, T, hs, generator=generator)
    k, v = torch.randn(2, B, nh_kv, S, hs, generator=generator)
    mask = torch.rand(B, 1, T, S, generator=generator) < 0.7
    mask[..., 0] = True  # every query sees a key
    for m in (mask, mask[:1], None):
        expected = repeated_reference(q, k, v, 0.3, m)
        site = Site.DECODE if m is None else Site.MASKED  # no mask: every query sees every key
        torch.testing.assert_close(grouped_attention(q, k, v, scale=0.3, site=site, mask=m), expected)


@pytest.mark.parametrize("site", [Site.TRAINING, Site.PREFILL])
@pytest.mark.parametrize("softcapping", [None, 2.0])
@pytest.mark.parametrize("nh_kv", [4, 2, 1])
def test_grouped_attention_causal_equals_repeated_heads(nh_kv, softcapping, site):
    """Training and a prefill from 0: a chunk over itself (T == S), causal; softcapping against litgpt's method."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 9, 16, generator=generator)  # (B, nh_q, T, hs)
    k, v = torch.randn(2, 3, nh_kv, 9, 16, generator=generator)  # (B, nh_kv, T, hs)
    ours = grouped_attention(q, k, v, scale=0.25, site=site, softcapping=softcapping)
    if softcapping is None:
        expected = repeated_reference(q, k, v, 0.25, is_causal=True)
    else:
        litgpt = CausalSelfAttention(tiny_config("mha", attention_logit_softcapping=softcapping), 0)
        g = 4 // nh_kv
        expected = litgpt.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1))
    torch.testing.assert_close(ours, expected)


def test_grouped_attention_errors():
    q, k = torch.zeros(1, 4, 2, 8), torch.zeros(1, 3, 2, 8)
    with pytest.raises(ValueError, match=r"key/value heads \(3\) must divide query heads \(4\)"):
        grouped_attention(q, k, k, scale=1.0, site=Site.DECODE)
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="attention at site 'decode' takes no mask"):
        grouped_attention(q, q, q, scale=1.0, site=Site.DECODE, mask=mask)
    with pytest.raises(ValueError, match="attention at site 'masked' needs mask"):
        grouped_attention(q, q, q, scale=1.0, site=Site.MASKED)


def test_call_site_rule_reads_shapes_only():
    assert cached_site(1, torch.tensor([7]), 8) is Site.DECODE
    assert cached_site(1, torch.tensor([7]), None) is Site.MASKED  # S = max_seq_length: later slots masked
    assert cached_site(1, torch.tensor([[7], [3]]), 8) is Site.MASKED  # rows at different positions
    assert cached_site(4, torch.arange(4, 8), 8) is Site.MASKED  # a chunk at an offset: causal within it
    assert cached_site(4, torch.arange(4), 4) is Site.PREFILL  # from position 0: causal over itself


def sdpa_calls_in_one_decode_step(model: GPT) -> list:
    """Input shapes of every SDPA call, and every op name, of one cached single-token step at position 8."""
    model.set_kv_cache(batch_size=2)
    with torch.no_grad():
        model(tokens(2, 8), torch.arange(8), input_pos_maxp1=8)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(tokens(2, 1), torch.tensor([8]), input_pos_maxp1=9)
    names = [event.name for event in prof.events()]
    shapes = [event.input_shapes for event in prof.events() if event.name == "aten::scaled_dot_product_attention"]
    return names, shapes


MKA = {"attention_class_name": "MemorizedKeyAttention"}


@pytest.mark.parametrize(
    "overrides",
    [{**OURS, "n_query_groups": 2}, {**OURS, "n_query_groups": 1}]
    + [
        {**MKA, "memorized_key_attention": {"routing": routing}, "n_query_groups": groups}
        for routing in ("keys", "keys_values")
        for groups in (2, 1)
    ],
    ids=["gqa", "mqa", "mka-gqa", "mka-mqa", "fmka-gqa", "fmka-mqa"],
)
def test_cached_step_reads_each_key_value_head_once(overrides):
    """No repeat_interleave of the cache: SDPA gets nh_kv key/value heads and g query rows per head, no mask."""
    config = tiny_config("mha", **overrides)
    names, shapes = sdpa_calls_in_one_decode_step(random_gpt(config))
    assert "aten::repeat_interleave" not in names
    nh_kv, g = config.n_query_groups, config.n_head // config.n_query_groups
    assert len(shapes) == config.n_layer
    for q_shape, k_shape, v_shape, mask_shape, *_ in shapes:
        assert q_shape == [2, nh_kv, g, 16]  # (B, nh_kv, g T, hs), T = 1
        assert k_shape == v_shape == [2, nh_kv, 9, 16]  # (B, nh_kv, S, hs)
        assert mask_shape == []  # a decode step at the last cached position needs no mask (flash-eligible)


# ------------------------------------------------------------------------------------------ FlashAttention
def count_ops(model: GPT, idx: torch.Tensor, name: str) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(idx)
    return sum(1 for event in prof.events() if event.name == name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flash_attention_dispatched_in_training_forward(layout):
    model = random_gpt(tiny_config(layout, **OURS)).train()
    assert count_ops(model, tokens(2, 16), "aten::_scaled_dot_product_flash_attention_for_cpu") == model.config.n_layer


@pytest.mark.parametrize("path", ("pythia-70m-gqa", "pythia-70m-mqa"))
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_attention_dispatched_on_cuda(path):
    """A fused kernel (which one is PyTorch's choice on that GPU, printed), never the math fallback."""
    config = preset_config(path, n_layer=1)
    with torch.device("cuda"):
        model = GPT(config).to(torch.bfloat16)
        idx = torch.zeros(1, 32, dtype=torch.long)
    kernels = attention_kernels_run(model, idx)
    print(f"{path}: {kernels}")
    assert len(kernels) == 1 and kernels[0] != "math"


@pytest.mark.parametrize("layout", ("gqa", "mqa"))
def test_forward_and_decode_step_compile_without_graph_breaks(layout):
    """Training forward and a cached decode step (the whole-cache rule reads shapes only) in one graph each."""
    model = random_gpt(tiny_config(layout, **OURS))
    idx = tokens(2, 12)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx))
        model.set_kv_cache(batch_size=2)
        model(idx[:, :11], torch.arange(11), input_pos_maxp1=11)
        expected = model(idx[:, 11:], torch.tensor([11]), input_pos_maxp1=12)
        model.set_kv_cache(batch_size=2)
        model(idx[:, :11], torch.arange(11), input_pos_maxp1=11)
        torch.testing.assert_close(compiled(idx[:, 11:], torch.tensor([11]), input_pos_maxp1=12), expected)


# -------------------------------------------------------------------------------------- presets, validation
@pytest.mark.parametrize("size", ("14m", "70m", "160m", "410m", "1b", "1.4b"))
@pytest.mark.parametrize("layout", ("gqa", "mqa"))
def test_presets_use_grouped_query_attention(layout, size):
    config = preset_config(f"pythia-{size}-{layout}", n_layer=1)
    assert config.attention_class is GroupedQueryAttention
    assert (config.n_query_groups == 1) == (layout == "mqa")
    with torch.device("meta"):  # the class of every block, without memory at any size
        assert all(type(block.attn) is GroupedQueryAttention for block in GPT(config).transformer.h)


def test_sliding_window_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"sliding_window_size=8 is not supported with .*GroupedQueryAttention"):
        tiny_config("gqa", **OURS, sliding_window_size=8)
