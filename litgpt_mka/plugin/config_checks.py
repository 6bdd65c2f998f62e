"""Validation of litgpt ``Config`` values that litgpt itself only ``assert``s, and of our own fields.

Every check raises ``ValueError`` naming the field, its value and what is allowed. Variant-specific
checks live with their variant (``validate_config`` on the attention class) and are called from here.
"""

from typing import Any

from litgpt_mka.attention.registry import DEFAULT_ATTENTION_CLASS, attention_class, check_attention_class_name

LATENT_ATTENTION_CLASS = "MultiheadLatentAttention"
MEMORIZED_KEY_ATTENTION_CLASS = "MemorizedKeyAttention"


def _require_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field}={value!r} must be a positive integer")


def validate_litgpt_fields(config: Any) -> None:
    """Checks that litgpt's `Config.__post_init__` would otherwise fail with a bare `assert`."""
    _require_positive_int("n_head", config.n_head)
    _require_positive_int("n_embd", config.n_embd)
    _require_positive_int("n_layer", config.n_layer)
    if config.head_size is None:
        if config.n_embd % config.n_head != 0:
            raise ValueError(
                f"n_embd={config.n_embd} must be divisible by n_head={config.n_head} (or set head_size explicitly)"
            )
    else:
        _require_positive_int("head_size", config.head_size)
    if config.n_query_groups is not None:
        _require_positive_int("n_query_groups", config.n_query_groups)
        if config.n_head % config.n_query_groups != 0:
            raise ValueError(
                f"n_head={config.n_head} must be divisible by n_query_groups={config.n_query_groups}"
                " (1 = MQA, n_head = MHA, a divisor in between = GQA)"
            )
    if config.latent_attention is not None and not isinstance(config.latent_attention, dict):
        raise ValueError(f"latent_attention={config.latent_attention!r} must be a dict or null")


def resolve_attention_class_name(config: Any) -> None:
    """Checks `attention_class_name` against the registry and the variant dicts.

    A config that sets litgpt's own `latent_attention` dict but leaves `attention_class_name` at its
    default is a litgpt MLA config: it resolves to `MultiheadLatentAttention`, as stock litgpt does.
    """
    name = config.attention_class_name
    check_attention_class_name(name)
    if config.latent_attention is not None and name == DEFAULT_ATTENTION_CLASS:
        config.attention_class_name = name = LATENT_ATTENTION_CLASS
    if name == LATENT_ATTENTION_CLASS and config.latent_attention is None:
        raise ValueError(
            f"attention_class_name={name!r} needs the latent_attention dict (kv_lora_rank, qk_rope_head_dim,"
            " qk_nope_head_dim, v_head_dim, optional q_lora_rank)"
        )
    if config.latent_attention is not None and name != LATENT_ATTENTION_CLASS:
        raise ValueError(
            f"latent_attention is set, but attention_class_name={name!r}; latent_attention is only read by"
            f" {LATENT_ATTENTION_CLASS!r}"
        )
    if name == MEMORIZED_KEY_ATTENTION_CLASS and config.memorized_key_attention is None:
        config.memorized_key_attention = {}
    if config.memorized_key_attention is not None:
        if not isinstance(config.memorized_key_attention, dict):
            raise ValueError(
                f"memorized_key_attention={config.memorized_key_attention!r} must be a dict or null"
            )
        if name != MEMORIZED_KEY_ATTENTION_CLASS:
            raise ValueError(
                f"memorized_key_attention is set, but attention_class_name={name!r}; memorized_key_attention is"
                f" only read by {MEMORIZED_KEY_ATTENTION_CLASS!r}"
            )
    if name != DEFAULT_ATTENTION_CLASS:
        validate_variant = getattr(attention_class(name), "validate_config", None)
        if validate_variant is not None:
            validate_variant(config)
