"""End to end with litgpt's own commands: `litgpt finetune_lora` (which merges) then `litgpt generate`, for the
MLA and MKA Pythia-14m presets, on a tiny JSON instruction dataset built here.

The base checkpoint is the preset at its random initialisation (what `litgpt pretrain` starts from, saved the
way `litgpt convert_pretrained_checkpoint` writes one), so the test needs no pretraining run. The LoRA file
must hold the variant's own LoRA layers (not a plain MHA's), and the merged checkpoint must be base + delta.
"""

import json
import shutil

import pytest
import torch
import yaml
from litgpt.model import GPT
from litgpt.utils import save_config

from tests.conftest import litgpt_command, run
from tests.helpers import preset_config

# a few LoRA keys that exist only in the variant's own LoRA form
VARIANT_LORA_KEYS = {
    "pythia-14m-mla": ["transformer.h.0.attn.q_a_proj.lora_A", "transformer.h.0.attn.kv_b_proj.lora_B"],
    "pythia-14m-mka": ["transformer.h.0.attn.qkv.lora_A"],
}


def instruction_data(path):
    rows = [
        {"instruction": f"Count from {i} to {i + 3}.", "input": "", "output": " ".join(str(i + k) for k in range(4))}
        for i in range(20)
    ]
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(VARIANT_LORA_KEYS))
def test_finetune_lora_then_generate(preset, tokenizer_dir, subprocess_env, tmp_path):
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    config = preset_config(preset)
    torch.manual_seed(0)
    save_config(config, base_dir)
    torch.save(GPT(config).state_dict(), base_dir / "lit_model.pth")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, base_dir / name)

    out_dir = tmp_path / "out"
    env = {**subprocess_env, "TORCHDYNAMO_DISABLE": "1"}
    run(
        [
            *litgpt_command(), "finetune_lora", str(base_dir),
            "--data", "JSON", "--data.json_path", str(instruction_data(tmp_path / "data.json")),
            "--data.val_split_fraction", "0.2", "--data.num_workers", "0",
            "--lora_r", "4", "--lora_projection", "true",
            "--precision", "32-true",
            "--train.max_steps", "3", "--train.global_batch_size", "2", "--train.micro_batch_size", "2",
            "--train.lr_warmup_steps", "1", "--train.max_seq_length", "64",
            "--eval.interval", "1000", "--eval.max_iters", "1", "--eval.initial_validation", "false",
            "--eval.final_validation", "false", "--eval.max_new_tokens", "5",
            "--out_dir", str(out_dir),
        ],
        env=env,
    )
    final = out_dir / "final"
    lora_state = torch.load(final / "lit_model.pth.lora")["model"]
    for key in VARIANT_LORA_KEYS[preset]:
        assert key in lora_state, f"{key} missing: the LoRA run did not train the {preset} variant"
    saved = yaml.safe_load((final / "model_config.yaml").read_text())
    assert saved["attention_class_name"] == config.attention_class_name

    # merged (by finetune_lora itself, through litgpt's merge_lora) == base + scaling B A
    base = torch.load(base_dir / "lit_model.pth")
    merged = torch.load(final / "lit_model.pth")
    assert merged.keys() == base.keys()
    scaling = 16 / 4  # litgpt's default lora_alpha / lora_r
    name = "transformer.h.0.attn.proj"
    delta = lora_state[f"{name}.lora_B"] @ lora_state[f"{name}.lora_A"] * scaling
    assert delta.abs().max() > 0
    torch.testing.assert_close(merged[f"{name}.weight"], base[f"{name}.weight"] + delta)

    generated = run(
        [*litgpt_command(), "generate", str(final), "--prompt", "Count from 3 to 6.", "--max_new_tokens", "10"],
        env=env,
    )
    assert "Count from 3 to 6." in generated.stdout
