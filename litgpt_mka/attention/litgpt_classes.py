"""Descriptors of litgpt's own attention classes for the registry (see ``variant.py``).

``Block`` builds litgpt's classes unchanged; these classes only answer the registry's questions, so they
are named after the variant they describe, never after litgpt's class itself.

==========================================  ===========================  ==========================
litgpt class                                numbers per token per layer  pythia-70m (nh 8, hs 64)
==========================================  ===========================  ==========================
``CausalSelfAttention`` (MHA / GQA / MQA)   2 nq hs                      1024 / 256 (nq 2) / 128
``MultiheadLatentAttention`` (stock MLA)    nh (P + R + V)               1024 (P 48, R 16, V 64)
==========================================  ===========================  ==========================

(``nq`` = ``n_query_groups``; litgpt's ``KVCache`` keys are ``rope_cache_length + head_size -
rope_n_elem`` = ``head_size`` wide. Sliding-window layers cap their ring buffer at the window, which
:func:`litgpt_mka.measure.kv_cache_size.kv_cache_bytes` accounts for.)
"""

from typing import Any

from litgpt_mka.attention.variant import AttentionVariant, KeyValueHeads


class CausalSelfAttentionVariant(KeyValueHeads):
    """litgpt's ``CausalSelfAttention``: MHA, GQA and MQA through ``n_query_groups``, sliding-window layers
    included (litgpt's ring buffer); its LoRA form is litgpt's."""

    lora_target = "litgpt.lora:CausalSelfAttention"
    sliding_window_layers = True

    @classmethod
    def attention_module(cls) -> type:
        from litgpt.model import CausalSelfAttention

        return CausalSelfAttention

    @classmethod
    def kv_cache_elements_per_token(cls, config: Any) -> int:
        return 2 * config.n_query_groups * config.head_size


class StockLatentAttentionVariant(AttentionVariant):
    """litgpt's own MLA (``attention_class_name: LitgptMultiheadLatentAttention``): the expanded per-head cache,
    the baseline of our compressed one; needs ``q_lora_rank``."""

    label = "litgpt's stock MLA"
    lora_target = "litgpt_mka.finetune.lora:LoRALitgptMultiheadLatentAttention"

    @classmethod
    def attention_module(cls) -> type:
        from litgpt.model import MultiheadLatentAttention

        return MultiheadLatentAttention

    @classmethod
    def validate_config(cls, config: Any) -> None:
        from litgpt_mka.attention.mla import validate_latent_attention

        validate_latent_attention(config, "LitgptMultiheadLatentAttention", q_lora_rank_required=True)

    @classmethod
    def kv_cache_elements_per_token(cls, config: Any) -> int:
        return config.n_head * (config.qk_head_dim + config.v_head_dim)
