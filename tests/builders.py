"""Tiny configs of every variant for litgpt's Config classes (model, lora, adapter, adapter_v2)."""

import dataclasses
from typing import Any

from litgpt.config import Config

from tests.helpers import TINY_VARIANTS, tiny_config

# the variants of tests.helpers, plus litgpt's own MLA (expanded cache) on the same latent dims
STOCK_MLA = {"attention_class_name": "LitgptMultiheadLatentAttention"}
VARIANTS = (*TINY_VARIANTS, "stock-mla")  # mha, gqa, mqa, mla, mka, fmka, stock-mla
LORA_ALL = dict(lora_r=4, lora_alpha=8, lora_query=True, lora_key=True, lora_value=True, lora_projection=True)


def variant_config(variant: str, **overrides: Any) -> Config:
    """`tests.helpers.tiny_config(variant, **overrides)`, where `variant` may also be ``"stock-mla"``."""
    if variant == "stock-mla":
        return tiny_config("mla", **{**STOCK_MLA, **overrides})
    return tiny_config(variant, **overrides)


def tiny_config_as(config_class: type, variant: str, **extra: Any) -> Config:
    """`variant_config(variant)` rebuilt as `config_class` (e.g. ``litgpt.lora.Config``).

    Keys of `extra` that are litgpt ``Config`` fields override the tiny config; the others (``lora_r``, ...)
    are fields of `config_class`.
    """
    base_fields = {field.name for field in dataclasses.fields(Config)}
    base = variant_config(variant, **{key: value for key, value in extra.items() if key in base_fields})
    values = {name: getattr(base, name) for name in base_fields}
    return config_class(**values, **{key: value for key, value in extra.items() if key not in base_fields})
