"""`litgpt-mka compare` end to end on tiny configs, and its pieces.

The comparisons run the real console script on tiny overrides of the pythia-14m hub configs (1 layer,
width 32, 8 iterations of 4 x 32 tokens) with the whole shared TinyStories training text and the first
stories of its validation text. They set TORCHDYNAMO_DISABLE=1: litgpt pretrain's torch.compile becomes
a no-op, which these tests of the bookkeeping do not need (the measured comparison keeps compilation),
and precision 32-true, so that independent float32 evaluations and resumed runs agree tightly.
"""

import csv
import io
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from litgpt_mka.cli import join_list_options
from litgpt_mka.compare.measure import training_throughput
from litgpt_mka.compare.plan import CompareOptions, check_identical_training_settings
from litgpt_mka.compare.runner import error_summary, prepare
from litgpt_mka.data import split_documents
from tests.conftest import CONFIG_HUB, run

SEQ, MICRO_BATCH, ITERATIONS, SAVE_INTERVAL = 32, 4, 8, 4
TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_query_groups": 2, "intermediate_size": 64, "block_size": 64}
VAL_STORIES = 12


def litgpt_mka_command() -> list[str]:
    return [str(Path(sys.executable).parent / "litgpt-mka")]


def tiny_config(folder: Path, name: str, **model_overrides) -> Path:
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


@pytest.fixture(scope="module")
def env(subprocess_env) -> dict[str, str]:
    # compile is a no-op: these tests check bookkeeping, not speed (see the module docstring)
    return {**subprocess_env, "TORCHDYNAMO_DISABLE": "1"}


@pytest.fixture(scope="module")
def small_val(tmp_path_factory, shared_data) -> Path:
    """The first VAL_STORIES stories of the shared validation text (a few thousand tokens)."""
    stories = (shared_data / "val.txt").read_text().split("<|endoftext|>")[:VAL_STORIES]
    path = tmp_path_factory.mktemp("val") / "val.txt"
    path.write_text("<|endoftext|>".join(stories))
    return path


def compare_args(configs: list[Path], out_dir: Path, shared_data: Path, val: Path, tokenizer_dir: Path) -> list[str]:
    return [
        *litgpt_mka_command(), "compare", "--configs", *map(str, configs), "--seeds", "1",
        "--out_dir", str(out_dir), "--train_path", str(shared_data / "train.txt"), "--val_path", str(val),
        "--tokenizer_dir", str(tokenizer_dir), "--precision", "32-true", "--throughput_skip_iters", "1",
        "--context_length", "16", "--decode_new_tokens", "4", "--keep_step_checkpoints", "true",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env, shared_data, small_val, tokenizer_dir) -> dict:
    """A finished comparison of two tiny variants (MHA, MQA), seed 1."""
    folder = tmp_path_factory.mktemp("compare")
    configs = [tiny_config(folder / "configs", "tiny-mha"), tiny_config(folder / "configs", "tiny-mqa", n_query_groups=1)]
    args = compare_args(configs, folder / "out", shared_data, small_val, tokenizer_dir)
    result = run(args, env)
    return {"out_dir": folder / "out", "args": args, "stdout": result.stdout}


def results(out_dir: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out_dir / "results.json").read_text())["runs"]}


# ------------------------------------------------------------------------------ independent evaluation
def independent_validation_loss(checkpoint_dir: Path, val_path: Path, tokenizer_dir: Path, seq: int) -> torch.Tensor:
    """Mean cross-entropy over every target position of the validation stream, each scored once.

    Written from the documented layout, not from litgpt_mka.compare.evaluate: windows of seq + 1 tokens
    at stride seq plus one window aligned to the end; a position keeps the loss of the first window
    that scores it, and every position must be scored.
    """
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)
    stream = torch.cat([tokenizer.encode(d, bos=False, eos=True) for d in split_documents(val_path.read_text())]).long()
    model = GPT(Config.from_file(checkpoint_dir / "model_config.yaml"))
    model.load_state_dict(torch.load(checkpoint_dir / "lit_model.pth", weights_only=True)["model"])
    model.eval()
    n = len(stream)
    starts = list(range(0, n - seq, seq))
    starts = [s for s in starts if s + seq + 1 <= n] + [n - seq - 1]
    windows = torch.stack([stream[s : s + seq + 1] for s in starts])  # (W, seq + 1)
    with torch.no_grad():
        nll = torch.cat([
            F.cross_entropy(model(chunk[:, :-1]).transpose(1, 2), chunk[:, 1:], reduction="none").double()
            for chunk in windows.split(32)
        ])  # (W, seq)
    losses = torch.full((n,), float("nan"), dtype=torch.float64)
    for start, window_nll in zip(starts, nll):
        positions = torch.arange(start + 1, start + seq + 1)
        fresh = losses[positions].isnan()
        losses[positions[fresh]] = window_nll[fresh]
    assert not losses[1:].isnan().any(), "the windows must score every target position"
    return losses[1:].mean()


@pytest.mark.slow
def test_validation_loss_in_results_is_an_independent_evaluation_of_the_checkpoints(finished, small_val, tokenizer_dir):
    runs = results(finished["out_dir"])
    assert sorted(runs) == ["tiny-mha-seed1", "tiny-mqa-seed1"]
    for name, result in runs.items():
        assert result["status"] == "ok"
        checkpoints = finished["out_dir"] / "runs" / name / "checkpoints"
        curve = {point["checkpoint"]: point for point in result["curve"]}
        assert [(p["iter"], p["tokens"]) for p in result["curve"]] == [(4, 4 * MICRO_BATCH * SEQ), (8, 8 * MICRO_BATCH * SEQ)]
        for checkpoint, point in curve.items():
            expected = independent_validation_loss(checkpoints / checkpoint, small_val, tokenizer_dir, SEQ)
            # float32 logits; the sums run in another order here
            torch.testing.assert_close(torch.tensor(point["val_loss"], dtype=torch.float64), expected, rtol=1e-5, atol=1e-5)
        assert result["validation"]["loss"] == curve["final"]["val_loss"]
        assert result["validation"]["tokens"] == curve["final"]["val_tokens"]
        assert result["training"]["tokens"] == ITERATIONS * MICRO_BATCH * SEQ
        assert result["training"]["timed_iterations"] == ITERATIONS - 1
        assert result["training"]["precision"] == "32-true"


@pytest.mark.slow
def test_report_tables_show_the_numbers_of_the_runs(finished):
    out_dir = finished["out_dir"]
    runs = results(out_dir)
    report = (out_dir / "report.md").read_text()
    csv_rows = {row["name"]: row for row in csv.DictReader(io.StringIO((out_dir / "results.csv").read_text()))}
    for name, result in runs.items():
        row = csv_rows[name]
        assert float(row["val_loss"]) == result["validation"]["loss"]
        assert float(row["kv_bytes_per_token"]) == result["kv_cache"]["bytes_per_token"]
        table_row = next(line for line in report.splitlines() if line.startswith(f"| {result['variant']} |"))
        assert f"| {result['validation']['loss']:.4f} |" in table_row
        assert f"| {result['kv_cache']['bytes_per_token']:,} B |" in table_row
        kv = result["kv_cache"]
        assert kv["bytes_at_context"] == kv["bytes_per_token"] * kv["batch_size"] * kv["context_length"]
        assert kv["formula_matches"]  # litgpt_mka.measure.kv_cache_size's accounting of litgpt's own attention class
    # MQA caches one key/value head of the two that MHA caches
    assert runs["tiny-mqa-seed1"]["kv_cache"]["bytes_per_token"] * 2 == runs["tiny-mha-seed1"]["kv_cache"]["bytes_per_token"]
    assert shlex.split(report.split("```\n")[1].split("\n")[0]) == ["litgpt-mka", *finished["args"][1:]]
    for plot in ("loss_vs_tokens.png", "loss_vs_kv_cache.png", "throughput.png"):
        assert (out_dir / plot).read_bytes().startswith(b"\x89PNG")
        assert f"]({plot})" in report


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_second_invocation_trains_nothing_and_rewrites_the_same_report(finished, env):
    out_dir = finished["out_dir"]
    before = snapshot(out_dir / "runs")
    report, table = (out_dir / "report.md").read_bytes(), (out_dir / "results.csv").read_bytes()
    runs = json.loads((out_dir / "results.json").read_text())["runs"]

    again = run(finished["args"], env)

    assert again.stdout.count("finished earlier, skipped") == 2
    assert "training (litgpt pretrain)" not in again.stdout and "evaluating and measuring" not in again.stdout
    assert snapshot(out_dir / "runs") == before
    assert (out_dir / "report.md").read_bytes() == report
    assert (out_dir / "results.csv").read_bytes() == table
    assert json.loads((out_dir / "results.json").read_text())["runs"] == runs


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(finished, env, tmp_path):
    out_dir = tmp_path / "out"
    shutil.copytree(finished["out_dir"], out_dir)
    run_dir = out_dir / "runs" / "tiny-mha-seed1"
    # the state of a run interrupted after its step-4 checkpoint
    for name in ("result.json", "train.json"):
        (run_dir / name).unlink()
    for name in ("final", "step-00000008"):
        shutil.rmtree(run_dir / "checkpoints" / name)
    args = [*finished["args"][: finished["args"].index("--out_dir") + 1], str(out_dir),
            *finished["args"][finished["args"].index("--out_dir") + 2 :]]

    resumed = run(args, env)

    assert "tiny-mqa-seed1: finished earlier, skipped" in resumed.stdout
    assert json.loads((run_dir / "train.json").read_text())["resumed_from_step"] == 4
    second_process = csv.DictReader(io.StringIO((run_dir / "checkpoints/logs/csv/version_1/metrics.csv").read_text()))
    assert [int(row["iter"]) for row in second_process] == [5, 6, 7, 8]
    original, again = results(finished["out_dir"])["tiny-mha-seed1"], results(out_dir)["tiny-mha-seed1"]
    torch.testing.assert_close(
        torch.tensor([p["val_loss"] for p in again["curve"]]), torch.tensor([p["val_loss"] for p in original["curve"]])
    )


@pytest.mark.slow
def test_failing_config_is_recorded_and_the_other_runs_complete(env, shared_data, small_val, tokenizer_dir, tmp_path):
    broken = tiny_config(tmp_path / "configs", "tiny-broken", n_query_groups=3)  # 2 heads in 3 groups
    good = tiny_config(tmp_path / "configs", "tiny-mqa", n_query_groups=1)
    args = compare_args([broken, good], tmp_path / "out", shared_data, small_val, tokenizer_dir)

    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)

    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    runs = results(tmp_path / "out")
    failure = runs["tiny-broken-seed1"]
    assert (failure["status"], failure["phase"], failure["returncode"]) == ("failed", "train", 1)
    assert "n_head=2 must be divisible by n_query_groups=3" in failure["error"]
    assert "Traceback" in (tmp_path / "out" / "runs" / "tiny-broken-seed1" / "run.log").read_text()
    assert runs["tiny-mqa-seed1"]["status"] == "ok"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed runs" in report and "| tiny-broken-seed1 | train | exit status 1 |" in report
    assert "| tiny-broken | 0/1 | — |" in report


# ------------------------------------------------------------------------------------ data separation
def test_validation_windows_are_disjoint_from_the_training_text(
    shared_data, tokenizer_dir, subprocess_env, tmp_path, monkeypatch
):
    """The acceptance setting (TinyStories sample, max_seq_length 512): evaluated windows never hold training text."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_mka.compare.evaluate import heldout_data
    from litgpt_mka.data import TextCorpus, default_cache_dir, load_or_tokenize, validation_windows

    monkeypatch.setenv("XDG_CACHE_HOME", subprocess_env["XDG_CACHE_HOME"])
    seq = 512
    checkpoint = tmp_path / "final"  # what litgpt pretrain records beside a checkpoint, as compare's runs do
    checkpoint.mkdir()
    data = {"class_path": "litgpt_mka.data.TextCorpus",
            "init_args": {"train_path": str(shared_data / "train.txt"), "val_path": str(shared_data / "val.txt"), "seed": 42}}
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump(
        {"data": data, "tokenizer_dir": str(tokenizer_dir), "train": {"max_seq_length": seq}}))
    evaluated = heldout_data(checkpoint)

    tokenizer = Tokenizer(tokenizer_dir)
    val = load_or_tokenize(shared_data / "val.txt", tokenizer, default_cache_dir())
    windows, new_from = validation_windows(val, seq)
    torch.testing.assert_close(evaluated.windows, windows)
    torch.testing.assert_close(evaluated.new_from, new_from)

    corpus = TextCorpus(train_path=shared_data / "train.txt", val_path=shared_data / "val.txt")
    corpus.connect(tokenizer, batch_size=8, max_seq_length=seq)
    corpus.setup()
    training_windows = corpus.train_dataloader().dataset.windows  # (W_train, seq + 1), what training reads
    train = torch.from_numpy(corpus._train_tokens.astype("int64"))
    assert training_windows.numel() > 0 and len(evaluated.windows) > 0
    assert not {tuple(w.tolist()) for w in training_windows} & {tuple(w.tolist()) for w in evaluated.windows}
    # stronger: no evaluated window occurs anywhere in the training stream, at any offset
    for window in evaluated.windows:
        assert not _occurs(window, train), "a validation window occurs in the training text"
    train_documents = set(split_documents((shared_data / "train.txt").read_text()))
    assert not train_documents & set(split_documents((shared_data / "val.txt").read_text()))


def _occurs(needle: torch.Tensor, haystack: torch.Tensor, key: int = 8) -> bool:
    candidates = (haystack.unfold(0, key, 1) == needle[:key]).all(dim=1).nonzero().flatten()
    return any(torch.equal(haystack[s : s + len(needle)], needle) for s in candidates.tolist())


# ------------------------------------------------------------------------------------------ the pieces
def test_configs_with_different_training_settings_are_refused(tmp_path):
    a = tiny_config(tmp_path, "a")
    b_config = yaml.safe_load(tiny_config(tmp_path, "b").read_text())
    b_config["train"]["lr_warmup_steps"] = 7
    b_config["optimizer"]["init_args"]["lr"] = 0.5
    yamls = {a: yaml.safe_load(a.read_text()), tmp_path / "b.yaml": b_config}
    expected = r"optimizer\.init_args\.lr \(a\.yaml: 0\.001, b\.yaml: 0\.5\); train\.lr_warmup_steps \(a\.yaml: 2, b\.yaml: 7\)"
    with pytest.raises(ValueError, match=expected):
        check_identical_training_settings(yamls, CompareOptions(configs=[a]))
    # a shared override makes the values irrelevant; the model may differ
    b_config = yaml.safe_load(a.read_text())
    b_config["train"]["max_tokens"], b_config["model_config"]["n_layer"] = 999, 5
    check_identical_training_settings({a: yaml.safe_load(a.read_text()), tmp_path / "b.yaml": b_config},
                                      CompareOptions(configs=[a], max_tokens=100))


def test_decode_measurement_longer_than_block_size_is_refused_before_training(tmp_path):
    """pythia-14m's block_size is 512: a 512-token decode context cannot fit, and nothing may train first."""
    from litgpt_mka.compare.plan import check_decode_fits_block_size

    config = tiny_config(tmp_path, "a")
    yamls = {config: yaml.safe_load(config.read_text())}
    block_size = yamls[config]["model_config"]["block_size"]
    check_decode_fits_block_size(yamls, CompareOptions(configs=[config], context_length=block_size - 34))
    with pytest.raises(ValueError, match=rf"context_length={block_size} \+ decode_new_tokens=32 \+ 2 warm-up tokens = {block_size + 34} exceeds block_size={block_size} of a.yaml; use at most context_length={block_size - 34}"):
        check_decode_fits_block_size(yamls, CompareOptions(configs=[config], context_length=block_size))


def test_rerun_with_other_settings_into_the_same_folder_is_refused(tmp_path, shared_data, tokenizer_dir):
    config = tiny_config(tmp_path, "tiny")
    options = CompareOptions(configs=[config], out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
                             val_path=shared_data / "val.txt", tokenizer_dir=tokenizer_dir, max_tokens=1024,
                             context_length=16, decode_new_tokens=4)
    first = prepare(options)
    first.runs[0].run_dir.mkdir(parents=True)
    (first.runs[0].run_dir / "spec.json").write_text(json.dumps(first.runs[0].spec()))
    prepare(options)  # the same settings: accepted
    with pytest.raises(ValueError, match=r"tiny-seed42 holds a run made with other settings \(differing: pretrain_args\)"):
        prepare(CompareOptions(**{**options.__dict__, "max_tokens": 2048}))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("seeds", [1, 1], r"seeds=\[1, 1\] repeat a seed"), ("max_tokens", 0, "max_tokens=0 must be a positive integer"),
     ("precision", "fp8", r"precision='fp8' is not one of"), ("decode_dtype", "int8", r"decode_dtype='int8' is not one of")],
)
def test_invalid_options_are_refused(tmp_path, field, value, message):
    options = CompareOptions(configs=[tiny_config(tmp_path, "tiny")], **{field: value})
    with pytest.raises(ValueError, match=message):
        prepare(options)


def test_list_options_take_several_values_after_one_flag():
    assert join_list_options(["compare", "--configs", "a.yaml", "b.yaml", "--seeds", "1", "2", "--out_dir", "o"]) == [
        "compare", '--configs=["a.yaml", "b.yaml"]', "--seeds=[1, 2]", "--out_dir", "o"]
    assert join_list_options(["--seeds", "[3, 4]"]) == ["--seeds", "[3, 4]"]


def test_throughput_excludes_the_first_iterations_of_every_training_process():
    def rows(first_iter, times):
        return [{"iter": float(i), "total_tokens": 100.0 * i, "iter_time": t} for i, t in enumerate(times, start=first_iter)]

    segments = [rows(1, [9.0, 1.0, 2.0]), rows(3, [7.0, 1.0])]  # a run resumed at iteration 3
    result = training_throughput(segments, skip_iters=1)
    assert (result["tokens_per_iteration"], result["timed_iterations"]) == (100, 3)
    assert result["tokens_per_s"] == 3 * 100 / (1.0 + 2.0 + 1.0)
    too_short = training_throughput([rows(1, [9.0])], skip_iters=1)
    assert too_short["tokens_per_s"] is None and "first 1 of each process skipped" in too_short["note"]


def test_failure_summary_keeps_the_exception_and_the_reasons_after_it():
    log = ["Epoch 1 | iter 1", "Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad value",
           "Errors:", "  - n_head=2 must be divisible by n_query_groups=3", "Given value: Namespace(...)"]
    assert error_summary(log) == "ValueError: bad value / Errors: / - n_head=2 must be divisible by n_query_groups=3"
    assert error_summary(["Epoch 1 | iter 5", "Epoch 1 | iter 6"]) == "Epoch 1 | iter 6"


def test_worker_runs_litgpt_pretrain_for_the_other_ranks_of_a_multi_device_run(monkeypatch):
    from litgpt_mka.compare import worker

    calls = []
    monkeypatch.setattr(worker, "run_litgpt_pretrain", calls.append)
    worker.main(["pretrain", "--config", "a.yaml", "--devices", "2"])
    assert calls == [["--config", "a.yaml", "--devices", "2"]]


def test_report_warns_when_other_processes_loaded_the_machine():
    from litgpt_mka.compare.report import busy_machine_note

    def result(train_load, decode_load):
        return {"environment": {"cpu_count": 2}, "training": {"load_average_1min": train_load},
                "evaluation": {"load_average_1min": decode_load}}

    assert busy_machine_note([result(2.9, 2.0), result(None, 1.0)]) is None  # a run's own 2 threads: not busy
    assert "load average reached 5.2 on 2 CPUs" in busy_machine_note([result(2.9, 2.0), result(1.0, 5.2)])
