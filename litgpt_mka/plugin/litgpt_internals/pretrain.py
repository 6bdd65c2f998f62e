"""``litgpt.pretrain``: the same initialisation for every variant, and training on the machine at hand.

``extend_pretrain_module``
    ``initialize_weights`` (GPT-NeoX init) scales the output projection of ``CausalSelfAttention`` only;
    wrapped, litgpt's own function scales the output projection ``proj`` of every block's attention module,
    whatever its class, the same way, so that comparisons between variants are fair. ``main`` is wrapped
    (:func:`_run_on_the_machine`): on the CPU it warns when bf16 is asked of a CPU that emulates it, and it
    skips litgpt's ``torch.compile(model)`` (``LITGPT_MKA_CPU_COMPILE=1`` keeps it). Everything else is
    litgpt's code path. The fine-tuning scripts' ``main`` get the same wrapper, without the compile part
    (``finetune.py`` here).

    ``setup`` is wrapped (:func:`_data_parallel_without_a_gpu`): with ``--devices`` x ``--num_nodes`` > 1 litgpt
    builds an ``FSDPStrategy``, which Lightning refuses without CUDA; on a machine without CUDA the Fabric that
    ``setup`` creates gets ``DDPStrategy(process_group_backend="gloo")`` in its place, and says so in the run's
    first lines. Everything after (``fabric.launch``, the data split across ranks, checkpoints, ``--resume``) is
    litgpt's multi-process code path unchanged.
"""

import functools
import os
from types import ModuleType, SimpleNamespace

import lightning as L
import torch
from lightning.fabric.strategies import DDPStrategy, FSDPStrategy

from litgpt_mka.attention import registry
from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version
from litgpt_mka.precision import warn_if_emulated_bf16

CPU_COMPILE_ENV_VAR = "LITGPT_MKA_CPU_COMPILE"


def extend_pretrain_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    module.initialize_weights = _every_attention_class_scaled(module, module.initialize_weights)
    module.main = _run_on_the_machine(module.main, skip_cpu_compile=True)
    module.setup = _data_parallel_without_a_gpu(module, module.setup)


def _attention_classes() -> tuple[type, ...]:
    """Every registered attention module class, litgpt's included (the classes whose `proj` pretrain scales)."""
    return tuple(registry.attention_class(name) for name in registry.VARIANTS)


def _every_attention_class_scaled(module: ModuleType, litgpt_initialize_weights):
    """litgpt's GPT-NeoX initialisation, with the output-projection rule applied to every attention class.

    litgpt 0.5.13's ``initialize_weights`` (pretrain.py) draws embeddings and linear layers from
    N(0, sqrt(2 / (5 n_embd))) and the output projections ``proj`` of ``LLaMAMLP`` and ``CausalSelfAttention``
    from N(0, 1 / (sqrt(n_embd) n_layer)), testing ``isinstance(mod, (LLaMAMLP, CausalSelfAttention))`` with
    the module's global name. MLA is not a ``CausalSelfAttention``, so it would start from another init than
    MHA. While litgpt's own function runs, that name is bound to the tuple of every registered attention class
    (``isinstance`` accepts nested tuples), so the same rule reaches them all; nothing of litgpt's is copied.
    """

    @functools.wraps(litgpt_initialize_weights)
    def initialize_weights(fabric, model, n_layer: int, n_embd: int) -> None:
        litgpt_class = module.CausalSelfAttention
        module.CausalSelfAttention = _attention_classes()
        try:
            litgpt_initialize_weights(fabric, model, n_layer, n_embd)
        finally:
            module.CausalSelfAttention = litgpt_class

    return initialize_weights


def _fabric_precision(fabric) -> str | None:
    """The precision string Fabric runs with ("bf16-mixed", "32-true", ...)."""
    return getattr(fabric.strategy.precision, "precision", None)


def _run_on_the_machine(litgpt_main, skip_cpu_compile: bool = False):
    """Wraps a training script's ``main(fabric, ...)``: the bf16 warning, and no ``torch.compile`` on the CPU.

    On the CPU, litgpt pretrain's ``torch.compile(model)`` costs 20-40 s before the first step and gives no
    speed afterwards (pythia-14m, 98,304 tokens: 97 s with it, 60 s without, identical losses); its slow
    first iterations also make litgpt's first ETA several times too long. So CPU runs execute eagerly
    (``torch._dynamo.config.disable`` while ``main`` runs), unless ``LITGPT_MKA_CPU_COMPILE=1``.
    """

    @functools.wraps(litgpt_main)
    def main(fabric, *args, **kwargs):
        on_cpu = fabric.device.type == "cpu"
        warn_if_emulated_bf16(_fabric_precision(fabric), fabric.device.type)
        if not (skip_cpu_compile and on_cpu) or os.environ.get(CPU_COMPILE_ENV_VAR) == "1":
            return litgpt_main(fabric, *args, **kwargs)
        import torch._dynamo

        fabric.print(f"litgpt-mka: training on the CPU without torch.compile ({CPU_COMPILE_ENV_VAR}=1 keeps it)")
        with torch._dynamo.config.patch(disable=True):
            return litgpt_main(fabric, *args, **kwargs)

    return main


def _data_parallel_without_a_gpu(module: ModuleType, litgpt_setup):
    """litgpt pretrain's ``setup``; without CUDA, several processes train with DDP over gloo instead of FSDP.

    litgpt 0.5.13's ``setup`` passes ``FSDPStrategy(auto_wrap_policy={Block}, ...)`` to ``L.Fabric`` whenever
    ``devices * num_nodes > 1``, and Lightning refuses FSDP on a CPU. While litgpt's own ``setup`` runs on a
    machine without CUDA, the ``L`` it reads is bound to a namespace whose ``Fabric`` is
    :func:`_fabric_without_fsdp`; ``L`` appears nowhere else in litgpt's pretrain code but in type hints. With
    CUDA, nothing changes. ``pretrain.initialize_weights`` still tests the real ``FSDPStrategy`` class, so under
    DDP it initialises the weights itself, as it does on one device.
    """

    @functools.wraps(litgpt_setup)
    def setup(*args, **kwargs):
        if torch.cuda.is_available():
            return litgpt_setup(*args, **kwargs)
        lightning = module.L
        module.L = SimpleNamespace(Fabric=_fabric_without_fsdp)
        try:
            return litgpt_setup(*args, **kwargs)
        finally:
            module.L = lightning

    return setup


def _fabric_without_fsdp(*args, strategy="auto", **kwargs):
    """``L.Fabric(...)``, with an ``FSDPStrategy`` replaced by ``DDPStrategy`` over gloo (the run prints it).

    DDP keeps the whole model on every process and averages gradients; each rank reads an equal, disjoint share
    of every global batch (``litgpt_mka.data.TextCorpus``: windows ``rank::world_size``), so a run on N processes
    takes the steps of one process whose micro-batch is N times larger. Checkpoints are full, saved by rank 0.
    """
    if not isinstance(strategy, FSDPStrategy):
        return L.Fabric(*args, strategy=strategy, **kwargs)
    fabric = L.Fabric(*args, strategy=DDPStrategy(process_group_backend="gloo"), **kwargs)
    fabric.print(
        f"litgpt-mka: no CUDA device, so {fabric.world_size} processes train with DDP over gloo in place of"
        " litgpt's FSDP (which needs GPUs): every process holds the whole model and reads a disjoint share of each"
        " global batch; checkpoints are litgpt's full ones."
    )
    return fabric
