"""The registry: one entry per attention variant, keyed by ``Config.attention_class_name``.

An entry names the variant, where its class lives (imported on first use, so that validating a name
costs no import), the ``Config`` dict it reads, if any, its LoRA form for ``litgpt finetune_lora``, its
short label (MHA, GQA, MLA, ...), litgpt's own class for the same model, if we replace one, and whether
its layers route between memories. Everything else is derived from it: the ``Config`` fields the plugin
adds (``litgpt_internals``), which dicts may be set together (``config_checks``), the validation and
defaults of each dict, the KV-cache accounting (``measure.kv_cache_size``), the ``Block``'s attention
module, the error messages' labels (``finetune.support``), the reference of a comparison (its MHA config)
and its routing weights (``compare``), the benchmark rows and the tests' parametrisation. No module
outside ``attention/`` decides anything by a variant's class name. What each class provides is
:class:`~litgpt_mka.attention.variant.AttentionVariant`.

Adding a variant = one module (a class inheriting ``AttentionVariant``) + one line in ``VARIANTS``.
"""

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable


@dataclass(frozen=True)
class Variant:
    """One registry entry.

    Attributes:
        name: the ``attention_class_name`` that selects it.
        target: ``"module:Class"`` of its ``AttentionVariant`` class (the attention module itself, or a
            descriptor of one of litgpt's classes, :mod:`litgpt_mka.attention.litgpt_classes`).
        config_field: the ``Config`` dict it reads (added to ``Config`` unless litgpt has it), or None.
        selected_by_config_field: a config that sets ``config_field`` and leaves ``attention_class_name``
            at its default selects this variant (litgpt's own rule for ``latent_attention``).
        lora_target: ``"module:Class"`` of its LoRA form, which ``litgpt finetune_lora`` builds
            (:mod:`litgpt_mka.finetune.lora`); None: no LoRA form, ``finetune_lora`` refuses the variant.
        litgpt_equivalent: it has the parameters of litgpt's ``CausalSelfAttention`` and computes the same
            outputs (only its decoding differs), so litgpt's adapter blocks may build their own attention for
            it and ``convert_from_litgpt`` converts it as litgpt's.
        label: the short name users know the variant by (MHA, MLA, ...), or a function of the config that
            returns it (the key/value layout, MKA's routing): error messages, reports, benchmark rows.
        litgpt_counterpart: the registry name of litgpt's own class that this one replaces for the same
            config and weights (the decode benchmark's row beside ours), or None.
        memory_routing: its layers route between memories with per-token weights
            (:func:`litgpt_mka.attention.mka.routing_weights`), which ``compare`` records.
    """

    name: str
    target: str
    config_field: str | None = None
    selected_by_config_field: bool = False
    lora_target: str | None = None
    litgpt_equivalent: bool = False
    label: str | Callable[[Any], str] | None = None
    litgpt_counterpart: str | None = None
    memory_routing: bool = False

    def label_for(self, config: Any) -> str:
        """The variant's short name for `config` (the registry name when the entry gives none)."""
        if callable(self.label):
            return self.label(config)
        return self.label or self.name

    def is_mha(self, config: Any) -> bool:
        """Whether `config` is multi-head attention: every query head has its own key/value head."""
        return self.label_for(config) == "MHA"

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


def key_value_layout(config: Any) -> str:
    """MHA (``n_query_groups == n_head``), MQA (one key/value head) or GQA with its key/value head count."""
    if config.n_query_groups == config.n_head:
        return "MHA"
    return "MQA" if config.n_query_groups == 1 else f"GQA ({config.n_query_groups} key/value heads)"


def memorized_key_routing(config: Any) -> str:
    """MKA (``routing: keys``, the default), FMKA (``keys_values``), or MKA with its other routing named."""
    routing = (config.memorized_key_attention or {}).get("routing", "keys")
    return {"keys": "MKA", "keys_values": "FMKA"}.get(routing, f"MKA (routing: {routing})")


DEFAULT_ATTENTION_CLASS = "CausalSelfAttention"
VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        # litgpt's own classes: MHA, GQA and MQA through `n_query_groups`; the stock MLA (expanded cache)
        Variant(
            "CausalSelfAttention",
            "litgpt_mka.attention.litgpt_classes:CausalSelfAttentionVariant",
            lora_target="litgpt.lora:CausalSelfAttention",
            litgpt_equivalent=True,
            label=key_value_layout,
        ),
        # litgpt's parameters and cache, decoding without repeating the cache per query head (grouped.py)
        Variant(
            "GroupedQueryAttention",
            "litgpt_mka.attention.grouped:GroupedQueryAttention",
            lora_target="litgpt_mka.finetune.lora:LoRAGroupedQueryAttention",
            litgpt_equivalent=True,
            label=key_value_layout,
            litgpt_counterpart="CausalSelfAttention",
        ),
        Variant(
            "LitgptMultiheadLatentAttention",
            "litgpt_mka.attention.litgpt_classes:StockLatentAttentionVariant",
            config_field="latent_attention",
            lora_target="litgpt_mka.finetune.lora:LoRALitgptMultiheadLatentAttention",
            label="litgpt's stock MLA",
        ),
        # DeepSeek-V2 multi-head latent attention with a compressed latent cache (mla.py)
        Variant(
            "MultiheadLatentAttention",
            "litgpt_mka.attention.mla:MultiheadLatentAttention",
            config_field="latent_attention",
            selected_by_config_field=True,
            lora_target="litgpt_mka.finetune.lora:LoRAMultiheadLatentAttention",
            label="MLA",
            litgpt_counterpart="LitgptMultiheadLatentAttention",
        ),
        # memorized-key attention, MKA / FMKA (mka.py)
        Variant(
            "MemorizedKeyAttention",
            "litgpt_mka.attention.mka:MemorizedKeyAttention",
            config_field="memorized_key_attention",
            lora_target="litgpt_mka.finetune.lora:LoRAMemorizedKeyAttention",
            label=memorized_key_routing,
            memory_routing=True,
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

