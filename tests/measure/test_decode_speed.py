"""litgpt_mka.measure.decode_speed: the prefill helper fills the cache as a plain prefill does; timing bookkeeping."""

import pytest
import torch
from litgpt.model import GPT

from tests.helpers import tiny_config, tokens


def test_prefill_random_prompt_fills_the_cache_as_a_plain_prefill_does():
    from litgpt_mka.measure.decode_speed import prefill_random_prompt

    config = tiny_config("mla")
    model = GPT(config).eval()
    token = prefill_random_prompt(model, 2, 10, max_seq_length=16, chunk_size=4, seed=3)
    caches = [(b.attn.kv_cache.latent.clone(), b.attn.kv_cache.k_rope.clone()) for b in model.transformer.h]
    assert not model.lm_head._forward_pre_hooks  # the last-position hook is gone
    prompt = tokens(2, 11, seed=3, vocab_size=config.vocab_size)  # the prompt and the next input token
    torch.testing.assert_close(token, prompt[:, -1:], rtol=0, atol=0)
    model.set_kv_cache(batch_size=2, max_seq_length=16)
    with torch.no_grad():
        model(prompt[:, :10], torch.arange(10), input_pos_maxp1=10)
    for block, (latent, k_rope) in zip(model.transformer.h, caches):
        torch.testing.assert_close(block.attn.kv_cache.latent, latent, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block.attn.kv_cache.k_rope, k_rope, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["mqa", "mla", "mka"])
def test_prefill_of_one_copied_row_decodes_every_row_as_the_full_forward(variant):
    """``copy_one_row`` (the decode benchmark's fill): every batch row continues the one prefilled prompt."""
    from litgpt_mka.measure.decode_speed import prefill_random_prompt

    config = tiny_config(variant)
    model = GPT(config).eval()
    token = prefill_random_prompt(model, 3, 12, max_seq_length=20, chunk_size=5, seed=1, copy_one_row=True)
    assert token.shape == (3, 1)
    with torch.no_grad():
        logits = model(token, torch.tensor([12]), input_pos_maxp1=13)  # (3, 1, vocab)
        full = model(tokens(1, 13, seed=1, vocab_size=config.vocab_size))[:, -1:]  # no cache
    torch.testing.assert_close(logits, full.expand(3, -1, -1))


def test_mka_rows_copied_from_one_decode_through_the_ring_append_as_after_a_batch_prefill(monkeypatch):
    """After the copy, MKA's host-side ring record covers every row: decode steps append their running sum in O(1)
    (``_append_sum``), not through the gather/scatter path that a ring of unknown rows takes."""
    from litgpt_mka.attention.mka import MemorizedKeyCache
    from litgpt_mka.measure.decode_speed import prefill_random_prompt

    model = GPT(tiny_config("mka")).eval()
    token = prefill_random_prompt(model, 4, 6, max_seq_length=12, seed=1, copy_one_row=True)
    appends = []
    original = MemorizedKeyCache._append_sum
    monkeypatch.setattr(MemorizedKeyCache, "_append_sum", lambda self, *a: appends.append(1) or original(self, *a))
    with torch.no_grad():
        for t in range(6, 9):
            token = model(token, torch.tensor([t]), input_pos_maxp1=t + 1).argmax(-1)  # (4, 1)
    assert len(appends) == 3 * model.config.n_layer


def test_measure_decode_tokens_per_second_runs_and_clears_the_cache():
    from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second

    model = GPT(tiny_config())
    assert measure_decode_tokens_per_second(model, batch_size=2, context_length=8, new_tokens=3) > 0
    assert all(block.attn.kv_cache is None for block in model.transformer.h)


def test_time_decode_steps_counts_only_timed_steps():
    from litgpt_mka.measure.decode_speed import prefill_random_prompt, time_decode_steps

    model = GPT(tiny_config())
    token = prefill_random_prompt(model, 1, 4, max_seq_length=12)
    assert len(time_decode_steps(model, token, 4, warmup_tokens=3, new_tokens=5)) == 5


def test_measure_decode_tokens_per_second_errors():
    from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second

    model = GPT(tiny_config(block_size=32))
    with pytest.raises(ValueError, match=r"new_tokens=0 must be positive"):
        measure_decode_tokens_per_second(model, batch_size=1, context_length=8, new_tokens=0)
    with pytest.raises(ValueError, match=r"max_seq_length=35 exceeds block_size=32; build the model with a larger"):
        measure_decode_tokens_per_second(model, batch_size=1, context_length=30, new_tokens=3, warmup_tokens=2)
