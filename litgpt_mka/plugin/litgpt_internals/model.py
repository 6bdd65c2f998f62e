"""``litgpt.model``: ``Block`` builds the configured attention, and two guards against a silently different one.

``extend_model_module``
    ``Block.__init__`` is wrapped: after litgpt built its attention module, the block holds an instance of
    ``config.attention_class`` (the litgpt-built one is replaced only when the class differs). While litgpt's
    ``__init__`` runs for a class other than its own MLA, ``latent_attention`` is hidden from it, so that it
    builds its cheap ``CausalSelfAttention`` rather than its MLA (which needs ``q_lora_rank``).

``GPT.set_kv_cache`` is wrapped: the quantized caches it built share one scratch workspace
(``attention.quantization.share_workspace``).

``guard_attention_variant`` (installed by ``extend_model_module``)
    Every ``Block`` subclass (litgpt's LoRA and adapter blocks, user code) must end up holding
    ``config.attention_class``, else ``ValueError``; a non-strict ``GPT.load_state_dict`` that would drop
    attention weights raises, one that leaves attention parameters unset warns. :func:`_guarded_block_init`
    is also what ``litgpt.lora``'s wrapped ``Block.__init__`` is made of (``finetune.py`` here).
"""

import warnings
from types import ModuleType

from litgpt_mka.attention import registry
from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version


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
    _share_quantized_workspace(module.GPT)
    guard_attention_variant(module)


def _share_quantized_workspace(gpt_cls: type) -> None:
    """``GPT.set_kv_cache``: after litgpt built every block's cache, the quantized caches share one scratch
    workspace (:func:`~litgpt_mka.attention.quantization.share_workspace`): one layer's scratch, not n_layer."""
    from litgpt_mka.attention.quantization import share_workspace

    litgpt_set_kv_cache = gpt_cls.set_kv_cache

    def set_kv_cache(self, *args, **kwargs) -> None:
        litgpt_set_kv_cache(self, *args, **kwargs)
        share_workspace(self)

    set_kv_cache.__doc__ = litgpt_set_kv_cache.__doc__
    gpt_cls.set_kv_cache = set_kv_cache


# --------------------------------------------------------------- guard: a built model honours its config
_GUARDED_MARK = "_litgpt_mka_guarded"
# parameter names that fine-tuning adds and a base checkpoint never holds
_FINETUNING_PARAMETER_MARKERS = ("lora_", "adapter_", "gating_factor")


def _check_block_attention(block) -> None:
    """Raises ValueError when a litgpt `Block` (subclass) holds another attention class than its config names."""
    config = getattr(block, "config", None)
    attn = getattr(block, "attn", None)
    if config is None or attn is None:
        return
    configured = config.attention_class
    if isinstance(attn, configured):
        return
    from litgpt.model import CausalSelfAttention

    if registry.lookup(config.attention_class_name).litgpt_equivalent and isinstance(attn, CausalSelfAttention):
        return  # litgpt's attention computes the same outputs (e.g. an adapter block for GroupedQueryAttention)
    from litgpt_mka.finetune.support import (
        ADAPTER_COMMANDS,
        COMMANDS_FOR_EVERY_VARIANT,
        check_adapter_supports,
        describe,
    )

    block_class = type(block)
    if block_class.__module__ in ADAPTER_COMMANDS:  # litgpt's adapters: the message names their commands
        check_adapter_supports(config, block_class.__module__)
    raise ValueError(
        f"{block_class.__module__}.{block_class.__qualname__} built {type(attn).__module__}.{type(attn).__qualname__}"
        f" for {describe(config)}, which needs {configured.__module__}.{configured.__qualname__}: it would be a"
        f" different model. This block class does not support the variant; use {COMMANDS_FOR_EVERY_VARIANT}."
    )


def _guarded_block_init(init):
    """Wraps a `Block` subclass's `__init__`: after the outermost one returns, the attention is checked."""
    if getattr(init, _GUARDED_MARK, False):
        return init

    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is __init__:  # the outermost __init__ of this instance: the block is complete
            _check_block_attention(self)

    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init
    setattr(__init__, _GUARDED_MARK, True)
    return __init__


def _guard_block_subclass(cls: type) -> None:
    if "__init__" in cls.__dict__:
        cls.__init__ = _guarded_block_init(cls.__dict__["__init__"])


def _subclasses(cls: type) -> list[type]:
    direct = cls.__subclasses__()
    return direct + [sub for child in direct for sub in _subclasses(child)]


def _check_non_strict_load(model, state_dict, result) -> None:
    """After a non-strict load: an error when attention weights were dropped, a warning when some were left out.

    Dropped (``ValueError``): checkpoint keys under ``.attn.`` that the model has no parameter for, e.g. MLA
    weights loaded into an MHA model: the model would silently run another attention than the checkpoint's.
    Left out (``UserWarning``): attention parameters of the model that a checkpoint holding attention
    weights lacks (other than those fine-tuning adds: ``lora_*``, ``adapter_*``, ``gating_factor``). They keep
    their initialisation, which is what warm-starting a variant from another one means (e.g. MKA from an MHA
    checkpoint with ``pretrain --initial_checkpoint_dir``: same ``qkv``/``proj``, new router and memory), so
    it is reported rather than refused.
    """
    from litgpt_mka.finetune.support import describe

    def base_attention_key(key: str) -> bool:
        return ".attn." in key and not any(marker in key for marker in _FINETUNING_PARAMETER_MARKERS)

    target = f"{type(model).__module__}.{type(model).__qualname__} ({describe(model.config)})"
    dropped = [key for key in result.unexpected_keys if ".attn." in key]
    if dropped:
        raise ValueError(
            f"loading this checkpoint into {target} with strict=False would drop {len(dropped)} attention weights"
            f" ({dropped[:4]}...): the model has no place for them, so it would run another attention than the"
            " checkpoint's. Build the model from the checkpoint's own model_config.yaml (its attention_class_name,"
            " latent_attention, memorized_key_attention, n_query_groups)."
        )
    has_attention = any(base_attention_key(key) for key in state_dict)  # not a LoRA- or adapter-only file
    left_out = [key for key in result.missing_keys if base_attention_key(key)]
    if has_attention and left_out:
        warnings.warn(
            f"the checkpoint loaded into {target} with strict=False has no values for {len(left_out)} attention"
            f" parameters ({left_out[:4]}...); they keep their initialisation. Expected only when starting a"
            " variant from another variant's checkpoint.",
            stacklevel=3,
        )


def guard_attention_variant(module: ModuleType) -> None:
    """Installs, on `litgpt.model`, the two guards against a silently different attention.

    * Every subclass of ``Block`` (``litgpt.lora``, ``adapter``, ``adapter_v2``, user code; defined before or
      after this call) is checked when its outermost ``__init__`` returns: its ``attn`` must be an instance of
      ``config.attention_class``, else ``ValueError`` naming the variant and the commands that support it.
    * ``GPT.load_state_dict(..., strict=False)`` (litgpt's fine-tuning scripts load that way) raises
      ``ValueError`` when it would drop the checkpoint's attention weights, and warns when it leaves some of
      the model's unset (see ``_check_non_strict_load``).
    """
    if not _first_time(module, _GUARDED_MARK):
        return
    block_cls, gpt_cls = module.Block, module.GPT

    def __init_subclass__(cls, **kwargs) -> None:
        super(block_cls, cls).__init_subclass__(**kwargs)
        _guard_block_subclass(cls)

    block_cls.__init_subclass__ = classmethod(__init_subclass__)
    for subclass in _subclasses(block_cls):  # imported before the plugin was activated
        _guard_block_subclass(subclass)

    litgpt_load_state_dict = gpt_cls.load_state_dict

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = litgpt_load_state_dict(self, state_dict, strict=strict, assign=assign)
        if not strict:
            _check_non_strict_load(self, state_dict, result)
        return result

    load_state_dict.__doc__ = litgpt_load_state_dict.__doc__
    gpt_cls.load_state_dict = load_state_dict
