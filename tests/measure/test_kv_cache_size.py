"""litgpt_mka.measure.kv_cache_size: every registered variant's accounting against the buffers `set_kv_cache`
allocates, in fp32 and bf16; sliding windows; the preset cache targets and the cache sizes their comments state."""

import re
from pathlib import Path

import pytest
import torch
from litgpt.model import GPT

from litgpt_mka.attention.registry import VARIANTS, attention_class
from litgpt_mka.measure.kv_cache_size import (
    allocated_kv_cache_bytes,
    kv_cache_bytes,
    kv_cache_bytes_per_sequence,
    kv_cache_bytes_per_token,
    kv_cache_elements_per_token,
)
from litgpt_mka.presets import model_config_from_yaml
from tests.helpers import CONFIG_HUB, build_gpt, preset_config, tiny_config

STOCK_MLA = "LitgptMultiheadLatentAttention"
# tiny config (3 layers, 4 heads of 16) -> numbers per token per layer, in the cache dtype
CASES = {
    "mha": ({}, 2 * 4 * 16),
    "gqa": ({}, 2 * 2 * 16),
    "mqa": ({}, 2 * 1 * 16),
    "gqa-litgpt": ({"attention_class_name": "CausalSelfAttention"}, 2 * 2 * 16),
    "mqa-litgpt": ({"attention_class_name": "CausalSelfAttention"}, 2 * 1 * 16),
    "mha-full-rotary": ({"rotary_percentage": 1.0}, 2 * 4 * 16),
    "mla": ({}, 32 + 8),
    "stock-mla": ({"attention_class_name": STOCK_MLA}, 4 * (8 + 8 + 16)),
    "mka": ({}, 2 * 4 * 16),
    "fmka": ({}, 2 * 4 * 16),
    "mka-outputs": ({"memorized_key_attention": {"routing": "outputs"}}, 4 * 4 * 16),
}


def case_config(case: str, **overrides):
    variant = case.split("-")[0] if case != "stock-mla" else "mla"
    extra, _ = CASES[case]
    return tiny_config(variant, n_layer=3, **{**extra, **overrides})


def test_every_registered_variant_is_covered():
    covered = {case_config(case).attention_class_name for case in CASES}
    assert covered == set(VARIANTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_accounting_equals_allocated_buffers(case, dtype):
    config = case_config(case)
    model = GPT(config)
    model.set_kv_cache(batch_size=3, max_seq_length=20, dtype=dtype)
    elements = CASES[case][1]
    assert kv_cache_elements_per_token(config) == elements
    per_token = kv_cache_bytes_per_token(config, dtype)
    assert per_token >= 3 * elements * dtype.itemsize  # 3 layers; MKA's float32 sums are per sequence
    per_sequence = kv_cache_bytes_per_sequence(config, dtype)
    assert allocated_kv_cache_bytes(model) == 3 * (20 * per_token + per_sequence)
    assert kv_cache_bytes(config, 3, 20, dtype) == 3 * (20 * per_token + per_sequence)


@pytest.mark.parametrize("variant", ["mka", "fmka"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mka_cache_is_mha_size_plus_a_small_ring(variant, dtype):
    """Issue target: MKA/FMKA cache bytes at context 2048 within 2% of MHA's, same dtype (70m preset)."""
    mka, mha = preset_config(f"pythia-70m-{variant}"), preset_config("pythia-70m-mha")
    assert kv_cache_bytes_per_token(mka, dtype) == kv_cache_bytes_per_token(mha, dtype)
    assert kv_cache_bytes(mka, 1, 2048, dtype) <= 1.02 * kv_cache_bytes(mha, 1, 2048, dtype)


def test_model_built_with_another_class_is_accounted_by_that_class():
    config = tiny_config("mla")
    assert kv_cache_elements_per_token(config) == 40
    assert kv_cache_elements_per_token(config, attention_class(STOCK_MLA)) == 128


def test_sliding_window_layers_are_capped_in_kv_cache_bytes():
    config = tiny_config(n_layer=3, sliding_window_size=8, sliding_window_indices=[1, 0, 1])
    model = GPT(config)
    model.set_kv_cache(batch_size=2, max_seq_length=20)
    per_layer = 2 * 4 * 16 * 4
    assert allocated_kv_cache_bytes(model) == kv_cache_bytes(config, 2, 20) == 2 * per_layer * (8 + 20 + 8)


def test_unregistered_class_and_missing_cache_raise():
    with pytest.raises(TypeError, match=r"Linear is not the attention module of a registered variant; register it"):
        kv_cache_elements_per_token(tiny_config(), torch.nn.Linear)
    match = r"block 0 has no KV cache; call `model.set_kv_cache\(batch_size=...\)` first"
    with pytest.raises(RuntimeError, match=match):
        allocated_kv_cache_bytes(GPT(tiny_config()))


def allocated_per_token(config, module_class=None, length: int = 64) -> int:
    with torch.device("meta"):  # full-size models without allocating memory: meta tensors have nbytes
        model = build_gpt(config, module_class)
        model.set_kv_cache(batch_size=1, max_seq_length=length, device=torch.device("meta"))
    return allocated_kv_cache_bytes(model) // length


@pytest.mark.parametrize(
    ("size", "ours", "mha", "stock"),
    [
        ("70m", 6 * 144, 6 * 1024, 6 * 1024),
        ("160m", 12 * 208, 12 * 1536, 12 * 1536),
        ("410m", 24 * 272, 24 * 2048, 24 * 2048),
        ("1b", 16 * 576, 16 * 4096, 16 * 4096),
        ("1.4b", 24 * 544, 24 * 4096, 24 * 4096),
    ],
)
def test_preset_cache_targets(size, ours, mha, stock):
    """Acceptance: >= 5x smaller than MHA's cache and >= 6x smaller than stock litgpt MLA's, as allocated."""
    mla = preset_config(f"pythia-{size}-mla")
    ours_bytes = allocated_per_token(mla)
    mha_bytes = allocated_per_token(preset_config(f"pythia-{size}-mha"))
    stock_bytes = allocated_per_token(mla, attention_class(STOCK_MLA))
    assert (ours_bytes, mha_bytes, stock_bytes) == (4 * ours, 4 * mha, 4 * stock)
    assert mha_bytes >= 5 * ours_bytes
    assert stock_bytes >= 6 * ours_bytes


SWEEP_CONFIGS = Path(__file__).resolve().parents[2] / "docs" / "study-pythia-14m" / "configs"
# "... per token and layer: <formula> = N numbers" and MKA's "W (k D + 8) = N bytes" (the ring per sequence)
STATED_PER_TOKEN = re.compile(r"per token and layer: [^=]*= (\d+) numbers")
STATED_RING = re.compile(r"W \(\d D \+ 8\) = ([\d,]+) bytes")


def yaml_comments(path: Path) -> str:
    """The comments of a YAML file, joined into one line of words."""
    return " ".join(line.split("#", 1)[1].strip() for line in path.read_text().splitlines() if "#" in line)


@pytest.mark.parametrize(
    "path",
    [*sorted(CONFIG_HUB.glob("*-m[lk]a.yaml")), *sorted(SWEEP_CONFIGS.glob("*.yaml"))],
    ids=lambda p: p.stem,
)
def test_cache_sizes_stated_in_yaml_comments_are_the_accountings(path):
    """Every MLA, MKA and FMKA config states its cache in its comments; the figures must be its own."""
    config, comments = model_config_from_yaml(path), yaml_comments(path)
    assert [int(n) for n in STATED_PER_TOKEN.findall(comments)] == [kv_cache_elements_per_token(config)]
    rings = [int(n.replace(",", "")) for n in STATED_RING.findall(comments)]
    expected_ring = kv_cache_bytes_per_sequence(config, torch.bfloat16) // config.n_layer
    assert rings == ([expected_ring] if expected_ring else [])
