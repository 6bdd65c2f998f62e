"""The registry: one entry per attention variant, keyed by ``Config.attention_class_name``.

An entry names the variant, where its class lives (imported on first use, so that validating a name
costs no import), and the ``Config`` dict it reads, if any: what the plugin must know before any variant
module is imported. Everything else a variant knows about itself is on its class
(:class:`~litgpt_mka.attention.variant.AttentionVariant`): its label (MHA, GQA, MLA, ...), whether it is MHA,
its LoRA form, whether it computes litgpt's ``CausalSelfAttention``, which of litgpt's classes it replaces,
whether its layers keep a sliding window, whether they route between memories; an entry reads those from its
class. From the registry and the classes come the ``Config`` fields the plugin adds (``litgpt_internals``),
which dicts may be set together (``config_checks``), the validation and defaults of each dict, the KV-cache
accounting (``measure.kv_cache_size``), the ``Block``'s attention module, the error messages' labels
(``finetune.support``), the reference of a comparison (its MHA config) and its routing weights (``compare``),
the benchmark rows and the tests' parametrisation. No module outside ``attention/`` decides anything by a
variant's class name.

Adding a variant = one module (a class inheriting ``AttentionVariant``) + one line in ``VARIANTS``.
"""

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable


@dataclass(frozen=True)
class Variant:
    """One registry entry; what the variant's class declares is read through it (see the module docstring).

    Attributes:
        name: the ``attention_class_name`` that selects it.
        target: ``"module:Class"`` of its ``AttentionVariant`` class (the attention module itself, or a
            descriptor of one of litgpt's classes, :mod:`litgpt_mka.attention.litgpt_classes`).
        config_field: the ``Config`` dict it reads (added to ``Config`` unless litgpt has it), or None.
        selected_by_config_field: a config that sets ``config_field`` and leaves ``attention_class_name``
            at its default selects this variant (litgpt's own rule for ``latent_attention``).
    """

    name: str
    target: str
    config_field: str | None = None
    selected_by_config_field: bool = False

    def label_for(self, config: Any) -> str:
        """The variant's short name for `config` (its class's ``variant_label``; the registry name if none)."""
        return self.load().variant_label(config) or self.name

    def is_mha(self, config: Any) -> bool:
        """Whether `config` is multi-head attention: every query head has its own key/value head."""
        return self.load().is_mha(config)

    @property
    def lora_target(self) -> str | None:
        """``"module:Class"`` of its LoRA form for ``litgpt finetune_lora``; None: none."""
        return self.load().lora_target

    @property
    def litgpt_equivalent(self) -> bool:
        """It has the parameters of litgpt's ``CausalSelfAttention`` and computes the same outputs (only its
        decoding differs): litgpt's adapter blocks may build their own attention for it, and
        ``convert_from_litgpt`` converts it as litgpt's."""
        return self.load().litgpt_equivalent

    @property
    def litgpt_counterpart(self) -> str | None:
        """The registry name of litgpt's class it replaces for the same config and weights, or None."""
        return self.load().litgpt_counterpart

    @property
    def memory_routing(self) -> bool:
        """Its layers route between memories with per-token weights (its class's ``routing_weights``)."""
        return self.load().memory_routing

    def load(self) -> Any:
        """The variant's ``AttentionVariant`` class (imports its module)."""
        return _import(self.target)

    def load_lora(self) -> type:
        """The variant's LoRA attention class.

        Raises:
            ValueError: the variant has no LoRA form (the message lists the variants that have one).
        """
        if self.lora_target is None:
            with_lora = sorted(name for name, entry in VARIANTS.items() if entry.lora_target)
            raise ValueError(
                f"attention_class_name={self.name!r} has no LoRA form for `litgpt finetune_lora`; LoRA forms"
                f" exist for {with_lora} (see litgpt_mka/finetune/lora.py)"
            )
        return _import(self.lora_target)


def _import(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(import_module(module_name), attribute)


DEFAULT_ATTENTION_CLASS = "CausalSelfAttention"
VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        # litgpt's own classes: MHA, GQA and MQA through `n_query_groups`; the stock MLA (expanded cache)
        Variant("CausalSelfAttention", "litgpt_mka.attention.litgpt_classes:CausalSelfAttentionVariant"),
        # litgpt's parameters and cache, decoding without repeating the cache per query head (grouped.py)
        Variant("GroupedQueryAttention", "litgpt_mka.attention.grouped:GroupedQueryAttention"),
        Variant(
            "LitgptMultiheadLatentAttention",
            "litgpt_mka.attention.litgpt_classes:StockLatentAttentionVariant",
            config_field="latent_attention",
        ),
        # DeepSeek-V2 multi-head latent attention with a compressed latent cache (mla.py)
        Variant(
            "MultiheadLatentAttention",
            "litgpt_mka.attention.mla:MultiheadLatentAttention",
            config_field="latent_attention",
            selected_by_config_field=True,
        ),
        # memorized-key attention, MKA / FMKA (mka.py)
        Variant(
            "MemorizedKeyAttention",
            "litgpt_mka.attention.mka:MemorizedKeyAttention",
            config_field="memorized_key_attention",
        ),
    )
}

_on_register: list[Callable[[Variant], None]] = []


def lookup(name: object) -> Variant:
    """The entry registered under `name`.

    Raises:
        ValueError: `name` is not registered (the message lists the registered names).
    """
    if name not in VARIANTS:
        raise ValueError(
            f"attention_class_name={name!r} is not a known attention class; choose one of {sorted(VARIANTS)}"
        )
    return VARIANTS[name]  # type: ignore[index]


def entry_of(config: Any) -> Variant:
    """The entry of ``config.attention_class_name`` (litgpt's default class for a config without the field)."""
    return lookup(getattr(config, "attention_class_name", DEFAULT_ATTENTION_CLASS))


def variant_class(config: Any) -> Any:
    """The ``AttentionVariant`` class of ``config.attention_class_name``."""
    return entry_of(config).load()


def attention_class(name: str) -> type:
    """The ``nn.Module`` class ``Block`` builds for `name`."""
    return lookup(name).load().attention_module()


def quantizable_attention_class(config: Any) -> str:
    """The attention class that holds `config`'s weights in a cache ``kv_cache_quantization`` can quantize: the
    config's own class, or ours that replaces litgpt's (the entry naming it ``litgpt_counterpart``: the same
    parameters and outputs, e.g. MHA's ``CausalSelfAttention`` -> ``GroupedQueryAttention``).

    Raises:
        ValueError: neither the class nor a replacement of it quantizes its cache.
    """
    entry = entry_of(config)
    if entry.load().kv_cache_quantized_rows(config):
        return entry.name
    for other in VARIANTS.values():
        if other.litgpt_counterpart == entry.name:
            return other.name
    raise ValueError(
        f"attention_class_name={entry.name!r} keeps an unquantized cache and no registered class replaces it"
        " with the same weights; kv_cache_quantization needs one of"
        f" {sorted(name for name, e in VARIANTS.items() if e.load().kv_cache_quantized_rows(config))}"
    )


def variant_of_module(module_class: type) -> Any:
    """The ``AttentionVariant`` class whose attention module is `module_class` (for models built by hand).

    Raises:
        TypeError: no registered variant builds `module_class`.
    """
    for entry in VARIANTS.values():
        if entry.load().attention_module() is module_class:
            return entry.load()
    raise TypeError(f"{module_class.__name__} is not the attention module of a registered variant; register it")


def config_fields() -> list[str]:
    """Every ``Config`` dict a registered variant reads, in registration order."""
    return list(dict.fromkeys(entry.config_field for entry in VARIANTS.values() if entry.config_field))


def readers_of(config_field: str) -> list[str]:
    """Names of the variants that read `config_field`."""
    return [entry.name for entry in VARIANTS.values() if entry.config_field == config_field]


def register(entry: Variant) -> None:
    """Adds `entry` (at run time, e.g. in a test; the package's own variants are listed in ``VARIANTS``).

    The plugin adds its ``config_field`` to ``Config`` if litgpt's ``Config`` is already extended.

    Raises:
        ValueError: the name is taken.
    """
    if entry.name in VARIANTS:
        raise ValueError(f"attention_class_name={entry.name!r} is already registered")
    VARIANTS[entry.name] = entry
    for callback in _on_register:
        callback(entry)


def on_register(callback: Callable[[Variant], None]) -> None:
    """Calls `callback(entry)` for every later :func:`register` (the plugin adds Config fields this way)."""
    _on_register.append(callback)

