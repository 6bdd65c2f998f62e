"""docs/study-pythia-14m/configs: each sweep config is its preset with only the swept attention key changed."""

from pathlib import Path

import pytest

from tests.conftest import CONFIG_HUB


STUDY = Path(__file__).resolve().parents[2] / "docs" / "study-pythia-14m"


@pytest.mark.parametrize(("sweep", "preset", "attention"), [
    ("pythia-14m-mla-kv8", "pythia-14m-mla", {"latent_attention": {"kv_lora_rank": 8}}),
    ("pythia-14m-mla-kv16", "pythia-14m-mla", {"latent_attention": {"kv_lora_rank": 16}}),
    ("pythia-14m-mla-kv64", "pythia-14m-mla", {"latent_attention": {"kv_lora_rank": 64}}),
])
def test_sweep_configs_change_only_the_attention_keys_of_their_preset(sweep, preset, attention):
    from litgpt_mka.presets import load_pretrain_yaml

    swept, base = load_pretrain_yaml(STUDY / "configs" / f"{sweep}.yaml"), load_pretrain_yaml(CONFIG_HUB / f"{preset}.yaml")
    for key, change in attention.items():
        base["model_config"][key] = {**base["model_config"][key], **change} if isinstance(change, dict) else change
    assert swept == base
    header = " ".join((STUDY / "configs" / f"{sweep}.yaml").read_text().replace("#", " ").split()[:30])
    assert f"a copy of config_hub/pretrain/{preset}.yaml with only the attention keys changed" in header
