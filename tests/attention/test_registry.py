"""litgpt_mka.attention.registry: adding a variant is one module + one registry line (a toy variant, in a
subprocess so that the registration stays inside the test); lookups and their errors."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from litgpt_mka.attention import registry
from tests.conftest import PROJECT_ROOT
from tests.helpers import random_gpt, tiny_config

TOY_CHECK = textwrap.dedent(
    """
    import torch
    from toy_variant import TemperedAttention, register_toy_variant
    register_toy_variant()

    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt_mka.measure.kv_cache_size import allocated_kv_cache_bytes, kv_cache_bytes
    from tests.helpers import assert_cached_decode_matches_full_forward, random_gpt, tiny_config, tokens

    # Config: the new field exists, its defaults are written, bad values name the field
    config = tiny_config(attention_class_name="TemperedAttention")
    assert config.tempered_attention == {"temperature": 2.0}, config.tempered_attention
    for bad, match in (({"temperature": 0}, "tempered_attention.temperature=0 must be a positive number"),
                       ({"tau": 1}, "tempered_attention has unknown key")):
        try:
            tiny_config(attention_class_name="TemperedAttention", tempered_attention=bad)
        except ValueError as error:
            assert match in str(error), error
        else:
            raise AssertionError(f"{bad} was accepted")
    try:
        tiny_config(tempered_attention={"temperature": 1.0})
    except ValueError as error:
        assert "only read by ['TemperedAttention']" in str(error), error
    else:
        raise AssertionError("a dict of another variant was accepted")

    # GPT builds it; the temperature changes the outputs; cached generation == full forward
    model = random_gpt(config)
    assert all(type(block.attn) is TemperedAttention for block in model.transformer.h)
    idx = tokens(2, 12)
    with torch.no_grad():
        other = random_gpt(tiny_config(attention_class_name="TemperedAttention", tempered_attention={"temperature": 1.0}))
        assert not torch.allclose(model(idx), other(idx))
    assert_cached_decode_matches_full_forward(model, idx, prompt=4, rtol=1e-5, atol=1e-5)

    # accounting == allocated buffers; the field round-trips through model_config.yaml
    model.set_kv_cache(batch_size=3, max_seq_length=20, dtype=torch.bfloat16)
    assert allocated_kv_cache_bytes(model) == kv_cache_bytes(config, 3, 20, torch.bfloat16) == 2 * 3 * 20 * 2 * 4 * 16 * 2
    import dataclasses, yaml
    saved = yaml.safe_dump(dataclasses.asdict(config))
    assert Config(**yaml.safe_load(saved)).tempered_attention == {"temperature": 2.0}
    print("toy variant ok")
    """
)


def test_a_new_variant_is_one_module_and_one_registry_line(subprocess_env):
    env = {**subprocess_env, "PYTHONPATH": f"{Path(__file__).parent}:{PROJECT_ROOT}"}
    result = subprocess.run(
        [sys.executable, "-c", TOY_CHECK], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "toy variant ok" in result.stdout


def test_every_entry_loads_a_variant_class_with_the_registry_contract():
    for entry in registry.VARIANTS.values():
        variant = entry.load()
        assert isinstance(variant.attention_module(), type), entry.name
        for method in ("validate_config", "kv_cache_elements_per_token", "kv_cache_bytes_per_token"):
            assert callable(getattr(variant, method)), (entry.name, method)
        assert callable(getattr(variant.attention_module(), "build_kv_cache")), entry.name


def test_lookup_and_register_errors():
    match = r"attention_class_name='Nope' is not a known attention class; choose one of \['CausalSelfAttention'"
    with pytest.raises(ValueError, match=match):
        registry.lookup("Nope")
    with pytest.raises(ValueError, match=r"attention_class_name='CausalSelfAttention' is already registered"):
        registry.register(registry.Variant("CausalSelfAttention", "litgpt.model:CausalSelfAttention"))


def test_config_fields_come_from_the_registry():
    assert registry.config_fields() == ["latent_attention", "memorized_key_attention"]
    assert registry.readers_of("latent_attention") == ["LitgptMultiheadLatentAttention", "MultiheadLatentAttention"]


@pytest.mark.parametrize(
    ("variant", "overrides", "label"),
    [
        ("mha", {}, "MHA"),
        ("mha", {"attention_class_name": "GroupedQueryAttention"}, "MHA"),  # every query head its own key/value head
        ("gqa", {}, "GQA (2 key/value heads)"),
        ("gqa", {"attention_class_name": "CausalSelfAttention"}, "GQA (2 key/value heads)"),
        ("mqa", {}, "MQA"),
        ("mla", {}, "MLA"),
        ("mla", {"attention_class_name": "LitgptMultiheadLatentAttention"}, "litgpt's stock MLA"),
        ("mka", {}, "MKA"),
        ("fmka", {}, "FMKA"),
        ("mka", {"memorized_key_attention": {"routing": "outputs"}}, "MKA (routing: outputs)"),
    ],
)
def test_each_entry_labels_its_configs_and_only_mha_is_mha(variant, overrides, label):
    config = tiny_config(variant, **overrides)
    entry = registry.entry_of(config)
    assert entry.label_for(config) == label
    assert entry.is_mha(config) == (label == "MHA")


def test_litgpt_counterparts_are_registered_classes_of_the_same_parameters():
    """The decode benchmark's litgpt rows: each counterpart is a registry name whose model loads our weights."""
    counterparts = {name: entry.litgpt_counterpart for name, entry in registry.VARIANTS.items() if entry.litgpt_counterpart}
    assert counterparts == {"GroupedQueryAttention": "CausalSelfAttention",
                            "MultiheadLatentAttention": "LitgptMultiheadLatentAttention"}
    for ours, theirs in counterparts.items():
        layout = "gqa" if ours == "GroupedQueryAttention" else "mla"
        weights = random_gpt(tiny_config(layout)).state_dict()
        litgpt_model = random_gpt(tiny_config(layout, attention_class_name=theirs))
        litgpt_model.load_state_dict(weights)  # strict: the same parameter names and shapes


def test_only_memorized_key_attention_routes_between_memories():
    assert [name for name, entry in registry.VARIANTS.items() if entry.memory_routing] == ["MemorizedKeyAttention"]
