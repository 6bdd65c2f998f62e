"""Which litgpt command supports which attention variant, and the errors that say so.

=========================================  =====  =====  =====  =========  ===============================
command                                    MHA    GQA    MQA    MLA        MKA, FMKA
=========================================  =====  =====  =====  =========  ===============================
``finetune_full``, ``pretrain``,           yes    yes    yes    yes        yes
``generate``, ``chat``, ``serve``
``finetune_lora``, ``merge_lora``          yes    yes    yes    yes        yes (:mod:`.lora`)
``finetune_adapter``, ``_adapter_v2``      yes    yes    yes    refused    refused
(and ``generate_adapter``, ``_v2``)
``convert_from_litgpt``                    yes    (1)    (1)    refused    refused
=========================================  =====  =====  =====  =========  ===============================

(1) litgpt writes GQA/MQA for architectures whose Hugging Face class has grouped key/value heads
(Llama-style ``num_key_value_heads``); Hugging Face's GPT-NeoX (Pythia) has none, so a Pythia-shaped
GQA or MQA checkpoint is refused. Refusals are ``ValueError``s raised before anything is built or written.

Why adapters refuse: litgpt's adapter attention adds a learned prompt whose keys and values come from
``CausalSelfAttention``'s fused ``qkv``; MLA has no ``qkv`` (its keys and values come from a shared
latent) and MKA's keys are mixtures of three memories, so the adapter's prefix keys would be defined by
neither design. No such variant is built rather than a silent MHA one.
"""

from typing import Any

from litgpt_mka.attention import registry

ADAPTER_COMMANDS = {
    "litgpt.adapter": "`litgpt finetune_adapter` and `litgpt generate_adapter`",
    "litgpt.adapter_v2": "`litgpt finetune_adapter_v2` and `litgpt generate_adapter_v2`",
}
COMMANDS_FOR_EVERY_VARIANT = "`litgpt finetune_lora` (then `litgpt merge_lora`) or `litgpt finetune_full`"


def variant_label(config: Any) -> str:
    """A short name for the attention variant of `config`: MHA, GQA, MQA, MLA, MKA, FMKA, ... (the registry's)."""
    return registry.entry_of(config).label_for(config)


def describe(config: Any) -> str:
    """`attention_class_name='...' (LABEL)`, for error messages."""
    return f"attention_class_name={config.attention_class_name!r} ({variant_label(config)})"


def check_adapter_supports(config: Any, litgpt_module: str) -> None:
    """Raises ValueError unless litgpt's adapter module `litgpt_module` can build `config`'s variant.

    Raises:
        ValueError: the variant does not compute litgpt's ``CausalSelfAttention`` (MHA, GQA, MQA; the
            registry's ``litgpt_equivalent``).
    """
    if registry.lookup(config.attention_class_name).litgpt_equivalent:
        return
    commands = ADAPTER_COMMANDS.get(litgpt_module, f"`{litgpt_module}`")
    raise ValueError(
        f"{describe(config)} is not supported by {commands}: litgpt's adapter attention is built on"
        f" CausalSelfAttention's fused qkv and would train a different model (MHA) instead. Adapters support"
        f" MHA, GQA and MQA (CausalSelfAttention, GroupedQueryAttention) only; for {variant_label(config)} use"
        f" {COMMANDS_FOR_EVERY_VARIANT}."
    )


def check_hugging_face_counterpart(config: Any, litgpt_copy_function: str) -> None:
    """Raises ValueError when `convert_from_litgpt` would write weights no Hugging Face model can hold.

    Args:
        config: the checkpoint's ``Config``.
        litgpt_copy_function: the name of the litgpt function that would copy the weights
            (``copy_weights_gpt_neox``, ``copy_weights_llama``, ...).

    Raises:
        ValueError: MLA or MKA (no counterpart in any architecture litgpt converts to), or grouped
            key/value heads (GQA, MQA) on the GPT-NeoX layout (Hugging Face GPT-NeoX has none).
    """
    label = variant_label(config)
    if not registry.lookup(config.attention_class_name).litgpt_equivalent:
        raise ValueError(
            f"`litgpt convert_from_litgpt` cannot convert {describe(config)}: litgpt's converter has no mapping"
            f" for it and no Hugging Face architecture it converts to holds {label} attention (the model is"
            f" {config.name!r}). Nothing was written. The litgpt checkpoint itself works with `litgpt generate`,"
            " `chat`, `serve` and the fine-tuning commands; only MHA converts to Hugging Face GPT-NeoX."
        )
    if litgpt_copy_function == "copy_weights_gpt_neox" and config.n_query_groups != config.n_head:
        raise ValueError(
            f"`litgpt convert_from_litgpt` cannot convert {describe(config)} with n_query_groups="
            f"{config.n_query_groups} < n_head={config.n_head} to Hugging Face GPT-NeoX ({config.name!r}):"
            " GPT-NeoX has no grouped key/value heads (every head has its own key and value), so the weights"
            " would not fit. Nothing was written. Only n_query_groups == n_head (MHA) converts for this"
            " architecture."
        )
