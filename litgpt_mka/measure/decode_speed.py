"""Decode throughput of a litgpt ``GPT`` with its KV cache, the way ``litgpt generate`` decodes.

One measurement (:func:`measure_decode_tokens_per_second`): allocate the cache and prefill a random
prompt of ``context_length`` tokens (:func:`prefill_random_prompt`, untimed; ``benchmarks/decode.py``
fills its caches with it too), decode ``warmup_tokens`` greedy tokens (untimed), then time ``new_tokens`` single-token steps (:func:`time_decode_steps`; each a
forward of (B, 1) tokens with ``input_pos`` (1,) and ``input_pos_maxp1``, then greedy argmax).
Throughput is ``batch_size / median step time``: the median keeps a step disturbed by another process
on a shared machine from moving the figure. Under ``torch.no_grad``; CUDA is synchronised around every
timed step.
"""

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn as nn


def measure_decode_tokens_per_second(
    model: nn.Module,
    batch_size: int,
    context_length: int,
    new_tokens: int,
    *,
    warmup_tokens: int = 2,
    prefill_chunk_size: int = 256,
    seed: int = 0,
) -> float:
    """Greedy cached decode speed in tokens per second (all batch rows together).

    Args:
        model: a litgpt ``GPT`` (any attention class); its parameters' device and dtype are used.
        batch_size: sequences decoded together.
        context_length: prompt tokens in the cache when decoding starts (the first timed token is
            decoded at position ``context_length + warmup_tokens``).
        new_tokens: timed decode steps.
        warmup_tokens: untimed decode steps before timing (allocator, caches, absorbed weights).
        prefill_chunk_size: prompt tokens per prefill forward.
        seed: seed of the random prompt.

    The model is put in eval mode; its KV cache is allocated for exactly the positions used and
    cleared again at the end (``model.clear_kv_cache()``).

    Raises:
        ValueError: non-positive sizes, or more positions than ``model.config.block_size``.
    """
    for name, value in (("batch_size", batch_size), ("context_length", context_length), ("new_tokens", new_tokens)):
        if value <= 0:
            raise ValueError(f"{name}={value} must be positive")
    positions = context_length + warmup_tokens + new_tokens
    check_fits_block_size(model, positions)
    model.max_seq_length = positions  # RoPE cache of exactly these positions, as litgpt generate sets it
    try:
        token = prefill_random_prompt(
            model, batch_size, context_length, max_seq_length=positions, chunk_size=prefill_chunk_size, seed=seed
        )
        step_seconds = time_decode_steps(model, token, context_length, warmup_tokens, new_tokens)
    finally:
        model.clear_kv_cache()
    return batch_size / statistics.median(step_seconds)


def check_fits_block_size(model: nn.Module, max_seq_length: int) -> None:
    """Raises ``ValueError`` when `max_seq_length` positions exceed ``model.config.block_size``."""
    if max_seq_length > model.config.block_size:
        raise ValueError(
            f"max_seq_length={max_seq_length} exceeds block_size={model.config.block_size};"
            " build the model with a larger block_size"
        )


def prefill_random_prompt(
    model: nn.Module,
    batch_size: int,
    context_length: int,
    max_seq_length: int,
    *,
    chunk_size: int = 256,
    seed: int = 0,
    copy_one_row: bool = False,
) -> torch.Tensor:
    """Allocates a KV cache of `max_seq_length` positions and writes a random prompt (B, context_length) into it.

    The one prefill routine of the decode measurements (``compare`` and ``benchmarks/decode.py``). Puts the
    model in eval mode; prefill runs in chunks of `chunk_size`, and ``lm_head`` sees only each chunk's last
    position (:func:`last_position_logits_only`). `copy_one_row`: prefill one row and copy
    its cache to the other batch rows (the values do not change the work of decoding; prefilling B rows costs
    B times more). An empty prompt (``context_length == 0``) leaves the cache empty.

    Returns the next input token (B, 1), the random token after the prompt, to decode from position
    `context_length`.

    Raises:
        ValueError: `max_seq_length` exceeds ``model.config.block_size``.
        RuntimeError: `copy_one_row` and a cache buffer without a leading batch dimension.
    """
    check_fits_block_size(model, max_seq_length)
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    model.eval()
    model.set_kv_cache(batch_size=batch_size, max_seq_length=max_seq_length, device=device, dtype=dtype)
    rows = 1 if copy_one_row else batch_size
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (rows, context_length + 1), generator=generator).to(device)
    with torch.no_grad(), last_position_logits_only(model):
        for start in range(0, context_length, chunk_size):
            end = min(start + chunk_size, context_length)
            model(prompt[:, start:end], torch.arange(start, end, device=device), input_pos_maxp1=end)
    if copy_one_row:
        copy_first_row_of_every_cache(model, batch_size)
    return prompt[:, -1:].expand(batch_size, 1).contiguous()  # (B, 1)


@contextlib.contextmanager
def last_position_logits_only(model: nn.Module) -> Iterator[None]:
    """While open, ``lm_head`` sees only the last position of each forward (a forward pre-hook), so a prompt's
    forward returns logits (B, 1, vocab): a prefill needs no others, and the output head would otherwise cost
    more than all the blocks of a small model."""
    hook = model.lm_head.register_forward_pre_hook(lambda _, args: (args[0][:, -1:],))
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def copy_first_row_of_every_cache(model: nn.Module, batch_size: int) -> None:
    """Copies batch row 0 of every KV-cache buffer to rows 1 .. `batch_size` - 1: a prompt prefilled on one row
    becomes every row's (and MKA's host-side record of its ring says so, so that decode steps at any batch take
    the O(1) append, :meth:`~litgpt_mka.attention.mka.MemorizedKeyCache.running_sums`, as after a batch prefill).

    Raises:
        RuntimeError: a cache buffer without a leading batch dimension.
    """
    for block in model.transformer.h:
        cache = block.attn.kv_cache
        for name, buffer in cache.named_buffers():
            if buffer.dim() == 0 or buffer.size(0) != batch_size:
                shape = tuple(buffer.shape)
                raise RuntimeError(f"{type(cache).__name__}.{name} {shape} has no leading batch dimension to copy")
            buffer[1:] = buffer[:1]  # (B, ...) <- row 0
        host_ring = getattr(cache, "host_ring", None)  # MKA: the host's record of the ring now holds every row
        if host_ring is not None and host_ring.rows is not None:
            host_ring.rows = batch_size


def time_decode_steps(
    model: nn.Module, token: torch.Tensor, position: int, warmup_tokens: int, new_tokens: int
) -> list[float]:
    """Greedy single-token decode from `position` on; the seconds of each step after `warmup_tokens` steps.

    Decoding at position ``p`` with ``input_pos_maxp1 = p + 1`` reads cache positions ``[0, p]`` only: the
    work of a run with a ``p``-token prompt. Decode from the end of what the cache holds: MKA's cache
    refuses to restart far behind its latest position (its ring of running sums is bounded).
    """
    device = token.device
    step_seconds = []
    with torch.no_grad():
        for p in range(position, position + warmup_tokens + new_tokens):
            start = _now(device)
            logits = model(token, torch.tensor([p], device=device), input_pos_maxp1=p + 1)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            if p >= position + warmup_tokens:
                step_seconds.append(_now(device) - start)
    return step_seconds


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
