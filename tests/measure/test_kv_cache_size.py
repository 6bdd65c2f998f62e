"""litgpt_mka.measure.kv_cache_size: accounting against the buffers `set_kv_cache` allocates, preset cache targets; speed helpers."""

from pathlib import Path

import pytest
import torch
import yaml
from litgpt.config import Config
from litgpt.model import CausalSelfAttention

from litgpt_mka.measure.kv_cache_size import (
    allocated_kv_cache_bytes,
    build_gpt,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token,
    stock_mla_class,
)
from litgpt_mka.attention.mla import MultiheadLatentAttention
from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second, prefill_random_prompt, time_decode_steps

PRESETS = Path(__file__).parents[2] / "config_hub" / "pretrain"
LATENT = dict(q_lora_rank=24, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)


def tiny(**overrides) -> Config:
    return Config.from_name("pythia-14m", n_layer=3, n_embd=64, n_head=4, block_size=32, **overrides)


# (id, config overrides, attention class or None for config.attention_class, numbers per token per layer)
VARIANTS = [
    ("MHA", {}, None, 2 * 4 * 16),
    ("GQA", {"n_query_groups": 2}, None, 2 * 2 * 16),
    ("MQA", {"n_query_groups": 1}, None, 2 * 1 * 16),
    ("MHA-full-rotary", {"rotary_percentage": 1.0}, None, 2 * 4 * 16),
    ("stock-MLA", {"latent_attention": LATENT}, "stock", 4 * (8 + 8 + 16)),
    ("ours-MLA", {"latent_attention": LATENT}, None, 32 + 8),
]


def attention_class_of(name):
    return stock_mla_class() if name == "stock" else name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("overrides", "name", "elements"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_accounting_equals_allocated_buffers(overrides, name, elements, dtype):
    config = tiny(**overrides)
    attention_class = attention_class_of(name)
    model = build_gpt(config, attention_class)
    model.set_kv_cache(batch_size=3, max_seq_length=20, dtype=dtype)
    assert kv_cache_elements_per_token(config, attention_class) == elements
    per_token = kv_cache_bytes_per_token(config, dtype, attention_class)
    assert per_token == 3 * elements * dtype.itemsize  # 3 layers
    assert allocated_kv_cache_bytes(model) == 3 * 20 * per_token
    assert kv_cache_bytes(config, 3, 20, dtype, attention_class) == 3 * 20 * per_token


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("routing", ["keys", "keys_values", "outputs"])
def test_accounting_equals_allocated_buffers_for_mka(routing, dtype):
    """MKA keeps its running sums in float32 whatever the cache dtype; the accounting must say so."""
    config = tiny(attention_class_name="MemorizedKeyAttention", memorized_key_attention={"routing": routing})
    model = build_gpt(config)
    model.set_kv_cache(batch_size=3, max_seq_length=20, dtype=dtype)
    per_token = kv_cache_bytes_per_token(config, dtype)
    assert allocated_kv_cache_bytes(model) == 3 * 20 * per_token
    assert kv_cache_bytes(config, 3, 20, dtype) == 3 * 20 * per_token


def test_default_attention_class_comes_from_config():
    config = tiny(latent_attention=LATENT)
    assert config.attention_class is MultiheadLatentAttention
    assert kv_cache_elements_per_token(config) == 40
    assert kv_cache_elements_per_token(config, stock_mla_class()) == 128


def test_sliding_window_layers_are_capped_in_kv_cache_bytes():
    config = tiny(sliding_window_size=8, sliding_window_indices=[1, 0, 1])
    model = build_gpt(config)
    model.set_kv_cache(batch_size=2, max_seq_length=20)
    per_layer = 2 * 4 * 16 * 4
    assert allocated_kv_cache_bytes(model) == kv_cache_bytes(config, 2, 20) == 2 * per_layer * (8 + 20 + 8)


def test_a_class_defines_its_own_count():
    class Memorizing(CausalSelfAttention):
        @classmethod
        def kv_cache_elements_per_token(cls, config):
            return 7

    assert kv_cache_bytes_per_token(tiny(), torch.float16, Memorizing) == 3 * 7 * 2


def test_unknown_class_and_missing_cache_raise():
    with pytest.raises(TypeError, match=r"Linear defines no `kv_cache_elements_per_token\(config\)` classmethod"):
        kv_cache_elements_per_token(tiny(), torch.nn.Linear)
    match = r"block 0 has no KV cache; call `model.set_kv_cache\(batch_size=...\)` first"
    with pytest.raises(RuntimeError, match=match):
        allocated_kv_cache_bytes(build_gpt(tiny()))


def preset(size: str, variant: str) -> Config:
    return Config(**yaml.safe_load((PRESETS / f"pythia-{size}-{variant}.yaml").read_text())["model_config"])


def allocated_per_token(config: Config, attention_class=None, length: int = 64) -> int:
    with torch.device("meta"):  # full-size models without allocating memory: meta tensors have nbytes
        model = build_gpt(config, attention_class)
        model.set_kv_cache(batch_size=1, max_seq_length=length, device=torch.device("meta"))
    return allocated_kv_cache_bytes(model) // length


@pytest.mark.parametrize(
    ("size", "ours", "mha", "stock"), [("70m", 6 * 144, 6 * 1024, 6 * 1024), ("160m", 12 * 208, 12 * 1536, 12 * 1536)]
)
def test_preset_cache_targets(size, ours, mha, stock):
    """Acceptance: >= 5x smaller than MHA's cache and >= 6x smaller than stock litgpt MLA's, as allocated."""
    mla = preset(size, "mla")
    ours_bytes = allocated_per_token(mla)
    mha_bytes = allocated_per_token(preset(size, "mha"))
    stock_bytes = allocated_per_token(mla, stock_mla_class())
    assert (ours_bytes, mha_bytes, stock_bytes) == (4 * ours, 4 * mha, 4 * stock)
    assert mha_bytes >= 5 * ours_bytes
    assert stock_bytes >= 6 * ours_bytes


# ------------------------------------------------------------------------------ litgpt_mka.measure.decode_speed helpers
def test_prefill_random_prompt_fills_the_cache_as_a_plain_prefill_does():
    config = tiny(latent_attention=LATENT)
    model = build_gpt(config).eval()
    token = prefill_random_prompt(model, 2, 10, max_seq_length=16, chunk_size=4, seed=3)
    caches = [(b.attn.kv_cache.latent.clone(), b.attn.kv_cache.k_rope.clone()) for b in model.transformer.h]
    assert not model.lm_head._forward_pre_hooks  # the last-position hook is gone
    prompt = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    model.set_kv_cache(batch_size=2, max_seq_length=16)
    with torch.no_grad():
        logits = model(prompt, torch.arange(10), input_pos_maxp1=10)
    torch.testing.assert_close(token, logits[:, -1].argmax(dim=-1, keepdim=True), rtol=0, atol=0)
    for block, (latent, k_rope) in zip(model.transformer.h, caches):
        torch.testing.assert_close(block.attn.kv_cache.latent, latent, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block.attn.kv_cache.k_rope, k_rope, rtol=1e-5, atol=1e-5)


def test_measure_decode_tokens_per_second_runs_and_clears_the_cache():
    model = build_gpt(tiny())
    assert measure_decode_tokens_per_second(model, batch_size=2, context_length=8, new_tokens=3) > 0
    assert all(block.attn.kv_cache is None for block in model.transformer.h)


def test_time_decode_steps_counts_only_timed_steps():
    model = build_gpt(tiny())
    token = prefill_random_prompt(model, 1, 4, max_seq_length=12)
    assert len(time_decode_steps(model, token, 4, warmup_tokens=3, new_tokens=5)) == 5


def test_measure_decode_tokens_per_second_errors():
    model = build_gpt(tiny())
    with pytest.raises(ValueError, match=r"new_tokens=0 must be positive"):
        measure_decode_tokens_per_second(model, batch_size=1, context_length=8, new_tokens=0)
    with pytest.raises(ValueError, match=r"max_seq_length=35 exceeds block_size=32; build the model with a larger"):
        measure_decode_tokens_per_second(model, batch_size=1, context_length=30, new_tokens=3, warmup_tokens=2)
