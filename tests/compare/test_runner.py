"""litgpt_mka.compare.runner: what prepare refuses before any run, and the failure summary of a run's log."""

import dataclasses
import json

import pytest

from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.compare.records import to_json
from litgpt_mka.compare.runner import error_summary, prepare
from tests.compare.helpers import tiny_yaml


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


def test_runs_are_paired_by_default_and_an_unpaired_folder_resumes_with_paired_false(tmp_path, shared_data,
                                                                                       tokenizer_dir):
    config = tiny_yaml(tmp_path, "tiny")
    options = CompareOptions(configs=[config], out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
                             val_path=[shared_data / "val.txt"], tokenizer_dir=tokenizer_dir, max_tokens=1024,
                             context_length=16, decode_new_tokens=4)
    unpaired_options = CompareOptions(**{**options.__dict__, "paired": False})
    paired, unpaired = prepare(options), prepare(unpaired_options)
    assert paired.runs[0].spec.paired_init is True and unpaired.runs[0].spec.paired_init is None
    assert "paired_init" not in to_json(unpaired.runs[0].spec)  # a spec written before pairing existed
    unpaired.runs[0].run_dir.mkdir(parents=True)
    (unpaired.runs[0].run_dir / "spec.json").write_text(json.dumps(to_json(unpaired.runs[0].spec)))
    with pytest.raises(ValueError, match=r"\(differing: paired_init; it was not paired-initialised: --paired false resumes it\)"):
        prepare(options)
    prepare(unpaired_options)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("seeds", [1, 1], r"seeds=\[1, 1\] repeat a seed"), ("max_tokens", 0, "max_tokens=0 must be a positive integer"),
     ("precision", "fp8", r"precision='fp8' is not one of"), ("decode_dtype", "int8", r"decode_dtype='int8' is not one of")],
)
def test_invalid_options_are_refused(tmp_path, field, value, message):
    options = CompareOptions(configs=[tiny_yaml(tmp_path, "tiny")], **{field: value})
    with pytest.raises(ValueError, match=message):
        prepare(options)


def test_unknown_reference_and_repeated_validation_stems_are_refused(tmp_path, shared_data):
    config = tiny_yaml(tmp_path, "tiny")
    with pytest.raises(ValueError, match=r"reference='mha' is not one of the configs' file stems \['tiny'\]"):
        prepare(CompareOptions(configs=[config], reference="mha"))
    other = tmp_path / "other" / "val.txt"
    other.parent.mkdir()
    other.write_text("x")
    with pytest.raises(ValueError, match=r"val_path=\[.*\] repeat a file stem; the report names each column by it"):
        prepare(CompareOptions(configs=[config], val_path=[shared_data / "val.txt", other]))


def test_failure_summary_keeps_the_exception_and_the_reasons_after_it():
    log = ["Epoch 1 | iter 1", "Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad value",
           "Errors:", "  - n_head=2 must be divisible by n_query_groups=3", "Given value: Namespace(...)"]
    assert error_summary(log) == "ValueError: bad value / Errors: / - n_head=2 must be divisible by n_query_groups=3"
    assert error_summary(["Epoch 1 | iter 5", "Epoch 1 | iter 6"]) == "Epoch 1 | iter 6"


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_the_other_seeds_wait_for_a_chosen_rate_and_run_at_it_once_every_selection_run_finished(
        tmp_path, shared_data, tokenizer_dir, monkeypatch, capsys):
    """Runs "finish" by writing a result with chosen selection losses (no training): a failed selection run keeps
    the other seeds waiting (listed, exit status 1); the rerun retries it, chooses, and runs them in a second batch."""
    from litgpt_mka.atomic import write_json
    from litgpt_mka.compare import runner
    from litgpt_mka.compare.records import Validation
    from tests.compare.helpers import synthetic_run

    selection_text = tmp_path / "sel.txt"
    selection_text.write_text((shared_data / "val.txt").read_text())
    options = CompareOptions(
        configs=[tiny_yaml(tmp_path, "a")], seeds=[1, 2, 3], selection_seeds=[1], learning_rates=[0.004, 0.016],
        selection_val="sel", out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
        val_path=[shared_data / "val.txt", selection_text], tokenizer_dir=tokenizer_dir, max_tokens=1024,
        context_length=16, decode_new_tokens=4, plots=False,
    )
    selection_loss, failing, started = {0.004: 3.0, 0.016: 2.9}, {"a-lr0.016-seed1"}, []

    def finish(comparison, plan):
        started.append(plan.name)
        if plan.name in failing:
            return [plan.name]
        run = synthetic_run("a", plan.seed, 3.5)
        on_selection = Validation("sel", str(selection_text), selection_loss[plan.spec.learning_rate], 1.0, 9, 3, 32)
        evaluation = dataclasses.replace(run.evaluation, validation=[*run.evaluation.validation, on_selection])
        run = dataclasses.replace(run, name=plan.name, spec_sha256=plan.spec_sha256(),
                                  learning_rate=plan.spec.learning_rate, evaluation=evaluation)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(plan.folder.result_json, to_json(run))
        return []

    monkeypatch.setattr(runner, "finish_run", finish)
    monkeypatch.setattr(runner, "prepare_data", lambda shared: None)
    assert runner.run_comparison(prepare(options)) == 1
    assert started == ["a-lr0.004-seed1", "a-lr0.016-seed1"]
    assert "waiting for a chosen rate (a selection run did not finish): 2 runs" in capsys.readouterr().out
    assert "## Not run yet\n\na-lr0.016-seed1, a-seed2, a-seed3" in (tmp_path / "out" / "report.md").read_text()
    failing.clear()
    started.clear()
    assert runner.run_comparison(prepare(options)) == 0
    # the first batch again (compare's own task skips the finished run), then the chosen rate's seeds
    assert started == ["a-lr0.004-seed1", "a-lr0.016-seed1", "a-lr0.016-seed2", "a-lr0.016-seed3"]
    assert "## Not run yet" not in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_a_dry_run_prints_every_runs_state_and_writes_nothing(tmp_path, shared_data, tokenizer_dir, capsys):
    """--dry_run: a finished run, one that failed, one trained but not evaluated, one to resume from its last
    complete checkpoint, one to start, and the seeds that wait for a chosen rate; the folder stays as it was."""
    from litgpt_mka.atomic import write_json
    from litgpt_mka.cli import run_compare
    from litgpt_mka.compare.records import Failure
    from tests.compare.helpers import synthetic_run

    selection_text = tmp_path / "sel.txt"
    selection_text.write_text((shared_data / "val.txt").read_text())
    options = CompareOptions(
        configs=[tiny_yaml(tmp_path, "a")], seeds=[1, 2, 3, 4, 5, 6], selection_seeds=[1, 2, 3, 4, 5],
        learning_rates=[0.004], selection_val="sel", out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
        val_path=[shared_data / "val.txt", selection_text], tokenizer_dir=tokenizer_dir, max_tokens=1024,
        context_length=16, decode_new_tokens=4, dry_run=True,
    )
    finished, failed, trained, resumable, _ = prepare(options).runs
    for run in (finished, failed, trained, resumable):
        run.run_dir.mkdir(parents=True)
    write_json(finished.folder.result_json, to_json(dataclasses.replace(
        synthetic_run("a", 1, 3.25), name=finished.name, spec_sha256=finished.spec_sha256())))
    failure = Failure("train", 1, "exit status 1", "ValueError: x", "run.log", [])
    write_json(failed.folder.result_json, to_json(dataclasses.replace(
        synthetic_run("a", 2, 3.0), status="failed", name=failed.name, spec_sha256=failed.spec_sha256(),
        evaluation=None, failure=failure)))
    trained.folder.train_json.write_text("{}")
    for step in ("step-00000002", "step-00000004", "step-00000006"):  # the last one incomplete: no model_config.yaml
        (resumable.folder.checkpoints / step).mkdir(parents=True)
        if step != "step-00000006":
            (resumable.folder.checkpoints / step / "model_config.yaml").write_text("{}")
    before = sorted(path.relative_to(tmp_path) for path in (tmp_path / "out").rglob("*"))
    assert run_compare(options) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"compare plan: 6 runs (1 finished, 1 failed before, 1 to evaluate, 1 to resume, 1 to start,"
                        f" 1 waiting for a chosen rate) in {tmp_path / 'out'}; reference: a")
    assert lines[1:] == [
        "  [1/6] a-lr0.004-seed1  finished (loss 3.2500 on val)",
        "  [2/6] a-lr0.004-seed2  failed before (in train; runs again)",
        "  [3/6] a-lr0.004-seed3  to evaluate (trained)",
        "  [4/6] a-lr0.004-seed4  to resume (from step-00000004)",
        "  [5/6] a-lr0.004-seed5  to start",
        "  a: seed 6 waits for its rate, chosen once its selection runs have finished",
    ]
    assert sorted(path.relative_to(tmp_path) for path in (tmp_path / "out").rglob("*")) == before


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_a_run_recorded_with_the_csv_logger_of_earlier_versions_resumes_as_it_was(tmp_path, shared_data,
                                                                                  tokenizer_dir):
    """compare gave every run --logger_name csv before it kept the YAML's logger: such a folder is taken as it was
    recorded (finished stays finished), while any other difference is still refused."""
    import yaml

    from litgpt_mka.atomic import write_json
    from litgpt_mka.compare.layout import spec_sha256
    from tests.compare.helpers import synthetic_run

    config = tiny_yaml(tmp_path, "tiny")
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "logger_name": "tensorboard"}))
    options = CompareOptions(configs=[config], out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
                             val_path=[shared_data / "val.txt"], tokenizer_dir=tokenizer_dir, max_tokens=1024,
                             context_length=16, decode_new_tokens=4)
    (planned,) = prepare(options).runs
    args = list(planned.spec.pretrain_args)
    assert args[args.index("--logger_name") + 1] == "tensorboard"
    args[args.index("--logger_name") + 1] = "csv"
    earlier = dataclasses.replace(planned.spec, pretrain_args=args)
    planned.run_dir.mkdir(parents=True)
    write_json(planned.folder.spec_json, to_json(earlier))
    write_json(planned.folder.result_json, to_json(dataclasses.replace(
        synthetic_run("tiny", 42, 3.0), name=planned.name, spec_sha256=spec_sha256(earlier))))
    (resumed,) = prepare(options).runs
    assert resumed.spec == earlier and resumed.is_finished()
    write_json(planned.folder.spec_json, to_json(dataclasses.replace(earlier, seed=7)))
    with pytest.raises(ValueError, match=r"holds a run made with other settings \(differing: pretrain_args, seed\)"):
        prepare(options)


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_a_config_edited_while_the_selection_ran_stops_the_comparison_with_status_2(
        tmp_path, shared_data, tokenizer_dir, monkeypatch, capsys):
    from litgpt_mka.compare import runner

    config = tiny_yaml(tmp_path, "a")
    selection_text = tmp_path / "sel.txt"
    selection_text.write_text((shared_data / "val.txt").read_text())
    options = CompareOptions(
        configs=[config], seeds=[1, 2], selection_seeds=[1], learning_rates=[0.004], selection_val="sel",
        out_dir=tmp_path / "out", train_path=shared_data / "train.txt", val_path=[shared_data / "val.txt",
        selection_text], tokenizer_dir=tokenizer_dir, max_tokens=1024, context_length=16, decode_new_tokens=4,
        plots=False,
    )

    def finish(comparison, plan):
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        plan.folder.spec_json.write_text(json.dumps(to_json(plan.spec)))
        config.write_text(config.read_text() + "\n# edited\n")  # while the run trained
        return []

    monkeypatch.setattr(runner, "finish_run", finish)
    monkeypatch.setattr(runner, "prepare_data", lambda shared: None)
    assert runner.run_comparison(prepare(options)) == 2
    error = capsys.readouterr().err
    assert "litgpt-mka compare: error while planning the runs after a chosen rate:" in error
    assert "differing: config_sha256" in error and (tmp_path / "out" / "report.md").is_file()


@pytest.mark.filterwarnings("ignore:each run's validation curve")
def test_later_seeds_go_seed_by_seed_across_configs_even_when_one_rate_is_chosen_before_the_others(
        tmp_path, shared_data, tokenizer_dir, monkeypatch):
    """A rerun after `a` (a given rate) finished its selection run: `b`'s grid runs first, then seed 2 of both, then
    seed 3 of both; a's later seeds do not run ahead of b's (a comparison stopped in between keeps them even)."""
    from litgpt_mka.atomic import write_json
    from litgpt_mka.compare import runner
    from litgpt_mka.compare.records import Validation
    from tests.compare.helpers import synthetic_run

    selection_text = tmp_path / "sel.txt"
    selection_text.write_text((shared_data / "val.txt").read_text())
    options = CompareOptions(
        configs=[tiny_yaml(tmp_path, "a"), tiny_yaml(tmp_path, "b")], seeds=[1, 2, 3], selection_seeds=[1],
        learning_rates=[0.004, 0.016], config_learning_rates={"a": [0.004]}, selection_val="sel",
        out_dir=tmp_path / "out", train_path=shared_data / "train.txt",
        val_path=[shared_data / "val.txt", selection_text], tokenizer_dir=tokenizer_dir, max_tokens=1024,
        context_length=16, decode_new_tokens=4, plots=False,
    )
    started = []

    def finish(comparison, plan):
        if not plan.is_finished():
            started.append(plan.name)
        run = synthetic_run(plan.variant, plan.seed, 3.0)
        on_selection = Validation("sel", str(selection_text), 3.0 - plan.spec.learning_rate, 1.0, 9, 3, 32)
        evaluation = dataclasses.replace(run.evaluation, validation=[*run.evaluation.validation, on_selection])
        run = dataclasses.replace(run, name=plan.name, spec_sha256=plan.spec_sha256(),
                                  learning_rate=plan.spec.learning_rate, evaluation=evaluation)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(plan.folder.spec_json, to_json(plan.spec))
        write_json(plan.folder.result_json, to_json(run))
        return []

    monkeypatch.setattr(runner, "finish_run", finish)
    monkeypatch.setattr(runner, "prepare_data", lambda shared: None)
    first = prepare(options).runs[0]
    assert first.name == "a-lr0.004-seed1"
    finish(None, first)  # an earlier invocation finished it
    started.clear()
    assert runner.run_comparison(prepare(options)) == 0
    assert started == ["b-lr0.004-seed1", "b-lr0.016-seed1", "a-lr0.004-seed2", "b-lr0.016-seed2",
                       "a-lr0.004-seed3", "b-lr0.016-seed3"]
