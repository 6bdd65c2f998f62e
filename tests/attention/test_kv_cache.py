"""The KV-cache contract, for every variant whose cache builds on litgpt_mka.attention.kv_cache.KVCacheBase:
one set of error messages, the causal mask when a module is called directly with none, no reads of
input_pos's values when input_pos_maxp1 is given, and litgpt generate's reset between samples."""

import pytest
import torch
from litgpt.model import GPT

from litgpt_mka.attention.kv_cache import KVCacheBase, causal_mask
from tests.helpers import random_gpt, tiny_config, tokens

OUR_CACHES = ["mla", "mka", "fmka", "mka-outputs"]


def config_of(case: str, **overrides):
    if case == "mka-outputs":
        overrides["memorized_key_attention"] = {"routing": "outputs"}
    if case.endswith("-grouped"):
        overrides["attention_class_name"] = "GroupedQueryAttention"
    return tiny_config(case.split("-")[0], **overrides)


def attention_inputs(model: GPT, input_pos: torch.Tensor, batch: int = 1, seed: int = 4):
    """x (batch, T, C) and the cos/sin rows of `input_pos` (T,), as GPT.forward passes them."""
    x = torch.randn(batch, input_pos.numel(), model.config.n_embd, generator=torch.Generator().manual_seed(seed))
    return x, model.cos[input_pos].unsqueeze(0), model.sin[input_pos].unsqueeze(0)


@pytest.mark.parametrize("case", OUR_CACHES)
def test_caches_share_the_base_and_its_messages(case):
    model = random_gpt(config_of(case))
    model.set_kv_cache(batch_size=1, max_seq_length=16)
    attn = model.transformer.h[0].attn
    assert isinstance(attn.kv_cache, KVCacheBase)
    x, cos, sin = attention_inputs(model, torch.arange(2))
    calls = [
        (torch.randn(2, 2, 64), torch.arange(2), None, r"batch size 2 exceeds the KV cache's batch size 1; call `model"),
        (x, torch.tensor([16, 17]), None, r"positions 16 to 17 are outside the KV cache's \[0, 16\); call `model"),
        (x, torch.tensor([3, 4]), 20, r"positions 0 to 19 are outside the KV cache's \[0, 16\)"),
        (x, torch.tensor([[0, 1], [0, 1]]), None, r"input_pos has 2 rows, the chunk has batch size 1; they must match"),
    ]
    with torch.no_grad():
        for inputs, input_pos, input_pos_maxp1, match in calls:
            with pytest.raises(ValueError, match=match):
                attn(inputs, cos, sin, None, input_pos, input_pos_maxp1)
        long = torch.arange(17)
        with pytest.raises(ValueError, match=r"a chunk of 17 positions does not fit a KV cache of 16 positions"):
            attn(*attention_inputs(model, long), None, long)


@pytest.mark.parametrize("case", [*OUR_CACHES, "gqa-grouped", "mqa-grouped"])
def test_module_called_directly_without_mask_is_causal_at_any_offset(case):
    """A chunk at positions 6..9 after a prefill of 0..5, mask=None: the same outputs as the full forward."""
    model = random_gpt(config_of(case))
    attn = model.transformer.h[0].attn
    positions = torch.arange(10)
    x, cos, sin = attention_inputs(model, positions, batch=2)
    with torch.no_grad():
        full = attn(x, cos, sin)  # training path: causal over the 10 positions
        attn.kv_cache = attn.build_kv_cache(2, 12)
        prefix = attn(x[:, :6], cos[:, :6], sin[:, :6], None, positions[:6])
        chunk = attn(x[:, 6:], cos[:, 6:], sin[:, 6:], None, positions[6:])
    torch.testing.assert_close(torch.cat((prefix, chunk), dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["mha", "gqa-grouped", *OUR_CACHES])
def test_no_reads_of_input_pos_values_when_input_pos_maxp1_is_given(case):
    """On the meta device a tensor has no values: any host read of input_pos (a synchronisation on a GPU) fails."""
    config = config_of(case)
    with torch.device("meta"):
        model = GPT(config)
        model.set_kv_cache(batch_size=2, max_seq_length=16, device=torch.device("meta"))
        prompt = torch.zeros(2, 5, dtype=torch.int64)
        model(prompt, torch.arange(5), input_pos_maxp1=5)
        logits = model(prompt[:, :1], torch.tensor([5]), input_pos_maxp1=6)
    assert logits.shape == (2, 1, config.padded_vocab_size)


def cache_state(cache) -> dict:
    """Every buffer of a cache, and what its host knows of MKA's ring: what a reset must bring back."""
    state = {name: buffer.clone() for name, buffer in cache.named_buffers()}
    ring = getattr(cache, "host_ring", None)
    return state if ring is None else {**state, "host_ring": (list(ring.held), ring.rows)}


def assert_states_equal(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
        else:
            assert state[name] == value, name


@pytest.mark.parametrize("case", OUR_CACHES)
def test_reset_between_samples_gives_the_same_second_sample(case):
    """litgpt generate calls `kv_cache.reset_parameters()` between samples: it brings every buffer (and MKA's
    host-side ring) back to a freshly built cache's, and the second sample decodes as the first did."""
    model = random_gpt(config_of(case))
    idx = tokens(1, 12)
    with torch.no_grad():
        model.set_kv_cache(batch_size=1)
        caches = [block.attn.kv_cache for block in model.transformer.h]
        fresh = [cache_state(cache) for cache in caches]
        first = [model(idx[:, t : t + 1], torch.tensor([t])) for t in range(12)]
        written = [cache_state(cache) for cache in caches]
        assert any(not torch.equal(written[0][name], fresh[0][name]) for name in fresh[0] if name != "host_ring")
        for cache in caches:
            cache.reset_parameters()
        for cache, expected in zip(caches, fresh):
            assert_states_equal(cache_state(cache), expected)
        second = [model(idx[:, t : t + 1], torch.tensor([t])) for t in range(12)]
    torch.testing.assert_close(torch.cat(second, dim=1), torch.cat(first, dim=1))


def test_causal_mask_for_both_input_pos_layouts():
    assert causal_mask(torch.tensor([1, 2]), 4).tolist() == [[[[True, True, False, False], [True, True, True, False]]]]
    batched = causal_mask(torch.tensor([[0], [2]]), 3)  # (B, T) -> (B, 1, T, S)
    assert batched.tolist() == [[[[True, False, False]]], [[[True, True, True]]]]
