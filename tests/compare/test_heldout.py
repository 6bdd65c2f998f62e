"""litgpt_mka.compare.heldout: the evaluated validation windows are the documented layout and never hold training text."""

import torch
import yaml

from litgpt_mka.data import split_documents


def test_validation_windows_are_disjoint_from_the_training_text(
    shared_data, tokenizer_dir, subprocess_env, tmp_path, monkeypatch
):
    """The acceptance setting (TinyStories sample, max_seq_length 512): evaluated windows never hold training text."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_mka.compare.heldout import heldout_data
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


def test_a_text_shorter_than_one_window_is_one_window_of_its_own_length(
    shared_data, tokenizer_dir, subprocess_env, tmp_path, monkeypatch
):
    """A short secondary text (a sentence of out-of-domain text): one window of its own length, every target scored
    once, instead of a failure after training."""
    from litgpt_mka.compare.heldout import heldout_data

    monkeypatch.setenv("XDG_CACHE_HOME", subprocess_env["XDG_CACHE_HOME"])
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    data = {"class_path": "litgpt_mka.data.TextCorpus",
            "init_args": {"train_path": str(shared_data / "train.txt"), "val_path": str(shared_data / "val.txt")}}
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump(
        {"data": data, "tokenizer_dir": str(tokenizer_dir), "train": {"max_seq_length": 512}}))
    short = tmp_path / "short.txt"
    short.write_text("A short text of a few words.\n")
    evaluated = heldout_data(checkpoint, short)
    assert evaluated.windows.shape == (1, evaluated.num_tokens) and evaluated.max_seq_length == evaluated.num_tokens - 1
    assert evaluated.new_from.tolist() == [0] and 2 <= evaluated.num_tokens < 20
