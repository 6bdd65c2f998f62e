"""`litgpt pretrain --devices 2` on the CPU: litgpt's multi-process code path, with DDP over gloo in place of FSDP
(litgpt_mka/plugin/litgpt_internals/pretrain.py), against one process.

The global batches must be the same. litgpt gives every rank ``micro_batch_size`` windows per iteration and
accumulates ``global_batch_size / (devices x micro_batch_size)`` iterations per step; its learning rate follows the
iteration count. So 2 processes with micro-batch 1 are compared with 1 process with micro-batch 2 (both: 2
iterations per step, global batch 4, the same iteration counts and learning rates). TextCorpus gives rank r the
windows ``r::2`` of each epoch's order, so iteration j reads windows 2j and 2j + 1 of the order in both runs:
one process in one micro-batch, two processes one window each. The 2-process loss of an iteration is the mean of
the ranks' losses (equal token counts); litgpt logs rank 0's only, so `recording_pretrain.py` records every
rank's.

Tolerances (float32): per-iteration losses within 1e-5 (relative and absolute) and final weights within 1e-5 of
one process: the runs differ only in the order of floating-point sums (a batch of 2 against two batches of 1,
gradients averaged by gloo's all-reduce), and AdamW's first steps, m / sqrt(v), keep such differences at the
level of the rounding. `--resume` is compared exactly (rtol=0, atol=0), and greedy generation by text.

One variant runs by default (FMKA: router, memories and the derived long-term cache); ``LITGPT_MKA_ALL_VARIANTS=1``
runs all six (about 1.5 minutes each on 2 cores).
"""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIG_HUB, PROJECT_ROOT, litgpt_command, run
from tests.helpers import TINY_VARIANTS
from tests.plugin.recording_pretrain import RECORD_DIR_ENV_VAR, recorded_losses

ALL_VARIANTS_ENV_VAR = "LITGPT_MKA_ALL_VARIANTS"
DEFAULT_VARIANT = "fmka"
VARIANTS = list(TINY_VARIANTS) if os.environ.get(ALL_VARIANTS_ENV_VAR) == "1" else [DEFAULT_VARIANT]
RECORDING_PRETRAIN = PROJECT_ROOT / "tests" / "plugin" / "recording_pretrain.py"

STEPS = 3
GLOBAL_BATCH = 4
SEQUENCE = 32
WORLD_SIZE = 2


def pretrain_args(variant: str, shared_data: Path, tokenizer_dir: Path, devices: int, out_dir: Path) -> list[str]:
    """The preset of `variant`, 3 steps of 4 windows of 32 tokens, a checkpoint after every step."""
    return [
        "pretrain", "--config", str(CONFIG_HUB / f"pythia-14m-{variant}.yaml"),
        "--data.train_path", str(shared_data / "train.txt"), "--data.val_path", str(shared_data / "val.txt"),
        "--tokenizer_dir", str(tokenizer_dir), "--precision", "32-true", "--devices", str(devices),
        "--train.max_seq_length", str(SEQUENCE), "--train.global_batch_size", str(GLOBAL_BATCH),
        "--train.micro_batch_size", str(WORLD_SIZE // devices),  # 2 iterations per step in both runs
        "--train.max_tokens", str(STEPS * GLOBAL_BATCH * SEQUENCE), "--train.lr_warmup_steps", "1",
        "--train.save_interval", "1", "--train.log_interval", "1",
        "--eval.max_iters", "1", "--eval.final_validation", "false",
        "--out_dir", str(out_dir),
    ]  # fmt: skip


def pretrain(args: list[str], env: dict[str, str], record_dir: Path) -> str:
    """Runs litgpt pretrain through `recording_pretrain.py`; returns its output."""
    record_dir.mkdir()
    env = {**env, RECORD_DIR_ENV_VAR: str(record_dir), "OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1"}
    result = run([sys.executable, str(RECORDING_PRETRAIN), *args], env=env)
    return result.stdout + result.stderr


@pytest.fixture(scope="module", params=VARIANTS)
def runs(request, shared_data, tokenizer_dir, subprocess_env, tmp_path_factory) -> dict:
    """One process and two processes of the same training, and the 2-process run interrupted after step 2 and
    resumed with `--resume auto`."""
    variant, tmp = request.param, tmp_path_factory.mktemp(f"processes-{request.param}")
    one, two, resumed = tmp / "one", tmp / "two", tmp / "resumed"
    output = {}
    for name, devices, out_dir in (("one", 1, one), ("two", WORLD_SIZE, two)):
        args = pretrain_args(variant, shared_data, tokenizer_dir, devices, out_dir)
        output[name] = pretrain(args, subprocess_env, tmp / f"losses-{name}")
    shutil.copytree(two, resumed)
    for later in (f"step-{STEPS:08d}", "final"):
        shutil.rmtree(resumed / later)
    args = pretrain_args(variant, shared_data, tokenizer_dir, WORLD_SIZE, resumed)
    output["resumed"] = pretrain([*args, "--resume", "auto"], subprocess_env, tmp / "losses-resumed")
    return {"variant": variant, "tmp": tmp, "one": one, "two": two, "resumed": resumed, "output": output}


def final_state(out_dir: Path) -> dict:
    return torch.load(out_dir / "final" / "lit_model.pth", weights_only=False)


@pytest.mark.slow
def test_the_run_says_it_replaced_fsdp_with_ddp(runs):
    first_lines = runs["output"]["two"].splitlines()[:5]
    assert any("2 processes train with DDP over gloo in place of litgpt's FSDP" in line for line in first_lines)
    assert "DDP over gloo" not in runs["output"]["one"]


@pytest.mark.slow
def test_two_processes_read_the_global_batches_of_one_and_take_its_steps(runs):
    tmp = runs["tmp"]
    one = torch.tensor(recorded_losses(tmp / "losses-one", rank=0))  # (iterations,)
    ranks = torch.tensor([recorded_losses(tmp / "losses-two", rank) for rank in range(WORLD_SIZE)])  # (2, iter.)
    assert one.shape == (STEPS * 2,) and ranks.shape == (WORLD_SIZE, STEPS * 2)
    assert not torch.equal(ranks[0], ranks[1])  # the ranks read different windows
    torch.testing.assert_close(ranks.mean(dim=0), one, rtol=1e-5, atol=1e-5)
    assert one[-2:].mean() < one[:2].mean()  # the steps did train

    expected, got = final_state(runs["one"]), final_state(runs["two"])
    assert got["iter_num"] == expected["iter_num"] == STEPS * 2 and got["step_count"] == STEPS
    torch.testing.assert_close(got["model"], expected["model"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_resumed_two_process_run_ends_with_the_uninterrupted_weights(runs):
    assert "Resuming training from" in runs["output"]["resumed"]
    expected, got = final_state(runs["two"]), final_state(runs["resumed"])
    assert got["iter_num"] == expected["iter_num"] and got["train_dataloader"] == expected["train_dataloader"]
    torch.testing.assert_close(got["model"], expected["model"], rtol=0, atol=0)
    torch.testing.assert_close(got["optimizer"], expected["optimizer"], rtol=0, atol=0)


PROMPT = "Once upon a time"


def greedy_text(checkpoint_dir: Path, env: dict[str, str]) -> str:
    """What `litgpt generate` writes after its settings: the prompt and 12 greedy tokens (top_k 1)."""
    args = ["generate", str(checkpoint_dir), "--prompt", PROMPT, "--max_new_tokens", "12", "--top_k", "1"]
    stdout = run([*litgpt_command(), *args], env=env).stdout
    return stdout[stdout.rindex(f"\n{PROMPT}") + 1 :].strip()


@pytest.mark.slow
def test_two_process_checkpoint_generates_the_text_of_one_process(runs, subprocess_env):
    text = greedy_text(runs["two"] / "final", subprocess_env)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    assert text == greedy_text(runs["one"] / "final", subprocess_env)


def test_only_an_fsdp_strategy_is_replaced():
    """Without CUDA (this machine), the stand-in for `L.Fabric` trades FSDP for DDP over gloo, nothing else."""
    import lightning
    from lightning.fabric.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
    from litgpt import pretrain as litgpt_pretrain

    from litgpt_mka.plugin.litgpt_internals.pretrain import _fabric_without_fsdp

    fabric = _fabric_without_fsdp(accelerator="cpu", devices=2, strategy=FSDPStrategy(auto_wrap_policy=set()))
    assert type(fabric.strategy) is DDPStrategy and fabric.strategy._process_group_backend == "gloo"
    assert fabric.world_size == 2
    assert isinstance(_fabric_without_fsdp(accelerator="cpu", devices=1).strategy, SingleDeviceStrategy)
    assert litgpt_pretrain.L is lightning  # the namespace is litgpt's only while its `setup` runs
