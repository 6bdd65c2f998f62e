"""LoRA for every variant: litgpt.lora builds the real variant, the flags pick its projections, base checkpoints
load, litgpt's `merge_lora` gives base + delta (whole logits), MLA's absorbed decode follows the merge."""

import pytest
import torch
import yaml
from litgpt import lora
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.scripts.merge_lora import merge_lora
from litgpt.utils import save_config

from litgpt_mka.finetune.lora import (
    EffectiveWeightLoRALinear,
    LoRAMemorizedKeyAttention,
    LoRAMultiheadLatentAttention,
    lora_attention_class,
)
from tests.builders import LORA_ALL, VARIANTS, tiny_config_as, variant_config
from tests.helpers import TINY_LATENT, assert_cached_decode_matches_full_forward, random_gpt, tokens


def lora_gpt(variant: str, seed: int = 0, **flags) -> lora.GPT:
    """A LoRA GPT of `variant` holding `random_gpt(variant)`'s base weights and random (non-zero) LoRA A and B."""
    base = random_gpt(variant_config(variant), seed=seed)
    model = lora.GPT(tiny_config_as(lora.Config, variant, **{**LORA_ALL, **flags}))
    model.load_state_dict(base.state_dict(), strict=False)  # as finetune_lora loads the base checkpoint
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_block_builds_the_lora_form_of_the_configured_variant(variant):
    config = tiny_config_as(lora.Config, variant, **LORA_ALL)
    model = lora.GPT(config)
    for block in model.transformer.h:
        assert type(block.attn) is lora_attention_class(config)
        assert isinstance(block.attn, config.attention_class)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (dict(lora_query=True), {"q_a_proj", "q_b_proj"}),
        (dict(lora_key=True), {"kv_a_proj_with_mqa", "kv_b_proj"}),
        (dict(lora_value=True), {"kv_a_proj_with_mqa", "kv_b_proj"}),
        (dict(lora_projection=True), {"proj"}),
        (dict(lora_query=True, lora_value=True), {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"}),
    ],
    ids=["query", "key", "value", "projection", "litgpt-defaults"],
)
@pytest.mark.parametrize("variant", ["mla", "stock-mla"])
def test_mla_flags_select_the_documented_projections(flags, expected, variant):
    no_flags = dict(lora_query=False, lora_key=False, lora_value=False, lora_projection=False)
    attn = lora.GPT(tiny_config_as(lora.Config, variant, lora_r=4, **{**no_flags, **flags})).transformer.h[0].attn
    adapted = {name for name in attn._lora_names if getattr(attn, name).r > 0}
    assert adapted == expected
    assert isinstance(attn.kv_b_proj, EffectiveWeightLoRALinear)


def test_mla_full_rank_query_gets_lora_on_q_proj():
    latent = {key: value for key, value in TINY_LATENT.items() if key != "q_lora_rank"}
    config = tiny_config_as(lora.Config, "mla", latent_attention=latent, lora_r=4, lora_query=True)
    attn = lora.GPT(config).transformer.h[0].attn
    assert attn.q_proj.r == 4 and not hasattr(attn, "q_a_proj")


@pytest.mark.parametrize("variant", ["mka", "fmka", "gqa"])
def test_qkv_flags_are_litgpts_for_the_fused_projection(variant):
    attn = lora.GPT(tiny_config_as(lora.Config, variant, lora_r=4, lora_key=True)).transformer.h[0].attn
    assert tuple(attn.qkv.enable_lora) == (False, True, False) and attn.qkv.r == 4
    assert attn.proj.r == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_checkpoint_loads_and_zero_lora_is_the_base_model(variant):
    """What finetune_lora does first: load the base checkpoint non-strictly; B = 0 gives the base logits."""
    base = random_gpt(variant_config(variant))
    model = lora.GPT(tiny_config_as(lora.Config, variant, **LORA_ALL)).eval()
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all("lora_" in key for key in result.missing_keys)
    idx = tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), base(idx))


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_lora_checkpoint_equals_base_plus_lora_delta(variant, tmp_path):
    """litgpt's own `merge_lora` on a base dir + LoRA dir; the merged plain GPT gives the LoRA model's logits."""
    model = lora_gpt(variant)
    base_dir, lora_dir = tmp_path / "base", tmp_path / "lora"
    for directory in (base_dir, lora_dir):
        directory.mkdir()
        save_config(variant_config(variant), directory)
        for name in ("tokenizer.json", "tokenizer_config.json"):  # checked for, not read, by merge_lora
            (directory / name).write_text("{}")
    base_state = {k.replace("linear.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    torch.save(base_state, base_dir / "lit_model.pth")
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" in k}, lora_dir / "lit_model.pth.lora")
    hyperparameters = {**LORA_ALL, "lora_dropout": 0.0, "checkpoint_dir": str(base_dir), "precision": "32-true"}
    (lora_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hyperparameters))

    merge_lora(lora_dir)

    merged = GPT(Config.from_file(lora_dir / "model_config.yaml")).eval()
    merged.load_state_dict(torch.load(lora_dir / "lit_model.pth"), strict=True)
    idx = tokens(2, 12)
    with torch.no_grad():
        expected = model(idx)
        torch.testing.assert_close(merged(idx), expected)
        # and the merged model is not the base model: the delta is there
        base = GPT(variant_config(variant)).eval()
        base.load_state_dict(base_state)
        assert (base(idx) - expected).abs().max() > 1e-3


def test_merged_weight_is_base_plus_scaled_delta():
    model = lora_gpt("mla")
    layer = model.transformer.h[0].attn.kv_b_proj
    base_weight = layer.linear.weight.detach().clone()
    expected = base_weight + (layer.lora_B @ layer.lora_A) * layer.scaling
    torch.testing.assert_close(layer.weight, expected)  # the effective weight before the merge
    lora.merge_lora_weights(model)
    torch.testing.assert_close(layer.linear.weight, expected)
    assert layer.weight is layer.linear.weight


def test_mla_absorbed_decode_uses_the_effective_weights_before_and_after_merge():
    """Cached decoding (absorbed path, T = 1) == full forward, with the LoRA delta unmerged, then merged in place."""
    model = lora_gpt("mla")
    attn = model.transformer.h[0].attn
    assert attn.absorb_max_queries >= 1  # decode steps take the absorbed path
    idx = tokens(2, 16)
    with torch.no_grad():
        unmerged = model(idx)
    assert_cached_decode_matches_full_forward(model, idx, prompt=5)
    lora.merge_lora_weights(model)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), unmerged)
    assert_cached_decode_matches_full_forward(model, idx, prompt=5)
    cached = attn._absorbed_weights()
    torch.testing.assert_close(cached.w_uv_t, attn.absorb_weights().w_uv_t)


@pytest.mark.parametrize("variant", ["mka", "fmka"])
def test_mka_decode_steps_read_the_lora_qkv_before_and_after_merge(variant):
    """Cached decoding (the decode-step fast path, T = 1 with input_pos_maxp1) == full forward, with the LoRA delta
    of ``qkv`` unmerged, then merged (litgpt finetune_lora's generate_example decodes so during training)."""
    model = lora_gpt(variant)
    idx = tokens(2, 10)
    assert_cached_decode_matches_full_forward(model, idx, prompt=4)
    lora.merge_lora_weights(model)
    assert_cached_decode_matches_full_forward(model, idx, prompt=4)


@pytest.mark.parametrize("variant", ["mka", "fmka"])
def test_mka_router_and_memory_are_frozen_and_one_step_changes_only_lora(variant):
    model = lora_gpt(variant).train()
    lora.mark_only_lora_as_trainable(model)
    attn = model.transformer.h[0].attn
    assert isinstance(attn, LoRAMemorizedKeyAttention)
    assert not attn.memory.requires_grad and not any(p.requires_grad for p in attn.router.parameters())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    idx = tokens(2, 12)
    logits = model(idx[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    assert attn.qkv.lora_A.grad.abs().sum() > 0  # the long-term memory and the keys reach the LoRA layer
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)


def test_mla_lora_trains_through_the_expanded_path():
    model = lora_gpt("mla").train()
    lora.mark_only_lora_as_trainable(model)
    idx = tokens(2, 12)
    model(idx).sum().backward()
    attn = model.transformer.h[0].attn
    assert isinstance(attn, LoRAMultiheadLatentAttention)
    for name in attn._lora_names:
        layer = getattr(attn, name)
        assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0, name
