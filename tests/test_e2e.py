"""The main job, end to end, with litgpt's own commands: `litgpt pretrain` then `litgpt generate`, for every
Pythia-14m preset of the config hub, on the offline TinyStories sample (the machine's default precision, which
is float32 on CPUs that emulate bf16, and eager on the CPU: see docs/precision.md; two optimizer steps
of 2 x 128 tokens: the preset's model section, a tiny training budget)."""

import pytest
import yaml

from litgpt_mka.plugin.litgpt_internals.config import plugin_field_defaults
from tests.conftest import CONFIG_HUB, litgpt_command, run


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(CONFIG_HUB.glob("pythia-14m-*.yaml")), ids=lambda p: p.stem)
def test_pretrain_then_generate(path, shared_data, tokenizer_dir, subprocess_env, tmp_path):
    out_dir = tmp_path / "out"
    run(
        [
            *litgpt_command(), "pretrain", "--config", str(path),
            "--data", "litgpt_mka.data.TextCorpus",
            "--data.train_path", str(shared_data / "train.txt"),
            "--data.val_path", str(shared_data / "val.txt"),
            "--tokenizer_dir", str(tokenizer_dir),
            "--train.max_seq_length", "128", "--train.micro_batch_size", "2", "--train.global_batch_size", "2",
            "--train.max_tokens", "512",
            "--eval.max_iters", "2",
            "--out_dir", str(out_dir),
        ],
        env=subprocess_env,
    )
    final = out_dir / "final"
    assert (final / "lit_model.pth").is_file()
    saved = yaml.safe_load((final / "model_config.yaml").read_text())
    expected = yaml.safe_load(path.read_text())["model_config"]
    # the plugin's fields at their defaults are left out of the saved file (litgpt without the plugin reads it)
    defaults = plugin_field_defaults()
    assert {k: saved.get(k, defaults.get(k)) for k in expected} == expected

    generated = run(
        [*litgpt_command(), "generate", str(final), "--prompt", "Once upon a time", "--max_new_tokens", "20"],
        env=subprocess_env,
    )
    text = generated.stdout.strip().splitlines()[-1]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time") + 10


@pytest.mark.slow
def test_interrupted_pretraining_resumes_to_the_same_weights(shared_data, tokenizer_dir, subprocess_env, tmp_path):
    """A run that crashed after step 2 of 4 and is resumed with `--resume auto` ends with exactly the weights
    of the uninterrupted run: checkpoints are resumable and the data order continues where it stopped.
    (Eager mode, TORCHDYNAMO_DISABLE=1: resumption does not depend on compilation.)"""
    import shutil

    import torch

    env = {**subprocess_env, "TORCHDYNAMO_DISABLE": "1"}
    args = [
        *litgpt_command(), "pretrain", "--config", str(CONFIG_HUB / "pythia-14m-gqa.yaml"),
        "--data.train_path", str(shared_data / "train.txt"), "--data.val_path", str(shared_data / "val.txt"),
        "--tokenizer_dir", str(tokenizer_dir), "--precision", "32-true",
        "--train.max_seq_length", "64", "--train.micro_batch_size", "2", "--train.global_batch_size", "2",
        "--train.max_tokens", "512", "--train.save_interval", "1", "--eval.max_iters", "1",
    ]
    run([*args, "--out_dir", str(tmp_path / "uninterrupted")], env=env)
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "uninterrupted", crashed)
    for later in ("step-00000003", "step-00000004", "final"):
        shutil.rmtree(crashed / later)
    resumed = run([*args, "--out_dir", str(crashed), "--resume", "auto"], env=env)
    assert "Resuming training from" in resumed.stdout + resumed.stderr

    expected = torch.load(tmp_path / "uninterrupted" / "final" / "lit_model.pth", weights_only=False)
    got = torch.load(crashed / "final" / "lit_model.pth", weights_only=False)
    assert got["iter_num"] == expected["iter_num"] == 4
    assert got["train_dataloader"] == expected["train_dataloader"]
    torch.testing.assert_close(got["model"], expected["model"], rtol=0, atol=0)
