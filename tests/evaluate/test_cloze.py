"""The TinyStories cloze builder: last word as target, skipped stories, a task lm-eval loads from any directory."""

import json

import pytest

from litgpt_mka.evaluate.cloze import cloze_docs, write_cloze_task


def test_the_target_is_the_last_word_without_its_punctuation():
    stories = ['Tom ran home.\nHe was happy!', 'She said "hi"', "The end came at 5.", "Lily's cat slept."]
    assert cloze_docs(stories) == [
        {"context": "Tom ran home.\nHe was", "target": "happy"},
        {"context": "Lily's cat", "target": "slept"},
    ]
    assert cloze_docs(stories, max_docs=1) == [{"context": "Tom ran home.\nHe was", "target": "happy"}]


def test_a_text_without_a_final_word_is_refused(tmp_path):
    (tmp_path / "val.txt").write_text('"Hi!"\n<|endoftext|>\n42\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"val_path=.*val.txt': no story ends in a plain word"):
        write_cloze_task(tmp_path / "val.txt", tmp_path / "task")


def test_the_task_is_scored_by_lm_eval_from_another_directory(preset_checkpoints, tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets

    import math

    import torch

    from litgpt_mka.checkpoint import load_model
    from litgpt_mka.evaluate import evaluate_checkpoint
    from tests.evaluate.reference import log_likelihood, pythia_tokenizer

    (tmp_path / "val.txt").write_text("Ben saw a big dog.\n<|endoftext|>\nThe sun was hot today!\n", encoding="utf-8")
    yaml_file = write_cloze_task(tmp_path / "val.txt", tmp_path / "task")
    lines = yaml_file.with_suffix(".jsonl").read_text().splitlines()
    assert [json.loads(line)["target"] for line in lines] == ["dog", "today"]
    monkeypatch.chdir(tmp_path)  # the YAML names its JSON Lines file by absolute path
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    results = evaluate_checkpoint(
        preset_checkpoints["pythia-14m-mqa"], "tinystories_cloze", include_path=yaml_file.parent,
        include_defaults=False, device="cpu",
    )["results"]["tinystories_cloze"]
    model, tokenizer = load_model(preset_checkpoints["pythia-14m-mqa"], torch.device("cpu")), pythia_tokenizer(tokenizer_dir)
    expected = [log_likelihood(model, tokenizer, doc["context"], " " + doc["target"]) for doc in map(json.loads, lines)]
    assert results["acc,none"] == sum(greedy for _, greedy in expected) / 2
    assert results["perplexity,none"] == pytest.approx(math.exp(-sum(ll for ll, _ in expected) / 2), rel=1e-5)
