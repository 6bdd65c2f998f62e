"""A toy attention variant, registered by tests/attention/test_registry.py in a subprocess only.

It shows what adding a variant takes: this module (a class inheriting AttentionVariant) and one
registry line (here a `register` call). ``TemperedAttention`` is litgpt's CausalSelfAttention with its
scores divided by a temperature read from its own Config dict ``tempered_attention``.
"""

from typing import Any


from litgpt_mka.attention.registry import Variant, register
from litgpt_mka.attention.variant import AttentionVariant, check_keys


def load_attention_base() -> type:
    from litgpt.model import CausalSelfAttention

    return CausalSelfAttention


class TemperedAttention(AttentionVariant, load_attention_base()):
    """softmax(q k^T / (sqrt(hs) tau)) v; litgpt's KV cache, 2 nq hs numbers per token per layer."""

    def __init__(self, config: Any, block_idx: int) -> None:
        super().__init__(config, block_idx)
        self.temperature = config.tempered_attention["temperature"]

    @classmethod
    def validate_config(cls, config: Any) -> None:
        settings = dict(config.tempered_attention or {})
        check_keys("tempered_attention", settings, ("temperature",))
        temperature = settings.setdefault("temperature", 2.0)
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"tempered_attention.temperature={temperature!r} must be a positive number")
        config.tempered_attention = settings

    @classmethod
    def kv_cache_elements_per_token(cls, config: Any) -> int:
        return 2 * config.n_query_groups * config.head_size

    def scaled_dot_product_attention(self, q, k, v, mask=None):
        return super().scaled_dot_product_attention(q / self.temperature, k, v, mask)


def register_toy_variant() -> None:
    register(Variant("TemperedAttention", f"{__name__}:TemperedAttention", config_field="tempered_attention"))
