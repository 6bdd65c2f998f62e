"""Exact held-out evaluation of a ``litgpt pretrain`` checkpoint on its whole validation text.

Notation: ``N`` tokens in the validation stream, ``L`` = ``train.max_seq_length`` of the run, ``W``
windows, ``B`` windows per forward pass, ``V`` the padded vocabulary.

The windows are those of :func:`litgpt_mka.data.validation_windows`, rebuilt from what the checkpoint
itself records (``hyperparameters.yaml``: ``data.init_args.val_path``, ``tokenizer_dir``,
``train.max_seq_length``): ``W`` windows of ``L + 1`` tokens, stride ``L``, plus, when a tail is left,
one window aligned to the end of the stream, of which only the targets ``w[1:][new_from:]`` that no
earlier window scored are counted. So each of the ``N - 1`` targets is scored exactly once, with at
least one and at most ``L`` tokens of context, and no padding exists anywhere. The loss is the sum of
per-token cross-entropies (float32 logits, float64 sum) divided by ``N - 1``.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from litgpt_mka.checkpoint import load_config, read_hyperparameters
from litgpt_mka.data import load_or_tokenize, validation_windows

TEXT_CORPUS_CLASSES = ("litgpt_mka.data.TextCorpus", "TextCorpus")


@dataclass(frozen=True)
class HeldoutData:
    """The validation windows of a run."""

    windows: torch.Tensor  # (W, L + 1) token ids
    new_from: torch.Tensor  # (W,) index of the first target of each window that no earlier window scored
    val_path: Path
    max_seq_length: int  # L
    num_tokens: int  # N


@dataclass(frozen=True)
class HeldoutLoss:
    loss: float  # mean cross-entropy in nats per target token
    tokens: int  # targets scored (N - 1)


def heldout_data(checkpoint_dir: Path, val_path: Path | None = None) -> HeldoutData:
    """The validation windows of `val_path` (default: the run's own data.val_path) by the run's own settings
    (tokenizer, max_seq_length, token cache). The text is tokenized as TextCorpus does (each document without BOS,
    followed by EOS), also for a run that trained on another data module. A text shorter than one window
    (max_seq_length + 1 tokens) is one window of its own length: every target scored once, as for a longer text.

    Raises:
        ValueError: hyperparameters.yaml is not a mapping, no `val_path` given and the run did not train on a
            TextCorpus (its validation text is then unknown), or the run has no tokenizer_dir.
    """
    from litgpt.tokenizer import Tokenizer

    hparams = read_hyperparameters(checkpoint_dir)
    if not isinstance(hparams, dict):
        raise ValueError(f"{checkpoint_dir}/hyperparameters.yaml holds {hparams!r}, not the settings of a litgpt run")
    data = hparams.get("data") or {}
    text_corpus = isinstance(data, dict) and data.get("class_path") in TEXT_CORPUS_CLASSES
    if val_path is None and not text_corpus:
        raise ValueError(f"data={data!r} in {checkpoint_dir}/hyperparameters.yaml is not a TextCorpus; its validation"
                         " text is unknown: name one (val_path)")
    if hparams.get("tokenizer_dir") is None:
        raise ValueError(f"tokenizer_dir is not set in {checkpoint_dir}/hyperparameters.yaml")
    init_args = data["init_args"] if text_corpus else {}
    max_seq_length = (hparams.get("train") or {}).get("max_seq_length") or load_config(checkpoint_dir).block_size
    cache_dir = Path(init_args["cache_dir"]) if init_args.get("cache_dir") else None  # None: TextCorpus's default
    val_path = Path(init_args["val_path"] if val_path is None else val_path)
    tokens = load_or_tokenize(val_path, Tokenizer(hparams["tokenizer_dir"]), cache_dir, field_name="val_path")
    if 2 <= len(tokens) <= max_seq_length:  # shorter than one window (a short out-of-domain text): one window, whole
        max_seq_length = len(tokens) - 1
    windows, new_from = validation_windows(tokens, max_seq_length)
    return HeldoutData(windows, new_from, val_path, max_seq_length, len(tokens))


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, data: HeldoutData, batch_size: int) -> HeldoutLoss:
    """Mean cross-entropy over every validation target exactly once (see the module docstring).

    Raises:
        RuntimeError: the windows do not score N - 1 targets (the layout contract is broken).
    """
    device = next(model.parameters()).device
    L = data.max_seq_length
    positions = torch.arange(L, device=device)  # (L,)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for start in range(0, len(data.windows), batch_size):
        batch = data.windows[start : start + batch_size].to(device)  # (B, L + 1)
        logits = model(batch[:, :-1])  # (B, L, V)
        nll = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")  # (B L,)
        counted = positions[None, :] >= data.new_from[start : start + batch_size, None].to(device)  # (B, L)
        total += nll.view_as(counted)[counted].double().sum()
        count += int(counted.sum())
    if count != data.num_tokens - 1:
        raise RuntimeError(f"scored {count} targets, expected every target of the stream once: {data.num_tokens - 1}")
    return HeldoutLoss(loss=float(total / count), tokens=count)


# tokens of each window given to the cache in one chunk before cached_heldout_loss decodes one token at a time
PREFILL_TOKENS = 64


@torch.no_grad()
def cached_heldout_loss(model: torch.nn.Module, data: HeldoutData, batch_size: int,
                        prefill: int = PREFILL_TOKENS) -> HeldoutLoss:
    """:func:`heldout_loss` with every target predicted through the KV cache, as ``litgpt generate`` decodes.

    Each window's first P = `prefill` inputs go in as one chunk (``input_pos`` 0..P-1, generate's prompt), then
    every later input alone (``input_pos`` t, attending to positions <= t read back from the cache). The
    targets, their count and the sum are :func:`heldout_loss`'s, so with an unquantized cache the two agree up
    to float rounding (tested); with ``kv_cache_quantization`` set on the model's config, every query reads keys
    and values that went through the quantized cache: the loss of decoding from it (teacher-forced).

    Raises:
        RuntimeError: the windows do not score N - 1 targets (the layout contract is broken).
    """
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    L = data.max_seq_length
    P = max(1, min(prefill, L))
    positions = torch.arange(L, device=device)  # (L,)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for start in range(0, len(data.windows), batch_size):
            batch = data.windows[start : start + batch_size].to(device)  # (B, L + 1)
            model.set_kv_cache(batch_size=len(batch), max_seq_length=L, device=device, dtype=dtype)
            nll = torch.empty(batch.shape[0], L, dtype=torch.float32, device=device)  # (B, L)
            chunks = [(0, P)] + [(t, t + 1) for t in range(P, L)]
            for first, end in chunks:
                logits = model(batch[:, first:end], input_pos=positions[first:end], input_pos_maxp1=end)  # (B, T, V)
                nll[:, first:end] = F.cross_entropy(
                    logits.float().flatten(0, 1), batch[:, first + 1 : end + 1].flatten(), reduction="none"
                ).view(batch.shape[0], end - first)
            counted = positions[None, :] >= data.new_from[start : start + batch_size, None].to(device)  # (B, L)
            total += nll[counted].double().sum()
            count += int(counted.sum())
    finally:
        model.clear_kv_cache()
    if count != data.num_tokens - 1:
        raise RuntimeError(f"scored {count} targets, expected every target of the stream once: {data.num_tokens - 1}")
    return HeldoutLoss(loss=float(total / count), tokens=count)

