"""Offline lm-eval tasks (local JSON Lines, tests/evaluate/tasks/) on every Pythia-14m preset: the scores lm-eval
computes from LitgptLM's answers equal the scores computed from the reference full forwards."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")
from litgpt_mka.checkpoint import load_model  # noqa: E402
from litgpt_mka.evaluate import evaluate_checkpoint  # noqa: E402
from tests.evaluate.checkpoints import PRESETS, TASKS_DIR  # noqa: E402
from tests.evaluate.reference import log_likelihood, perplexity_metrics, pythia_tokenizer, rolling_log_likelihood  # noqa: E402

TASKS = "tiny_story_choice,tiny_story_perplexity"


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / name).read_text(encoding="utf-8").splitlines()]


def expected_choice_scores(model, tokenizer) -> dict[str, float]:
    """acc: the gold choice has the highest log-likelihood; acc_norm: the highest per character (lm-eval's)."""
    acc, acc_norm = [], []
    for doc in read_jsonl("tiny_story_choice.jsonl"):
        scores = np.array([log_likelihood(model, tokenizer, doc["story"], " " + choice)[0] for choice in doc["choices"]])
        lengths = np.array([len(choice) for choice in doc["choices"]], dtype=float)
        acc.append(float(np.argmax(scores) == doc["answer"]))
        acc_norm.append(float(np.argmax(scores / lengths) == doc["answer"]))
    return {"acc,none": float(np.mean(acc)), "acc_norm,none": float(np.mean(acc_norm))}


def expected_perplexities(model, tokenizer) -> dict[str, float]:
    texts = [doc["text"] for doc in read_jsonl("tiny_story_perplexity.jsonl")]
    metrics = perplexity_metrics([rolling_log_likelihood(model, tokenizer, text) for text in texts], texts)
    return {f"{name},none": value for name, value in metrics.items()}


@pytest.mark.parametrize("preset", PRESETS)
def test_local_tasks_score_as_the_reference(preset, preset_checkpoints, tokenizer_dir, in_project_root):
    results = evaluate_checkpoint(
        preset_checkpoints[preset], TASKS, batch_size=4, include_path=TASKS_DIR, include_defaults=False,
        device="cpu",
    )["results"]
    model, tokenizer = load_model(preset_checkpoints[preset], torch.device("cpu")), pythia_tokenizer(tokenizer_dir)

    choice = expected_choice_scores(model, tokenizer)
    assert {metric: results["tiny_story_choice"][metric] for metric in choice} == choice
    perplexity = expected_perplexities(model, tokenizer)
    got = {metric: results["tiny_story_perplexity"][metric] for metric in perplexity}
    assert got == pytest.approx(perplexity, rel=1e-5)
