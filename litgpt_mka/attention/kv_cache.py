"""litgpt's KV-cache contract, written once: the base of every cache in this package.

litgpt's attention modules call their cache as ``cache(input_pos, *new, input_pos_maxp1)``:

* ``input_pos`` holds the positions of the chunk's T tokens, ``(T,)`` for every batch row or
  ``(B, T)`` per row (rows may sit at different positions, and may rewrite earlier ones);
* the chunk's batch ``bs`` may be smaller than the allocated batch: the first ``bs`` rows are used;
* ``input_pos_maxp1`` (optional) is ``max(input_pos) + 1``: the cache returns its first
  ``input_pos_maxp1`` positions only, and no check needs to read ``input_pos``'s values;
* buffers that hold activations follow the activation dtype (litgpt's ``KVCache`` does this for AMP);
* ``reset_parameters()`` clears the cache (``litgpt generate`` calls it between samples).

:class:`KVCacheBase` implements these rules once, with one set of error messages:
:meth:`~KVCacheBase.check_chunk` (batch, chunk length, positions; from ``input_pos_maxp1`` when given, else
by reading ``input_pos`` where that costs no synchronisation, :func:`host_reads_are_free`), :meth:`~KVCacheBase.follow_dtype`,
:meth:`~KVCacheBase.reset_parameters`, :func:`write_positions` (the in-place write along the time
dimension for both ``input_pos`` layouts) and :func:`causal_mask` (the mask a module uses when its
caller passes none, right at any offset).
"""

import torch
import torch.nn as nn


def causal_mask(input_pos: torch.Tensor, S: int) -> torch.Tensor:
    """Boolean mask (1 or B, 1, T, S): the query at position p sees cache positions <= p."""
    mask = torch.arange(S, device=input_pos.device) <= input_pos.unsqueeze(-1)  # (T, S) or (B, T, S)
    return mask.unsqueeze(-3) if mask.dim() == 3 else mask[None, None]  # (B, 1, T, S) or (1, 1, T, S)


def decode_length(cache: "KVCacheBase", input_pos_maxp1: int | None) -> int:
    """Positions a cached chunk reads: ``input_pos_maxp1``, or the whole cache (litgpt's rule without it)."""
    return cache.max_seq_length if input_pos_maxp1 is None else input_pos_maxp1


def write_positions(buffer: torch.Tensor, dim: int, input_pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``buffer[b, ..., input_pos[b, t], ...] = new[b, ..., t, ...]`` along the time dimension ``dim``; in place.

    ``buffer`` has the batch rows of ``new`` (slice it first); ``input_pos`` is (T,) or (bs, T). Returns ``buffer``.
    """
    shape = [1] * new.dim()
    shape[0], shape[dim] = new.size(0), new.size(dim)
    index = input_pos.expand(new.size(0), -1).reshape(shape).expand_as(new)  # (T,) | (bs, T) -> new's shape
    return buffer.scatter_(dim, index, new.to(buffer.dtype))


def host_reads_are_free(t: torch.Tensor) -> bool:
    """Whether reading `t`'s values on the host costs no synchronisation: a CPU tensor, outside ``torch.compile``.

    Checks that need the values of ``input_pos`` read them only then; on an accelerator the host decides from
    shapes and ``input_pos_maxp1`` alone (a read would wait for every queued kernel). Tests replace this function
    to make a CPU run take the accelerator's decisions.
    """
    return not torch.compiler.is_compiling() and t.device.type == "cpu"


class KVCacheBase(nn.Module):
    """Batch, position and dtype rules of litgpt's KV-cache contract (see the module docstring).

    Subclasses create their buffers with :meth:`add_buffer`, list in ``activation_buffers`` the ones that
    follow the activation dtype, and call :meth:`check_chunk` and :meth:`follow_dtype` at the top of ``forward``.

    Raises (from :meth:`check_chunk`):
        ValueError: more batch rows than allocated, a batched ``input_pos`` whose rows differ from the
            chunk's, a chunk longer than the cache, or a position outside ``[0, max_seq_length)``.
    """

    activation_buffers: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int,
        max_seq_length: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._placement = {"device": device, "dtype": dtype}

    def add_buffer(self, name: str, *shape: int, dtype: torch.dtype | None = None, fill: float = 0.0) -> None:
        """A non-persistent buffer of `shape` on the cache's device, in `dtype` (default: the cache dtype)."""
        placement = {**self._placement, **({"dtype": dtype} if dtype is not None else {})}
        self.register_buffer(name, torch.full(shape, fill, **placement), persistent=False)

    def add_sequence(self, name: str, *shape: int, quantization=None) -> None:
        """A cached sequence of `shape` (time at dim -2): a plain buffer (``quantization`` None, see
        :meth:`add_buffer`) or the :class:`~litgpt_mka.attention.quantization.QuantizedSequence` of a
        ``KVQuantization``."""
        if quantization is None:
            self.add_buffer(name, *shape)
        else:
            setattr(self, name, quantization.new_sequence(name, shape, **self._placement))

    def update(
        self, name: str, input_pos: torch.Tensor, new: torch.Tensor, input_pos_maxp1: int | None
    ) -> torch.Tensor:
        """Writes `new` (bs, ..., T, F) into the sequence `name` at `input_pos`; returns its first ``bs`` rows and
        ``input_pos_maxp1`` positions (all when None), dequantized if the sequence is quantized."""
        store = getattr(self, name)
        if isinstance(store, nn.Module):
            return store.update(input_pos, new, input_pos_maxp1)
        self._write(name, input_pos, new)
        return store[: new.size(0), ..., :input_pos_maxp1, :]

    def append(self, input_pos: torch.Tensor, input_pos_maxp1: int | None, **chunks: torch.Tensor) -> None:
        """Checks the chunk and writes each sequence's rows (bs, ..., T, F) at `input_pos`, reading nothing back:
        for a decode step that attends to the codes (``quantization.decode_attention``)."""
        first = next(iter(chunks.values()))
        self.check_chunk(input_pos, first.size(0), first.size(-2), input_pos_maxp1)
        self.follow_dtype(first.dtype)
        for name, new in chunks.items():
            self._write(name, input_pos, new)

    def _write(self, name: str, input_pos: torch.Tensor, new: torch.Tensor) -> None:
        """Writes `new` (bs, ..., T, F) into the sequence `name` (a buffer or a quantized sequence) at `input_pos`."""
        store = getattr(self, name)
        if isinstance(store, nn.Module):
            store.write(input_pos, new)
        else:
            write_positions(store[: new.size(0)], new.dim() - 2, input_pos, new)

    def check_chunk(self, input_pos: torch.Tensor, bs: int, T: int, input_pos_maxp1: int | None) -> None:
        if bs > self.batch_size:
            raise ValueError(
                f"batch size {bs} exceeds the KV cache's batch size {self.batch_size};"
                f" call `model.set_kv_cache(batch_size={bs})`"
            )
        if input_pos.dim() == 2 and input_pos.size(0) != bs:
            raise ValueError(f"input_pos has {input_pos.size(0)} rows, the chunk has batch size {bs}; they must match")
        if T > self.max_seq_length:
            raise ValueError(f"a chunk of {T} positions does not fit a KV cache of {self.max_seq_length} positions")
        if input_pos_maxp1 is not None:  # host-side: the caller's integer, no read
            first, last = 0, input_pos_maxp1 - 1
        elif host_reads_are_free(input_pos) and input_pos.numel():
            first, last = int(input_pos.min()), int(input_pos.max())
        else:
            return  # an accelerator without input_pos_maxp1: the index kernels bound-check (litgpt's mask lookup first)
        if first < 0 or last >= self.max_seq_length:
            raise ValueError(
                f"positions {first} to {last} are outside the KV cache's [0, {self.max_seq_length});"
                f" call `model.set_kv_cache(..., max_seq_length={last + 1})` or larger"
            )

    def follow_dtype(self, dtype: torch.dtype) -> None:
        """Moves the buffers in ``activation_buffers`` to the activation `dtype` (AMP), as litgpt's KVCache does."""
        for name in self.activation_buffers:
            buffer = getattr(self, name)  # a quantized sequence (a module) keeps its codes and follows on update
            if isinstance(buffer, torch.Tensor) and buffer.dtype != dtype:
                setattr(self, name, buffer.to(dtype))

    def reset_parameters(self) -> None:
        """Clears every buffer (``litgpt generate`` calls this between samples)."""
        for buffer in self.buffers():
            nn.init.zeros_(buffer)
        for store in self.children():
            store.reset()  # quantized sequences: their ring positions back to empty


def check_rope_cache_length(variant: str, rope_cache_length: int | None, expected: int, field: str) -> None:
    """``build_kv_cache``'s `rope_cache_length` must be None or the width the variant ropes (its `field`)."""
    if rope_cache_length is not None and rope_cache_length != expected:
        raise ValueError(
            f"rope_cache_length={rope_cache_length} must equal {field}={expected} for {variant} (or be None)"
        )


def require_cache(module: nn.Module, cache_class: type) -> KVCacheBase:
    """The module's cache, or the ``TypeError`` litgpt raises when a cached forward finds none."""
    if not isinstance(module.kv_cache, cache_class):
        raise TypeError("You need to call `gpt.set_kv_cache()`")
    return module.kv_cache


__all__ = [
    "KVCacheBase",
    "causal_mask",
    "decode_length",
    "check_rope_cache_length",
    "host_reads_are_free",
    "require_cache",
    "write_positions",
]
