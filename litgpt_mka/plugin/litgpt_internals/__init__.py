"""Every place where litgpt-mka touches litgpt's internals, one module per litgpt module it extends.
Nothing else in the package does.

Tested with litgpt 0.5.13 only; any other version raises at the first import of litgpt, with the
way out (pin litgpt, or ``LITGPT_MKA_DISABLE=1``): :func:`check_litgpt_version`, which every ``extend_*``
function calls first. The installed litgpt files are never edited: each extension is applied to the
imported module object, once (:func:`_first_time`), by wrapping or rebinding litgpt's own functions rather
than copying litgpt's code (the one re-derivation left is ``config._derive_latent_fields``: litgpt's
``latent_attention`` attributes without its ``q_lora_rank`` assert). :mod:`litgpt_mka.plugin.activation` maps
each litgpt module to the function below that extends it and imports only the module of this package that
holds it.

``config.py``: ``litgpt.config``  -- ``extend_config_module``
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
    requires ``q_lora_rank`` and asserts) is hidden from it; the same attributes are derived with
    ``q_lora_rank`` optional. ``config.attention_class`` returns the module class ``Block`` builds, like
    litgpt's ``config.mlp_class``.

``model.py``: ``litgpt.model``  -- ``extend_model_module``, ``guard_attention_variant``
    ``Block.__init__`` is wrapped: after litgpt built its attention module, the block holds an instance
    of ``config.attention_class`` (the litgpt-built one is replaced only when the class differs). While
    litgpt's ``__init__`` runs for a class other than its own MLA, ``latent_attention`` is hidden from it,
    so that it builds its cheap ``CausalSelfAttention`` rather than its MLA (which needs ``q_lora_rank``).
    Every ``Block`` subclass (litgpt's LoRA and adapter blocks, user code) must end up holding
    ``config.attention_class``, else ``ValueError``; a non-strict ``GPT.load_state_dict`` that would drop
    attention weights raises, one that leaves attention parameters unset warns. ``GPT.set_kv_cache`` is
    wrapped: the quantized caches it built share one scratch workspace.

``utils.py``: ``litgpt.utils``  -- ``extend_utils_module``
    ``get_default_supported_precision`` (bf16 on every machine without CUDA) is replaced by
    :func:`litgpt_mka.precision.machine_default_precision`: ``32-true`` on CPUs that emulate bf16, litgpt's
    answer everywhere else, in ``litgpt.utils`` and in every litgpt module that imported it by name.
    ``instantiate_torch_optimizer`` refuses keys beside ``class_path`` and ``init_args``.

``pretrain.py``: ``litgpt.pretrain``  -- ``extend_pretrain_module``
    ``initialize_weights`` (GPT-NeoX init) scales the output projection ``proj`` of every attention class,
    not only ``CausalSelfAttention``'s, so that comparisons between variants are fair; with
    ``LITGPT_MKA_PAIRED_INIT=1`` (``compare --paired``) every module draws from a stream of its own, so that the
    parameters variants share start equal for a seed. ``main`` is wrapped:
    the bf16 warning on a CPU that emulates it, and no ``torch.compile`` on the CPU
    (``LITGPT_MKA_CPU_COMPILE=1`` keeps it).

``finetune.py``: ``litgpt.finetune.{full,lora,lora_legacy,adapter,adapter_v2}``  -- ``extend_finetune_module``;
``litgpt.lora`` -- ``extend_lora_module``; ``litgpt.adapter`` -- ``extend_adapter_module``
    The fine-tuning scripts' ``main`` warns when bf16 is asked of a CPU that emulates it. LoRA's ``Block``
    builds the LoRA form of every variant (:mod:`litgpt_mka.finetune.lora`); the adapters' ``Config``
    refuses MLA and MKA (:mod:`litgpt_mka.finetune.support`).

``convert.py``: ``litgpt.scripts.convert_lit_checkpoint`` -- ``extend_convert_lit_checkpoint_module``
    ``convert_from_litgpt`` refuses a variant without a Hugging Face counterpart before writing, and litgpt's
    own ``copy_weights_gpt_neox`` refuses grouped key/value heads when litgpt's dispatch calls it; that
    refusal leaves nothing behind (:mod:`litgpt_mka.finetune.support` words both).

Supported commands per variant: :mod:`litgpt_mka.finetune.support`.
"""

from importlib.metadata import PackageNotFoundError, version

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
