"""benchmarks/gpu.sh with DEVICE=cpu at tiny settings: each stage writes its tables (their layout and that no
cell is an error, not their numbers), and a stage out of time skips its steps and says so."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
# the smallest settings of every step (14m presets, fp32, a few tokens); stage 2's decode.py has its own tests
TINY = {
    "DEVICE": "cpu", "SIZE": "14m", "DTYPE": "float32", "STAGE_SECONDS": "600",
    "BACKENDS_ARGS": "--variants mha mla --prompt 8 --train_length 16",
    "TESTS": "tests/attention/test_bf16_decode.py -n 0 -k test_every_case",
    "FSDP_ARGS": "--variants mha --steps 2 --batch 1 --train_length 16",
    "SPEED_ARGS": "--variants mha --batch 1 --context 8 --steps 2 --warmup 1 --policies default math"
                  " --kv_cache_quantizations int8",
    "GROWTH_ARGS": "--variants mla --batch 1 --context 8 --steps 4 --policies default math",
    "BENCH_ARGS": "skip",
    "PRETRAIN_PRESET": "pythia-14m-gqa", "PRETRAIN_TOKENS": "128",
    "PRETRAIN_ARGS": "--train.max_seq_length 32 --train.micro_batch_size 2 --train.global_batch_size 2"
                     " --train.save_interval 1 --eval.max_iters 1",
}
KERNEL_CELL = re.compile(
    r"no SDPA|((flash \(cpu\)|math) x\d+(, )?)+ \[((training|prefill|decode|masked|outside dispatch) x\d+(, )?)+\]"
)


def run_gpu_sh(out: Path, env: dict[str, str], **settings: str) -> subprocess.CompletedProcess:
    env = {**env, "PYTHON": sys.executable, **settings}
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the rows of the markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_every_stage_writes_its_tables_on_the_cpu(tmp_path, shared_data, tokenizer_dir, subprocess_env):
    result = run_gpu_sh(tmp_path, subprocess_env, STAGES="1 2 3", DATA_DIR=str(shared_data),
                        TOKENIZER_DIR=str(tokenizer_dir), **TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"stage{n}.{ext}" for n in (1, 2, 3)
                                                                  for ext in ("log", "md")]
    stage1, stage2, stage3 = ((tmp_path / f"stage{n}.md").read_text() for n in (1, 2, 3))

    assert "## Versions" in stage1 and "torch 2.13.0" in stage1
    sites = table_rows(stage1, "| variant | training | prefill | decode | decode rows (B,1) | decode, no maxp1 |")
    assert [row[0] for row in sites] == ["mha", "mla"]
    assert all(KERNEL_CELL.fullmatch(cell) for row in sites for cell in row[1:]), sites
    assert "Math fallback, unknown kernel or error at: none." in stage1
    assert re.search(r"^1 passed, \d+ deselected", stage1, re.M)
    (fsdp,) = table_rows(stage1, "| variant | unsharded losses | FSDP losses |")
    assert fsdp[0] == "mha" and float(fsdp[3]) <= 1e-5, fsdp  # world size 1: the same steps
    assert [len(losses.split()) for losses in fsdp[1:3]] == [2, 2]
    assert re.search(r"^- step `versions`: \d+ s \(before the stages\)$", stage1, re.M)
    for name in ("backends", "correctness", "fsdp"):
        assert re.search(rf"^- step `{name}`: \d+ s$", stage1, re.M), name

    speed = table_rows(stage2, "| variant | default | math |")
    assert [row[0] for row in speed] == ["mha", "mha, int8 cache"]
    assert all(re.fullmatch(r"\d+\.\d \(\d+\.\d\dx\)", cell) for row in speed for cell in row[1:]), speed
    growth = table_rows(stage2, "| variant | policy | steps |")
    assert [row[:3] for row in growth] == [["mla", "default", "4"], ["mla", "math", "4"]]
    assert "step `decode`" not in stage2  # BENCH_ARGS=skip

    assert re.search(r"^Resuming training from .*step-00000001", stage3, re.M)
    assert len(re.findall(r"^Final evaluation \| val loss", stage3, re.M)) == 2
    assert re.search(r"^Once upon a time", stage3, re.M)
    for name in ("pretrain", "resume", "generate"):
        assert re.search(rf"^- step `{name}`: \d+ s$", stage3, re.M), name


def test_a_stage_out_of_time_skips_its_steps_and_fails(tmp_path, subprocess_env):
    result = run_gpu_sh(tmp_path, subprocess_env, STAGES="2", DEVICE="cpu", STAGE_SECONDS="0", BENCH_ARGS="skip")
    assert result.returncode == 1
    stage2 = (tmp_path / "stage2.md").read_text()
    for name in ("decode-speed", "decode-growth"):
        assert f"- step `{name}` skipped: stage 2's 0 s were used up" in stage2


def test_a_missing_gpu_stops_the_run_before_any_stage(tmp_path, subprocess_env):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    result = run_gpu_sh(tmp_path, subprocess_env, DEVICE="cuda")
    assert result.returncode == 2
    assert "no CUDA device visible to torch" in result.stderr and not list(tmp_path.iterdir())


def test_unknown_stage_is_refused(tmp_path, subprocess_env):
    result = run_gpu_sh(tmp_path, subprocess_env, STAGES="4", DEVICE="cpu")
    assert result.returncode == 2
    assert "STAGES has 4; the stages are 1, 2 and 3" in result.stderr
