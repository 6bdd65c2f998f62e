"""``litgpt.config``: ``Config`` gains the variants' fields and checks them (``extend_config_module``).

``Config`` is extended *in place* (the same class object, so every ``from litgpt.config import Config``
and every type hint that jsonargparse reads sees it) with dataclass fields derived from the registry
(:mod:`litgpt_mka.attention.registry`):

* ``attention_class_name: str = "CausalSelfAttention"`` -- the key of ``registry.VARIANTS``;
* ``<config_field>: dict | None = None`` for every variant's dict that litgpt's ``Config`` lacks
  (today ``memorized_key_attention``; a variant registered later gets its field then);
* ``kv_cache_quantization: str | dict | None = None`` (:mod:`litgpt_mka.attention.quantization`).

``__post_init__`` is wrapped: litgpt's bare ``assert``s on user input are preceded by ``ValueError`` checks
(:mod:`litgpt_mka.plugin.config_checks`), then the registry resolves the variant and lets it validate its
dict. litgpt's own handling of its ``latent_attention`` field (which requires ``q_lora_rank`` and asserts) is
hidden from it and replaced by :func:`_derive_latent_fields`, which derives the same attributes and lets
``q_lora_rank`` be unset. ``config.attention_class`` returns the module class ``Block`` builds, like litgpt's
``config.mlp_class``.
"""

import dataclasses
from types import ModuleType

from litgpt_mka.attention import registry
from litgpt_mka.attention.quantization import FIELD as QUANTIZATION_FIELD
from litgpt_mka.plugin.config_checks import resolve_attention_variant, validate_litgpt_fields
from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version


def new_config_fields(config_cls: type, entries: list) -> list[tuple[str, object, object]]:
    """(name, type, default) of the fields the registry needs and `config_cls` lacks."""
    present = {field.name for field in dataclasses.fields(config_cls)}
    wanted = [("attention_class_name", str, registry.DEFAULT_ATTENTION_CLASS)]
    wanted += [(QUANTIZATION_FIELD, str | dict | None, None)]  # litgpt_mka.attention.quantization
    wanted += [(entry.config_field, dict | None, None) for entry in entries if entry.config_field]
    return [field for field in dict.fromkeys(wanted) if field[0] not in present]


PLUGIN_FIELD_DEFAULTS: dict[str, object] = {}  # every field the plugin added to Config -> its default


def plugin_field_defaults() -> dict[str, object]:
    """Every field the plugin added to litgpt's ``Config`` -> its default (importing ``litgpt.config``, which adds
    them, first)."""
    import litgpt.config  # noqa: F401  (the plugin extends it on import)

    return dict(PLUGIN_FIELD_DEFAULTS)


def _add_config_fields(config_cls: type, entries: list) -> None:
    """Adds the fields `entries` need to litgpt's ``Config`` and to every subclass it already has (litgpt.lora's,
    litgpt.adapter's, ...: built from the class before the fields existed, as when the plugin is activated after
    those modules were imported)."""
    added = new_config_fields(config_cls, entries)
    PLUGIN_FIELD_DEFAULTS.update({name: default for name, _, default in added})
    _add_dataclass_fields(config_cls, added)
    for sub in _subclasses(config_cls):  # re-processed, they take the base's new fields from its dataclass fields
        if new_config_fields(sub, entries):
            _rebuild_dataclass(sub, [])


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return list(dict.fromkeys(found))


def _add_dataclass_fields(cls: type, new_fields: list) -> None:
    """Adds fields with defaults to an existing dataclass, in place, by letting `dataclass` re-process it."""
    if new_fields:
        _rebuild_dataclass(cls, new_fields)


def _rebuild_dataclass(cls: type, new_fields: list) -> None:
    """Re-processes the dataclass `cls` in place, with `new_fields` (name, type, default) added as its own."""
    own = cls.__dict__.get("__annotations__", {})
    for existing in dataclasses.fields(cls):
        # `dataclass` deleted the class attributes of `default_factory` fields; give every field of its own back its
        # `Field` so that the second processing sees the same defaults as the first (inherited ones come from the base)
        if existing.name in own:
            setattr(cls, existing.name, existing)
    for name, type_, default in new_fields:
        cls.__annotations__[name] = type_
        setattr(cls, name, dataclasses.field(default=default))
    for generated in ("__init__", "__repr__", "__eq__", "__match_args__"):
        if generated in cls.__dict__:
            delattr(cls, generated)
    dataclasses.dataclass(cls)


def _derive_latent_fields(config) -> None:
    """litgpt's `latent_attention` derivations (config.py, `__post_init__`), with `q_lora_rank` optional."""
    latent = config.latent_attention
    config.q_lora_rank = latent.get("q_lora_rank")
    config.kv_lora_rank = latent.get("kv_lora_rank")
    config.qk_rope_head_dim = latent.get("qk_rope_head_dim")
    config.qk_nope_head_dim = latent.get("qk_nope_head_dim")
    config.v_head_dim = latent.get("v_head_dim")
    if config.qk_rope_head_dim is not None and config.qk_nope_head_dim is not None:
        config.qk_head_dim = config.qk_rope_head_dim + config.qk_nope_head_dim
        config.rope_n_elem = config.qk_rope_head_dim


def extend_config_module(module: ModuleType) -> None:
    check_litgpt_version()
    config_cls = module.Config
    if not _first_time(config_cls):
        return
    litgpt_post_init = config_cls.__post_init__

    def __post_init__(self) -> None:
        validate_litgpt_fields(self)
        latent_attention, self.latent_attention = self.latent_attention, None
        try:
            litgpt_post_init(self)
        finally:
            self.latent_attention = latent_attention
        if latent_attention is not None:
            _derive_latent_fields(self)
        resolve_attention_variant(self)

    _add_config_fields(config_cls, list(registry.VARIANTS.values()))
    registry.on_register(lambda entry: _add_config_fields(config_cls, [entry]))
    config_cls.__post_init__ = __post_init__
    config_cls.attention_class = property(
        lambda self: registry.attention_class(self.attention_class_name),
        doc="The attention module class named by `attention_class_name` (see litgpt_mka.attention.registry).",
    )
