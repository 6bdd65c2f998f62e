"""`litgpt-mka evaluate`: its errors (exit status 2 and a message naming the option) and, end to end, a checkpoint
trained by `litgpt pretrain` evaluated on the local tasks by the console script."""

import json
import re
import sys
from pathlib import Path

import pytest

from litgpt_mka.evaluate import evaluate, lm_eval_requirement
from tests.conftest import PROJECT_ROOT, litgpt_command, run
from tests.evaluate.checkpoints import TASKS_DIR

LOCAL_TASKS = "tiny_story_choice,tiny_story_perplexity"


def test_a_missing_lm_eval_names_the_extra_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    assert evaluate(tmp_path, tasks="piqa") == 2
    error = capsys.readouterr().err
    assert 'pip install -e ".[eval]"' in error and f'pip install "{lm_eval_requirement()}"' in error
    assert lm_eval_requirement().startswith("lm-eval") and "0.4.9" in lm_eval_requirement()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(tasks=" , "), r"tasks=' , ': give one or more lm-eval task names"),
        (dict(batch_size=0), r"batch_size=0 must be a positive integer"),
        (dict(precision="bf16-mixed"), r"precision='bf16-mixed' must be one of \['32-true', 'bf16-true', '16-true'\]"),
        (dict(limit=0), r"limit=0 must be positive and finite: a whole count of examples per task \(1 or more\), or"
                        r" a fraction of each task in \(0, 1\)"),
        (dict(limit=float("inf")), r"limit=inf must be positive and finite"),
        (dict(limit=True), r"limit=True must be positive and finite"),
        (dict(limit=2.5), r"limit=2.5 is above 1 but not a whole number"),
        (dict(num_fewshot=-1), r"num_fewshot=-1 must be a non-negative integer, or null for each task's own"),
        (dict(num_fewshot=1.5), r"num_fewshot=1.5 must be a non-negative integer"),
        (dict(num_fewshot=True), r"num_fewshot=True must be a non-negative integer"),
        (dict(max_batch_size=0), r"max_batch_size=0 must be a positive integer, or null for the default, 64"),
        (dict(tasks="tiny_story_choice,no_such_task"), r"unknown \['no_such_task'\]"),
        (dict(include_path="no/such/folder"), r"include_path='no/such/folder' is not a folder"),
    ],
)
def test_invalid_options_exit_2_naming_the_option(options, message, preset_checkpoints, capsys):
    pytest.importorskip("lm_eval")
    settings = dict(tasks=LOCAL_TASKS, include_path=TASKS_DIR, include_defaults=False) | options
    assert evaluate(preset_checkpoints["pythia-14m-mha"], **settings) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_folder_without_weights_is_refused(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    assert evaluate(tmp_path, tasks=LOCAL_TASKS, include_path=TASKS_DIR, include_defaults=False) == 2
    assert "has no lit_model.pth: not a litgpt checkpoint folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_pretrained_mla_checkpoint_is_evaluated_by_the_console_script(shared_data, tokenizer_dir, subprocess_env, tmp_path):
    pytest.importorskip("lm_eval")
    out = tmp_path / "out"
    run(
        [
            *litgpt_command(), "pretrain", "--config", str(PROJECT_ROOT / "config_hub/pretrain/pythia-14m-mla.yaml"),
            "--data.train_path", str(shared_data / "train.txt"), "--data.val_path", str(shared_data / "val.txt"),
            "--tokenizer_dir", str(tokenizer_dir), "--precision", "32-true", "--train.max_seq_length", "128",
            "--train.max_tokens", "2048", "--eval.max_iters", "1", "--out_dir", str(out),
        ],
        env=subprocess_env | {"TORCHDYNAMO_DISABLE": "1"},
    )
    results_dir = tmp_path / "evaluation"
    evaluated = run(
        [
            str(Path(sys.executable).parent / "litgpt-mka"),
            "evaluate", str(out / "final"), "--tasks", LOCAL_TASKS, "--include_path", str(TASKS_DIR),
            "--include_defaults", "false", "--batch_size", "4", "--out_dir", str(results_dir),
        ],
        env=subprocess_env,
    )
    assert re.search(r"loglikelihood: 100%\|[^\n]*\| 24/24 \[", evaluated.stderr)  # tqdm's bar, with its times
    results = json.loads((results_dir / "results.json").read_text())
    assert 0 <= results["results"]["tiny_story_choice"]["acc,none"] <= 1
    assert results["results"]["tiny_story_perplexity"]["word_perplexity,none"] > 1
    assert results["config"]["attention_class_name"] == "MultiheadLatentAttention"
    assert "tiny_story_choice" in (results_dir / "results.md").read_text()
