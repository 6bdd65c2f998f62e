"""litgpt_mka.data.TextCorpus: documents, windows, cache keys, order, resumption, errors."""

import json
import math
import multiprocessing
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
    for expected, got in zip(reference[5:], continued, strict=True):  # seven batches, each the uninterrupted one
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


def test_shuffled_windows_refuse_a_state_saved_by_another_number_of_processes(monkeypatch):
    windows = ShuffledWindows(torch.zeros(4, 3, dtype=torch.int64), seed=1)
    monkeypatch.setattr(data_module, "_rank_and_world_size", lambda: (0, 2))
    saved = windows.state_dict()
    assert saved["world_size"] == 2
    monkeypatch.setattr(data_module, "_rank_and_world_size", lambda: (0, 1))
    with pytest.raises(ValueError, match=r"saved by 2 processes, and this run has 1: resume with devices x num_nodes = 2"):
        windows.load_state_dict(saved)
    windows.load_state_dict({"epoch": 1, "served": 2, "seed": 1})  # saved before the world size was: accepted
    assert (windows.epoch, windows.served) == (1, 2)


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


# ------------------------------------------------------------------------------------ the token file
def test_batch_encoding_equals_encoding_one_document_at_a_time(shared_data, tokenizer):
    documents = split_documents((shared_data / "val.txt").read_text())[:300]
    expected = [tokenizer.encode(document, bos=False, eos=True).tolist() for document in documents]
    assert data_module.encode_documents(documents, tokenizer) == expected


def test_documents_are_read_line_by_line_as_split_documents_reads_the_whole_text(tmp_path, tokenizer):
    text = "a\r\nb\n\n<|endoftext|>\r\n\x0c tail \n<|endoftext|>\nc\rd\n\n"
    path = tmp_path / "lines.txt"
    path.write_bytes(text.encode())
    with data_module.tqdm(disable=True) as progress:
        lines = list(data_module._file_lines(path, progress))
    assert list(data_module._documents(lines)) == split_documents(text)


def test_token_file_is_memory_mapped_uint16_beside_the_text_or_in_the_cache_when_read_only(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    train = write(tmp_path / "data" / "train.txt", STORIES * 20)
    module = TextCorpus(train_path=train, val_path=train)
    module.connect(tokenizer, batch_size=2, max_seq_length=8)
    module.setup()
    assert isinstance(module._train_tokens, np.memmap) and module._train_tokens.dtype == np.uint16
    [cached] = (tmp_path / "data" / data_module.CACHE_FOLDER).iterdir()
    assert cached.name.endswith(".uint16.bin") and cached.stat().st_size == 2 * len(module._train_tokens)
    assert not (tmp_path / "xdg").exists()

    # a folder without write permission bits is read-only even for root (who may write anyway)
    read_only = write(tmp_path / "read_only" / "train.txt", STORIES * 20)
    read_only.parent.chmod(stat.S_IREAD | stat.S_IEXEC)
    try:
        tokens = data_module.load_or_tokenize(read_only, tokenizer)
        assert list(read_only.parent.iterdir()) == [read_only]
    finally:
        read_only.parent.chmod(stat.S_IRWXU)
    assert Path(tokens.filename).parent == tmp_path / "xdg" / "litgpt_mka" / "tokens"
    np.testing.assert_array_equal(tokens, module._train_tokens)


def test_vocabularies_over_65536_get_uint32_and_ids_that_do_not_fit_are_refused(tmp_path):
    class LargeVocabulary:
        vocab_size = 100_000

    assert data_module.token_dtype(LargeVocabulary()) == np.uint32
    with pytest.raises(ValueError, match=r"token ids in \[0, 70000\] do not fit the token file's uint16"):
        with data_module.TokenFileWriter(tmp_path / "tokens.bin", np.uint16) as writer:
            writer.write(np.array([0, 70_000]))
    assert list(tmp_path.iterdir()) == []  # the partial file is removed


def test_token_windows_index_like_the_tensor_they_stand_for():
    tokens = np.arange(30, dtype=np.uint16)
    windows = data_module.TokenWindows(tokens, 8, tail=True)
    expected = torch.stack([torch.arange(s, s + 9) for s in (0, 8, 16, 21)])
    assert windows.shape == expected.shape and windows.numel() == expected.numel() and len(windows) == 4
    assert torch.equal(windows.to_tensor(), expected) and torch.equal(torch.stack(list(windows)), expected)
    assert torch.equal(windows[torch.tensor(2)], expected[2])
    with pytest.raises(IndexError, match=r"window 4 is out of range for 4 windows"):
        windows[4]


def proc_status_kb(field: str) -> int:
    """A memory figure of this process from the kernel's accounting (/proc/self/status), in kB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def write_synthetic_token_file(text: Path, tokenizer: Tokenizer, cache_dir: Path, n_tokens: int) -> int:
    """The token file TextCorpus looks up for `text`, written through its writer with random ids (tokenizing
    50M tokens takes minutes on 2 cores); returns its size in bytes."""
    destination = data_module.token_file(text, tokenizer, cache_dir)
    rng = np.random.default_rng(n_tokens)
    with data_module.TokenFileWriter(destination, data_module.token_dtype(tokenizer)) as writer:
        for start in range(0, n_tokens, 1 << 20):
            writer.write(rng.integers(0, tokenizer.vocab_size, min(1 << 20, n_tokens - start)))
    return destination.stat().st_size


def stream_and_measure(train: Path, val: Path, cache_dir: Path, n_tokens: int, tokenizer_dir: Path, connection) -> None:
    """In a child process: write the token files, then read a whole training epoch and every validation window
    through TextCorpus; sends the memory growth over the child's own baseline (taken after its imports)."""
    tokenizer = Tokenizer(tokenizer_dir)
    baseline = {field: proc_status_kb(field) for field in ("VmRSS", "RssAnon")}
    file_bytes = write_synthetic_token_file(train, tokenizer, cache_dir, n_tokens)
    write_synthetic_token_file(val, tokenizer, cache_dir, n_tokens // 50)
    module = TextCorpus(train_path=train, val_path=val, cache_dir=cache_dir)
    module.connect(tokenizer, batch_size=8, max_seq_length=512)
    module.prepare_data()
    module.setup()
    anon_peak, batches = 0, 0
    for loader in (module.train_dataloader(), module.val_dataloader()):
        for _ in loader:
            batches += 1
            if batches % 500 == 0:
                anon_peak = max(anon_peak, proc_status_kb("RssAnon"))
    anon_peak = max(anon_peak, proc_status_kb("RssAnon"))
    connection.send({
        "tokens": len(module._train_tokens), "file_bytes": file_bytes, "batches": batches,
        "anon_growth_kb": anon_peak - baseline["RssAnon"], "rss_peak_growth_kb": proc_status_kb("VmHWM") - baseline["VmRSS"],
    })


def test_a_50m_token_corpus_streams_in_bounded_memory(tmp_path, tokenizer_dir):
    """The real reading path (TextCorpus.setup on its cache files, a whole training epoch over 50M tokens and
    every validation window of 1M) in a fresh process, measured from its own start: its anonymous memory
    grows by less than 10% of the training corpus as int64 (400 MB); all its resident memory, the mapped pages
    of the token file included (page cache), by less than that file (2 bytes a token) plus the same 10%."""
    n_tokens = 50_000_000
    train = write(tmp_path / "train.txt", STORIES)  # the texts name the cache entries; their token files are synthetic
    val = write(tmp_path / "val.txt", STORIES * 2)
    # spawned, not forked: a fork of a process whose torch threads hold a lock can hang forever (it did, under xdist)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    args = (train, val, tmp_path / "cache", n_tokens, tokenizer_dir, sender)
    child = context.Process(target=stream_and_measure, args=args)
    child.start()
    report = receiver.recv() if receiver.poll(600) else None
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and report is not None
    int64_kb = 8 * n_tokens / 1024
    assert report["tokens"] == n_tokens and report["file_bytes"] == 2 * n_tokens
    windows, val_windows = (n_tokens - 1) // 512, (n_tokens // 50 - 1) // 512 + 1  # validation adds a tail window
    assert report["batches"] == windows // 8 + math.ceil(val_windows / 8)
    assert report["anon_growth_kb"] < 0.10 * int64_kb, report
    assert report["rss_peak_growth_kb"] < report["file_bytes"] / 1024 + 0.10 * int64_kb, report


def test_no_writable_cache_folder_raises_naming_the_field(tmp_path, tokenizer, monkeypatch):
    train = write(tmp_path / "data" / "train.txt", STORIES)
    monkeypatch.setattr(data_module, "_writable", lambda folder: False)
    with pytest.raises(ValueError, match=r"data.train_path='.*train.txt': none of the token-cache folders .* can be written; set data.cache_dir"):
        data_module.load_or_tokenize(train, tokenizer, field_name="data.train_path")
