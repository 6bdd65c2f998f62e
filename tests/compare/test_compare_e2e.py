"""`litgpt-mka compare` end to end: the real console script on tiny overrides of the pythia-14m hub configs (1 layer,
width 32, 8 iterations of 4 x 32 tokens; MHA, MQA and MKA) with the whole shared TinyStories training text and
two validation texts cut from its validation sample (stories 0-11 and 12-23): the runner, the workers, the
evaluation, the measurements and the report together; the runner's resume and failure handling; reruns that add
quantized caches or lm-eval tasks to the finished comparison.

They set TORCHDYNAMO_DISABLE=1: litgpt pretrain's torch.compile becomes a no-op, which these tests of the
bookkeeping do not need (the measured comparison keeps compilation), and precision 32-true, so that
independent float32 evaluations and resumed runs agree tightly.
"""

import csv
import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from litgpt_mka.data import split_documents
from tests.compare.helpers import ABSOLUTE_PATH, ITERATIONS, MICRO_BATCH, SEQ, compare_args, tiny_yaml, typed_results
from tests.conftest import PROJECT_ROOT, run
from tests.evaluate.checkpoints import TASKS_DIR


def independent_validation_loss(checkpoint_dir: Path, val_path: Path, tokenizer_dir: Path, seq: int) -> torch.Tensor:
    """Mean cross-entropy over every target position of the validation stream, each scored once.

    Written from the documented layout, not from litgpt_mka.compare.heldout: windows of seq + 1 tokens
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
def test_validation_losses_in_results_are_independent_evaluations_of_the_checkpoints(finished, tokenizer_dir):
    runs = {r.name: r for r in typed_results(finished["out_dir"]).runs}
    assert sorted(runs) == ["tiny-mha-seed1", "tiny-mka-seed1", "tiny-mqa-seed1"]
    primary, other = finished["vals"]
    for name, result in runs.items():
        assert result.status == "ok"
        checkpoints = finished["out_dir"] / "runs" / name / "checkpoints"
        curve = result.evaluation.curve
        assert [(p.iter, p.tokens) for p in curve] == [(4, 4 * MICRO_BATCH * SEQ), (8, 8 * MICRO_BATCH * SEQ)]
        for point in curve:
            expected = independent_validation_loss(checkpoints / point.checkpoint, primary, tokenizer_dir, SEQ)
            # float32 logits; the sums run in another order here
            torch.testing.assert_close(torch.tensor(point.val_loss, dtype=torch.float64), expected, rtol=1e-5, atol=1e-5)
        on_primary, on_other = result.evaluation.validation
        assert (on_primary.name, on_primary.path, on_other.name, on_other.path) == ("val", "val/val.txt", "other", "val/other.txt")
        assert (on_primary.loss, on_primary.tokens) == (curve[-1].val_loss, curve[-1].val_tokens)
        expected_other = independent_validation_loss(checkpoints / "final", other, tokenizer_dir, SEQ)
        torch.testing.assert_close(torch.tensor(on_other.loss, dtype=torch.float64), expected_other, rtol=1e-5, atol=1e-5)
        assert abs(on_other.loss - on_primary.loss) > 1e-3  # two texts, two numbers
        assert result.train.precision == "32-true"
        assert result.measure.throughput.timed_iterations == ITERATIONS - 1


@pytest.mark.slow
def test_routing_weights_are_those_of_the_final_mka_checkpoint_on_the_primary_text(finished, tokenizer_dir):
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    from litgpt_mka.attention.mka import routing_weights

    runs = {r.name: r for r in typed_results(finished["out_dir"]).runs}
    assert runs["tiny-mha-seed1"].evaluation.routing is None and runs["tiny-mqa-seed1"].evaluation.routing is None
    measured = runs["tiny-mka-seed1"].evaluation.routing

    checkpoint = finished["out_dir"] / "runs" / "tiny-mka-seed1" / "checkpoints" / "final"
    model = GPT(Config.from_file(checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True)["model"])
    tokenizer = Tokenizer(tokenizer_dir)
    text = finished["vals"][0].read_text()
    stream = torch.cat([tokenizer.encode(d, bos=False, eos=True) for d in split_documents(text)]).long()
    full_windows = (len(stream) - 1) // SEQ
    inputs = stream[: full_windows * SEQ].view(full_windows, SEQ)  # every input position of the stride-SEQ windows
    with torch.no_grad():
        expected = routing_weights(model.eval(), inputs)  # (n_layer, 3), all windows in one batch

    assert measured.sources == ["local", "session", "long_term"]
    assert measured.tokens == full_windows * SEQ
    torch.testing.assert_close(torch.tensor(measured.per_layer, dtype=torch.float64), expected.double(), rtol=1e-5, atol=1e-6)
    report = (finished["out_dir"] / "report.md").read_text()
    layer0 = " | ".join(f"{w:.3f}" for w in measured.per_layer[0])
    assert f"**tiny-mka**\n\n| layer | local | session | long_term |\n|---|---|---|---|\n| 0 | {layer0} |" in report
    assert (finished["out_dir"] / "routing.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_report_tables_show_the_numbers_of_the_runs(finished):
    out_dir = finished["out_dir"]
    runs = {r.name: r for r in typed_results(out_dir).runs}
    report = (out_dir / "report.md").read_text()
    csv_rows = {row["name"]: row for row in csv.DictReader(io.StringIO((out_dir / "results.csv").read_text()))}
    assert "| variant | runs ok | val loss (val) | val loss (other) | val ppl (val) |" in report
    for name, result in runs.items():
        row, (on_val, on_other), kv = csv_rows[name], result.evaluation.validation, result.measure.kv_cache
        assert (float(row["val_loss"]), float(row["val_loss_other"])) == (on_val.loss, on_other.loss)
        assert float(row["kv_bytes_per_token"]) == kv.bytes_per_token
        table_row = next(line for line in report.splitlines() if line.startswith(f"| {result.variant} |"))
        assert table_row.startswith(f"| {result.variant} | 1/1 | {on_val.loss:.4f} | {on_other.loss:.4f} | {on_val.perplexity:.2f} |")
        assert f"| {kv.bytes_per_token:,.0f} B |" in table_row
        assert kv.bytes_at_context == kv.bytes_per_token * kv.batch_size * kv.context_length
        assert kv.formula_matches  # litgpt_mka.measure.kv_cache_size's accounting of every class here
    # MQA caches one key/value head of the two that MHA caches
    assert runs["tiny-mqa-seed1"].measure.kv_cache.bytes_per_token * 2 == runs["tiny-mha-seed1"].measure.kv_cache.bytes_per_token
    command = report.split("```\n")[1].split("\n")[0]
    assert shlex.split(command) == ["litgpt-mka", *finished["args"][1:]]
    # no absolute path of the machine outside the command as typed (which holds the absolute training text path)
    outside = report.replace(command, "")
    assert not ABSOLUTE_PATH.search(outside), ABSOLUTE_PATH.search(outside)
    assert "`val/val.txt` (primary" in outside and "`val/other.txt`" in outside
    for plot in ("loss_vs_tokens.png", "loss_vs_kv_cache.png", "routing.png", "throughput.png"):
        assert (out_dir / plot).read_bytes().startswith(b"\x89PNG")
        assert f"]({plot})" in report
    assert typed_results(out_dir).settings.val_paths == ["val/val.txt", "val/other.txt"]
    assert not ABSOLUTE_PATH.search((out_dir / "results.csv").read_text())


@pytest.mark.slow
def test_report_compares_every_variant_with_the_mha_config(finished):
    """tiny-mha (n_query_groups == n_head) is the reference; paired runs (the default), one seed: the SE is unknown
    and no claim is made."""
    results = typed_results(finished["out_dir"])
    assert results.reference == "tiny-mha"
    assert (results.settings.paired_init, results.settings.verdict_rule) == (True, "t-test")
    report = (finished["out_dir"] / "report.md").read_text()
    assert "**Paired design**" in report
    loss = {r.variant: r.evaluation.primary.loss for r in results.runs}
    for variant in ("tiny-mqa", "tiny-mka"):
        d = loss[variant] - loss["tiny-mha"]
        assert (f"- {variant}: validation loss {d:+.4f} nats/token against tiny-mha; only 1 seed finished on both"
                " sides, fewer than two pairs, so the SE is unknown and no claim is made.") in report
        assert f"| {variant} | {d:+.4f} | — | — | — | — | 1, 1 | SE unknown |" in report
        log = (finished["out_dir"] / "runs" / f"{variant}-seed1" / "run.log").read_text()
        assert "litgpt-mka: paired initialisation" in log  # litgpt pretrain's initialize_weights, as the plugin wraps it
    assert "| tiny-mha |" not in report.split("## Differences to the reference")[1].split("##")[0]


@pytest.mark.slow
def test_compare_warns_before_training_when_curves_would_have_fewer_than_8_points(finished):
    # 8 iterations = 8 optimizer steps, a checkpoint every 4: 2 points
    assert ("each run's validation curve will have 2 points, fewer than 8: tiny-mha.yaml trains 8 optimizer steps"
            " with a checkpoint every eval_interval (train.save_interval) steps; use --eval_interval 1 or less") in finished["stderr"]
    assert "- **Short curves**: fewer than 8 validation points for tiny-mha-seed1, tiny-mqa-seed1, tiny-mka-seed1" in (
        finished["out_dir"] / "report.md").read_text()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_second_invocation_trains_nothing_and_rewrites_the_same_report(finished, env):
    out_dir = finished["out_dir"]
    before = snapshot(out_dir / "runs")
    report, table = (out_dir / "report.md").read_bytes(), (out_dir / "results.csv").read_bytes()
    runs = json.loads((out_dir / "results.json").read_text())["runs"]

    again = run(finished["args"], env, cwd=finished["folder"])

    assert again.stdout.count("finished earlier, skipped") == 3
    assert "training (litgpt pretrain)" not in again.stdout and "evaluating and measuring" not in again.stdout
    # the sweep's line after each run: an estimate of the time left once a run finished in this process
    first = re.findall(r"^sweep: .*$", finished["stdout"], re.MULTILINE)
    assert [line.split(" done")[0] for line in first] == ["sweep: 1/3 runs", "sweep: 2/3 runs", "sweep: 3/3 runs"]
    assert all(re.search(r", about \S+( \S+)? left$", line) for line in first[:2]) and "left" not in first[2]
    assert not any("left" in line for line in re.findall(r"^sweep: .*$", again.stdout, re.MULTILINE))
    assert snapshot(out_dir / "runs") == before
    assert (out_dir / "report.md").read_bytes() == report
    assert (out_dir / "results.csv").read_bytes() == table
    assert json.loads((out_dir / "results.json").read_text())["runs"] == runs


@pytest.mark.slow
def test_busy_timings_print_busy_and_keep_their_numbers(finished, env, tmp_path):
    """A run whose training was timed under load: its timing cells read "busy"; results keep the raw numbers."""
    out_dir = tmp_path / "out"
    shutil.copytree(finished["out_dir"], out_dir, ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("tiny-mha-seed1", "tiny-mqa-seed1", "tiny-mka-seed1"):
        path = out_dir / "runs" / name / "result.json"
        result = json.loads(path.read_text())
        for load in (result["train"]["load"], result["measure"]["decode"]["load"]):
            load.update(load_1min_before=0.25, load_1min_after=0.5, threads=2, cpu_count=2)
        if name == "tiny-mqa-seed1":
            result["train"]["load"]["load_1min_after"] = 2.75  # > 2 threads + 0.5
        path.write_text(json.dumps(result))
    args = [*finished["args"][: finished["args"].index("--out_dir") + 1], str(out_dir),
            *finished["args"][finished["args"].index("--out_dir") + 2 :]]

    again = run(args, env, cwd=finished["folder"])

    assert again.stdout.count("finished earlier, skipped") == 3
    report = (out_dir / "report.md").read_text()
    runs = {r.name: r for r in typed_results(out_dir).runs}
    mqa, mha = runs["tiny-mqa-seed1"], runs["tiny-mha-seed1"]
    mqa_row = next(line for line in report.splitlines() if line.startswith("| tiny-mqa |")).split(" | ")
    mha_row = next(line for line in report.splitlines() if line.startswith("| tiny-mha |")).split(" | ")
    # columns: ... train tok/s, train wall time, peak memory, KV / token, KV @ context, decode tok/s
    assert mqa_row[-6:-4] == ["busy", "busy"] and mqa_row[-1] == f"{mqa.measure.decode.tokens_per_s:,.1f} |"
    assert mha_row[-6:-4] == [f"{mha.measure.throughput.tokens_per_s:,.0f}", f"{mha.train.wall_time_s:,.0f} s"]
    assert "- tiny-mqa-seed1, training: load 0.25 before, 2.75 after, threshold 2.5" in report
    row = next(r for r in csv.DictReader(io.StringIO((out_dir / "results.csv").read_text())) if r["name"] == "tiny-mqa-seed1")
    assert (float(row["train_tokens_per_s"]), row["train_busy"], row["decode_busy"]) == (
        mqa.measure.throughput.tokens_per_s, "True", "False")
    summary = {s.variant: s for s in typed_results(out_dir).summary}
    assert summary["tiny-mqa"].train_busy and not summary["tiny-mqa"].decode_busy and not summary["tiny-mha"].train_busy
    assert summary["tiny-mqa"].train_tokens_per_s.mean == mqa.measure.throughput.tokens_per_s


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

    resumed = run(args, env, cwd=finished["folder"])

    assert "tiny-mqa-seed1: finished earlier, skipped" in resumed.stdout
    assert json.loads((run_dir / "train.json").read_text())["resumed_from_step"] == 4
    second_process = csv.DictReader(io.StringIO((run_dir / "checkpoints/logs/csv/version_1/metrics.csv").read_text()))
    assert [int(row["iter"]) for row in second_process] == [5, 6, 7, 8]
    original = {r.name: r for r in typed_results(finished["out_dir"]).runs}["tiny-mha-seed1"]
    again = {r.name: r for r in typed_results(out_dir).runs}["tiny-mha-seed1"]
    torch.testing.assert_close(torch.tensor([p.val_loss for p in again.evaluation.curve]),
                               torch.tensor([p.val_loss for p in original.evaluation.curve]))
    assert again.train.resumed_from_step == 4


@pytest.mark.slow
def test_failing_config_is_recorded_and_the_other_runs_complete(env, shared_data, small_val, tokenizer_dir, tmp_path):
    broken = tiny_yaml(tmp_path / "configs", "tiny-broken", n_query_groups=3)  # 2 heads in 3 groups
    good = tiny_yaml(tmp_path / "configs", "tiny-mqa", n_query_groups=1)
    args = compare_args([broken, good], tmp_path / "out", shared_data, small_val, tokenizer_dir)

    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)

    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    runs = {r.name: r for r in typed_results(tmp_path / "out").runs}
    failure = runs["tiny-broken-seed1"]
    assert (failure.status, failure.failure.phase, failure.failure.returncode) == ("failed", "train", 1)
    assert "n_head=2 must be divisible by n_query_groups=3" in failure.failure.error
    assert "Traceback" in (tmp_path / "out" / "runs" / "tiny-broken-seed1" / "run.log").read_text()
    assert runs["tiny-mqa-seed1"].status == "ok"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed runs" in report and "| tiny-broken-seed1 | train | exit status 1 |" in report
    assert "| tiny-broken | 0/1 | — |" in report
    assert "No reference: no config is MHA" in report  # neither config is MHA, and no --reference


@pytest.mark.slow
def test_a_rerun_with_quantized_caches_decodes_the_finished_checkpoints_and_trains_nothing(finished, env, tmp_path):
    """--kv_cache_quantizations on a finished comparison (MHA and MKA of it): kv_quantization.json per run, what a
    separate cached decode of final/ in this process gives (the wiring: cached_heldout_loss itself is checked
    against a reference in test_compare_kv_quantization.py); MHA (litgpt's class) decodes through ours."""
    import dataclasses

    from litgpt_mka.attention import registry
    from litgpt_mka.checkpoint import load_model
    from litgpt_mka.compare.heldout import PREFILL_TOKENS, cached_heldout_loss, heldout_data
    from litgpt_mka.compare.kv_quantization import read_kv_quantization
    from litgpt_mka.measure.kv_cache_size import kv_cache_bytes

    out_dir = tmp_path / "out"
    shutil.copytree(finished["out_dir"], out_dir)
    args = list(finished["args"])
    args[args.index("--out_dir") + 1] = str(out_dir)
    args[args.index("--configs") + 1 : args.index("--seeds")] = ["configs/tiny-mha.yaml", "configs/tiny-mka.yaml"]

    rerun = run([*args, "--kv_cache_quantizations", "int8", "int4"], env, cwd=finished["folder"])

    assert rerun.stdout.count("finished earlier, skipped") == 2 and "training (litgpt pretrain)" not in rerun.stdout
    assert rerun.stdout.count("quantized KV caches int8, int4") == 2
    for name in ("tiny-mha-seed1", "tiny-mka-seed1"):
        run_dir = out_dir / "runs" / name
        saved = json.loads((run_dir / "kv_quantization.json").read_text())
        final = run_dir / "checkpoints" / "final"
        model, data = load_model(final, torch.device("cpu")), heldout_data(final, finished["vals"][0])
        decoder = registry.quantizable_attention_class(model.config)
        int8, int4 = (type(model)(dataclasses.replace(model.config, attention_class_name=decoder, kv_cache_quantization=q))
                      for q in ("int8", "int4"))
        int4.load_state_dict(model.state_dict())
        expected = cached_heldout_loss(int4.eval(), data, 32, PREFILL_TOKENS).loss
        assert [q["quantization"] for q in saved["quantized"]] == ["int8", "int4"]
        assert saved["quantized"][1]["loss"] == pytest.approx(expected, rel=1e-6)
        assert saved["unquantized"]["loss"] == pytest.approx(saved["full_forward_loss"], abs=1e-5)
        assert saved["unquantized"]["attention_class_name"] == decoder
        for cache, config in (("int8", int8.config), ("int4", int4.config)):  # at --context_length 16, batch 1
            bytes_per_token = next(q for q in saved["quantized"] if q["quantization"] == cache)["kv_bytes_per_token"]
            assert bytes_per_token == kv_cache_bytes(config, 1, 16, torch.float32) / 16
        # a later invocation with the same caches finds the file; other caches measure again
        assert read_kv_quantization(run_dir, ["int8", "int4"]) is not None
        assert read_kv_quantization(run_dir, ["int8"]) is None
    assert json.loads((out_dir / "runs" / "tiny-mha-seed1" / "kv_quantization.json").read_text())[
        "unquantized"]["attention_class_name"] == "GroupedQueryAttention"
    summary = {s.variant: s for s in typed_results(out_dir).summary}
    assert [c.quantization for c in summary["tiny-mka"].quantized_caches] == ["int8", "int4"]
    assert "## Quantized KV caches" in (out_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_rerun_with_tasks_scores_the_finished_checkpoints_and_trains_nothing(finished, env, tmp_path):
    """--lm_eval_tasks on a copy of the finished comparison (its MQA run): lm_eval.json holds what a separate
    lm-eval of final/ in this process gives (the wiring: the scoring itself is checked against lm-eval's HFLM in
    tests/evaluate), the report a task table, and nothing trains."""
    pytest.importorskip("lm_eval")
    from litgpt_mka.evaluate import evaluate_checkpoint
    from litgpt_mka.evaluate.results import task_scores

    out = tmp_path / "out"
    shutil.copytree(finished["out_dir"], out)
    args = list(finished["args"])
    args[args.index("--out_dir") + 1] = str(out)
    args[args.index("--configs") + 1 : args.index("--seeds")] = ["configs/tiny-mqa.yaml"]
    include = tasks_with_absolute_data_files(tmp_path / "tasks")

    rerun = run([*args, "--lm_eval_tasks", "tiny_story_choice", "tiny_story_perplexity", "--include_path",
                 str(include)], env, cwd=finished["folder"])

    assert rerun.stdout.count("finished earlier, skipped") == 1 and "training (litgpt pretrain)" not in rerun.stdout
    saved = json.loads((out / "runs" / "tiny-mqa-seed1" / "lm_eval.json").read_text())
    torch.manual_seed(0)
    expected = evaluate_checkpoint(out / "runs" / "tiny-mqa-seed1" / "checkpoints" / "final",
                                   "tiny_story_choice,tiny_story_perplexity", batch_size=4, include_path=include,
                                   include_defaults=False, seed=1)
    assert {(s["task"], s["metric"]): s["value"] for s in saved["scores"]} == pytest.approx(
        {(s.task, s.metric): s.value for s in task_scores(expected)}, rel=1e-6)
    report = (out / "report.md").read_text()
    assert "## lm-eval task scores" in report and "| variant | tiny_story_choice acc ↑ |" in report


def tasks_with_absolute_data_files(folder: Path) -> Path:
    """The tiny test tasks with their data files named by absolute path, so that lm-eval finds them from the
    comparison's folder (the originals name them relative to the project root)."""
    folder.mkdir()
    for source in TASKS_DIR.glob("*.yaml"):
        task = yaml.safe_load(source.read_text())
        data_files = task["dataset_kwargs"]["data_files"]
        data_files["test"] = str(PROJECT_ROOT / data_files["test"])
        (folder / source.name).write_text(yaml.safe_dump(task, sort_keys=False))
    return folder


@pytest.mark.slow
def test_slurm_launcher_finishes_a_run_in_a_job_with_the_same_records(finished, env, tmp_path):
    """--launcher slurm through submitit's local executor on a copy of the finished comparison whose MQA run was
    trained but not evaluated: one job per run (the finished ones skip), the MQA run evaluated in its job to the
    same validation losses, the others' records untouched, the report rewritten."""
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    shutil.copytree(finished["out_dir"], out)
    (out / "runs" / "tiny-mqa-seed1" / "result.json").unlink()
    args = list(finished["args"])
    args[args.index("--out_dir") + 1] = str(out)

    rerun = run([*args, "--launcher", "slurm", "--slurm", '{"cluster": "local", "timeout_min": 10}'], env,
                cwd=finished["folder"])

    job_logs = "".join(path.read_text() for path in (out / "slurm").glob("*_log.out"))
    assert job_logs.count("finished earlier, skipped") == 2 and "tiny-mqa-seed1: evaluating and measuring" in job_logs
    assert "training (litgpt pretrain)" not in job_logs and "failed runs" not in rerun.stdout
    original = {r.name: r for r in typed_results(finished["out_dir"]).runs}
    again = {r.name: r for r in typed_results(out).runs}
    assert {name: r.status for name, r in again.items()} == {name: "ok" for name in original}
    assert again["tiny-mha-seed1"] == original["tiny-mha-seed1"] and again["tiny-mka-seed1"] == original["tiny-mka-seed1"]
    torch.testing.assert_close(
        torch.tensor([v.loss for v in again["tiny-mqa-seed1"].evaluation.validation]),
        torch.tensor([v.loss for v in original["tiny-mqa-seed1"].evaluation.validation]), rtol=0, atol=0,
    )  # fmt: skip
