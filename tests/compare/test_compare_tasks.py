"""`litgpt-mka compare --lm_eval_tasks`: task scores per run, their mean ± std over seeds with lm-eval's standard
errors, and the better / worse / tied rule of the loss. The end-to-end rerun with tasks, which trains nothing, is in
test_compare_e2e.py (it reuses that module's finished comparison)."""

import dataclasses
import json
import math

import pytest

from litgpt_mka.compare.records import LmEvalResult, TaskScore
from litgpt_mka.compare.summary import SCREENING, summarize
from litgpt_mka.compare.summary import task_difference as t_tested_task_difference
from tests.compare.helpers import synthetic_run, tiny_yaml


def test_task_differences_add_lm_evals_standard_errors_and_follow_the_metrics_direction_screening_rule():
    """The screening rule of comparisons written before the t-test (their reports render as written)."""
    def task_difference(*args):
        return t_tested_task_difference(*args, rule=SCREENING)

    # d = 0.1; seeds: s^2 = 0.0002 on each side -> 0.0002 / 2 * 2 = 0.0002; lm-eval: e = 0.02 and 0.01
    se = math.sqrt(0.0002 + 0.02**2 + 0.01**2)
    acc = task_difference("v", "piqa acc", [0.59, 0.61], [0.02, 0.02], "ref", [0.49, 0.51], [0.01, 0.01], True)
    assert (acc.verdict, acc.difference, acc.se) == ("better", pytest.approx(0.1), pytest.approx(se))
    assert acc.sentence == (f"v: piqa acc +0.1000 against ref (SE {se:.4f}, lm-eval's part {math.hypot(0.02, 0.01):.4f};"
                            f" 2 and 2 seeds): better (higher by {0.1 / se:.1f} SE).")
    perplexity = task_difference("v", "ppl", [0.59, 0.61], [0.02, 0.02], "ref", [0.49, 0.51], [0.01, 0.01], False)
    assert perplexity.verdict == "worse"
    noisy = task_difference("v", "acc", [0.59, 0.61], [0.2, 0.2], "ref", [0.49, 0.51], [0.1, 0.1], True)
    assert noisy.verdict == "tied within noise"  # the same seeds, but lm-eval's SE is 10x larger
    one_seed = task_difference("v", "acc", [0.6], [0.02], "ref", [0.5, 0.5], [0.02, 0.02], True)
    assert (one_seed.verdict, one_seed.se) == ("SE unknown", None)
    assert task_difference("v", "x", [0.6, 0.6], [None, None], "ref", [0.5, 0.5], [None, None], None).verdict == "no direction"


def scored(run, **values_and_stderrs):
    """`run` with lm-eval scores: metric=(value, stderr) of a task "t", accuracy higher-is-better."""
    scores = [TaskScore("t", f"{name},none", value, stderr, name == "acc") for name, (value, stderr) in values_and_stderrs.items()]
    return dataclasses.replace(run, lm_eval=LmEvalResult(["t"], None, scores, "0.4.13", 1.0))


def test_summary_and_report_show_task_scores_over_seeds_and_their_verdicts():
    from litgpt_mka.compare.records import Environment, MeasureSettings, Results, Settings
    from litgpt_mka.compare.report import markdown

    runs = [
        scored(synthetic_run("mha", 1, 2.0), acc=(0.50, 0.01), perplexity=(30.0, 2.0)),
        scored(synthetic_run("mha", 2, 2.2), acc=(0.52, 0.01), perplexity=(32.0, 2.0)),
        scored(synthetic_run("mqa", 1, 2.1), acc=(0.70, 0.01), perplexity=(31.0, 2.0)),
        scored(synthetic_run("mqa", 2, 2.3), acc=(0.72, 0.01), perplexity=(33.0, 2.0)),
    ]
    mha, mqa = summarize(runs, reference="mha")
    assert mha.task_scores["t acc"].mean == pytest.approx(0.51) and mha.task_scores["t acc"].std == pytest.approx(math.sqrt(0.0002))
    assert mha.task_stderrs["t perplexity"].mean == pytest.approx(2.0) and mha.task_differences == {}
    # acc: d = 0.2, SE^2 = 0.0002 (seeds) + 0.0002 (lm-eval), df = 0.0004^2 / (2 x 0.0001^2 / 1) = 8, t = 10
    assert mqa.task_differences["t acc"].verdict == "better" and mqa.task_differences["t acc"].t_df == pytest.approx(8)
    assert mqa.task_differences["t perplexity"].verdict == "cannot tell"  # d = 1, SE = sqrt(2 + 8)

    settings = Settings(["configs/mha.yaml", "configs/mqa.yaml"], [1, 2], "train.txt", ["val.txt"], "tok", 42,
                        MeasureSettings(5, 16, 1, 4, "float32", 4), verdict_rule="t-test")
    environment = Environment("3.11", "2.13", "0.5.13", "0.1.0", "2.6", "Linux", "cpu", 2, 2, [], None)
    report = markdown(Results("cmd", "now", environment, settings, "mha", [mha, mqa], runs), [])
    section = report.split("## lm-eval task scores")[1]
    assert "| variant | t acc ↑ | t perplexity ↓ |" in section
    assert "| mqa | 0.7100 ± 0.0141 (SE 0.0100) | 32.0000 ± 1.4142 (SE 2.0000) |" in section
    assert "| mqa | t acc | +0.2000 | [+0.1539, +0.2461] | Welch (8.0) | < 0.001 | < 0.001 | 2, 2 | better |" in section
    assert "one Holm family per metric" in section and "**Unpaired design**" in section


def test_include_path_needs_tasks_and_a_folder(tmp_path):
    from litgpt_mka.compare.options import CompareOptions, validate

    config = tiny_yaml(tmp_path, "tiny-mha")
    with pytest.raises(ValueError, match=r"include_path='.*' is given without --lm_eval_tasks"):
        validate(CompareOptions(configs=[config], include_path=tmp_path))
    with pytest.raises(FileNotFoundError, match=r"include_path='.*nowhere' is not a folder"):
        validate(CompareOptions(configs=[config], lm_eval_tasks=["t"], include_path=tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"lm_eval_tasks=\[\] is empty"):
        validate(CompareOptions(configs=[config], lm_eval_tasks=[]))


def test_tasks_without_lm_eval_are_refused_before_training(tmp_path, monkeypatch):
    import importlib.util

    from litgpt_mka.compare.options import CompareOptions, validate

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"lm_eval_tasks=\['piqa'\]: compare --lm_eval_tasks needs lm-evaluation-harness.*\.\[eval\]"):
        validate(CompareOptions(configs=[tiny_yaml(tmp_path, "tiny-mha")], lm_eval_tasks=["piqa"]))
