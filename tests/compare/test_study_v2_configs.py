"""Study v2's ablation config is its preset with only the ablated attention key changed; each learning-rate
config is the presets' optimizer with only the peak rate changed."""

from pathlib import Path

import pytest

from tests.conftest import CONFIG_HUB

STUDY_V2 = Path(__file__).resolve().parents[2] / "docs" / "study-pythia-14m-v2"


def test_query_ablation_changes_only_q_lora_rank():
    from litgpt_mka.presets import load_pretrain_yaml

    ablation = load_pretrain_yaml(STUDY_V2 / "configs" / "pythia-14m-mla-fullq.yaml")
    preset = load_pretrain_yaml(CONFIG_HUB / "pythia-14m-mla.yaml")
    assert preset["model_config"]["latent_attention"]["q_lora_rank"] == 64
    preset["model_config"]["latent_attention"]["q_lora_rank"] = None
    assert ablation == preset
    header = " ".join((STUDY_V2 / "configs" / "pythia-14m-mla-fullq.yaml").read_text().replace("#", " ").split()[:30])
    assert "a copy of config_hub/pretrain/pythia-14m-mla.yaml with only the attention keys changed" in header


@pytest.mark.parametrize("rate", sorted(path.stem.removeprefix("optimizer-lr-")
                                        for path in (STUDY_V2 / "configs").glob("optimizer-lr-*.yaml")))
def test_each_learning_rate_config_is_the_presets_optimizer_with_only_its_peak_rate_changed(rate):
    from litgpt_mka.presets import load_pretrain_yaml

    swept = load_pretrain_yaml(STUDY_V2 / "configs" / f"optimizer-lr-{rate}.yaml")
    mha, mla, fmka = (load_pretrain_yaml(CONFIG_HUB / f"pythia-14m-{variant}.yaml")["optimizer"]
                      for variant in ("mha", "mla", "fmka"))
    assert mha == mla == fmka  # one optimizer config serves the three swept presets
    preset = mha
    assert preset["init_args"]["lr"] == 1e-3
    assert swept == {"optimizer": {**preset, "init_args": {**preset["init_args"], "lr": float(rate)}}}
