"""`litgpt-mka compare` end to end on tiny configs, and its pieces.

The comparisons run the real console script on tiny overrides of the pythia-14m hub configs (1 layer,
width 32, 8 iterations of 4 x 32 tokens; MHA, MQA and MKA) with the whole shared TinyStories training text
and two validation texts cut from its validation sample (stories 0-11 and 12-23). Statistics, busy cells,
the Pareto frontier and the rendering of a schema-v1 results.json are tested on records with chosen numbers. They set TORCHDYNAMO_DISABLE=1: litgpt pretrain's torch.compile becomes
a no-op, which these tests of the bookkeeping do not need (the measured comparison keeps compilation),
and precision 32-true, so that independent float32 evaluations and resumed runs agree tightly.
"""

import csv
import io
import json
import math
import re
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
from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.compare.plan import check_identical_training_settings
from litgpt_mka.compare.records import Results, from_json, to_json
from litgpt_mka.compare.runner import error_summary, prepare
from litgpt_mka.data import split_documents
from tests.conftest import CONFIG_HUB, run

SEQ, MICRO_BATCH, ITERATIONS, SAVE_INTERVAL = 32, 4, 8, 4
TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_query_groups": 2, "intermediate_size": 64, "block_size": 64}
TINY_MKA = {"attention_class_name": "MemorizedKeyAttention", "memorized_key_attention": {"routing": "keys"}}
VAL_STORIES = 12


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


@pytest.fixture(scope="module")
def env(subprocess_env) -> dict[str, str]:
    # compile is a no-op: these tests check bookkeeping, not speed (see the module docstring)
    return {**subprocess_env, "TORCHDYNAMO_DISABLE": "1"}


def write_stories(path: Path, shared_data: Path, first: int, last: int) -> Path:
    """Stories first..last-1 of the shared validation text (a few thousand tokens) as `path`."""
    stories = (shared_data / "val.txt").read_text().split("<|endoftext|>")[first:last]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<|endoftext|>".join(stories))
    return path


@pytest.fixture(scope="module")
def small_val(tmp_path_factory, shared_data) -> Path:
    """The first VAL_STORIES stories of the shared validation text."""
    return write_stories(tmp_path_factory.mktemp("val") / "val.txt", shared_data, 0, VAL_STORIES)


def compare_args(configs: list[Path], out_dir: Path, shared_data: Path, val: Path | list[Path], tokenizer_dir: Path) -> list[str]:
    vals = val if isinstance(val, list) else [val]
    return [
        *litgpt_mka_command(), "compare", "--configs", *map(str, configs), "--seeds", "1",
        "--out_dir", str(out_dir), "--train_path", str(shared_data / "train.txt"), "--val_path", *map(str, vals),
        "--tokenizer_dir", str(tokenizer_dir), "--precision", "32-true", "--throughput_skip_iters", "1",
        "--context_length", "16", "--decode_new_tokens", "4", "--keep_step_checkpoints", "true",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env, shared_data, tokenizer_dir) -> dict:
    """A finished comparison of three tiny variants (MHA, MQA, MKA), seed 1, on two validation texts.

    It runs in its own folder with paths relative to it (configs/, val/, out), as a user in a project would;
    the training text and tokenizer are given as absolute paths.
    """
    folder = tmp_path_factory.mktemp("compare")
    configs = [tiny_yaml(folder / "configs", "tiny-mha"), tiny_yaml(folder / "configs", "tiny-mqa", n_query_groups=1),
               tiny_yaml(folder / "configs", "tiny-mka", **TINY_MKA)]
    vals = [write_stories(folder / "val" / "val.txt", shared_data, 0, VAL_STORIES),
            write_stories(folder / "val" / "other.txt", shared_data, VAL_STORIES, 2 * VAL_STORIES)]
    args = compare_args([c.relative_to(folder) for c in configs], Path("out"), shared_data,
                        [v.relative_to(folder) for v in vals], tokenizer_dir)
    result = run(args, env, cwd=folder)
    return {"folder": folder, "out_dir": folder / "out", "args": args, "stdout": result.stdout,
            "stderr": result.stderr, "vals": vals}


def results(out_dir: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out_dir / "results.json").read_text())["runs"]}


def typed_results(out_dir: Path) -> Results:
    return from_json(Results, json.loads((out_dir / "results.json").read_text()))


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


ABSOLUTE_PATH = re.compile(r"(?:^|[\s`(\[\"'=])/\w")


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
    """tiny-mha (n_query_groups == n_head) is the reference; one seed: the SE is unknown and no claim is made."""
    results = typed_results(finished["out_dir"])
    assert results.reference == "tiny-mha"
    report = (finished["out_dir"] / "report.md").read_text()
    loss = {r.variant: r.evaluation.primary.loss for r in results.runs}
    for variant in ("tiny-mqa", "tiny-mka"):
        d = loss[variant] - loss["tiny-mha"]
        assert (f"- {variant}: validation loss {d:+.4f} nats/token against tiny-mha; {variant} has one finished seed,"
                " so the SE is unknown and no claim is made.") in report
        assert f"| {variant} | {d:+.4f} | — | 1, 1 | SE unknown |" in report
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
    a = tiny_yaml(tmp_path, "a")
    b_config = yaml.safe_load(tiny_yaml(tmp_path, "b").read_text())
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

    config = tiny_yaml(tmp_path, "a")
    yamls = {config: yaml.safe_load(config.read_text())}
    block_size = yamls[config]["model_config"]["block_size"]
    check_decode_fits_block_size(yamls, CompareOptions(configs=[config], context_length=block_size - 34))
    with pytest.raises(ValueError, match=rf"context_length={block_size} \+ decode_new_tokens=32 \+ 2 warm-up tokens = {block_size + 34} exceeds block_size={block_size} of a.yaml; use at most context_length={block_size - 34}"):
        check_decode_fits_block_size(yamls, CompareOptions(configs=[config], context_length=block_size))


def test_rerun_with_other_settings_into_the_same_folder_is_refused(tmp_path, shared_data, tokenizer_dir):
    config = tiny_yaml(tmp_path, "tiny")
    options = CompareOptions(configs=[config], out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
                             val_path=[shared_data / "val.txt"], tokenizer_dir=tokenizer_dir, max_tokens=1024,
                             context_length=16, decode_new_tokens=4)
    first = prepare(options)
    first.runs[0].run_dir.mkdir(parents=True)
    (first.runs[0].run_dir / "spec.json").write_text(json.dumps(to_json(first.runs[0].spec)))
    prepare(options)  # the same settings: accepted
    with pytest.raises(ValueError, match=r"tiny-seed42 holds a run made with other settings \(differing: pretrain_args\)"):
        prepare(CompareOptions(**{**options.__dict__, "max_tokens": 2048}))
    v1_spec = to_json(first.runs[0].spec)
    del v1_spec["val_paths"]
    (first.runs[0].run_dir / "spec.json").write_text(json.dumps(v1_spec))
    with pytest.raises(ValueError, match=r"tiny-seed42 holds a run made by an earlier version of compare"):
        prepare(options)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("seeds", [1, 1], r"seeds=\[1, 1\] repeat a seed"), ("max_tokens", 0, "max_tokens=0 must be a positive integer"),
     ("precision", "fp8", r"precision='fp8' is not one of"), ("decode_dtype", "int8", r"decode_dtype='int8' is not one of")],
)
def test_invalid_options_are_refused(tmp_path, field, value, message):
    options = CompareOptions(configs=[tiny_yaml(tmp_path, "tiny")], **{field: value})
    with pytest.raises(ValueError, match=message):
        prepare(options)


def test_list_options_take_several_values_after_one_flag():
    assert join_list_options(["compare", "--configs", "a.yaml", "b.yaml", "--seeds", "1", "2", "--out_dir", "o"]) == [
        "compare", '--configs=["a.yaml", "b.yaml"]', "--seeds=[1, 2]", "--out_dir", "o"]
    assert join_list_options(["--seeds", "[3, 4]"]) == ["--seeds", "[3, 4]"]


def test_throughput_times_only_the_last_training_process_whose_load_was_sampled():
    def rows(first_iter, times):
        return [{"iter": float(i), "total_tokens": 100.0 * i, "iter_time": t} for i, t in enumerate(times, start=first_iter)]

    # a run interrupted after iteration 3 (its process slowed by load nobody sampled) and resumed at iteration 4
    segments = [rows(1, [9.0, 5.0, 5.0]), rows(4, [7.0, 1.0, 2.0])]
    result = training_throughput(segments, skip_iters=1)
    assert (result.tokens_per_iteration, result.timed_iterations) == (100, 2)
    assert result.tokens_per_s == 2 * 100 / (1.0 + 2.0)
    too_short = training_throughput([rows(1, [9.0, 1.0]), rows(3, [9.0])], skip_iters=1)
    assert too_short.tokens_per_s is None and "last training process, its first 1 skipped" in too_short.note


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


# ------------------------------------------------------------------------------- records and summary
def synthetic_run(variant: str, seed: int, loss: float, kv: float = 1024.0, train_load: float = 0.5,
                  decode_load: float = 0.5, routing=None):
    """A finished RunResult with chosen numbers (every other value fixed)."""
    from litgpt_mka.compare.records import (
        CurvePoint, Decode, Environment, EvalResult, KVCache, MeasureResult, Parameters, PeakMemory, PhaseLoad,
        RunResult, Throughput, TrainResult, Validation,
    )

    def load(value: float) -> PhaseLoad:
        return PhaseLoad(value, value, threads=2, cpu_count=2, wall_s=10.0, cpu_s=19.0)

    peak = PeakMemory("cpu_peak_rss", 2**30)
    return RunResult(
        status="ok", name=f"{variant}-seed{seed}", variant=variant, seed=seed, config_path=f"configs/{variant}.yaml",
        config_sha256="0" * 64, spec_sha256="1" * 64,
        train=TrainResult("1" * 64, "32-true", "t0", "t1", 100.0 + seed, None, peak, load(train_load)),
        evaluation=EvalResult([Validation("val", "val.txt", loss, math.exp(loss), 999, 3, 32)],
                              [CurvePoint(8, 1024, loss, 999, "final")], routing, "cpu", 5.0, peak, "t1"),
        measure=MeasureResult(Parameters(1000, 100), KVCache("float32", kv, 1, 16, int(kv * 16), kv, int(kv * 16), True),
                              Decode("float32", "cpu", 1, 16, 4, 50.0 + seed, load(decode_load)),
                              Throughput(128, 7, 1, 500.0 + seed), []),
        environment=Environment("3.11", "2.13", "0.5.13", "0.1.0", "2.6", "Linux", "cpu", 2, 2, [], None),
        finished="t2",
    )


def test_run_records_survive_their_json_form_and_missing_fields_are_named():
    from litgpt_mka.compare.records import Routing, RunResult, from_json, to_json

    run = synthetic_run("v", 1, 2.0, routing=Routing(["local", "session", "long_term"], [[0.5, 0.25, 0.25]], 96))
    assert from_json(RunResult, json.loads(json.dumps(to_json(run)))) == run
    broken = to_json(run)
    del broken["measure"]["kv_cache"]["bytes_at_context"]
    with pytest.raises(ValueError, match=r"RunResult\.measure\.kv_cache\.bytes_at_context is missing \(KVCache requires it\)"):
        from_json(RunResult, broken)


def test_difference_to_the_reference_uses_the_welch_standard_error_and_the_2_se_rule():
    from litgpt_mka.compare.summary import difference

    # reference mean 2.1, sample variance 0.02; SE = sqrt(0.02 / 2 + 0.02 / 2) = 0.1414
    better = difference("v", [1.5, 1.7], "ref", [2.0, 2.2])
    assert (better.verdict, better.n, better.n_reference) == ("better", 2, 2)
    assert better.difference == pytest.approx(-0.5) and better.se == pytest.approx(math.sqrt(0.02))
    assert better.sentence == "v: validation loss -0.5000 nats/token against ref (SE 0.1414; 2 and 2 seeds): better (lower by 3.5 SE)."
    worse = difference("v", [2.6, 2.8], "ref", [2.0, 2.2])
    assert (worse.verdict, round(worse.difference, 6)) == ("worse", 0.6)
    # d = 0.05, SE = sqrt(0.045 / 2 + 0.02 / 2) = 0.1803: |d| < 2 SE
    tied = difference("v", [2.0, 2.3], "ref", [2.0, 2.2])
    assert tied.verdict == "tied within noise" and tied.se == pytest.approx(math.sqrt(0.0325))
    assert tied.sentence.endswith("(SE 0.1803; 2 and 2 seeds): tied within noise (|difference| < 2 SE).")
    one_seed = difference("v", [1.0], "ref", [2.0, 2.2])
    assert (one_seed.verdict, one_seed.se) == ("SE unknown", None) and one_seed.difference == pytest.approx(-1.1)
    assert one_seed.sentence == "v: validation loss -1.1000 nats/token against ref; v has one finished seed, so the SE is unknown and no claim is made."
    assert difference("v", [], "ref", [2.0]).verdict == "no runs"
    assert difference("v", [2.0, 2.0], "ref", [2.0, 2.0]).verdict == "tied within noise"  # no spread, no difference
    assert difference("v", [1.9, 1.9], "ref", [2.0, 2.0]).sentence.endswith(": better (no spread over seeds).")


def test_summary_aggregates_seeds_and_marks_busy_timings():
    from litgpt_mka.compare.records import Routing
    from litgpt_mka.compare.summary import summarize

    def routing(weights):
        return Routing(["local", "session", "long_term"], [weights], 96)

    runs = [synthetic_run("mha", 1, 2.0), synthetic_run("mha", 2, 2.2),
            synthetic_run("mka", 1, 1.5, train_load=2.75, routing=routing([0.6, 0.3, 0.1])),
            synthetic_run("mka", 2, 1.7, routing=routing([0.4, 0.5, 0.1]))]
    mha, mka = summarize(runs, reference="mha")
    assert (mha.val_loss["val"].mean, mha.val_loss["val"].n) == (pytest.approx(2.1), 2)
    assert mha.val_loss["val"].std == pytest.approx(math.sqrt(0.02))
    assert mha.difference is None and mka.difference.verdict == "better"
    assert (mka.train_busy, mka.decode_busy, mha.train_busy) == (True, False, False)
    assert mka.train_tokens_per_s.mean == pytest.approx(501.5)  # raw numbers kept; the report prints "busy"
    assert [s.mean for s in mka.routing[0]] == pytest.approx([0.5, 0.4, 0.1])
    assert mka.routing[0][0].std == pytest.approx(math.sqrt(0.02)) and mha.routing is None


def test_a_phase_is_busy_when_the_load_exceeds_its_threads_plus_half_a_cpu():
    from litgpt_mka.compare.records import PhaseLoad

    assert PhaseLoad(2.5, 2.4, threads=2, cpu_count=2).busy is False  # the run's own 2 threads: quiet
    assert PhaseLoad(0.1, 2.51, threads=2, cpu_count=2).busy is True
    assert PhaseLoad(1.6, None, threads=1, cpu_count=2).busy is True
    assert PhaseLoad(None, None, threads=1, cpu_count=2).busy is None


def test_pareto_front_keeps_the_points_that_no_other_beats_on_both_axes():
    from litgpt_mka.compare.summary import pareto_front

    # (KV bytes per token, loss): 3 is dominated by 1 (smaller cache, lower loss), 4 by 0 (same cache, lower loss)
    points = [(6144.0, 2.00), (960.0, 2.05), (1536.0, 2.10), (3072.0, 2.06), (6144.0, 2.01), (240.0, 2.30)]
    assert pareto_front(points) == [5, 1, 0]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]


def test_version_1_results_render_with_busy_cells_and_relative_paths():
    """The comparison of schema v1 once committed as docs/compare-pythia-14m (train_loss_curve shortened)."""
    from litgpt_mka.compare.report import markdown, read_results

    results = read_results(Path(__file__).parent / "data" / "results_v1.json", reference="pythia-14m-mha",
                           relative_to=Path("/work/main"))
    v1 = json.loads((Path(__file__).parent / "data" / "results_v1.json").read_text())
    losses = {run["variant"]: run["validation"]["loss"] for run in v1["runs"]}
    summary = {row.variant: row for row in results.summary}
    assert {v: row.val_loss["val"].mean for v, row in summary.items()} == losses
    # one load sample per phase in v1: training loads 3.23 (mha) and 3.65 (gqa) exceed 2 threads + 0.5
    assert [v for v, row in summary.items() if row.train_busy] == ["pythia-14m-mha", "pythia-14m-gqa"]
    assert not any(row.decode_busy for row in summary.values())
    assert results.settings.val_paths == ["../shared/data/tinystories/val.txt"]
    report = markdown(results, [])
    assert "| pythia-14m-mha | 1/1 | 6.0837 | 438.66 | 396.29 K | 14.07 M | busy | busy | 4.07 GiB | 6,144 B |" in report
    assert "| pythia-14m-mqa | 1/1 | 6.0847 | 439.09 | 247.68 K | 13.92 M | 2,057 | 116 s |" in report
    d = losses["pythia-14m-mla"] - losses["pythia-14m-mha"]
    assert f"- pythia-14m-mla: validation loss {d:+.4f} nats/token against pythia-14m-mha; pythia-14m-mla has one" in report
    command = report.split("```\n")[1].split("\n")[0]
    assert not ABSOLUTE_PATH.search(report.replace(command, ""))


def test_runs_from_different_machines_are_named_in_the_setup():
    """A comparison resumed on another machine: the report says which runs ran where (timings compare machines)."""
    from dataclasses import replace

    from litgpt_mka.compare.report import read_results, setup_lines

    results = read_results(Path(__file__).parent / "data" / "results_v1.json", relative_to=Path("/work/main"))
    assert not any("different machines" in line for line in setup_lines(results))
    moved = [replace(run, environment=replace(run.environment, cpu="Another CPU")) if run.variant == "pythia-14m-fmka"
             else run for run in results.runs]
    line = next(line for line in setup_lines(replace(results, runs=moved)) if "different machines" in line)
    assert line.endswith("Another CPU (2 CPUs, 2 torch threads), no GPU: pythia-14m-fmka-seed42")
    assert "pythia-14m-mha-seed42, pythia-14m-gqa-seed42" in line


# ---------------------------------------------------------------------------------- plan and options
def test_expected_curve_points_follow_litgpts_schedule(tmp_path):
    from litgpt_mka.compare.plan import expected_curve_points

    config = yaml.safe_load(tiny_yaml(tmp_path, "a").read_text())  # 8 iterations of 4 x 32, 1 step each
    assert expected_curve_points(config, CompareOptions(configs=[])) == (2, 8)
    assert expected_curve_points(config, CompareOptions(configs=[], eval_interval=1, devices=1)) == (8, 8)
    # global batch 8 = 2 micro-batches per step; 9 iterations = 4 steps (+1 iteration); checkpoints at steps 2, 4 + final
    config["train"]["global_batch_size"] = 8
    assert expected_curve_points(config, CompareOptions(configs=[], max_tokens=9 * 4 * SEQ, eval_interval=2, devices=1)) == (3, 4)


def test_the_reference_is_the_mha_config_unless_one_is_named():
    from litgpt_mka.compare.plan import is_mha, reference_variant
    from litgpt_mka.presets import load_pretrain_yaml

    yamls = {CONFIG_HUB / f"pythia-14m-{v}.yaml": load_pretrain_yaml(CONFIG_HUB / f"pythia-14m-{v}.yaml")
             for v in ("gqa", "mqa", "mla", "mka", "fmka", "mha")}
    assert [path.stem for path, config in yamls.items() if is_mha(config)] == ["pythia-14m-mha"]
    assert reference_variant(yamls, CompareOptions(configs=list(yamls))) == "pythia-14m-mha"
    assert reference_variant(yamls, CompareOptions(configs=list(yamls), reference="pythia-14m-mqa")) == "pythia-14m-mqa"
    without_mha = {p: c for p, c in yamls.items() if p.stem != "pythia-14m-mha"}
    assert reference_variant(without_mha, CompareOptions(configs=list(without_mha))) is None


def test_unknown_reference_and_repeated_validation_stems_are_refused(tmp_path, shared_data):
    config = tiny_yaml(tmp_path, "tiny")
    with pytest.raises(ValueError, match=r"reference='mha' is not one of the configs' file stems \['tiny'\]"):
        prepare(CompareOptions(configs=[config], reference="mha"))
    other = tmp_path / "other" / "val.txt"
    other.parent.mkdir()
    other.write_text("x")
    with pytest.raises(ValueError, match=r"val_path=\[.*\] repeat a file stem; the report names each column by it"):
        prepare(CompareOptions(configs=[config], val_path=[shared_data / "val.txt", other]))


def test_the_command_line_fills_the_options_dataclass(monkeypatch):
    from litgpt_mka import cli

    parsed = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "compare", cli.Subcommand(CompareOptions, lambda o: parsed.append(o) or 0))
    with pytest.raises(SystemExit) as exit_status:
        cli.main(["compare", "--configs", "a.yaml", "b.yaml", "--seeds", "1", "2", "--val_path", "in.txt", "out.txt",
                  "--reference", "a", "--max_tokens", "1000", "--plots", "false", "--lm_eval_tasks", "piqa", "sciq"])
    assert exit_status.value.code == 0
    assert parsed == [CompareOptions(configs=[Path("a.yaml"), Path("b.yaml")], seeds=[1, 2],
                                     val_path=[Path("in.txt"), Path("out.txt")], reference="a", max_tokens=1000,
                                     plots=False, lm_eval_tasks=["piqa", "sciq"])]
    assert cli.list_options(CompareOptions) == {"--configs": str, "--seeds": int, "--val_path": str, "--pretrain_args": str,
                                                "--lm_eval_tasks": str}


def test_decode_warmup_is_the_decode_measurements_own():
    import inspect

    from litgpt_mka.compare.plan import DECODE_WARMUP_TOKENS
    from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second

    assert DECODE_WARMUP_TOKENS == inspect.signature(measure_decode_tokens_per_second).parameters["warmup_tokens"].default


# ------------------------------------------------------------------------------------- study configs
STUDY = Path(__file__).resolve().parents[2] / "docs" / "study-pythia-14m"


@pytest.mark.parametrize(("sweep", "preset", "attention"), [
    ("pythia-14m-mla-kv8", "pythia-14m-mla", {"latent_attention": {"kv_lora_rank": 8}}),
    ("pythia-14m-mla-kv16", "pythia-14m-mla", {"latent_attention": {"kv_lora_rank": 16}}),
    ("pythia-14m-mla-kv64", "pythia-14m-mla", {"latent_attention": {"kv_lora_rank": 64}}),
])
def test_sweep_configs_change_only_the_attention_keys_of_their_preset(sweep, preset, attention):
    from litgpt_mka.presets import load_pretrain_yaml

    swept, base = load_pretrain_yaml(STUDY / "configs" / f"{sweep}.yaml"), load_pretrain_yaml(CONFIG_HUB / f"{preset}.yaml")
    for key, change in attention.items():
        base["model_config"][key] = {**base["model_config"][key], **change} if isinstance(change, dict) else change
    assert swept == base
    header = " ".join((STUDY / "configs" / f"{sweep}.yaml").read_text().replace("#", " ").split()[:30])
    assert f"a copy of config_hub/pretrain/{preset}.yaml with only the attention keys changed" in header
