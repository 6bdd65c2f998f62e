"""The one registry of attention classes, keyed by ``Config.attention_class_name``.

Entries are import paths, so that validating a name costs no import; the class is imported when a
model is built. litgpt's ``Block`` builds ``config.attention_class`` (see ``litgpt_internals``).
"""

from importlib import import_module

ATTENTION_CLASSES: dict[str, str] = {
    # litgpt's own class: MHA, GQA and MQA through `n_query_groups`
    "CausalSelfAttention": "litgpt.model:CausalSelfAttention",
    # DeepSeek-V2 multi-head latent attention with a compressed KV cache (litgpt_mka/attention/mla.py)
    "MultiheadLatentAttention": "litgpt_mka.attention.mla:MultiheadLatentAttention",
    # memorized-key attention, MKA / FMKA (litgpt_mka/attention/mka.py)
    "MemorizedKeyAttention": "litgpt_mka.attention.mka:MemorizedKeyAttention",
}
DEFAULT_ATTENTION_CLASS = "CausalSelfAttention"


def check_attention_class_name(name: object) -> None:
    if name not in ATTENTION_CLASSES:
        raise ValueError(
            f"attention_class_name={name!r} is not a known attention class; choose one of {sorted(ATTENTION_CLASSES)}"
        )


def attention_class(name: str) -> type:
    """The attention module class registered under `name`."""
    check_attention_class_name(name)
    module_name, class_name = ATTENTION_CLASSES[name].split(":")
    return getattr(import_module(module_name), class_name)
