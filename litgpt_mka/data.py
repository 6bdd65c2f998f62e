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
* Token file: each input is tokenized once, ``TOKENIZE_BATCH_DOCUMENTS`` documents per batch (one
  parallel ``encode_batch`` call for Hugging Face tokenizers) with a progress bar over the input bytes,
  into a flat binary file of uint16 token ids (uint32 for vocabularies over 65,536): 2 bytes per token,
  a quarter of int64. Training and validation memory-map it read-only and copy one window per sample
  (:class:`TokenWindows`), so resident memory does not grow with the corpus: the full TinyStories
  (~470M tokens) is a 0.9 GB file, read a page at a time.
* Cache: the file name hashes the input files' names and contents and the tokenizer (its full
  serialised model, EOS and BOS ids): a changed file or tokenizer re-tokenizes. It lives in ``cache_dir``
  when given; else in a ``.litgpt_mka_tokens`` folder beside the text, or, where that folder cannot be
  written (a read-only data folder), in ``$XDG_CACHE_HOME/litgpt_mka/tokens``. Writes are atomic.
"""

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from litgpt.data import DataModule
from litgpt.tokenizer import Tokenizer

from litgpt_mka.validation import positive_int

DOCUMENT_SEPARATOR = "<|endoftext|>"
CACHE_FOLDER = ".litgpt_mka_tokens"
TOKENIZE_BATCH_DOCUMENTS = 1024  # documents per encode_batch call and per write to the token file
_CACHE_FORMAT = "litgpt_mka.TextCorpus/v2"


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
    """Where token files are cached; default: .litgpt_mka_tokens beside the text, or $XDG_CACHE_HOME/litgpt_mka/tokens
    (~/.cache/...) where the text's folder is read-only."""

    tokenizer: Tokenizer | None = field(default=None, init=False, repr=False)
    batch_size: int = field(default=1, init=False, repr=False)
    max_seq_length: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()
        self.train_path, self.val_path = Path(self.train_path), Path(self.val_path)
        for name, path in (("train_path", self.train_path), ("val_path", self.val_path)):
            if not path.exists():
                raise FileNotFoundError(f"data.{name}={str(path)!r} does not exist; give a .txt file or a folder of them")
        self._train_tokens: np.memmap | None = None
        self._val_tokens: np.memmap | None = None

    def connect(self, tokenizer: Tokenizer | None = None, batch_size: int = 1, max_seq_length: int = -1) -> None:
        if tokenizer is None:
            raise ValueError("TextCorpus needs a tokenizer: pass --tokenizer_dir (e.g. ../shared/tokenizers/pythia)")
        positive_int("max_seq_length", max_seq_length)
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
        windows = _validation_view(self._val_tokens, self.max_seq_length)
        return DataLoader(windows, batch_size=self.batch_size, shuffle=False)

    def _tokens(self, name: str) -> np.ndarray:
        if self.tokenizer is None:
            raise RuntimeError("call TextCorpus.connect(tokenizer, batch_size, max_seq_length) first")
        return load_or_tokenize(getattr(self, name), self.tokenizer, self.cache_dir, field_name=f"data.{name}")


# ------------------------------------------------------------------------------------------ tokenization
def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "litgpt_mka" / "tokens"


def text_files(path: Path, field_name: str = "path") -> list[Path]:
    """`path` itself when it is a file, else the .txt files under the folder `path`, sorted.

    Raises:
        FileNotFoundError: nothing exists at `path`.
        ValueError: `path` is a folder without .txt files.
    """
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"{field_name}={str(path)!r} does not exist")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"{field_name}={str(path)!r} is a folder without .txt files")
    return files


def split_documents(text: str) -> list[str]:
    return list(_documents(text.splitlines()))


def _documents(lines: Iterable[str]) -> Iterator[str]:
    """The non-empty documents of `lines` (separated by lines holding only ``<|endoftext|>``), stripped."""
    current: list[str] = []
    for line in lines:
        if line.strip() == DOCUMENT_SEPARATOR:
            if document := "\n".join(current).strip():
                yield document
            current = []
        else:
            current.append(line)
    if document := "\n".join(current).strip():
        yield document


def _file_lines(file: Path, progress: tqdm) -> Iterator[str]:
    """The lines of `file` as ``str.splitlines`` of its whole text gives them, read one line at a time."""
    with open(file, "rb") as f:
        for raw in f:
            progress.update(len(raw))
            yield from raw.decode("utf-8").splitlines()  # a raw line ends at b"\n"; \r, \x0c, \u2028... split it further


def tokenizer_fingerprint(tokenizer: Tokenizer) -> bytes:
    processor = tokenizer.processor
    model = processor.to_str() if hasattr(processor, "to_str") else processor.serialized_model_proto()
    model = model.encode() if isinstance(model, str) else model
    return model + f"|eos={tokenizer.eos_id}|bos={tokenizer.bos_id}".encode()


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """uint16 when every token id fits (vocabularies up to 65,536), else uint32."""
    return np.dtype(np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def encode_documents(documents: list[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Each document encoded as ``tokenizer.encode(document, bos=False, eos=True)`` does, in one batch call.

    A Hugging Face tokenizer encodes the batch in parallel (``encode_batch``), then litgpt's rules apply:
    a leading BOS the processor added is dropped and EOS is appended unless already last.
    """
    if tokenizer.backend != "huggingface":
        return [tokenizer.encode(document, bos=False, eos=True).tolist() for document in documents]
    encoded = []
    for encoding in tokenizer.processor.encode_batch(documents):
        ids = encoding.ids
        if ids and ids[0] == tokenizer.bos_id:
            ids = ids[1:]
        encoded.append(ids if ids and ids[-1] == tokenizer.eos_id else ids + [tokenizer.eos_id])
    return encoded


class TokenFileWriter:
    """Appends token batches to a flat binary file of `dtype`, moved into place atomically on success.

    The file is written as ``<destination>.<pid>.tmp`` and renamed to `destination` when the ``with`` block
    ends without an error and holds at least one token; otherwise it is deleted. Memory: one batch.

    Raises:
        ValueError: a token id does not fit in `dtype`.
    """

    def __init__(self, destination: Path, dtype: np.dtype) -> None:
        self.destination, self.dtype = Path(destination), np.dtype(dtype)
        self.partial = self.destination.with_name(f"{self.destination.name}.{os.getpid()}.tmp")
        self.count = 0

    def __enter__(self) -> "TokenFileWriter":
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")
        return self

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(
                f"token ids in [{tokens.min()}, {tokens.max()}] do not fit the token file's {self.dtype.name}"
            )
        self._file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.count += tokens.size

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._file.close()
        if exc_type is None and self.count > 0:
            os.replace(self.partial, self.destination)
        else:
            self.partial.unlink(missing_ok=True)


def tokenize(files: list[Path], tokenizer: Tokenizer, destination: Path) -> int:
    """Every document of every file, encoded without BOS and followed by EOS, written as one token stream
    to `destination` (:class:`TokenFileWriter`), `TOKENIZE_BATCH_DOCUMENTS` documents at a time, with a
    progress bar over the input bytes. Returns the number of tokens (0: nothing was written)."""
    total_bytes = sum(file.stat().st_size for file in files)
    with (
        tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"Tokenizing {_describe(files)}") as progress,
        TokenFileWriter(destination, token_dtype(tokenizer)) as writer,
    ):
        batch: list[str] = []
        for file in files:
            for document in _documents(_file_lines(file, progress)):
                batch.append(document)
                if len(batch) == TOKENIZE_BATCH_DOCUMENTS:
                    _write_batch(writer, batch, tokenizer)
                    batch = []
        _write_batch(writer, batch, tokenizer)
    return writer.count


def _describe(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{len(files)} files in {files[0].parent}"


def _write_batch(writer: TokenFileWriter, documents: list[str], tokenizer: Tokenizer) -> None:
    if documents:
        writer.write(np.fromiter(chain.from_iterable(encode_documents(documents, tokenizer)), dtype=np.int64))


def token_file(path: Path, tokenizer: Tokenizer, cache_dir: Path | None = None, field_name: str = "path") -> Path:
    """Where the token stream of `path` for `tokenizer` is cached (the file may not exist yet).

    Its name hashes the cache format, the tokenizer (:func:`tokenizer_fingerprint`) and every input file's
    name and content (SHA-256, read in blocks). Its folder: `cache_dir` when given; else the one of
    :func:`cache_dirs` that already holds it, or else the first writable one.

    Raises:
        ValueError: no `cache_dir` is given and no folder of :func:`cache_dirs` can be written.
    """
    files = text_files(Path(path), field_name)
    key = hashlib.sha256(_CACHE_FORMAT.encode())
    key.update(tokenizer_fingerprint(tokenizer))
    for file in files:
        key.update(file.name.encode() + b"\0" + _file_digest(file))
    name = f"{key.hexdigest()}.{token_dtype(tokenizer).name}.bin"
    if cache_dir is not None:
        return Path(cache_dir) / name
    folders = cache_dirs(Path(path))
    existing = [folder / name for folder in folders if (folder / name).exists()]
    if existing:
        return existing[0]
    writable = next((folder for folder in folders if _writable(folder)), None)  # creates the first that can be
    if writable is None:
        raise ValueError(
            f"{field_name}={str(path)!r}: none of the token-cache folders {[str(f) for f in folders]} can be written;"
            " set data.cache_dir to a writable folder"
        )
    return writable / name


def cache_dirs(path: Path) -> list[Path]:
    """Default token-cache folders of a text path, in order of preference: ``CACHE_FOLDER`` beside the text
    (in the folder itself for a folder of .txt files), then :func:`default_cache_dir`."""
    text_dir = path if path.is_dir() else path.parent
    return [text_dir / CACHE_FOLDER, default_cache_dir()]


def _writable(folder: Path) -> bool:
    """Whether `folder` can be created and written, and its parent is not read-only by its mode: a folder
    without any write permission bit (``r-x``) is left alone even by a user who may write anyway (root)."""
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _file_digest(file: Path) -> bytes:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.digest()


def load_or_tokenize(
    path: Path, tokenizer: Tokenizer, cache_dir: Path | None = None, field_name: str = "path"
) -> np.memmap:
    """The token stream of `path`, memory-mapped read-only from its cache file (:func:`token_file`), made
    by :func:`tokenize` on a cache miss.

    Raises:
        FileNotFoundError: nothing exists at `path`.
        ValueError: `path` is a folder without .txt files, or holds no document.
    """
    files = text_files(Path(path), field_name)
    cached = token_file(path, tokenizer, cache_dir, field_name)
    if not cached.exists() and tokenize(files, tokenizer, cached) == 0:
        raise ValueError(f"{field_name}={str(path)!r} holds no text to train on (empty corpus)")
    return np.memmap(cached, dtype=token_dtype(tokenizer), mode="r")


# --------------------------------------------------------------------------------------------- windows
def _check_length(tokens: np.ndarray, max_seq_length: int, field_name: str) -> None:
    if len(tokens) < max_seq_length + 1:
        raise ValueError(
            f"{field_name} holds {len(tokens)} tokens, fewer than one window of max_seq_length + 1 ="
            f" {max_seq_length + 1}; give more text or a smaller --train.max_seq_length"
        )


class TokenWindows(Dataset):
    """The windows of a token stream, read lazily: a ``(W, L + 1)`` int64 view that copies one window per index.

    Window ``i < n_full`` starts at token ``i * L``; with ``tail=True`` one more window ends at the stream's
    last token. Indexing (an int or a 0-d tensor), ``len``, iteration, ``shape`` and ``numel`` behave as on
    the ``(W, L + 1)`` tensor that :meth:`to_tensor` builds.
    """

    def __init__(self, tokens: np.ndarray, max_seq_length: int, tail: bool = False) -> None:
        self.tokens, self.max_seq_length = tokens, max_seq_length
        self.n_full = (len(tokens) - 1) // max_seq_length
        self.has_tail = tail and self.n_full * max_seq_length + 1 < len(tokens)

    def start(self, index: int) -> int:
        return index * self.max_seq_length if index < self.n_full else len(self.tokens) - self.max_seq_length - 1

    def __len__(self) -> int:
        return self.n_full + self.has_tail

    def __getitem__(self, index: int | torch.Tensor) -> torch.Tensor:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} is out of range for {len(self)} windows")
        start = self.start(index)
        return torch.from_numpy(self.tokens[start : start + self.max_seq_length + 1].astype(np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[index] for index in range(len(self)))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.max_seq_length + 1))

    def numel(self) -> int:
        return self.shape.numel()

    def to_tensor(self) -> torch.Tensor:
        return torch.stack(list(self)) if len(self) else torch.zeros(self.shape, dtype=torch.int64)


def _train_windows(tokens: np.ndarray, max_seq_length: int, field_name: str = "data.train_path") -> TokenWindows:
    _check_length(tokens, max_seq_length, field_name)
    return TokenWindows(tokens, max_seq_length)


def _validation_view(tokens: np.ndarray, max_seq_length: int) -> TokenWindows:
    _check_length(tokens, max_seq_length, "data.val_path")
    return TokenWindows(tokens, max_seq_length, tail=True)


def validation_windows(tokens: np.ndarray, max_seq_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All validation windows (W, L + 1) and, per window, the index of its first target not seen before.

    Targets ``w[1:][new_from:]`` of each window are the ones no earlier window has; summing the loss over
    them counts every token of the stream after the first exactly once.
    """
    view = _validation_view(tokens, max_seq_length)
    new_from = torch.zeros(len(view), dtype=torch.int64)
    if view.has_tail:
        covered = view.n_full * max_seq_length + 1  # tokens covered by the full windows
        new_from[-1] = covered - (len(tokens) - max_seq_length - 1) - 1
    return view.to_tensor(), new_from


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
        return {"epoch": self.epoch, "served": self.served, "seed": self.seed, "world_size": _rank_and_world_size()[1]}

    def load_state_dict(self, state: dict) -> None:
        """Restores the position; refuses another data seed, or another number of processes (``served`` counts this
        rank's windows of a ``rank::world_size`` share: at another world size it would point elsewhere)."""
        if state["seed"] != self.seed:
            raise ValueError(f"data.seed={self.seed} differs from the checkpoint's seed {state['seed']}")
        world_size = _rank_and_world_size()[1]
        if state.get("world_size", world_size) != world_size:  # checkpoints before it was saved: not checked
            raise ValueError(
                f"the checkpoint's data position was saved by {state['world_size']} processes, and this run has"
                f" {world_size}: resume with devices x num_nodes = {state['world_size']}, or start the run afresh"
            )
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
