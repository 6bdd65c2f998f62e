"""litgpt_mka.attention.mla: equations, cache, absorbed vs expanded paths, stock-litgpt equivalence, presets.

fp32 on CPU, tiny overrides of the pythia-14m preset, fixed seeds, whole tensors compared with
`torch.testing.assert_close` (rtol/atol 1e-5 unless a test says otherwise).
"""

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from litgpt.config import Config
from litgpt.model import GPT, apply_rope

from litgpt_mka.attention.dispatch import Site
from litgpt_mka.attention.mla import LatentKVCache, MultiheadLatentAttention, default_absorb_max_queries
from litgpt_mka.attention.registry import attention_class
from tests.helpers import (
    TINY_LATENT,
    assert_cached_decode_matches_full_forward,
    assert_rows_at_different_positions_match_full_forward,
    attention_kernels_run,
    build_gpt,
    decode_token_by_token,
    prefill_in_chunks,
    preset_config,
    random_gpt,
    run_with_plugin,
    save_stock_checkpoint,
    tokens,
)
from tests.helpers import tiny_config as tiny_config_of

STOCK_MLA = "LitgptMultiheadLatentAttention"
ROOT = Path(__file__).parents[2]
TOKENIZER_DIR = Path(__file__).parents[2] / ".." / "shared" / "tokenizers" / "pythia"
TOL = dict(rtol=1e-5, atol=1e-5)
# TINY_LATENT: L = 32, R = 8, P = 8, V = 16 (P + R == V), Lq = 24, nh = 4: T* = 32 * 24 / (64 - 24) = 19
ALWAYS_ABSORBED, ALWAYS_EXPANDED = 10**9, 0
tiny_gpt = random_gpt


def tiny_config(q_lora_rank: int | None = 24, **overrides) -> Config:
    """helpers.tiny_config("mla") with `q_lora_rank` and `latent={...}` overrides of its latent dims."""
    latent = {**TINY_LATENT, "q_lora_rank": q_lora_rank, **overrides.pop("latent", {})}
    return tiny_config_of("mla", latent_attention=latent, **overrides)


def set_path(model: GPT, absorb_max_queries: int) -> None:
    for block in model.transformer.h:
        block.attn.absorb_max_queries = absorb_max_queries


# ---------------------------------------------------------------------------------- executable equations
def reference_mla(
    attn: MultiheadLatentAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """The module docstring's expanded equations, per head, plain einsum + causal softmax, no cache."""
    c = attn.config
    nh, L, R, P, V = c.n_head, c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim
    B, T, _ = x.shape
    q = attn.q_proj(x) if c.q_lora_rank is None else attn.q_b_proj(attn.q_a_norm(attn.q_a_proj(x)))
    q = q.view(B, T, nh, P + R)
    q_nope, q_rope = q[..., :P], apply_rope(q[..., P:].transpose(1, 2), cos, sin)  # (B,T,nh,P), (B,nh,T,R)
    latent, k_rope = attn.kv_a_proj_with_mqa(x).split((L, R), dim=-1)
    latent, k_rope = attn.kv_a_norm(latent), apply_rope(k_rope, cos, sin)  # (B,T,L), (B,T,R)
    w = attn.kv_b_proj.weight.view(nh, P + V, L)
    b = attn.kv_b_proj.bias.view(nh, P + V)
    k_nope = torch.einsum("hpl,bsl->bshp", w[:, :P], latent) + b[:, :P]  # (B, S, nh, P)
    v = torch.einsum("hvl,bsl->bshv", w[:, P:], latent) + b[:, P:]  # (B, S, nh, V)
    scores = torch.einsum("bthp,bshp->bhts", q_nope, k_nope) + torch.einsum("bhtr,bsr->bhts", q_rope, k_rope)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    weights = (scores / math.sqrt(P + R)).masked_fill(~causal, float("-inf")).softmax(dim=-1)
    o = torch.einsum("bhts,bshv->bthv", weights, v).reshape(B, T, nh * V)
    return attn.proj(o)


@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_attention_matches_reference_equations(q_lora_rank):
    model = tiny_gpt(tiny_config(q_lora_rank))
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(3))
    cos, sin = model.cos[:12].unsqueeze(0), model.sin[:12].unsqueeze(0)
    torch.testing.assert_close(attn(x, cos, sin), reference_mla(attn, x, cos, sin), **TOL)


# -------------------------------------------------------------------------------- stock litgpt equivalence
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rope_interleave": True},
        {"attention_scores_scalar": 20},
        {"attention_logit_softcapping": 5.0},
        {"rope_adjustments": {"factor": 4.0, "beta_fast": 32, "beta_slow": 1, "original_max_seq_len": 16,
                              "mscale_all_dim": 1.0}},
    ],
    ids=["plain", "rope_interleave", "scores_scalar", "softcapping", "yarn_mscale"],
)
def test_training_forward_equals_stock_litgpt_mla(overrides):
    config = tiny_config(**overrides)
    ours = tiny_gpt(config)
    stock = build_gpt(config, attention_class(STOCK_MLA))
    assert type(stock.transformer.h[0].attn) is attention_class(STOCK_MLA)
    stock.load_state_dict(ours.state_dict(), strict=True)
    idx = tokens(2, 20)
    torch.testing.assert_close(ours(idx), stock(idx), **TOL)


def test_state_dict_keys_equal_stock_litgpt_mla():
    config = tiny_config()
    ours, stock = tiny_gpt(config), build_gpt(config, attention_class(STOCK_MLA))
    assert list(ours.state_dict()) == list(stock.state_dict())
    ours.set_kv_cache(batch_size=1)
    ours(tokens(1, 1), torch.tensor([0]), 1)  # computes the absorbed weights
    assert list(ours.state_dict()) == list(stock.state_dict())  # derived weights are not persistent


def test_plugin_resolves_litgpt_mla_config_to_our_class():
    model = GPT(tiny_config())
    assert all(type(block.attn) is MultiheadLatentAttention for block in model.transformer.h)
    assert isinstance(model.transformer.h[0].attn, attention_class(STOCK_MLA))


# ------------------------------------------------------------------------------------------ cached decode
@pytest.mark.parametrize(
    "absorb_max_queries", [ALWAYS_ABSORBED, ALWAYS_EXPANDED, None], ids=["absorbed", "expanded", "rule"]
)
@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_token_by_token_decode_equals_full_forward(absorb_max_queries, q_lora_rank):
    model = tiny_gpt(tiny_config(q_lora_rank))
    if absorb_max_queries is not None:
        set_path(model, absorb_max_queries)
    assert_cached_decode_matches_full_forward(model, tokens(3, 24), prompt=5, **TOL)


@pytest.mark.parametrize("absorb_max_queries", [ALWAYS_ABSORBED, ALWAYS_EXPANDED], ids=["absorbed", "expanded"])
def test_softcapped_decode_equals_full_forward(absorb_max_queries):
    """Softcapping cannot run in SDPA: both paths take their explicit-softmax branch."""
    model = tiny_gpt(tiny_config(attention_logit_softcapping=2.0))
    set_path(model, absorb_max_queries)
    assert_cached_decode_matches_full_forward(model, tokens(2, 12), prompt=4, **TOL)


@pytest.mark.parametrize("absorb_max_queries", [ALWAYS_ABSORBED, ALWAYS_EXPANDED], ids=["absorbed", "expanded"])
def test_batched_input_pos_with_rows_at_different_positions(absorb_max_queries):
    """Row 0 decodes on at positions 6..11; row 1 rolls back to position 3 and decodes other tokens."""
    model = tiny_gpt(tiny_config())
    set_path(model, absorb_max_queries)
    assert_rows_at_different_positions_match_full_forward(model, **TOL)


def test_absorbed_equals_expanded_for_a_chunk_against_the_cache():
    model = tiny_gpt(tiny_config())
    idx = tokens(2, 14)
    outputs = []
    for absorb_max_queries in (ALWAYS_ABSORBED, ALWAYS_EXPANDED):
        set_path(model, absorb_max_queries)
        model.set_kv_cache(batch_size=2)
        with torch.no_grad():
            model(idx[:, :9], torch.arange(9), input_pos_maxp1=9)
            outputs.append(model(idx[:, 9:], torch.arange(9, 14), input_pos_maxp1=14))  # 5 queries, 14 keys
    torch.testing.assert_close(outputs[0], outputs[1], **TOL)


def test_chunked_prefill_equals_single_prefill():
    """Chunks of 7, 3 and 1 (absorbed by the rule) and 13 (expanded) against one 24-token prefill (expanded)."""
    model = tiny_gpt(tiny_config())
    idx = tokens(2, 24)
    single = prefill_in_chunks(model, idx, [24])
    single_cache = [(b.attn.kv_cache.latent.clone(), b.attn.kv_cache.k_rope.clone()) for b in model.transformer.h]
    torch.testing.assert_close(prefill_in_chunks(model, idx, [7, 3, 1, 13]), single, **TOL)
    for block, (latent, k_rope) in zip(model.transformer.h, single_cache):
        torch.testing.assert_close(block.attn.kv_cache.latent, latent, **TOL)
        torch.testing.assert_close(block.attn.kv_cache.k_rope, k_rope, **TOL)


def test_rule_picks_absorbed_for_decode_and_expanded_for_long_chunks(monkeypatch):
    config = tiny_config()
    model = tiny_gpt(config)
    attn = model.transformer.h[0].attn
    assert attn.absorb_max_queries == default_absorb_max_queries(config) == 32 * (8 + 16) // (2 * 32 - 8 - 16)
    calls = []
    for path in ("_absorbed_attention", "_expanded_attention"):
        original = getattr(attn, path)
        monkeypatch.setattr(attn, path, lambda *a, _p=path, _o=original, **k: calls.append(_p) or _o(*a, **k))
    model.set_kv_cache(batch_size=1)
    with torch.no_grad():
        model(tokens(1, 20), torch.arange(20), 20)  # 20 > T* = 19
        model(tokens(1, 19), torch.arange(20, 39), 39)  # 19 <= T*
        model(tokens(1, 1), torch.tensor([39]), 40)
        model(tokens(1, 8))  # training forward, no cache
    assert calls == ["_expanded_attention", "_absorbed_attention", "_absorbed_attention", "_expanded_attention"]


def test_absorb_max_queries_from_config():
    config = tiny_config(latent={"absorb_max_queries": 0})
    assert GPT(config).transformer.h[1].attn.absorb_max_queries == 0


def test_default_absorb_max_queries_unbounded_when_latent_is_narrow():
    config = tiny_config(latent={"kv_lora_rank": 8})  # 2L = 16 <= P + V = 24
    assert default_absorb_max_queries(config) == torch.iinfo(torch.int64).max


# ------------------------------------------------------------------------------------------------ the cache
def test_cache_holds_normed_latent_and_roped_key_only():
    model = tiny_gpt(tiny_config())
    model.set_kv_cache(batch_size=3, max_seq_length=20)
    cache = model.transformer.h[0].attn.kv_cache
    assert isinstance(cache, LatentKVCache)
    assert {name: tuple(b.shape) for name, b in cache.named_buffers()} == {"rows": (3, 20, 32 + 8)}  # [c ; k_r]
    idx = tokens(2, 6)  # fewer rows than allocated
    with torch.no_grad():
        model(idx, torch.arange(6), 6)
        attn = model.transformer.h[0].attn
        x = model.transformer.h[0].norm_1(model.transformer.wte(idx))
        latent, k_rope = attn.kv_a_proj_with_mqa(x).split((32, 8), dim=-1)
        expected_latent = attn.kv_a_norm(latent)
        expected_k_rope = apply_rope(k_rope, model.cos[:6].unsqueeze(0), model.sin[:6].unsqueeze(0))
    torch.testing.assert_close(cache.latent[:2, :6], expected_latent, **TOL)
    torch.testing.assert_close(cache.k_rope[:2, :6], expected_k_rope, **TOL)
    torch.testing.assert_close(cache.latent[2:], torch.zeros(1, 20, 32), rtol=0, atol=0)
    torch.testing.assert_close(cache.latent[:, 6:], torch.zeros(3, 14, 32), rtol=0, atol=0)
    cache.reset_parameters()
    torch.testing.assert_close(cache.latent, torch.zeros(3, 20, 32), rtol=0, atol=0)
    torch.testing.assert_close(cache.k_rope, torch.zeros(3, 20, 8), rtol=0, atol=0)


def test_cache_follows_activation_dtype():
    cache = LatentKVCache(1, 4, kv_lora_rank=2, qk_rope_head_dim=2, dtype=torch.float32)
    ones = torch.ones(1, 1, 2, dtype=torch.bfloat16)
    latent, k_rope = cache(torch.tensor([1]), ones, ones)
    assert cache.latent.dtype == cache.k_rope.dtype == latent.dtype == k_rope.dtype == torch.bfloat16
    expected = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]], dtype=torch.bfloat16)
    torch.testing.assert_close(latent, expected)


def test_forward_without_cache_and_bad_rope_cache_length():
    model = tiny_gpt(tiny_config())
    attn = model.transformer.h[0].attn
    x, cos, sin = torch.zeros(1, 1, 64), model.cos[:1][None], model.sin[:1][None]
    with pytest.raises(TypeError, match=r"You need to call `gpt.set_kv_cache\(\)`"):
        attn(x, cos, sin, None, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"rope_cache_length=16 must equal qk_rope_head_dim=8"):
        attn.build_kv_cache(1, 8, rope_cache_length=16)


# ---------------------------------------------------------------------------------------- absorbed weights
def count_absorptions(model: GPT, monkeypatch) -> list:
    calls = []
    for block in model.transformer.h:
        original = block.attn.absorb_weights
        monkeypatch.setattr(block.attn, "absorb_weights", lambda _o=original: calls.append(1) or _o())
    return calls


def test_absorbed_weights_computed_once_and_refreshed_after_load_state_dict(monkeypatch):
    model, other = tiny_gpt(tiny_config(), seed=0), tiny_gpt(tiny_config(), seed=1)
    calls = count_absorptions(model, monkeypatch)
    idx = tokens(2, 10)
    decode_token_by_token(model, idx, prompt=3)
    assert len(calls) == 2  # once per layer for 8 decode steps
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        expected = other(idx)
    torch.testing.assert_close(decode_token_by_token(model, idx, prompt=3), expected, **TOL)
    assert len(calls) == 4


def test_a_data_edit_needs_clear_absorbed_weights():
    """`.data` edits bump no version counter: the cache is stale until clear_absorbed_weights()."""
    model = tiny_gpt(tiny_config())
    idx = tokens(2, 10)
    decode_token_by_token(model, idx, prompt=3)  # absorbs the initial weights
    for block in model.transformer.h:
        block.attn.kv_b_proj.weight.data.mul_(1.5)
    with torch.no_grad():
        expected = model(idx)
    assert not torch.allclose(decode_token_by_token(model, idx, prompt=3), expected, **TOL)  # stale
    for block in model.transformer.h:
        block.attn.clear_absorbed_weights()
    torch.testing.assert_close(decode_token_by_token(model, idx, prompt=3), expected, **TOL)


def test_absorbed_weights_refreshed_after_an_optimizer_step():
    model = tiny_gpt(tiny_config()).train()
    idx = tokens(2, 10)
    decode_token_by_token(model, idx, prompt=3)  # absorbs the initial weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(idx).logsumexp(-1).mean().backward()
    optimizer.step()  # in-place update: same data_ptr, new version
    with torch.no_grad():
        expected = model(idx)
    torch.testing.assert_close(decode_token_by_token(model, idx, prompt=3), expected, **TOL)


def test_absorbed_weights_refreshed_for_inference_tensors():
    """litgpt generate builds and loads the model under inference_mode: no version counters there."""
    other = tiny_gpt(tiny_config(), seed=1)
    idx = tokens(1, 8)
    with torch.inference_mode():
        model = tiny_gpt(tiny_config(), seed=0)
        model.set_kv_cache(batch_size=1)
        model(idx[:, :1], torch.tensor([0]), 1)  # absorbs the seed-0 weights
        model.load_state_dict(other.state_dict())
        expected = other(idx)
        actual = decode_token_by_token(model, idx, prompt=1)
    torch.testing.assert_close(actual, expected, **TOL)


def test_absorbed_path_is_differentiable_when_grad_is_enabled():
    model = tiny_gpt(tiny_config())
    set_path(model, ALWAYS_ABSORBED)
    idx = tokens(1, 6)
    model.set_kv_cache(batch_size=1)
    model(idx, torch.arange(6), 6).sum().backward()
    cached_grad = model.transformer.h[0].attn.kv_b_proj.weight.grad.clone()
    model.zero_grad()
    model(idx).sum().backward()
    torch.testing.assert_close(cached_grad, model.transformer.h[0].attn.kv_b_proj.weight.grad, **TOL)


# ------------------------------------------------------------------------------- compile and meta device
def test_training_forward_compiles_without_graph_breaks():
    model = tiny_gpt(tiny_config())
    idx = tokens(2, 12)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(idx), model(idx), **TOL)


def test_training_forward_on_meta_device():
    with torch.device("meta"):
        model = GPT(tiny_config())
        logits = model(torch.zeros(2, 12, dtype=torch.long))
    assert logits.shape == (2, 12, 128) and logits.is_meta


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"latent": {"kv_lora_rnk": 4}}, r"latent_attention has unknown key\(s\) \['kv_lora_rnk'\]; allowed keys are \["),
        ({"latent": {"kv_lora_rank": None}}, r"latent_attention\['kv_lora_rank'\]=None must be a positive integer"),
        ({"latent": {"v_head_dim": 0}}, r"latent_attention\['v_head_dim'\]=0 must be a positive integer"),
        ({"latent": {"qk_nope_head_dim": 2.5}}, r"latent_attention\['qk_nope_head_dim'\]=2.5 must be a positive"),
        ({"latent": {"qk_rope_head_dim": -2}}, r"latent_attention\['qk_rope_head_dim'\]=-2 must be a positive integer"),
        ({"latent": {"qk_rope_head_dim": 7}}, r"latent_attention\['qk_rope_head_dim'\]=7 must be even \(RoPE rotates"),
        ({"q_lora_rank": 0}, r"latent_attention\['q_lora_rank'\]=0 must be a positive integer, or null"),
        ({"latent": {"absorb_max_queries": -1}}, r"latent_attention\['absorb_max_queries'\]=-1 must be a non-negative"),
        ({"n_query_groups": 2}, r"n_query_groups=2 must equal n_head=4 for MultiheadLatentAttention"),
    ],
)
def test_validation_errors(overrides, match):
    overrides = dict(overrides)
    q_lora_rank = overrides.pop("q_lora_rank", 24)
    with pytest.raises(ValueError, match=match):
        tiny_config(q_lora_rank, **overrides)


def test_kv_cache_elements_per_token():
    assert MultiheadLatentAttention.kv_cache_elements_per_token(tiny_config()) == 32 + 8


# ------------------------------------------------------------------------------------------- presets
PRESETS = sorted((ROOT / "config_hub" / "pretrain").glob("pythia-*-mla.yaml"))


def test_six_presets_exist():
    assert [p.name for p in PRESETS] == [
        f"pythia-{size}-mla.yaml" for size in ("1.4b", "14m", "160m", "1b", "410m", "70m")
    ]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_training_forward_dispatches_flash_attention(path):
    """The CPU's flash kernel here; on a GPU a fused kernel (PyTorch's choice, printed), never the math fallback."""
    # attention dims as in the preset; a small vocabulary keeps the 1b/1.4b embeddings out of the test
    config = preset_config(path.stem, n_layer=1, vocab_size=128, padded_vocab_size=128)
    assert config.qk_head_dim == config.v_head_dim  # flash needs equal q/k/v head widths
    if torch.cuda.is_available():  # CUDA's flash kernel takes half precision only
        with torch.device("cuda"):
            model = GPT(config).to(torch.bfloat16)
            idx = torch.zeros(1, 32, dtype=torch.long)
        kernels = attention_kernels_run(model, idx)
        print(f"{path.stem}: {kernels}")
        assert kernels and "math" not in kernels
        return
    model = GPT(config)
    with torch.profiler.profile() as profile:
        model(torch.zeros(1, 32, dtype=torch.long))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in {event.key for event in profile.key_averages()}


# --------------------------------------------------------------------------- litgpt generate, end to end
@pytest.mark.slow
def test_litgpt_generate_greedy_same_tokens_with_and_without_plugin(tmp_path):
    latent = dict(q_lora_rank=24, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
    tiny = dict(n_layer=2, n_embd=64, n_head=4, block_size=64, latent_attention=latent)
    save_stock_checkpoint(tmp_path, TOKENIZER_DIR, **tiny)
    litgpt = shutil.which("litgpt") or str(Path(sys.executable).parent / "litgpt")
    # a prompt of more than T* = 19 tokens: prefill takes the expanded path, decoding the absorbed one
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog"
    command = [litgpt, "generate", str(tmp_path), "--prompt", prompt, "--max_new_tokens", "24"]
    # precision stated: litgpt's CPU default is bf16-true, the plugin's is 32-true on a CPU without native bf16
    command += ["--temperature", "0", "--top_k", "1", "--precision", "32-true"]
    stock = run_with_plugin(command, plugin=False)
    plugin = run_with_plugin(command, plugin=True)
    # the sample is the last stdout line (stock litgpt also prints warnings there, the plugin does not)
    stock_text, plugin_text = stock.stdout.splitlines()[-1], plugin.stdout.splitlines()[-1]
    assert stock_text.startswith(prompt) and len(stock_text) > len(prompt) + 24
    assert plugin_text == stock_text
    # litgpt logs the config: only the plugin's has our field (and resolved the latent config to our class)
    assert "'attention_class_name': 'MultiheadLatentAttention'" in plugin.stderr
    assert "attention_class_name" not in stock.stderr


@pytest.mark.parametrize("softcapping", [None, 2.0], ids=["sdpa", "softcapping"])
def test_absorbed_step_without_mask_sees_every_cached_position(softcapping):
    """``_absorbed_attention`` at DECODE, without a mask (a step at the last cached position), equals the masked call and the
    expanded path, for one query and for a batch of queries each seeing every position."""
    attn = tiny_gpt(tiny_config(attention_logit_softcapping=softcapping)).transformer.h[0].attn
    generator = torch.Generator().manual_seed(5)
    B, nh, S = 2, 4, 9
    for T in (1, 3):
        q_nope, q_rope = torch.randn(B, nh, T, 8, generator=generator), torch.randn(B, nh, T, 8, generator=generator)
        latent, k_rope = torch.randn(B, S, 32, generator=generator), torch.randn(B, S, 8, generator=generator)
        every = torch.ones(1, 1, T, S, dtype=torch.bool)
        with torch.no_grad():
            rows = torch.cat((latent, k_rope), dim=-1)  # (B, S, L+R), the cache's layout
            unmasked = attn._absorbed_attention(q_nope, q_rope, rows, Site.DECODE, None)
            masked = attn._absorbed_attention(q_nope, q_rope, rows, Site.MASKED, every)
            expanded = attn._expanded_attention(q_nope, q_rope, latent, k_rope, Site.MASKED, every)
            torch.testing.assert_close(unmasked, masked, **TOL)
            torch.testing.assert_close(unmasked, expanded, **TOL)
