"""No silent wrong model: every litgpt GPT class builds each variant or refuses clearly, and non-strict loads
that would drop or leave out attention weights raise."""

import warnings

import lightning as L
import pytest
import torch
import torch.nn as nn
from litgpt import adapter, adapter_v2, lora, model
from litgpt.utils import load_checkpoint

from litgpt_mka.plugin.litgpt_internals.model import _subclasses
from tests.builders import VARIANTS, tiny_config_as, variant_config
from tests.helpers import random_gpt, tokens

# variants litgpt's adapters refuse -> the label their message gives
REFUSING = {"mla": "MLA", "mka": "MKA", "fmka": "FMKA", "stock-mla": "litgpt's stock MLA"}
# litgpt module -> (its GPT class, its Config class, commands the refusal must name)
LITGPT_GPT_CLASSES = {
    "litgpt.model": (model.GPT, model.Config, None),
    "litgpt.lora": (lora.GPT, lora.Config, None),
    "litgpt.adapter": (adapter.GPT, adapter.Config, "finetune_adapter"),
    "litgpt.adapter_v2": (adapter_v2.GPT, adapter_v2.Config, "finetune_adapter_v2"),
}


def test_the_list_is_every_litgpt_gpt_class():
    """If a litgpt version adds a GPT subclass, this list (and the guard's coverage) must be revisited."""
    found = {cls for cls in [model.GPT, *_subclasses(model.GPT)] if cls.__module__.startswith("litgpt.")}
    assert found == {gpt for gpt, _, _ in LITGPT_GPT_CLASSES.values()}


@pytest.mark.parametrize("module_name", LITGPT_GPT_CLASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_gpt_class_builds_the_variant_or_refuses_clearly(module_name, variant):
    gpt_class, config_class, commands = LITGPT_GPT_CLASSES[module_name]
    if commands is not None and variant in REFUSING:
        with pytest.raises(ValueError, match=rf"\({REFUSING[variant]}\) is not supported by `litgpt {commands}`") as e:
            gpt_class(tiny_config_as(config_class, variant))
        assert "finetune_lora" in str(e.value) and "MHA, GQA and MQA" in str(e.value)
        return
    config = tiny_config_as(config_class, variant)
    built = gpt_class(config)
    for block in built.transformer.h:
        if commands is not None and config.attention_class_name == "GroupedQueryAttention":
            # adapters build litgpt's attention, which computes the grouped class's outputs (litgpt_equivalent)
            assert isinstance(block.attn, model.CausalSelfAttention)
        else:
            assert isinstance(block.attn, config.attention_class)


def test_block_guard_refuses_an_adapter_block_for_a_config_changed_after_validation():
    """The guard sits on the Block, not only on the adapter Config: a config mutated into MKA is refused."""
    config = tiny_config_as(adapter.Config, "mha")
    config.attention_class_name = "MemorizedKeyAttention"
    config.memorized_key_attention = {"routing": "keys", "router_hidden": 8}
    with pytest.raises(ValueError, match=r"\(MKA\) is not supported by `litgpt finetune_adapter`"):
        adapter.Block(config, 0)


def test_block_guard_covers_user_subclasses_defined_after_activation():
    class PlainAttentionBlock(model.Block):  # replaces the configured attention, as litgpt's own Blocks did
        def __init__(self, config, block_idx):
            super().__init__(config, block_idx)
            self.attn = model.CausalSelfAttention(config, block_idx)

    class Inheriting(PlainAttentionBlock):  # no __init__ of its own: checked by its parent's
        pass

    for cls in (PlainAttentionBlock, Inheriting):
        expected = rf"{cls.__name__} built litgpt.model.CausalSelfAttention for"
        with pytest.raises(ValueError, match=expected + r" attention_class_name='MultiheadLatentAttention' \(MLA\)"):
            cls(variant_config("mla"), 0)
        cls(variant_config("gqa"), 0)  # a variant it honours builds


def test_block_guard_checks_only_the_complete_block():
    """An outer __init__ that fixes the attention after an inner one built the wrong class is accepted."""

    class Fixing(adapter.Block):
        def __init__(self, config, block_idx):
            super().__init__(config, block_idx)
            self.attn = config.attention_class(config, block_idx)

    config = tiny_config_as(adapter.Config, "mha")
    config.attention_class_name = "MemorizedKeyAttention"
    config.memorized_key_attention = {"routing": "keys", "router_hidden": 8}
    assert isinstance(Fixing(config, 0).attn, config.attention_class)


@pytest.mark.parametrize(
    ("checkpoint_variant", "model_variant", "first_dropped"),
    [
        ("mla", "mha", "transformer.h.0.attn.q_a_proj"),
        ("mka", "mha", "transformer.h.0.attn.memory"),
        ("mha", "mla", "transformer.h.0.attn.qkv"),
    ],
)
def test_non_strict_load_that_drops_attention_weights_raises(checkpoint_variant, model_variant, first_dropped):
    state_dict = random_gpt(variant_config(checkpoint_variant)).state_dict()
    target = model.GPT(variant_config(model_variant))
    with pytest.raises(ValueError, match=rf"would drop \d+ attention weights \(\['{first_dropped}"):
        target.load_state_dict(state_dict, strict=False)


def test_non_strict_load_that_leaves_attention_parameters_unset_warns():
    """MKA warm-started from an MHA checkpoint: qkv/proj load, router and memory keep their init (reported)."""
    target = model.GPT(variant_config("mka"))
    with pytest.warns(UserWarning, match=r"no values for 10 attention parameters \(\['transformer.h.0.attn.memory"):
        target.load_state_dict(random_gpt(variant_config("mha")).state_dict(), strict=False)


def test_non_strict_load_through_litgpts_load_checkpoint_and_fabric_raises(tmp_path):
    """The path finetune_lora/finetune_adapter take: litgpt.utils.load_checkpoint on a Fabric-wrapped model."""
    path = tmp_path / "lit_model.pth"
    torch.save(random_gpt(variant_config("mla")).state_dict(), path)
    fabric = L.Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(lora.GPT(tiny_config_as(lora.Config, "mha", lora_r=2, lora_query=True)))
    with pytest.raises(ValueError, match=r"would drop 16 attention weights \(\[.transformer.h.0.attn.q_a_proj.weight"):
        load_checkpoint(fabric, wrapped, path, strict=False)


def load_silently(target: nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """``target.load_state_dict(state_dict, strict=False)`` with every warning an error; (missing, unexpected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        missing, unexpected = target.load_state_dict(state_dict, strict=False)
    return missing, unexpected


def test_non_strict_load_between_classes_with_the_same_parameters_is_silent_and_complete():
    """Our MLA checkpoint into litgpt's stock MLA (same parameter names): nothing raised or warned, every weight
    loaded, so both compute the same outputs."""
    source = random_gpt(variant_config("mla"))
    target = model.GPT(variant_config("stock-mla")).eval()
    assert load_silently(target, source.state_dict()) == ([], [])
    idx = tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(target(idx), source(idx))


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_strict_loads_that_fine_tuning_needs_are_silent_and_complete(variant):
    """litgpt's fine-tuning loads a base checkpoint into a LoRA (or adapter) model, then the LoRA weights alone,
    both with strict=False: no guard may raise or warn, and the loaded model is the base model (LoRA's B and the
    adapters' gates start at zero, so their outputs equal the base's)."""
    base = random_gpt(variant_config(variant))
    idx = tokens(2, 12)
    with torch.no_grad():
        expected = base(idx)
    lora_model = lora.GPT(tiny_config_as(lora.Config, variant, lora_r=2, lora_query=True, lora_value=True)).eval()
    missing, unexpected = load_silently(lora_model, base.state_dict())  # base checkpoint, LoRA weights missing
    assert unexpected == [] and missing and all("lora_" in key for key in missing)
    with torch.no_grad():
        torch.testing.assert_close(lora_model(idx), expected)
    lora_only = {key: torch.randn_like(value) for key, value in lora_model.state_dict().items() if "lora_" in key}
    load_silently(lora_model, lora_only)  # LoRA weights only
    loaded = lora_model.state_dict()
    torch.testing.assert_close({key: loaded[key] for key in lora_only}, lora_only, rtol=0, atol=0)
    if variant not in REFUSING:
        adapter_model = adapter_v2.GPT(tiny_config_as(adapter_v2.Config, variant)).eval()
        missing, unexpected = load_silently(adapter_model, base.state_dict())  # base checkpoint, adapter weights missing
        assert unexpected == [] and missing and all("adapter" in key or "gating" in key for key in missing)
        with torch.no_grad():
            torch.testing.assert_close(adapter_model(idx), expected)


def test_strict_loads_are_untouched():
    """A strict load raises torch's own error, word for word, and a matching one loads every weight silently."""
    mla_weights = random_gpt(variant_config("mla")).state_dict()
    target = model.GPT(variant_config("mha"))
    with pytest.raises(RuntimeError) as guarded:
        target.load_state_dict(mla_weights, strict=True)
    with pytest.raises(RuntimeError) as plain:
        nn.Module.load_state_dict(target, mla_weights, strict=True)
    assert str(guarded.value) == str(plain.value) and "Unexpected key" in str(guarded.value)
    mha_weights = random_gpt(variant_config("mha")).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target.load_state_dict(mha_weights, strict=True)
    torch.testing.assert_close(target.state_dict(), mha_weights, rtol=0, atol=0)
