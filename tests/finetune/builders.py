"""Tiny configs of litgpt's fine-tuning Config classes (lora, adapter, adapter_v2) for every variant."""

import dataclasses
from typing import Any

from litgpt.config import Config

from tests.helpers import TINY_VARIANTS, tiny_config

VARIANTS = tuple(TINY_VARIANTS)  # mha, gqa, mqa, mla, mka, fmka
LORA_ALL = dict(lora_r=4, lora_alpha=8, lora_query=True, lora_key=True, lora_value=True, lora_projection=True)


def tiny_config_as(config_class: type, variant: str, **extra: Any) -> Config:
    """`tests.helpers.tiny_config(variant)` rebuilt as `config_class` (e.g. ``litgpt.lora.Config``) with `extra`."""
    base = tiny_config(variant)
    values = {field.name: getattr(base, field.name) for field in dataclasses.fields(Config)}
    return config_class(**values, **extra)
