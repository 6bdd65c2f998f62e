"""``litgpt.finetune.*``, ``litgpt.lora``, ``litgpt.adapter``: fine-tuning builds the configured variant or refuses it.

``extend_finetune_module`` (``litgpt.finetune.{full,lora,lora_legacy,adapter,adapter_v2}``)
    ``main`` is wrapped to warn when bf16 is asked of a CPU that emulates it (``pretrain.py``'s wrapper,
    without its ``torch.compile`` part).
``extend_lora_module`` (``litgpt.lora``)
    ``Block`` builds the LoRA form of every variant (:mod:`litgpt_mka.finetune.lora`).
``extend_adapter_module`` (``litgpt.adapter``, and with it ``adapter_v2``)
    The adapters' ``Config`` refuses MLA and MKA (:mod:`litgpt_mka.finetune.support`).

Supported commands per variant: :mod:`litgpt_mka.finetune.support`.
"""

from types import ModuleType

from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version
from litgpt_mka.plugin.litgpt_internals.model import _guarded_block_init
from litgpt_mka.plugin.litgpt_internals.pretrain import _run_on_the_machine


def extend_finetune_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    module.main = _run_on_the_machine(module.main)


def extend_lora_module(module: ModuleType) -> None:
    """``litgpt.lora.Block`` builds the LoRA form of the configured variant (litgpt_mka/finetune/lora.py).

    litgpt's ``Block`` builds its own LoRA ``CausalSelfAttention`` whatever the config says; for another
    ``attention_class_name`` it is replaced by the registry entry's LoRA form (a ``ValueError`` names the
    variants that have one).
    """
    check_litgpt_version()
    block_cls = module.Block
    if not _first_time(module):
        return
    litgpt_init = block_cls.__init__

    def __init__(self, config, block_idx: int) -> None:
        from litgpt_mka.finetune.lora import lora_attention_class

        lora_class = lora_attention_class(config)  # raises before anything is built for a variant without one
        litgpt_init(self, config, block_idx)
        if type(self.attn) is not lora_class:
            self.attn = lora_class(config, block_idx)

    __init__.__doc__ = litgpt_init.__doc__
    block_cls.__init__ = _guarded_block_init(__init__)


def extend_adapter_module(module: ModuleType) -> None:
    """``litgpt.adapter.Config`` (and ``adapter_v2.Config``, its subclass) refuses MLA and MKA at construction.

    ``finetune_adapter``, ``finetune_adapter_v2`` and ``generate_adapter*`` read their config first, so the
    ``ValueError`` (naming the variant and the commands that support it) comes before any model, data or
    output directory. The ``Block`` guard (``guard_attention_variant``) would refuse later in any case.
    """
    check_litgpt_version()
    config_cls = module.Config
    if not _first_time(module):
        return
    post_init = config_cls.__post_init__

    def __post_init__(self) -> None:
        from litgpt_mka.finetune.support import check_adapter_supports

        post_init(self)
        check_adapter_supports(self, type(self).__module__)

    config_cls.__post_init__ = __post_init__
