"""What the registry asks of an attention variant, and the checks every variant's config uses.

A variant is an attention module for litgpt's ``Block`` plus class-level answers, derived from a ``Config``
alone (no model needed): six methods,

==================================  ======================================================================
``attention_module()``              the ``nn.Module`` class ``Block`` builds (our classes: themselves)
``validate_config(config)``         ``ValueError`` for values the variant cannot run; writes the defaults
                                    of its config dict into the config
``kv_cache_elements_per_token(c)``  numbers cached per token per layer
``kv_cache_bytes_per_token(c, dt)`` bytes per token per layer for a cache of dtype ``dt``
``kv_cache_bytes_per_sequence(..)`` bytes per sequence per layer that do not grow with the context
``kv_cache_quantized_rows(c)``      the cached rows that ``kv_cache_quantization`` stores in fewer bits
                                    (empty: the variant keeps an unquantized cache and refuses the key)
==================================  ======================================================================

two methods that name and classify a config's model,

==================================  ======================================================================
``variant_label(c)``                the short name users know it by (MHA, GQA (2 key/value heads), MLA,
                                    MKA, FMKA, ...): error messages, reports, benchmark rows; default
                                    ``label``, None: the registry name
``is_mha(c)``                       every query head has its own key/value head (the reference of a
                                    comparison); default False
==================================  ======================================================================

and five capabilities, class attributes that the registry, ``finetune``, ``measure`` and ``compare`` read:

==================================  ======================================================================
``lora_target``                     ``"module:Class"`` of its LoRA form for ``litgpt finetune_lora``
                                    (:mod:`litgpt_mka.finetune.lora`); None: ``finetune_lora`` refuses it
``litgpt_equivalent``               it has the parameters of litgpt's ``CausalSelfAttention`` and
                                    computes its outputs: litgpt's adapters and ``convert_from_litgpt``
                                    may treat it as litgpt's class
``litgpt_counterpart``              the registry name of litgpt's class it replaces for the same config
                                    and weights (the decode benchmark's row beside it), or None
``sliding_window_layers``           its layers honour litgpt's ``sliding_window_size``, caching at most
                                    the window (the KV-cache accounting caps those layers)
``memory_routing``                  its layers route between memories with per-token weights: it then
                                    names them in ``memory_sources`` and measures them with
                                    ``routing_weights(model, idx)`` (``compare`` records them)
==================================  ======================================================================

The byte counts follow ``config.kv_cache_quantization`` (:mod:`litgpt_mka.attention.quantization`): its
rows cost :meth:`~litgpt_mka.attention.quantization.KVQuantization.bytes_per_row`, the rest the cache dtype.

and, on the module, litgpt's ``build_kv_cache(batch_size, max_seq_length, rope_cache_length, device,
dtype)``. Our attention classes inherit :class:`CachedAttention` (litgpt's ``forward`` and
``build_kv_cache`` signatures written once); litgpt's own classes are described by small
``AttentionVariant`` descriptors in :mod:`litgpt_mka.attention.litgpt_classes`.
"""

from typing import Any, NamedTuple

import torch
import torch.nn as nn

from litgpt_mka.attention.kv_cache import check_rope_cache_length, require_cache
from litgpt_mka.attention.quantization import FIELD as QUANTIZATION_FIELD
from litgpt_mka.attention.quantization import KVQuantization, check_row_width, parse_quantization


class QuantizedRows(NamedTuple):
    """Cached rows of one kind that a quantized cache stores in fewer bits: `buffers` buffers of `heads`
    rows of `width` numbers per token (GQA keys and values: width hs, heads nh_kv, buffers 2)."""

    name: str
    width: int
    heads: int
    buffers: int


def cache_quantization(config: Any) -> KVQuantization | None:
    """The config's parsed ``kv_cache_quantization`` (None: off, or a config without the field)."""
    return parse_quantization(getattr(config, QUANTIZATION_FIELD, None))


def check_keys(field: str, settings: dict, allowed: tuple[str, ...]) -> None:
    """Raises ``ValueError`` naming `field` when the dict `settings` has keys outside `allowed`."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"{field} has unknown key(s) {unknown}; allowed keys are {list(allowed)}")


def _replacements() -> str:
    """``litgpt's class -> ours`` for every registered variant that replaces one of litgpt's classes."""
    from litgpt_mka.attention import registry

    pairs = [(e.litgpt_counterpart, e.name) for e in registry.VARIANTS.values() if e.litgpt_counterpart]
    return ", ".join(f"{theirs} -> {ours}" for theirs, ours in pairs)


class AttentionVariant:
    """The class-level side of a variant (see the module docstring); mix it in before the module's base."""

    label: str | None = None
    lora_target: str | None = None
    litgpt_equivalent: bool = False
    litgpt_counterpart: str | None = None
    sliding_window_layers: bool = False
    memory_routing: bool = False

    @classmethod
    def variant_label(cls, config: Any) -> str | None:
        """The short name of `config`'s model: ``label`` unless the variant says more (None: the registry name)."""
        return cls.label

    @classmethod
    def is_mha(cls, config: Any) -> bool:
        """Whether `config`'s model is multi-head attention (every query head its own key/value head)."""
        return False

    @classmethod
    def attention_module(cls) -> type:
        return cls

    @classmethod
    def validate_config(cls, config: Any) -> None:
        """No settings of its own by default."""

    @classmethod
    def validate_quantization(cls, config: Any) -> None:
        """Raises ValueError for a ``kv_cache_quantization`` this variant's cache cannot store (see the module doc)."""
        quantization = cache_quantization(config)
        if quantization is None:
            return
        rows = cls.kv_cache_quantized_rows(config)
        if not rows:
            raise ValueError(
                f"{QUANTIZATION_FIELD}={getattr(config, QUANTIZATION_FIELD)!r} is not supported with"
                f" {cls.__name__} (litgpt's own cache); quantized caches are ours: set the attention_class_name"
                f" that replaces litgpt's class with the same parameters and outputs ({_replacements()})"
            )
        for row in rows:
            check_row_width(quantization, row.width, row.name)

    @classmethod
    def kv_cache_elements_per_token(cls, config: Any) -> int:
        raise NotImplementedError(f"{cls.__name__} must say how many numbers it caches per token and layer")

    @classmethod
    def kv_cache_quantized_rows(cls, config: Any) -> tuple[QuantizedRows, ...]:
        """None by default: the cache is never quantized."""
        return ()

    @classmethod
    def kv_cache_bytes_per_token(cls, config: Any, dtype: torch.dtype) -> int:
        """Every cached number in `dtype`, except the rows a ``kv_cache_quantization`` stores quantized."""
        elements = cls.kv_cache_elements_per_token(config)
        quantization = cache_quantization(config)
        if quantization is None:
            return elements * dtype.itemsize
        rows = cls.kv_cache_quantized_rows(config)
        quantized = sum(row.width * row.heads * row.buffers for row in rows)
        stored = sum(row.heads * row.buffers * quantization.bytes_per_row(row.width) for row in rows)
        return (elements - quantized) * dtype.itemsize + stored

    @classmethod
    def kv_cache_bytes_per_sequence(cls, config: Any, dtype: torch.dtype, max_seq_length: int | None = None) -> int:
        """The residual window of a quantized cache (exact rows and their int64 positions), else nothing.

        The window holds R rows, or `max_seq_length` for a shorter cache (None: the full window).
        """
        quantization = cache_quantization(config)
        if quantization is None or not quantization.residual:
            return 0
        R = quantization.residual if max_seq_length is None else min(quantization.residual, max_seq_length)
        rows = cls.kv_cache_quantized_rows(config)
        return sum(row.buffers * R * (row.heads * row.width * dtype.itemsize + torch.int64.itemsize) for row in rows)


def key_value_layout(config: Any) -> str:
    """MHA (``n_query_groups == n_head``), MQA (one key/value head) or GQA with its key/value head count."""
    if config.n_query_groups == config.n_head:
        return "MHA"
    return "MQA" if config.n_query_groups == 1 else f"GQA ({config.n_query_groups} key/value heads)"


class KeyValueHeads(AttentionVariant):
    """A variant whose model is MHA, GQA or MQA by ``n_query_groups`` (litgpt's ``CausalSelfAttention`` and ours
    with its parameters): labelled by its key/value layout, MHA when every query head has its own."""

    litgpt_equivalent = True

    @classmethod
    def variant_label(cls, config: Any) -> str:
        return key_value_layout(config)

    @classmethod
    def is_mha(cls, config: Any) -> bool:
        return config.n_query_groups == config.n_head


class CachedAttention(AttentionVariant):
    """litgpt's attention-module contract, written once for the variants that bring their own KV cache.

    A subclass sets ``cache_class`` (its :class:`~litgpt_mka.attention.kv_cache.KVCacheBase`) and
    ``rope_width_field`` (the config attribute giving the RoPE width its cache stores), and implements
    ``attend(x, cos, sin, mask, input_pos, input_pos_maxp1)`` and ``new_kv_cache(batch_size,
    max_seq_length, device, dtype)``. Values it derives from weights (:class:`WeightDerived` attributes) are
    forgotten whenever a state dict is loaded.
    """

    cache_class: type
    rope_width_field: str

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with `input_pos`, through the KV cache (``gpt.set_kv_cache()`` first).

        `mask` None means causal: over the chunk without a cache, by position against the cache.
        """
        if input_pos is not None:
            require_cache(self, self.cache_class)
        return self.attend(x, cos, sin, mask, input_pos, input_pos_maxp1)

    def build_kv_cache(
        self,
        batch_size: int,
        max_seq_length: int,
        rope_cache_length: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        width = getattr(self.config, self.rope_width_field)
        check_rope_cache_length(type(self).__name__, rope_cache_length, width, self.rope_width_field)
        return self.new_kv_cache(batch_size, max_seq_length, device, dtype)

    def clear_derived_weights(self) -> None:
        """Forgets every :class:`WeightDerived` value of the module (MLA's absorbed weights, MKA's ``(k(p), v(p))``);
        the next use derives them again. Needed after editing a weight through ``.data``, which bumps no version."""
        for value in vars(self).values():
            if isinstance(value, WeightDerived):
                value.clear()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        """Forgets every :class:`WeightDerived` value of the module first: a loaded state dict always replaces
        the weights it was derived from, and inference tensors (``litgpt generate`` builds the model under
        ``inference_mode``) have no version counter to tell."""
        self.clear_derived_weights()
        super()._load_from_state_dict(*args, **kwargs)


def tensor_state(t: torch.Tensor) -> tuple:
    """What changes when a tensor is replaced, moved, cast or updated in place (no version for inference tensors)."""
    return (t.data_ptr(), t.dtype, t.device, None if t.is_inference() else t._version)


def may_be_regathered() -> bool:
    """True in a process of a distributed job (a process group is initialised), where FSDP may own the weights.

    FSDP gathers a sharded weight into storage that it frees after the forward and allocates again for the next
    one, often at the same address, and copies into it with the version counter preserved
    (``torch.autograd._unsafe_preserve_version_counter``; FSDP2's ``foreach_all_gather_copy_out``): after an
    optimizer step on the shards, neither the data pointer nor the version tells the new values from the old.
    """
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class WeightDerived:
    """A value computed from weights once and reused until a weight changes (data pointer, dtype, device or
    in-place version: a load, an optimizer step, ``.to()``). Computed afresh, not cached, while autograd records
    gradients into the weights, inside ``torch.compile``, and in a process of a distributed job
    (:func:`may_be_regathered`). An edit through ``.data`` bumps no version: call the module's
    ``clear_derived_weights`` after one."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._value, self._key = None, None

    def get(self, compute: Any, *weights: torch.Tensor | None) -> Any:
        weights = tuple(w for w in weights if w is not None)
        recorded = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
        if torch.compiler.is_compiling() or recorded or may_be_regathered():
            return compute()
        key = tuple(tensor_state(w) for w in weights)
        if self._value is None or key != self._key:
            self._value, self._key = compute(), key
        return self._value
