"""Validation of litgpt ``Config`` values that litgpt itself only ``assert``s, and of the variant fields.

Every check raises ``ValueError`` naming the field, its value and what is allowed. Which dicts a
variant reads, and their checks and defaults, come from the registry
(:mod:`litgpt_mka.attention.registry`); nothing here names a variant.
"""

from typing import Any

from litgpt_mka.attention import registry
from litgpt_mka.validation import positive_int


def validate_litgpt_fields(config: Any) -> None:
    """Checks that litgpt's `Config.__post_init__` would otherwise fail with a bare `assert`."""
    for field in ("n_head", "n_embd", "n_layer"):
        positive_int(field, getattr(config, field))
    if config.head_size is None:
        if config.n_embd % config.n_head != 0:
            raise ValueError(
                f"n_embd={config.n_embd} must be divisible by n_head={config.n_head} (or set head_size explicitly)"
            )
    else:
        positive_int("head_size", config.head_size)
    if config.n_query_groups is not None:
        positive_int("n_query_groups", config.n_query_groups)
        if config.n_head % config.n_query_groups != 0:
            raise ValueError(
                f"n_head={config.n_head} must be divisible by n_query_groups={config.n_query_groups}"
                " (1 = MQA, n_head = MHA, a divisor in between = GQA)"
            )
    for field in registry.config_fields():
        value = getattr(config, field)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{field}={value!r} must be a dict or null")


def resolve_attention_variant(config: Any) -> None:
    """Checks `attention_class_name` and the variant dicts; the variant validates its dict and writes its defaults.

    A config that sets a dict whose variant is ``selected_by_config_field`` (litgpt's ``latent_attention``)
    and leaves `attention_class_name` at its default selects that variant, as stock litgpt does.
    """
    name = config.attention_class_name
    registry.lookup(name)
    if name == registry.DEFAULT_ATTENTION_CLASS:
        for entry in registry.VARIANTS.values():
            if entry.selected_by_config_field and getattr(config, entry.config_field) is not None:
                config.attention_class_name = name = entry.name
    own_field = registry.lookup(name).config_field
    for field in registry.config_fields():
        if field != own_field and getattr(config, field) is not None:
            raise ValueError(
                f"{field} is set, but attention_class_name={name!r}; {field} is only read by"
                f" {registry.readers_of(field)}"
            )
    variant = registry.variant_class(config)
    variant.validate_config(config)
    variant.validate_quantization(config)


def validate_optimizer(optimizer) -> None:
    """Raises ValueError for an optimizer dict with keys that litgpt 0.5.13 would silently ignore.

    With the presets' ``optimizer: {class_path: torch.optim.AdamW, init_args: {lr: ...}}``, litgpt's command line
    turns ``--optimizer.lr 0.003`` into a third key beside ``class_path`` and ``init_args``;
    ``instantiate_torch_optimizer`` reads only ``init_args``, so the run would train at the YAML's learning rate.
    """
    if not isinstance(optimizer, dict):
        return
    ignored = sorted(set(optimizer) - {"class_path", "init_args"})
    if ignored:
        raise ValueError(
            f"optimizer: {', '.join(ignored)} given beside class_path and init_args ({optimizer!r}) would be ignored"
            " by litgpt 0.5.13, which reads only init_args (`--optimizer.lr X` on the command line adds such a key"
            " when the YAML names the optimizer by class_path). Put the whole optimizer block, class_path and"
            " init_args, in the YAML or in a second --config file (see config_hub/recipes/)."
        )
