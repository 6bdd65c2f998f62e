"""Every place where litgpt-mka touches litgpt's internals. Nothing else in the package does.

Tested with litgpt 0.5.13 only; any other version raises at the first import of litgpt, with the
way out (pin litgpt, or ``LITGPT_MKA_DISABLE=1``). The installed litgpt files are never edited:
each extension below is applied to the imported module object, once (idempotent).

``litgpt.config``  -- ``extend_config_module``
    ``Config`` is extended *in place* (the same class object, so every ``from litgpt.config import
    Config`` and every type hint that jsonargparse reads sees it) with dataclass fields derived from
    the registry (:mod:`litgpt_mka.attention.registry`):

    * ``attention_class_name: str = "CausalSelfAttention"`` -- the key of ``registry.VARIANTS``;
    * ``<config_field>: dict | None = None`` for every variant's dict that litgpt's ``Config`` lacks
      (today ``memorized_key_attention``; a variant registered later gets its field then).

    ``__post_init__`` is wrapped: litgpt's bare ``assert``s on user input are preceded by
    ``ValueError`` checks (:mod:`litgpt_mka.plugin.config_checks`), then the registry resolves the variant
    and lets it validate its dict. litgpt's own handling of its ``latent_attention`` field (which
    requires ``q_lora_rank`` and asserts) is replaced by :func:`_derive_latent_fields`, which derives the
    same attributes and lets ``q_lora_rank`` be unset. ``config.attention_class`` returns the module
    class ``Block`` builds, like litgpt's ``config.mlp_class``.

``litgpt.model``  -- ``extend_model_module``
    ``Block.__init__`` is wrapped: after litgpt built its attention module, the block holds an instance
    of ``config.attention_class`` (the litgpt-built one is replaced only when the class differs). While
    litgpt's ``__init__`` runs for a class other than its own MLA, ``latent_attention`` is hidden from it,
    so that it builds its cheap ``CausalSelfAttention`` rather than its MLA (which needs ``q_lora_rank``).

``litgpt.pretrain``  -- ``extend_pretrain_module``
    ``initialize_weights`` (GPT-NeoX init) scales the output projection of ``CausalSelfAttention``
    only; the replacement scales the output projection ``proj`` of every block's attention module,
    whatever its class, the same way, so that comparisons between variants are fair. Everything else is litgpt's code path.
"""

import dataclasses
import math
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from litgpt_mka.attention import registry
from litgpt_mka.plugin.config_checks import resolve_attention_variant, validate_litgpt_fields

TESTED_LITGPT_VERSION = "0.5.13"
_EXTENDED_MARK = "_litgpt_mka_extended"


def check_litgpt_version() -> None:
    try:
        installed = version("litgpt")
    except PackageNotFoundError:  # litgpt importable but without metadata (e.g. a source checkout)
        installed = "unknown"
    if installed != TESTED_LITGPT_VERSION:
        raise RuntimeError(
            f"litgpt-mka extends litgpt's internals and was tested with litgpt=={TESTED_LITGPT_VERSION} only;"
            f" the installed litgpt is {installed}. Install litgpt=={TESTED_LITGPT_VERSION}, or set"
            " LITGPT_MKA_DISABLE=1 to run litgpt without the plugin."
        )


def _first_time(owner: object) -> bool:
    if getattr(owner, _EXTENDED_MARK, False):
        return False
    setattr(owner, _EXTENDED_MARK, True)
    return True


# ----------------------------------------------------------------------------------------- litgpt.config
def new_config_fields(config_cls: type, entries: list) -> list[tuple[str, object, object]]:
    """(name, type, default) of the fields the registry needs and `config_cls` lacks."""
    present = {field.name for field in dataclasses.fields(config_cls)}
    wanted = [("attention_class_name", str, registry.DEFAULT_ATTENTION_CLASS)]
    wanted += [(entry.config_field, dict | None, None) for entry in entries if entry.config_field]
    return [field for field in dict.fromkeys(wanted) if field[0] not in present]


def _add_dataclass_fields(cls: type, new_fields: list) -> None:
    """Adds fields with defaults to an existing dataclass, in place, by letting `dataclass` re-process it."""
    if not new_fields:
        return
    for existing in dataclasses.fields(cls):
        # `dataclass` deleted the class attributes of `default_factory` fields; give every field back its
        # `Field` so that the second processing sees the same defaults as the first
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

    _add_dataclass_fields(config_cls, new_config_fields(config_cls, list(registry.VARIANTS.values())))
    registry.on_register(lambda entry: _add_dataclass_fields(config_cls, new_config_fields(config_cls, [entry])))
    config_cls.__post_init__ = __post_init__
    config_cls.attention_class = property(
        lambda self: registry.attention_class(self.attention_class_name),
        doc="The attention module class named by `attention_class_name` (see litgpt_mka.attention.registry).",
    )


# ------------------------------------------------------------------------------------------ litgpt.model
def extend_model_module(module: ModuleType) -> None:
    check_litgpt_version()
    block_cls = module.Block
    if not _first_time(block_cls):
        return
    litgpt_init = block_cls.__init__

    def __init__(self, config, block_idx: int) -> None:
        configured = config.attention_class
        latent_attention = config.latent_attention
        if configured is not module.MultiheadLatentAttention:
            # litgpt would build its own MLA first, which needs `q_lora_rank`; ours is built below
            config.latent_attention = None
        try:
            litgpt_init(self, config, block_idx)
        finally:
            config.latent_attention = latent_attention
        if type(self.attn) is not configured:
            self.attn = configured(config, block_idx)

    __init__.__doc__ = litgpt_init.__doc__
    block_cls.__init__ = __init__


# --------------------------------------------------------------------------------------- litgpt.pretrain
def extend_pretrain_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    module.initialize_weights = initialize_weights


def initialize_weights(fabric, model, n_layer: int, n_embd: int) -> None:
    """litgpt 0.5.13's GPT-NeoX initialisation (pretrain.py), applied to every attention class alike.

    Embeddings and linear layers: N(0, sqrt(2 / (5 n_embd))). Output projections of the attention
    module and of LLaMAMLP: N(0, 1 / (sqrt(n_embd) n_layer)). litgpt applies the second rule to
    `CausalSelfAttention` only, which would give MLA a different init than MHA.
    """
    import torch.nn as nn
    from lightning.fabric.strategies import FSDPStrategy
    from litgpt.model import LLaMAMLP
    from litgpt.utils import reset_parameters

    def init_weights(module, std):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)

    for mod in model.modules():
        if isinstance(mod, (nn.Embedding, nn.Linear)):
            mod.reset_parameters = partial(init_weights, mod, std=math.sqrt(2.0 / 5 / n_embd))

    # a separate loop because the projections below are `nn.Linear`s too
    scaled_projections = [mod.proj for mod in model.modules() if isinstance(mod, LLaMAMLP)]
    scaled_projections += [block.attn.proj for block in model.transformer.h]  # whatever the attention class
    for proj in scaled_projections:
        proj.reset_parameters = partial(init_weights, proj, std=(1 / math.sqrt(n_embd) / n_layer))

    if not isinstance(fabric.strategy, FSDPStrategy):
        reset_parameters(model)
