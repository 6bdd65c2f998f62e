"""litgpt's fine-tuning commands for every attention variant.

``lora.py``  the LoRA form of each variant (``litgpt finetune_lora``, ``merge_lora``, ``generate``) and the
             mapping ``attention_class_name -> LoRA class`` that ``litgpt.lora``'s ``Block`` builds from.

Which litgpt command supports which variant, and why adapters refuse MLA and MKA, is documented in
:mod:`litgpt_mka.finetune.support`.
"""
