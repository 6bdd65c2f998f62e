"""Shared pieces of the compare tests: tiny configs (overrides of the pythia-14m hub config), the command line of a
tiny comparison, reading its results back, and finished run records with chosen numbers."""

import json
import math
import re
import sys
from pathlib import Path

import yaml

from litgpt_mka.compare.records import (
    CurvePoint, Decode, Environment, EvalResult, KVCacheSize, MeasureResult, Parameters, PeakMemory, PhaseLoad, Results,
    RunResult, Throughput, TrainResult, Validation, from_json,
)
from tests.conftest import CONFIG_HUB

SEQ, MICRO_BATCH, ITERATIONS, SAVE_INTERVAL = 32, 4, 8, 4
TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_query_groups": 2, "intermediate_size": 64, "block_size": 64}
TINY_MKA = {"attention_class_name": "MemorizedKeyAttention", "memorized_key_attention": {"routing": "keys"}}
VAL_STORIES = 12
# an absolute path of the machine: a slash at the start of a word (report.md and results.csv must have none)
ABSOLUTE_PATH = re.compile(r"(?:^|[\s`(\[\"'=])/\w")


def litgpt_mka_command() -> list[str]:
    return [str(Path(sys.executable).parent / "litgpt-mka")]


def tiny_yaml(folder: Path, name: str, **model_overrides) -> Path:
    """The pythia-14m-mha hub YAML with a tiny model and budget, saved as folder/name.yaml."""
    config = yaml.safe_load((CONFIG_HUB / "pythia-14m-mha.yaml").read_text())
    config["model_config"].update(TINY_MODEL, name=name, **model_overrides)
    config["train"].update(
        max_tokens=ITERATIONS * MICRO_BATCH * SEQ, max_seq_length=SEQ, micro_batch_size=MICRO_BATCH,
        global_batch_size=MICRO_BATCH, lr_warmup_steps=2, save_interval=SAVE_INTERVAL,
    )
    path = folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_stories(path: Path, shared_data: Path, first: int, last: int) -> Path:
    """Stories first..last-1 of the shared validation text (a few thousand tokens) as `path`."""
    stories = (shared_data / "val.txt").read_text().split("<|endoftext|>")[first:last]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<|endoftext|>".join(stories))
    return path


def compare_args(configs: list[Path], out_dir: Path, shared_data: Path, val: Path | list[Path], tokenizer_dir: Path) -> list[str]:
    vals = val if isinstance(val, list) else [val]
    return [
        *litgpt_mka_command(), "compare", "--configs", *map(str, configs), "--seeds", "1",
        "--out_dir", str(out_dir), "--train_path", str(shared_data / "train.txt"), "--val_path", *map(str, vals),
        "--tokenizer_dir", str(tokenizer_dir), "--precision", "32-true", "--throughput_skip_iters", "1",
        "--context_length", "16", "--decode_new_tokens", "4", "--keep_step_checkpoints", "true",
    ]


def typed_results(out_dir: Path) -> Results:
    return from_json(Results, json.loads((out_dir / "results.json").read_text()))


def synthetic_run(variant: str, seed: int, loss: float, kv: float = 1024.0, train_load: float = 0.5,
                  decode_load: float = 0.5, routing=None):
    """A finished RunResult with chosen numbers (every other value fixed)."""

    def load(value: float) -> PhaseLoad:
        return PhaseLoad(value, value, threads=2, cpu_count=2, wall_s=10.0, cpu_s=19.0)

    peak = PeakMemory("cpu_peak_rss", 2**30)
    return RunResult(
        status="ok", name=f"{variant}-seed{seed}", variant=variant, seed=seed, config_path=f"configs/{variant}.yaml",
        config_sha256="0" * 64, spec_sha256="1" * 64,
        train=TrainResult("1" * 64, "32-true", "t0", "t1", 100.0 + seed, None, peak, load(train_load)),
        evaluation=EvalResult([Validation("val", "val.txt", loss, math.exp(loss), 999, 3, 32)],
                              [CurvePoint(8, 1024, loss, 999, "final")], routing, "cpu", 5.0, peak, "t1"),
        measure=MeasureResult(Parameters(1000, 100), KVCacheSize("float32", kv, 1, 16, int(kv * 16), kv, int(kv * 16), True),
                              Decode("float32", "cpu", 1, 16, 4, 50.0 + seed, load(decode_load)),
                              Throughput(128, 7, 1, 500.0 + seed), []),
        environment=Environment("3.11", "2.13", "0.5.13", "0.1.0", "2.6", "Linux", "cpu", 2, 2, [], None),
        finished="t2",
    )
