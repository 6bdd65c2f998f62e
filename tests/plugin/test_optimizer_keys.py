"""An optimizer setting that litgpt 0.5.13 would silently ignore is refused (litgpt_mka/plugin/config_checks.py)."""

import pytest
import torch

PARAMETERS = [torch.nn.Parameter(torch.zeros(2))]


def test_a_key_beside_class_path_and_init_args_is_refused():
    import litgpt.finetune.lora
    import litgpt.pretrain

    stray = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}, "lr": "0.006"}  # `--optimizer.lr 0.006`
    for module in (litgpt.pretrain, litgpt.finetune.lora):
        with pytest.raises(ValueError, match=r"optimizer: lr given beside class_path and init_args .* ignored"):
            module.instantiate_torch_optimizer(dict(stray), PARAMETERS)


@pytest.mark.parametrize("optimizer, lr", [
    ({"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.006, "betas": [0.9, 0.95]}}, 0.006),
    ("AdamW", 0.001),
])
def test_well_formed_optimizers_build_as_litgpt_builds_them(optimizer, lr):
    import litgpt.pretrain

    built = litgpt.pretrain.instantiate_torch_optimizer(optimizer, PARAMETERS)
    assert isinstance(built, torch.optim.AdamW) and built.defaults["lr"] == lr
