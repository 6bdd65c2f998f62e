"""End to end with litgpt's own commands: `litgpt pretrain` a small MHA model, `litgpt-mka convert` it to MLA
and GQA, then `litgpt generate` and `litgpt pretrain --initial_checkpoint_dir` on each converted folder
(eager mode, TORCHDYNAMO_DISABLE=1, float32: the checkpoints, not compilation, are under test)."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIG_HUB, litgpt_command, run

PRESET = CONFIG_HUB / "pythia-14m-mha.yaml"


def litgpt_mka_command() -> list[str]:
    return [str(Path(litgpt_command()[0]).parent / "litgpt-mka")]


def pretrain_args(shared_data, max_tokens: int) -> list[str]:
    return [
        *litgpt_command(), "pretrain", "--config", str(PRESET),
        "--data.train_path", str(shared_data / "train.txt"), "--data.val_path", str(shared_data / "val.txt"),
        "--precision", "32-true", "--train.max_seq_length", "64", "--train.micro_batch_size", "4",
        "--train.global_batch_size", "4", "--train.max_tokens", str(max_tokens), "--train.lr_warmup_steps", "1",
        "--eval.max_iters", "1",
    ]


@pytest.mark.slow
def test_pretrain_convert_generate_and_uptrain(shared_data, tokenizer_dir, subprocess_env, tmp_path):
    env = {**subprocess_env, "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    run([*pretrain_args(shared_data, 1024), "--tokenizer_dir", str(tokenizer_dir), "--out_dir", str(tmp_path / "mha")], env=env)
    source = tmp_path / "mha" / "final"

    for name, options in (("mla", ["--to", "mla", "--kv_lora_rank", "32"]), ("gqa", ["--to", "gqa", "--n_query_groups", "2"])):
        converted = tmp_path / name
        result = run(
            [*litgpt_mka_command(), "convert", str(source), *options, "--out_dir", str(converted),
             "--calibration_data", str(shared_data / "train.txt"), "--calibration_tokens", "1024"],
            env=env,
        )
        assert "[layer 6/6]" in result.stderr
        report = json.loads((converted / "conversion.json").read_text())
        assert report["kv_cache_bytes_per_token_fp32"]["converted"] < report["kv_cache_bytes_per_token_fp32"]["source"]

        generated = run(
            [*litgpt_command(), "generate", str(converted), "--prompt", "Once upon a time", "--max_new_tokens", "10"],
            env=env,
        )
        assert generated.stdout.strip().splitlines()[-1].startswith("Once upon a time")

        uptrained = tmp_path / f"{name}-uptrained"
        run(
            [*pretrain_args(shared_data, 512), "--config", str(converted / "pretrain_model.yaml"),
             "--initial_checkpoint_dir", str(converted), "--tokenizer_dir", str(converted), "--out_dir", str(uptrained)],
            env=env,
        )
        state = torch.load(uptrained / "final" / "lit_model.pth", weights_only=True)["model"]
        start = torch.load(converted / "lit_model.pth", weights_only=True)
        assert state.keys() == start.keys()  # the converted architecture was trained, from the converted weights
        changed = [k for k in start if not torch.equal(state[k], start[k])]
        assert changed and all(state[k].shape == start[k].shape for k in start)
