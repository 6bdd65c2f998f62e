"""Token-level scoring of a litgpt ``GPT``: the log-likelihood of continuations, in batches of full forwards.

Notation: ``B`` requests per batch, ``T`` the longest input of the batch, ``V`` the padded vocabulary,
``L`` the model's context window (``config.block_size``), ``n`` the continuation's tokens.

One request is a context and a continuation, both token ids. The model reads ``(context + continuation)``
without its last token, left-truncated to ``L`` tokens (as lm-eval's ``HFLM`` does for causal models); the
logits at the last ``n`` input positions predict the ``n`` continuation tokens:

    tokens   c0 c1 c2 | k0 k1 k2         (context | continuation)
    input    c0 c1 c2   k0 k1            (the last token is never read)
    predicts c1 c2 k0   k1 k2            (the last n = 3 predictions are scored)

A batch is right-padded to ``T`` with token 0: every variant is causal, so padding after a request's tokens
changes none of its logits. The two steps of a batch are apart (:func:`padded_forward`,
:func:`continuation_score`) so that one row can score several continuations that read the same input;
``LitgptLM`` (``lm.py``) batches through lm-eval's ``Collator``: longest input first (the first batch is the
largest, so an out-of-memory error comes at once), the results returned in the requests' order.

``--batch_size auto`` (:func:`largest_batch_that_fits`): the largest of ``max_batch_size``, its half, its quarter, ... whose
forward over ``(B, T)`` tokens, ``T`` the longest input, raises no out-of-memory error (halving from
``max_batch_size``, as lm-eval's ``HFLM`` does); on a CPU, where running out of memory does not raise, that is
``max_batch_size``.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoredWindow:
    """What the model reads for one request, and which of its predictions count."""

    input_ids: list[int]  # at most L tokens: (context + continuation)[-(L + 1):][:-1]
    continuation: list[int]  # the n tokens scored, predicted by the last n input positions


@dataclass(frozen=True)
class ContinuationScore:
    log_likelihood: float  # sum over the continuation of log p(token | everything before it)
    is_greedy: bool  # every continuation token is the argmax of its prediction


def scored_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> ScoredWindow:
    """The left-truncated input that scores `continuation` after `context` in a window of `max_length` tokens.

    Raises:
        ValueError: an empty context or continuation, or a continuation longer than `max_length`.
    """
    if not context:
        raise ValueError("context is empty: lm-eval prefixes an empty context with the EOS/BOS token first")
    if not continuation:
        raise ValueError(f"continuation is empty (context of {len(context)} tokens): there is nothing to score")
    if len(continuation) > max_length:
        raise ValueError(
            f"continuation of {len(continuation)} tokens does not fit the context window of {max_length} tokens"
        )
    tokens = [*context, *continuation][-(max_length + 1) :]
    return ScoredWindow(input_ids=tokens[:-1], continuation=list(continuation))


@torch.no_grad()
def padded_forward(model: torch.nn.Module, inputs: Sequence[Sequence[int]]) -> torch.Tensor:
    """One forward pass over `inputs`, right-padded with token 0 to the longest: the logits, shape (B, T, V)."""
    device = next(model.parameters()).device
    T = max(len(ids) for ids in inputs)
    idx = torch.zeros(len(inputs), T, dtype=torch.long)  # (B, T), right-padded with token 0
    for row, ids in enumerate(inputs):
        idx[row, : len(ids)] = torch.tensor(ids)
    return model(idx.to(device))  # (B, T, V)


def continuation_score(logits: torch.Tensor, end: int, continuation: Sequence[int]) -> ContinuationScore:
    """The score of the ``n`` tokens of `continuation`, predicted by positions ``end - n .. end - 1`` of one row's
    `logits` (T, V) (``end``: the row's input length); log-probabilities in float32 over the padded vocabulary."""
    n = len(continuation)
    log_probs = torch.log_softmax(logits[end - n : end].float(), dim=-1)  # (n, V)
    targets = torch.tensor(continuation, device=logits.device)  # (n,)
    picked = log_probs.gather(-1, targets[:, None]).squeeze(-1)  # (n,)
    greedy = bool((log_probs.argmax(dim=-1) == targets).all())
    return ContinuationScore(float(picked.sum()), greedy)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or a backend's ``RuntimeError`` that says it ran out of memory (MPS, XPU)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


@torch.no_grad()
def largest_batch_that_fits(model: torch.nn.Module, length: int, max_batch_size: int) -> int:
    """The largest ``B`` among ``max_batch_size, max_batch_size // 2, ..., 1`` whose forward over ``(B, length)``
    tokens does not run out of memory.

    Raises:
        torch.OutOfMemoryError: even one sequence of `length` tokens does not fit.
    """
    device = next(model.parameters()).device
    batch_size = max_batch_size
    while True:
        try:
            model(torch.zeros(batch_size, length, dtype=torch.long, device=device))  # (B, T) -> (B, T, V)
            return batch_size
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error) or batch_size == 1:
                raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        batch_size //= 2
