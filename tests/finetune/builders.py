"""Tiny configs of litgpt's fine-tuning Config classes (lora, adapter, adapter_v2) for every variant."""

import dataclasses
from typing import Any

from litgpt.config import Config

from tests.helpers import TINY_VARIANTS, tiny_config

VARIANTS = tuple(TINY_VARIANTS)  # mha, gqa, mqa, mla, mka, fmka
LORA_ALL = dict(lora_r=4, lora_alpha=8, lora_query=True, lora_key=True, lora_value=True, lora_projection=True)


def tiny_config_as(config_class: type, variant: str, **extra: Any) -> Config:
    """`tests.helpers.tiny_config(variant)` rebuilt as `config_class` (e.g. ``litgpt.lora.Config``).

    Keys of `extra` that are litgpt ``Config`` fields override the tiny config; the others (``lora_r``, ...)
    are fields of `config_class`.
    """
    base_fields = {field.name for field in dataclasses.fields(Config)}
    base = tiny_config(variant, **{key: value for key, value in extra.items() if key in base_fields})
    values = {name: getattr(base, name) for name in base_fields}
    return config_class(**values, **{key: value for key, value in extra.items() if key not in base_fields})
