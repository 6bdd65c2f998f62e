"""The main job, end to end, with litgpt's own commands: `litgpt pretrain` then `litgpt generate`, for every
Pythia-14m preset of the config hub, on the offline TinyStories sample (compiled model, litgpt's default
precision, a budget of two optimizer steps)."""

import pytest
import yaml

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
            "--train.max_tokens", "8192",
            "--eval.max_iters", "2",
            "--out_dir", str(out_dir),
        ],
        env=subprocess_env,
    )
    final = out_dir / "final"
    assert (final / "lit_model.pth").is_file()
    saved = yaml.safe_load((final / "model_config.yaml").read_text())
    expected = yaml.safe_load(path.read_text())["model_config"]
    assert {k: saved[k] for k in expected} == expected

    generated = run(
        [*litgpt_command(), "generate", str(final), "--prompt", "Once upon a time", "--max_new_tokens", "20"],
        env=subprocess_env,
    )
    text = generated.stdout.strip().splitlines()[-1]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time") + 10
