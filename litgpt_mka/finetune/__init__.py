"""litgpt's fine-tuning and sharing commands for every attention variant.

``lora.py``     the LoRA form of each variant (``litgpt finetune_lora``, ``merge_lora``, then ``generate``) and
                the mapping ``attention_class_name -> LoRA class`` that ``litgpt.lora``'s ``Block`` builds from.
``support.py``  which command supports which variant, and the ``ValueError``s of those that refuse one
                (litgpt's adapters for MLA and MKA, ``convert_from_litgpt`` without a Hugging Face counterpart).

The hooks into litgpt live in :mod:`litgpt_mka.plugin.litgpt_internals`, like every other touch of litgpt's
internals: ``extend_lora_module`` and ``extend_adapter_module`` in its ``finetune``,
``extend_convert_lit_checkpoint_module`` in its ``convert``, ``guard_attention_variant`` in its ``model``.
"""
