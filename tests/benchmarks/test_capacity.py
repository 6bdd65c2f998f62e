"""benchmarks/capacity.py: its rows, shared weights, the batch that fits the budget, the one-row prefill inside
litgpt's batched generation, and the report's rows (not its timings)."""

import sys
from pathlib import Path

import pytest
import torch
from litgpt.generate.base import batched_generate_fn

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt_mka.measure.kv_cache_size import kv_cache_bytes, kv_cache_bytes_per_token
from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "capacity.py"
LENGTH = 40  # cache positions of the tests' sequences


@pytest.fixture(scope="module")
def capacity():
    return load_script(SCRIPT, "capacity_benchmark")


@pytest.fixture(scope="module")
def rows(capacity):
    """MHA, MQA with an int4 cache and MKA at 14m, built on shared weights."""
    rows = capacity.capacity_rows("14m", LENGTH, ["mqa", "mka"], ["none", "int4"])
    rows = [row for row in rows if row.key in ("mha", "mqa-int4", "mka")]
    own = capacity.build_models(rows, torch.device("cpu"), torch.float32, seed=0)
    return rows, own


def test_rows_are_each_preset_with_its_quantized_caches(capacity):
    rows = capacity.capacity_rows("14m", LENGTH, None, ["none", "int8"])
    assert [(row.key, row.config.attention_class_name, row.config.kv_cache_quantization) for row in rows] == [
        ("mha", "CausalSelfAttention", None), ("mha-int8", "GroupedQueryAttention", "int8"),
        ("gqa", "GroupedQueryAttention", None), ("gqa-int8", "GroupedQueryAttention", "int8"),
        ("mqa", "GroupedQueryAttention", None), ("mqa-int8", "GroupedQueryAttention", "int8"),
        ("mla", "MultiheadLatentAttention", None), ("mla-int8", "MultiheadLatentAttention", "int8"),
        ("mka", "MemorizedKeyAttention", None), ("mka-int8", "MemorizedKeyAttention", "int8"),
        ("fmka", "MemorizedKeyAttention", None), ("fmka-int8", "MemorizedKeyAttention", "int8"),
    ]
    assert [row.key for row in capacity.capacity_rows("14m", LENGTH, ["gqa"], ["int4"])] == [
        "mha", "mha-int4", "gqa-int4"
    ]
    with pytest.raises(SystemExit, match=r"--variants \['gqa-int8'\] unknown"):
        capacity.capacity_rows("14m", LENGTH, ["gqa-int8"], ["none"])


def test_rows_share_every_weight_but_their_attention(rows):
    (mha, mqa, mka), own = rows
    for row in (mqa, mka):
        assert row.model.transformer.wte.weight is mha.model.transformer.wte.weight
        assert row.model.lm_head.weight is mha.model.lm_head.weight
        assert row.model.transformer.h[3].mlp.fc.weight is mha.model.transformer.h[3].mlp.fc.weight
    assert mka.model.transformer.h[0].attn.qkv.weight is mha.model.transformer.h[0].attn.qkv.weight  # MHA's shape
    assert own["mha"] == []
    assert own["mqa"] == ["h.*.attn.qkv.bias (192,)", "h.*.attn.qkv.weight (192, 128)"]
    assert [name.split()[0] for name in own["mka"]] == [
        "h.*.attn.memory", "h.*.attn.router.fc.bias", "h.*.attn.router.fc.weight", "h.*.attn.router.out_bias",
        "h.*.attn.router.out_weight",
    ]


# mqa-int4: more than the 16 MiB of scratch a quantized cache reads its blocks through on a CPU; MKA: the report's test
@pytest.mark.parametrize("key, budget", [("mha", 2 * 2**20), ("mqa-int4", int(16.2 * 2**20))])
def test_batch_is_the_largest_whose_caches_fit(capacity, rows, key, budget):
    row = next(row for row in rows[0] if row.key == key)
    fit, over = capacity.largest_batch(row.model, budget, LENGTH)
    assert fit.held <= budget < over.held and over.batch == fit.batch + 1 and fit.batch > 1
    assert fit.allocated == kv_cache_bytes(row.config, fit.batch, LENGTH)  # every buffer is in the formula
    workspace = fit.held - fit.allocated
    assert workspace > 0 if key == "mqa-int4" else workspace == 0  # the quantized cache's scratch is counted
    assert fit.flops > 2 * fit.batch * sum(p.numel() for p in row.model.transformer.h.parameters())
    with pytest.raises(ValueError, match=r"cache_budget_gib=.* holds no sequence of 40 positions: one needs"):
        capacity.largest_batch(row.model, 1000, LENGTH)


@pytest.mark.parametrize("key", ["mha", "mqa-int4", "mka"])
def test_one_row_prefill_decodes_as_litgpt_batched_generation(capacity, rows, key):
    """The same prompt in every row: prefilling row 0 and copying it gives litgpt's own batched tokens."""
    model = next(row for row in rows[0] if row.key == key).model
    prompts = torch.randint(0, 1000, (1, 30), generator=torch.Generator().manual_seed(1)).expand(3, -1)
    tokens = {}
    for name, caller in (("litgpt", model), ("one row", capacity.OneRowPrefill(model))):
        model.max_seq_length = LENGTH
        model.set_kv_cache(batch_size=3, max_seq_length=LENGTH)
        generated = batched_generate_fn(caller, prompts, 34, sample_args={"temperature": 0.0},
                                        include_prompt=False, include_eos=False)
        tokens[name] = torch.stack([torch.cat(step) for step in generated])  # (steps, B)
        model.clear_kv_cache()
    assert tokens["one row"].shape == (4, 3)  # the prefill's token and 3 decode steps
    torch.testing.assert_close(tokens["one row"], tokens["litgpt"], rtol=0, atol=0)


def test_report_has_every_row_and_is_marked_when_short(capacity, monkeypatch, tmp_path):
    monkeypatch.setattr(capacity.decode, "load_average", lambda: (0.0, 0.0, 0.0))
    out = tmp_path / "capacity.md"
    argv = ["--size", "14m", "--context", "24", "--cache_budget_gib", "0.0004", "--rounds", "1",
            "--warmup_tokens", "0", "--new_tokens", "2", "--variants", "mka", "--kv_cache_quantizations",
            "none", "--copy_mib", "8", "--matmul_size", "128", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["capacity.py", *argv])
    capacity.main(argv)
    text = out.read_text()
    assert "**NOT PUBLISHABLE**: 1 round(s), fewer than 5" in text
    # 429,496 B: 2 sequences of 26 positions x 6,144 B/token (+ MKA's ring of sums: 2 x 6 x 16 x (4 x 128 + 8) B)
    for variant, name in (("MHA", "CausalSelfAttention"), ("MKA", "MemorizedKeyAttention")):
        assert f"| {variant} | none | {name} | 6,144 |" in text
        assert f"| {variant} | none | 2 |" in text
    decoded = text.split("### Decode at that batch")[1].split("### Weights")[0]
    assert len([line for line in decoded.splitlines() if line.startswith("| M")]) == 2
    assert "| MHA | none |" in decoded and "| 1.00x |" in decoded
    assert "| tiny-context step ms |" in decoded and "at a 16-token context (same batch, 18 positions)" in text
    assert "**no:" not in text  # every allocation matches the formula


def test_the_prediction_adds_what_the_longer_cache_reads_and_computes_to_the_tiny_context_step(capacity, rows):
    mha = rows[0][0]
    fit = capacity.Footprint(batch=2, allocated=0, held=0, flops=3 * 10**9)
    prediction = capacity.predict(mha, fit, tiny_flops=10**9, tiny_step=0.010, lengths=(26, 126), dtype=torch.float32,
                                  bandwidth=1e10, rate=1e11)
    per_step_and_position = 2 * kv_cache_bytes_per_token(mha.config, torch.float32)  # batch 2
    assert prediction.seconds == pytest.approx(0.010 + 100 * per_step_and_position / 1e10 + 2e9 / 1e11)
    assert prediction.cache_bytes == 126 * per_step_and_position


def test_a_tiny_context_must_be_shorter_than_the_context(capacity):
    with pytest.raises(SystemExit):
        capacity.parse_args(["--context", "16", "--tiny_context", "16"])
