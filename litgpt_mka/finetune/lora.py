"""LoRA for every attention variant: what ``litgpt finetune_lora`` trains and ``litgpt merge_lora`` merges.

``litgpt.lora.Block`` builds the registry entry's ``lora_target`` for ``config.attention_class_name`` (see
:func:`lora_attention_class` and ``extend_lora_module`` in :mod:`litgpt_mka.plugin.litgpt_internals.finetune`). Each LoRA class keeps the base
variant's parameter names with litgpt's ``.linear`` infix (``attn.kv_b_proj.weight`` is
``attn.kv_b_proj.linear.weight``), maps plain checkpoints on load, and merges through litgpt's
``merge_lora_weights`` (every LoRA layer is a litgpt ``LoRALinear``), so ``merge_lora`` writes a checkpoint
of the base variant that ``litgpt generate`` loads.

Which weights get LoRA, from litgpt's flags (``lora_r`` > 0; ``lora_mlp`` and ``lora_head`` are litgpt's):

==================  ==================================  ================================================
flag                MHA / GQA / MQA, MKA, FMKA           MLA (ours, and litgpt's stock MLA alike)
==================  ==================================  ================================================
``lora_query``      query rows of ``qkv``               ``q_a_proj`` and ``q_b_proj`` (``q_proj`` when
                                                        ``q_lora_rank`` is null)
``lora_key``        key rows of ``qkv``                 ``kv_a_proj_with_mqa`` and ``kv_b_proj``
``lora_value``      value rows of ``qkv``               ``kv_a_proj_with_mqa`` and ``kv_b_proj``
``lora_projection`` ``proj``                            ``proj``
==================  ==================================  ================================================

MLA's keys and values are not separate projections: ``kv_a_proj_with_mqa`` makes the latent ``c`` that both
are expanded from (and the RoPE key), and ``kv_b_proj`` holds ``W_UK`` and ``W_UV`` interleaved per head. So
``lora_key`` or ``lora_value`` (either) adapts that shared key/value path; litgpt's defaults
(``lora_query``, ``lora_value``) therefore adapt MLA's query and key/value paths.

MKA and FMKA: ``qkv`` and ``proj`` exactly as litgpt's LoRA attention. The router and the long-term memory
``p`` are **frozen** (litgpt's ``mark_only_lora_as_trainable`` freezes every non-``lora_`` parameter, and
``merge_lora`` keeps only ``lora_`` weights from the fine-tuning run): they keep their pretrained values, while
the long-term key and value ``k(p) = (W_K + ΔW_K) p + b_K`` (and ``v(p)``) follow the ``qkv`` deltas.

Merged == base + delta: with the deltas ``ΔW = scaling B A`` added to the base weights, the merged model
computes the unmerged LoRA model's function (tested on whole logits). MLA's absorbed decode derives
``W_UK``, ``W_UV`` from the *effective* ``kv_b_proj`` weight (base + delta while unmerged), and after a
merge from the merged weight (:class:`LoRAMultiheadLatentAttention`).
"""

from typing import Any

import litgpt.model
import torch
import torch.nn as nn
from litgpt.lora import CausalSelfAttention as LoRACausalSelfAttention
from litgpt.lora import LoRALinear
from litgpt.utils import map_old_state_dict_weights

from litgpt_mka.attention import registry
from litgpt_mka.attention.grouped import GroupedQueryAttention
from litgpt_mka.attention.mka import MemorizedKeyAttention
from litgpt_mka.attention.mla import AbsorbedWeights, MultiheadLatentAttention


def _lora_linear(base: nn.Linear, config: Any, enabled: bool, layer_class: type = LoRALinear) -> LoRALinear:
    """A litgpt ``LoRALinear`` shaped like `base`, of rank ``lora_r`` when `enabled`, else 0 (plain linear)."""
    return layer_class(
        base.in_features,
        base.out_features,
        bias=base.bias is not None,
        r=config.lora_r if enabled else 0,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
    )


class EffectiveWeightLoRALinear(LoRALinear):
    """A ``LoRALinear`` whose ``weight`` is the weight it applies: ``linear.weight + scaling B A`` until merged.

    For code that reads ``.weight`` rather than calling the layer (MLA's absorbed path). Merged or rank 0, it
    is ``linear.weight`` itself, so caches keyed on that tensor keep working. Differentiable in B and A.
    """

    @property
    def weight(self) -> torch.Tensor:
        if self.r == 0 or self.merged:
            return self.linear.weight
        return self.linear.weight + (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias


class _LoRALatentProjections:
    """Mixin for an MLA class: its projections become litgpt ``LoRALinear``s chosen by the ``lora_*`` flags.

    The flag mapping is in the module docstring. Loads plain MLA checkpoints (``q_a_proj.weight`` ->
    ``q_a_proj.linear.weight``); ``litgpt merge_lora`` strips ``.linear`` again.
    """

    def __init__(self, config: Any, block_idx: int) -> None:
        super().__init__(config, block_idx)
        key_value = config.lora_key or config.lora_value
        enabled = {
            "q_proj": config.lora_query,
            "q_a_proj": config.lora_query,
            "q_b_proj": config.lora_query,
            "kv_a_proj_with_mqa": key_value,
            "kv_b_proj": key_value,
            "proj": config.lora_projection,
        }
        self._lora_names = tuple(name for name in enabled if hasattr(self, name))
        for name in self._lora_names:
            layer_class = EffectiveWeightLoRALinear if name == "kv_b_proj" else LoRALinear
            setattr(self, name, _lora_linear(getattr(self, name), config, enabled[name], layer_class))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Maps plain MLA checkpoints (``NAME.weight``) onto the LoRA layers (``NAME.linear.weight``)."""
        mapping = {
            f"{name}.{attr}": f"{name}.linear.{attr}" for name in self._lora_names for attr in ("weight", "bias")
        }
        state_dict = map_old_state_dict_weights(state_dict, mapping, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LoRAMultiheadLatentAttention(_LoRALatentProjections, MultiheadLatentAttention):
    """:class:`MultiheadLatentAttention` (compressed cache, absorbed decode) with LoRA projections."""

    def _absorbed_weights(self) -> AbsorbedWeights:
        """The absorbed-path weights of the effective ``kv_b_proj`` (see :class:`EffectiveWeightLoRALinear`).

        Unmerged LoRA deltas are recomputed per call (their inputs are ``lora_A`` and ``lora_B`` too); merged
        or rank 0, the base class caches them on ``kv_b_proj.linear.weight`` as usual.
        """
        if self.kv_b_proj.r > 0 and not self.kv_b_proj.merged:
            return self.absorb_weights()
        return super()._absorbed_weights()


class LoRALitgptMultiheadLatentAttention(_LoRALatentProjections, litgpt.model.MultiheadLatentAttention):
    """litgpt's own MLA (expanded cache; ``attention_class_name: LitgptMultiheadLatentAttention``) with LoRA."""


class LoRAMemorizedKeyAttention(MemorizedKeyAttention, LoRACausalSelfAttention):
    """:class:`MemorizedKeyAttention` on litgpt's LoRA attention: LoRA ``qkv`` and ``proj``, frozen router and ``p``.

    Method order: MKA's forward, router and memory; litgpt's LoRA ``qkv``/``proj`` and checkpoint mapping.
    """

    def _long_term_memory(self) -> torch.Tensor:
        """(k(p), v(p)) through the LoRA ``qkv`` layer itself, so that the key/value deltas apply to ``p``: (2D,)."""
        q_size = self.config.n_head * self.config.head_size
        return self.qkv(self.memory.view(1, 1, -1))[0, 0, q_size:]  # (1, 1, C) -> (1, 1, nh_q hs + 2D) -> (2D,)


class LoRAGroupedQueryAttention(GroupedQueryAttention, LoRACausalSelfAttention):
    """:class:`GroupedQueryAttention` (grouped cached decoding) on litgpt's LoRA attention: LoRA ``qkv``, ``proj``.

    Method order: the grouped forward and cache; litgpt's LoRA ``qkv``/``proj`` and checkpoint mapping.
    """


def lora_attention_class(config: Any) -> type:
    """The LoRA attention class for `config`'s ``attention_class_name`` (the registry's ``lora_target``).

    Raises:
        ValueError: the variant has no LoRA form.
    """
    return registry.lookup(config.attention_class_name).load_lora()
