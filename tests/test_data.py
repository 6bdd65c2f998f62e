"""litgpt_mka.data.TextCorpus: documents, windows, cache keys, order, resumption, errors."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from litgpt.tokenizer import Tokenizer
from litgpt_mka import data as data_module
from litgpt_mka.data import ShuffledWindows, TextCorpus, split_documents, validation_windows

STORIES = "Once upon a time there was a cat.\n<|endoftext|>\nThe dog ran home.\nIt was happy.\n<|endoftext|>\n\n<|endoftext|>\nThe end.\n"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer(tokenizer_dir)


def corpus(tmp_path: Path, tokenizer: Tokenizer, train: Path, val: Path, seq: int = 8, batch: int = 2, **kwargs) -> TextCorpus:
    module = TextCorpus(train_path=train, val_path=val, cache_dir=tmp_path / "cache", **kwargs)
    module.connect(tokenizer, batch_size=batch, max_seq_length=seq)
    module.prepare_data()
    module.setup()
    return module


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_documents_are_split_on_separator_lines_and_joined_with_eos(tmp_path, tokenizer):
    assert split_documents(STORIES) == ["Once upon a time there was a cat.", "The dog ran home.\nIt was happy.", "The end."]
    train = write(tmp_path / "train.txt", "<|endoftext|>\n".join([STORIES] * 3))
    module = corpus(tmp_path, tokenizer, train, train)
    expected = np.concatenate(
        [tokenizer.encode(doc, bos=False, eos=True).numpy() for doc in split_documents(STORIES)] * 3
    )
    np.testing.assert_array_equal(module._train_tokens, expected)
    assert (module._train_tokens == tokenizer.eos_id).sum() == 9


def test_folder_input_reads_txt_files_in_path_order(tmp_path, tokenizer):
    write(tmp_path / "folder" / "b" / "2.txt", "Second story.")
    write(tmp_path / "folder" / "a.txt", "First story.")
    write(tmp_path / "folder" / "notes.md", "not read")
    val = write(tmp_path / "val.txt", STORIES * 4)
    module = corpus(tmp_path, tokenizer, tmp_path / "folder", val, seq=4)
    expected = np.concatenate([tokenizer.encode(t, bos=False, eos=True).numpy() for t in ("First story.", "Second story.")])
    np.testing.assert_array_equal(module._train_tokens, expected)


def test_training_windows_cover_the_stream_once_and_follow_the_seeded_order(tmp_path, tokenizer):
    train = write(tmp_path / "train.txt", STORIES * 20)
    module = corpus(tmp_path, tokenizer, train, train, seq=8, batch=2, seed=7)
    tokens, n_windows = module._train_tokens, (len(module._train_tokens) - 1) // 8
    loader = module.train_dataloader()
    epoch = torch.cat(list(loader))
    assert epoch.shape == (n_windows - n_windows % 2, 9)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(7))
    for window, index in zip(epoch, order):
        np.testing.assert_array_equal(window.numpy(), tokens[index * 8 : index * 8 + 9])
    second_epoch = torch.cat(list(loader))
    assert not torch.equal(epoch, second_epoch)  # epoch 1 uses seed + 1
    assert torch.equal(torch.cat(list(corpus(tmp_path, tokenizer, train, train, seq=8, batch=2, seed=7).train_dataloader())), epoch)


def test_training_order_resumes_exactly_from_a_saved_state(tmp_path, tokenizer):
    train = write(tmp_path / "train.txt", STORIES * 20)
    module = corpus(tmp_path, tokenizer, train, train, seq=8, batch=2)
    uninterrupted = iter(module.train_dataloader())
    reference = [next(uninterrupted) for _ in range(12)]

    first = module.train_dataloader()
    iterator = iter(first)
    for _ in range(5):
        next(iterator)
    state = first.state_dict()
    resumed = module.train_dataloader()
    resumed.load_state_dict(state)
    continued = list(resumed)[:7]
    for expected, got in zip(reference[5:], continued):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_validation_windows_count_every_target_exactly_once(tmp_path, tokenizer):
    val = write(tmp_path / "val.txt", STORIES * 7)
    module = corpus(tmp_path, tokenizer, val, val, seq=8)
    tokens = module._val_tokens
    windows, new_from = validation_windows(tokens, 8)
    assert (len(tokens) - 1) % 8 != 0, "the test needs a stream with a tail"
    counted = []
    for window, start in zip(windows, new_from):
        counted.extend(window[1:][start:].tolist())
    assert counted == tokens[1:].tolist()
    assert torch.equal(torch.cat(list(module.val_dataloader())), windows)


def test_cache_is_keyed_by_content_and_tokenizer_and_input_may_be_read_only(tmp_path, tokenizer, tokenizer_dir, monkeypatch):
    data_dir = tmp_path / "readonly"
    train = write(data_dir / "train.txt", STORIES * 5)
    train.chmod(stat.S_IREAD)
    data_dir.chmod(stat.S_IREAD | stat.S_IEXEC)
    try:
        first = corpus(tmp_path, tokenizer, train, train)._train_tokens
        calls = []
        original = data_module.tokenize
        monkeypatch.setattr(data_module, "tokenize", lambda *a: calls.append(1) or original(*a))
        np.testing.assert_array_equal(corpus(tmp_path, tokenizer, train, train)._train_tokens, first)
        assert calls == []  # served from the cache
    finally:
        data_dir.chmod(stat.S_IRWXU)
        train.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert list(data_dir.iterdir()) == [train]  # nothing written beside the input

    train.write_text(STORIES * 6)
    assert len(corpus(tmp_path, tokenizer, train, train)._train_tokens) > len(first)
    assert calls == [1]  # a changed file is re-tokenized, once (train and val are the same file here)

    other_dir = tmp_path / "other_tokenizer"
    shutil.copytree(tokenizer_dir, other_dir)
    tokenizer_json = json.loads((other_dir / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"][0]["content"] = "<|endoftext_changed|>"
    (other_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    calls.clear()
    corpus(tmp_path, Tokenizer(other_dir), train, train)
    assert calls == [1]  # another tokenizer is another cache entry


@pytest.mark.parametrize(
    ("train_text", "exception", "message"),
    [
        ("", ValueError, r"data.train_path='.*train.txt' holds no text to train on \(empty corpus\)"),
        ("\n<|endoftext|>\n  \n", ValueError, r"holds no text to train on \(empty corpus\)"),
        ("One short story.", ValueError, r"data.train_path holds 5 tokens, fewer than one window of max_seq_length \+ 1 = 9"),
    ],
)
def test_unusable_corpora_raise_clear_errors(tmp_path, tokenizer, train_text, exception, message):
    train = write(tmp_path / "train.txt", train_text)
    val = write(tmp_path / "val.txt", STORIES * 5)
    with pytest.raises(exception, match=message):
        corpus(tmp_path, tokenizer, train, val).train_dataloader()


def test_missing_paths_and_empty_folders_raise_clear_errors(tmp_path, tokenizer):
    val = write(tmp_path / "val.txt", STORIES)
    with pytest.raises(FileNotFoundError, match=r"data.train_path='.*missing.txt' does not exist"):
        TextCorpus(train_path=tmp_path / "missing.txt", val_path=val)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data.train_path='.*empty' is a folder without .txt files"):
        corpus(tmp_path, tokenizer, tmp_path / "empty", val)
    with pytest.raises(ValueError, match=r"TextCorpus needs a tokenizer: pass --tokenizer_dir"):
        TextCorpus(train_path=val, val_path=val).connect(None, 1, 8)


def test_shuffled_windows_refuse_a_state_from_another_seed():
    windows = ShuffledWindows(torch.zeros(4, 3, dtype=torch.int64), seed=1)
    with pytest.raises(ValueError, match=r"data.seed=1 differs from the checkpoint's seed 2"):
        windows.load_state_dict({"epoch": 0, "served": 0, "seed": 2})


def test_shared_tinystories_sample_tokenizes_into_disjoint_sets(shared_data, tokenizer, tmp_path):
    module = corpus(tmp_path, tokenizer, shared_data / "train.txt", shared_data / "val.txt", seq=512)
    assert 400_000 < len(module._train_tokens) < 470_000 and 70_000 < len(module._val_tokens) < 85_000
    windows, _ = validation_windows(module._val_tokens, 512)
    assert (windows.shape[0] - 1) * 512 < len(module._val_tokens) <= windows.shape[0] * 512 + 1


def test_distributed_ranks_take_equal_disjoint_shares_of_each_epoch(monkeypatch):
    windows = torch.arange(11)[:, None].repeat(1, 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(data_module, "_rank_and_world_size", lambda rank=rank: (rank, 3))
        shares.append(torch.stack(list(ShuffledWindows(windows, seed=5)))[:, 0].tolist())
    assert [len(share) for share in shares] == [3, 3, 3]
    assert len(set(sum(shares, []))) == 9  # disjoint; 11 % 3 = 2 windows sit this epoch out
    monkeypatch.setattr(data_module, "_rank_and_world_size", lambda: (0, 1))
    order = torch.randperm(11, generator=torch.Generator().manual_seed(5))[:9]
    assert sorted(sum(shares, [])) == sorted(order.tolist())
