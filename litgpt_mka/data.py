"""`TextCorpus`: an offline plain-text data module for `litgpt pretrain`.

    litgpt pretrain ... --data litgpt_mka.data.TextCorpus \\
        --data.train_path ../shared/data/tinystories/train.txt --data.val_path ../shared/data/tinystories/val.txt

Layout
------
* Input: a ``.txt`` file, or a folder whose ``*.txt`` files (recursively, sorted by path) are read in
  order. Documents are separated by lines holding only ``<|endoftext|>``; each non-empty document is
  encoded without BOS and followed by the tokenizer's EOS, and the documents are concatenated into one
  token stream of N tokens.
* Windows: with ``L = max_seq_length`` every window holds ``L + 1`` tokens (inputs ``w[:L]``, targets
  ``w[1:]``) and window ``i`` starts at token ``i * L``, so every token after the first is a target of
  exactly one window.
  - train: the ``(N - 1) // L`` full windows; the tail shorter than a window is not used. Each epoch
    visits them in a permutation drawn from ``seed + epoch`` (reproducible, resumable: the loader's
    position is saved in litgpt's checkpoints and restored by ``--resume``).
  - validation: the same full windows in file order, plus, when a tail remains, one last window
    aligned to the end of the stream, so that the whole validation file is covered.
    :func:`validation_windows` tells which targets of that last window are new, for evaluations that
    must count every target exactly once (``litgpt-mka compare``); litgpt's own in-training validation
    averages per-window means and so counts the overlap of that window twice.
* Cache: tokenized streams are stored under ``cache_dir`` (default ``$XDG_CACHE_HOME/litgpt_mka/tokens``),
  never beside the input, which may be read-only. The file name is a hash of the input files' paths
  and contents and of the tokenizer (its full serialised model and EOS id): a changed file or
  tokenizer re-tokenizes. Writes are atomic.
"""

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from litgpt.data import DataModule
from litgpt.tokenizer import Tokenizer

DOCUMENT_SEPARATOR = "<|endoftext|>"
_CACHE_FORMAT = "litgpt_mka.TextCorpus/v1"


@dataclass
class TextCorpus(DataModule):
    """Pretraining data from local ``.txt`` files (documents separated by ``<|endoftext|>`` lines)."""

    train_path: Path
    """A .txt file or a folder of .txt files with the training text."""
    val_path: Path
    """A .txt file or a folder of .txt files with the held-out validation text (disjoint from training)."""
    seed: int = 42
    """Seed of the training-window order (epoch e uses seed + e)."""
    cache_dir: Path | None = None
    """Where tokenized streams are cached; default $XDG_CACHE_HOME/litgpt_mka/tokens (~/.cache/...)."""

    tokenizer: Tokenizer | None = field(default=None, init=False, repr=False)
    batch_size: int = field(default=1, init=False, repr=False)
    max_seq_length: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()
        self.train_path, self.val_path = Path(self.train_path), Path(self.val_path)
        for name, path in (("train_path", self.train_path), ("val_path", self.val_path)):
            if not path.exists():
                raise FileNotFoundError(f"data.{name}={str(path)!r} does not exist; give a .txt file or a folder of them")
        self._train_tokens: np.ndarray | None = None
        self._val_tokens: np.ndarray | None = None

    def connect(self, tokenizer: Tokenizer | None = None, batch_size: int = 1, max_seq_length: int = -1) -> None:
        if tokenizer is None:
            raise ValueError("TextCorpus needs a tokenizer: pass --tokenizer_dir (e.g. ../shared/tokenizers/pythia)")
        if max_seq_length is None or max_seq_length < 1:
            raise ValueError(f"max_seq_length={max_seq_length!r} must be a positive integer")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length

    def prepare_data(self) -> None:
        for name in ("train_path", "val_path"):
            self._tokens(name)

    def setup(self, stage: str = "") -> None:
        self._train_tokens = self._tokens("train_path")
        self._val_tokens = self._tokens("val_path")

    def train_dataloader(self) -> DataLoader:
        windows = ShuffledWindows(_train_windows(self._train_tokens, self.max_seq_length), self.seed)
        return ResumableDataLoader(windows, batch_size=self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        windows, _ = validation_windows(self._val_tokens, self.max_seq_length)
        return DataLoader(_Windows(windows), batch_size=self.batch_size, shuffle=False)

    def _tokens(self, name: str) -> np.ndarray:
        if self.tokenizer is None:
            raise RuntimeError("call TextCorpus.connect(tokenizer, batch_size, max_seq_length) first")
        cache_dir = self.cache_dir or default_cache_dir()
        return load_or_tokenize(getattr(self, name), self.tokenizer, Path(cache_dir), field_name=f"data.{name}")


# ------------------------------------------------------------------------------------------ tokenization
def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "litgpt_mka" / "tokens"


def text_files(path: Path, field_name: str = "path") -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"{field_name}={str(path)!r} is a folder without .txt files")
    return files


def split_documents(text: str) -> list[str]:
    documents, current = [], []
    for line in text.splitlines():
        if line.strip() == DOCUMENT_SEPARATOR:
            documents.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    documents.append("\n".join(current).strip())
    return [doc for doc in documents if doc]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> bytes:
    processor = tokenizer.processor
    model = processor.to_str() if hasattr(processor, "to_str") else processor.serialized_model_proto()
    model = model.encode() if isinstance(model, str) else model
    return model + f"|eos={tokenizer.eos_id}|bos={tokenizer.bos_id}".encode()


def tokenize(texts: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """Every document of every text, encoded without BOS and followed by EOS, as one stream."""
    pieces = [
        tokenizer.encode(doc, bos=False, eos=True).numpy() for text in texts for doc in split_documents(text)
    ]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return stream.astype(np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def load_or_tokenize(path: Path, tokenizer: Tokenizer, cache_dir: Path, field_name: str = "path") -> np.ndarray:
    files = text_files(Path(path), field_name)
    raw = [f.read_bytes() for f in files]
    key = hashlib.sha256(_CACHE_FORMAT.encode())
    key.update(tokenizer_fingerprint(tokenizer))
    for file, content in zip(files, raw):
        key.update(file.name.encode() + b"\0" + hashlib.sha256(content).digest())
    cached = cache_dir / f"{key.hexdigest()}.npy"
    if cached.exists():
        return np.load(cached)
    tokens = tokenize([content.decode("utf-8") for content in raw], tokenizer)
    if tokens.size == 0:
        raise ValueError(f"{field_name}={str(path)!r} holds no text to train on (empty corpus)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(partial, tokens)
    os.replace(partial, cached)
    return tokens


# --------------------------------------------------------------------------------------------- windows
def _check_length(tokens: np.ndarray, max_seq_length: int, field_name: str) -> None:
    if len(tokens) < max_seq_length + 1:
        raise ValueError(
            f"{field_name} holds {len(tokens)} tokens, fewer than one window of max_seq_length + 1 ="
            f" {max_seq_length + 1}; give more text or a smaller --train.max_seq_length"
        )


def _train_windows(tokens: np.ndarray, max_seq_length: int, field_name: str = "data.train_path") -> torch.Tensor:
    _check_length(tokens, max_seq_length, field_name)
    n_windows = (len(tokens) - 1) // max_seq_length
    starts = np.arange(n_windows) * max_seq_length
    return torch.from_numpy(np.stack([tokens[s : s + max_seq_length + 1] for s in starts]).astype(np.int64))


def validation_windows(tokens: np.ndarray, max_seq_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All validation windows (W, L + 1) and, per window, the index of its first target not seen before.

    Targets ``w[1:][new_from:]`` of each window are the ones no earlier window has; summing the loss over
    them counts every token of the stream after the first exactly once.
    """
    windows = _train_windows(tokens, max_seq_length, "data.val_path")
    new_from = torch.zeros(len(windows), dtype=torch.int64)
    covered = len(windows) * max_seq_length + 1  # tokens covered by the full windows
    if covered < len(tokens):
        last = torch.from_numpy(tokens[-(max_seq_length + 1) :].astype(np.int64))
        windows = torch.cat((windows, last[None]))
        new_from = torch.cat((new_from, torch.tensor([covered - (len(tokens) - max_seq_length - 1) - 1])))
    return windows, new_from


class _Windows(Dataset):
    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.windows[index]


class ShuffledWindows(IterableDataset):
    """Training windows, epoch after epoch, each epoch in the permutation drawn from ``seed + epoch``.

    In distributed runs every rank takes an equal, disjoint share (``rank::world_size``) of each epoch.
    Its position (epoch, windows served on this rank) is the state saved in checkpoints.
    """

    def __init__(self, windows: torch.Tensor, seed: int) -> None:
        self.windows, self.seed = windows, seed
        self.epoch, self.served = 0, 0

    def _shard(self) -> torch.Tensor:
        order = torch.randperm(len(self.windows), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        rank, world_size = _rank_and_world_size()
        usable = len(order) - len(order) % world_size
        return order[:usable][rank::world_size]

    def __len__(self) -> int:
        return len(self.windows) // _rank_and_world_size()[1]

    def __iter__(self) -> Iterator[torch.Tensor]:
        shard = self._shard()
        while self.served < len(shard):
            index = shard[self.served]
            self.served += 1
            yield self.windows[index]
        self.epoch, self.served = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "served": self.served, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"data.seed={self.seed} differs from the checkpoint's seed {state['seed']}")
        self.epoch, self.served = state["epoch"], state["served"]


def _rank_and_world_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableDataLoader(DataLoader):
    """A single-process DataLoader whose position is saved by `fabric.save` and restored by `fabric.load`.

    Batches are drawn lazily in the main process (``num_workers=0``), so the saved position is exact.
    """

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
