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
GQA or MQA checkpoint is refused when litgpt's converter copies its weights to GPT-NeoX, and what litgpt had
created by then is removed. Refusals are ``ValueError``s; none leaves anything built or written.

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
    supported = ", ".join(name for name, entry in registry.VARIANTS.items() if entry.litgpt_equivalent)
    raise ValueError(
        f"{describe(config)} is not supported by {commands}: litgpt's adapter attention is built on"
        f" CausalSelfAttention's fused qkv and would train a different model (MHA) instead. Adapters support"
        f" MHA, GQA and MQA ({supported}) only; for {variant_label(config)} use"
        f" {COMMANDS_FOR_EVERY_VARIANT}."
    )


class HuggingFaceConversionRefused(ValueError):
    """`convert_from_litgpt` refuses a checkpoint that no Hugging Face model can hold; nothing is left written."""


def check_hugging_face_counterpart(config: Any) -> None:
    """Raises when no Hugging Face architecture that `convert_from_litgpt` converts to holds `config`'s variant.

    Run before litgpt's converter starts (``convert_lit_checkpoint`` is wrapped), so nothing is written.

    Raises:
        HuggingFaceConversionRefused: (a ``ValueError``) MLA or MKA: litgpt's converter has no mapping for them.
    """
    if registry.lookup(config.attention_class_name).litgpt_equivalent:
        return
    label = variant_label(config)
    raise HuggingFaceConversionRefused(
        f"`litgpt convert_from_litgpt` cannot convert {describe(config)}: litgpt's converter has no mapping"
        f" for it and no Hugging Face architecture it converts to holds {label} attention (the model is"
        f" {config.name!r}). Nothing was written. The litgpt checkpoint itself works with `litgpt generate`,"
        " `chat`, `serve` and the fine-tuning commands; only MHA converts to Hugging Face GPT-NeoX."
    )


def check_gpt_neox_key_value_heads(config: Any) -> None:
    """Raises when `config`'s grouped key/value heads (GQA, MQA) would be copied to the GPT-NeoX layout.

    Run when litgpt's converter calls its ``copy_weights_gpt_neox`` (the copy function litgpt picks for
    `config`); the converter's wrapper then removes what litgpt had created, so nothing is left written.

    Raises:
        HuggingFaceConversionRefused: (a ``ValueError``) ``n_query_groups != n_head``: Hugging Face GPT-NeoX
            has no grouped key/value heads.
    """
    if config.n_query_groups == config.n_head:
        return
    raise HuggingFaceConversionRefused(
        f"`litgpt convert_from_litgpt` cannot convert {describe(config)} with n_query_groups="
        f"{config.n_query_groups} < n_head={config.n_head} to Hugging Face GPT-NeoX ({config.name!r}):"
        " GPT-NeoX has no grouped key/value heads (every head has its own key and value), so the weights"
        " would not fit. Nothing was written. Only n_query_groups == n_head (MHA) converts for this"
        " architecture."
    )
