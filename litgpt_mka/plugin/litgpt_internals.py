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
      (today ``memorized_key_attention``; a variant registered later gets its field then);
    * ``kv_cache_quantization: str | dict | None = None`` (:mod:`litgpt_mka.attention.quantization`).

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

``litgpt.utils``  -- ``extend_utils_module``
    ``get_default_supported_precision`` (bf16 on every machine without CUDA) is replaced by
    :func:`litgpt_mka.precision.machine_default_precision`: ``32-true`` on CPUs that emulate bf16, litgpt's
    answer everywhere else. Every litgpt command that fills an unset ``--precision`` (pretrain, finetune_*,
    generate*, chat, serve, ``litgpt.api``) imports the function by name from ``litgpt.utils``, so replacing
    it there right after ``litgpt.utils`` executes covers them all; bindings made before the plugin was
    activated are replaced too. ``instantiate_torch_optimizer`` refuses keys beside ``class_path`` and
    ``init_args`` (``--optimizer.lr 3e-3`` on litgpt 0.5.13's command line adds one, which litgpt ignores).

``litgpt.pretrain``  -- ``extend_pretrain_module``
    ``initialize_weights`` (GPT-NeoX init) scales the output projection of ``CausalSelfAttention``
    only; wrapped, litgpt's own function scales the output projection ``proj`` of every block's attention
    module, whatever its class, the same way, so that comparisons between variants are fair. ``main`` is wrapped
    (:func:`_run_on_the_machine`): on the CPU it warns when bf16 is asked of a CPU that emulates it, and it
    skips litgpt's ``torch.compile(model)`` (``LITGPT_MKA_CPU_COMPILE=1`` keeps it). Everything else is
    litgpt's code path.

``litgpt.finetune.{full,lora,lora_legacy,adapter,adapter_v2}``  -- ``extend_finetune_module``
    ``main`` is wrapped to warn when bf16 is asked of a CPU that emulates it.

``litgpt.model`` (also)  -- ``guard_attention_variant``
    Every ``Block`` subclass (litgpt's LoRA and adapter blocks, user code) must end up holding
    ``config.attention_class``, else ``ValueError``; a non-strict ``GPT.load_state_dict`` that would drop
    attention weights raises, one that leaves attention parameters unset warns.

``litgpt.lora`` -- ``extend_lora_module``; ``litgpt.adapter`` -- ``extend_adapter_module``;
``litgpt.scripts.convert_lit_checkpoint`` -- ``extend_convert_lit_checkpoint_module``
    LoRA builds the LoRA form of every variant (:mod:`litgpt_mka.finetune.lora`); the adapters' ``Config``
    refuses MLA and MKA; ``convert_from_litgpt`` refuses variants without a Hugging Face counterpart
    before writing (:mod:`litgpt_mka.finetune.support`).
"""

import dataclasses
import functools
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from litgpt_mka.precision import machine_default_precision, warn_if_emulated_bf16
from litgpt_mka.attention import registry
from litgpt_mka.attention.quantization import FIELD as QUANTIZATION_FIELD
from litgpt_mka.plugin.config_checks import resolve_attention_variant, validate_litgpt_fields, validate_optimizer

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


def _first_time(owner: object, mark: str = _EXTENDED_MARK) -> bool:
    """True once per module or class: sets `mark` on `owner` itself (a subclass does not inherit the answer)."""
    if vars(owner).get(mark, False):
        return False
    setattr(owner, mark, True)
    return True


# ----------------------------------------------------------------------------------------- litgpt.config
def new_config_fields(config_cls: type, entries: list) -> list[tuple[str, object, object]]:
    """(name, type, default) of the fields the registry needs and `config_cls` lacks."""
    present = {field.name for field in dataclasses.fields(config_cls)}
    wanted = [("attention_class_name", str, registry.DEFAULT_ATTENTION_CLASS)]
    wanted += [(QUANTIZATION_FIELD, str | dict | None, None)]  # litgpt_mka.attention.quantization
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
    guard_attention_variant(module)


# ------------------------------------------------------------------------------------------ litgpt.utils
def extend_utils_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    litgpt_default = module.get_default_supported_precision
    litgpt_instantiate = module.instantiate_torch_optimizer

    @functools.wraps(litgpt_default)
    def get_default_supported_precision(training: bool) -> str:
        return machine_default_precision(training, litgpt_default)

    @functools.wraps(litgpt_instantiate)
    def instantiate_torch_optimizer(optimizer, model_parameters, **kwargs):
        validate_optimizer(optimizer)
        return litgpt_instantiate(optimizer, model_parameters, **kwargs)

    _replace_everywhere(module, litgpt_default, get_default_supported_precision)
    _replace_everywhere(module, litgpt_instantiate, instantiate_torch_optimizer)


def _replace_everywhere(module: ModuleType, original, replacement) -> None:
    """Rebinds `original` to `replacement` in `module` and in every litgpt module that imported it by name before."""
    name = original.__name__
    setattr(module, name, replacement)
    for module_name, imported in list(sys.modules.items()):
        if module_name.startswith("litgpt.") and getattr(imported, name, None) is original:
            setattr(imported, name, replacement)


# --------------------------------------------------------------------------------------- litgpt.pretrain
CPU_COMPILE_ENV_VAR = "LITGPT_MKA_CPU_COMPILE"


def extend_pretrain_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    module.initialize_weights = _every_attention_class_scaled(module, module.initialize_weights)
    module.main = _run_on_the_machine(module.main, skip_cpu_compile=True)


def _every_attention_class_scaled(module: ModuleType, litgpt_initialize_weights):
    """litgpt's GPT-NeoX initialisation, with the output-projection rule applied to every attention class.

    litgpt 0.5.13's ``initialize_weights`` (pretrain.py) draws embeddings and linear layers from
    N(0, sqrt(2 / (5 n_embd))) and the output projections ``proj`` of ``LLaMAMLP`` and ``CausalSelfAttention``
    from N(0, 1 / (sqrt(n_embd) n_layer)), testing ``isinstance(mod, (LLaMAMLP, CausalSelfAttention))`` with
    the module's global name. MLA is not a ``CausalSelfAttention``, so it would start from another init than
    MHA. While litgpt's own function runs, that name is bound to the tuple of every registered attention class
    (``isinstance`` accepts nested tuples), so the same rule reaches them all; nothing of litgpt's is copied.
    """

    @functools.wraps(litgpt_initialize_weights)
    def initialize_weights(fabric, model, n_layer: int, n_embd: int) -> None:
        litgpt_class = module.CausalSelfAttention
        module.CausalSelfAttention = _attention_classes()
        try:
            litgpt_initialize_weights(fabric, model, n_layer, n_embd)
        finally:
            module.CausalSelfAttention = litgpt_class

    return initialize_weights


def _fabric_precision(fabric) -> str | None:
    """The precision string Fabric runs with ("bf16-mixed", "32-true", ...)."""
    return getattr(fabric.strategy.precision, "precision", None)


def _run_on_the_machine(litgpt_main, skip_cpu_compile: bool = False):
    """Wraps a training script's ``main(fabric, ...)``: the bf16 warning, and no ``torch.compile`` on the CPU.

    On the CPU, litgpt pretrain's ``torch.compile(model)`` costs 20-40 s before the first step and gives no
    speed afterwards (pythia-14m, 98,304 tokens: 97 s with it, 60 s without, identical losses); its slow
    first iterations also make litgpt's first ETA several times too long. So CPU runs execute eagerly
    (``torch._dynamo.config.disable`` while ``main`` runs), unless ``LITGPT_MKA_CPU_COMPILE=1``.
    """

    @functools.wraps(litgpt_main)
    def main(fabric, *args, **kwargs):
        on_cpu = fabric.device.type == "cpu"
        warn_if_emulated_bf16(_fabric_precision(fabric), fabric.device.type)
        if not (skip_cpu_compile and on_cpu) or os.environ.get(CPU_COMPILE_ENV_VAR) == "1":
            return litgpt_main(fabric, *args, **kwargs)
        import torch._dynamo

        fabric.print(f"litgpt-mka: training on the CPU without torch.compile ({CPU_COMPILE_ENV_VAR}=1 keeps it)")
        with torch._dynamo.config.patch(disable=True):
            return litgpt_main(fabric, *args, **kwargs)

    return main


# ------------------------------------------------------------------------------- litgpt.finetune.*
def extend_finetune_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    module.main = _run_on_the_machine(module.main)


# ================================================================= the rest of litgpt: fine-tuning, loading
# Everything below extends litgpt modules other than config/model/pretrain, plus two guards installed by
# `extend_model_module` (`guard_attention_variant`). Supported commands per variant:
# litgpt_mka/finetune/support.py.


def _attention_classes() -> tuple[type, ...]:
    """Every registered attention module class, litgpt's included (the classes whose `proj` pretrain scales)."""
    return tuple(registry.attention_class(name) for name in registry.VARIANTS)


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


# ------------------------------------------------------------------------------------------- litgpt.lora
def extend_lora_module(module: ModuleType) -> None:
    """``litgpt.lora.Block`` builds the LoRA form of the configured variant (litgpt_mka/finetune/lora.py).

    litgpt's ``Block`` builds its own LoRA ``CausalSelfAttention`` whatever the config says; for another
    ``attention_class_name`` it is replaced by the registry entry's LoRA form (a ``ValueError`` names the
    variants that have one).
    """
    check_litgpt_version()
    block_cls = module.Block
    if not _first_time(module):
        return
    litgpt_init = block_cls.__init__

    def __init__(self, config, block_idx: int) -> None:
        from litgpt_mka.finetune.lora import lora_attention_class

        lora_class = lora_attention_class(config)  # raises before anything is built for a variant without one
        litgpt_init(self, config, block_idx)
        if type(self.attn) is not lora_class:
            self.attn = lora_class(config, block_idx)

    __init__.__doc__ = litgpt_init.__doc__
    block_cls.__init__ = _guarded_block_init(__init__)


# ---------------------------------------------------------------------------------------- litgpt.adapter
def extend_adapter_module(module: ModuleType) -> None:
    """``litgpt.adapter.Config`` (and ``adapter_v2.Config``, its subclass) refuses MLA and MKA at construction.

    ``finetune_adapter``, ``finetune_adapter_v2`` and ``generate_adapter*`` read their config first, so the
    ``ValueError`` (naming the variant and the commands that support it) comes before any model, data or
    output directory. The ``Block`` guard (``guard_attention_variant``) would refuse later in any case.
    """
    check_litgpt_version()
    config_cls = module.Config
    if not _first_time(module):
        return
    post_init = config_cls.__post_init__

    def __post_init__(self) -> None:
        from litgpt_mka.finetune.support import check_adapter_supports

        post_init(self)
        check_adapter_supports(self, type(self).__module__)

    config_cls.__post_init__ = __post_init__


# -------------------------------------------------------------------- litgpt.scripts.convert_lit_checkpoint
# litgpt 0.5.13's `convert_lit_checkpoint` if-chain, in its order: (test on the config, copy function). Some tests are
# case-sensitive ("falcon", "Gemma-2", "Gemma-3"), the others lowercase the name first, exactly as litgpt does;
# tests/finetune/test_convert_to_hf.py runs litgpt's own function on each case and checks the two agree.
_LITGPT_COPY_FUNCTIONS = (
    (lambda config: "falcon" in config.name, "copy_weights_falcon"),
    (lambda config: config.name.startswith("Gemma-2"), "copy_weights_gemma_2"),
    (lambda config: config.name.startswith("Gemma-3"), "copy_weights_gemma_3"),
    (lambda config: config.name.lower().startswith("phi"), "copy_weights_phi"),
    (lambda config: config.name.lower().startswith(("qwen2.5", "qwq")), "copy_weights_qwen_2_5"),
    (lambda config: config.name.lower().startswith("olmo-2-"), "copy_weights_olmo2"),
    (lambda config: config.name.lower().startswith("qwen3"), "copy_weights_qwen_3"),
    (lambda config: config.mlp_class_name in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE"), "copy_weights_llama"),
)


def _litgpt_copy_function_name(config) -> str:
    """The copy function litgpt 0.5.13's ``convert_lit_checkpoint`` picks for `config`."""
    return next((name for test, name in _LITGPT_COPY_FUNCTIONS if test(config)), "copy_weights_gpt_neox")


def extend_convert_lit_checkpoint_module(module: ModuleType) -> None:
    """``convert_from_litgpt`` refuses a variant with no Hugging Face counterpart before writing anything."""
    check_litgpt_version()
    if not _first_time(module):
        return
    litgpt_convert = module.convert_lit_checkpoint

    @functools.wraps(litgpt_convert)
    def convert_lit_checkpoint(checkpoint_dir, output_dir) -> None:
        from litgpt_mka.finetune.support import check_hugging_face_counterpart

        config_file = module.extend_checkpoint_dir(checkpoint_dir) / "model_config.yaml"
        if config_file.is_file():  # litgpt reports a missing file itself
            config = module.Config.from_file(config_file)
            check_hugging_face_counterpart(config, _litgpt_copy_function_name(config))
        return litgpt_convert(checkpoint_dir, output_dir)

    module.convert_lit_checkpoint = convert_lit_checkpoint
