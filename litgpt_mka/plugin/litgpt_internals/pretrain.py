"""``litgpt.pretrain``: the same initialisation for every variant, and training on the machine at hand.

``extend_pretrain_module``
    ``initialize_weights`` (GPT-NeoX init) scales the output projection of ``CausalSelfAttention`` only;
    wrapped, litgpt's own function scales the output projection ``proj`` of every block's attention module,
    whatever its class, the same way, so that comparisons between variants are fair. ``main`` is wrapped
    (:func:`_run_on_the_machine`): on the CPU it warns when bf16 is asked of a CPU that emulates it, and it
    skips litgpt's ``torch.compile(model)`` (``LITGPT_MKA_CPU_COMPILE=1`` keeps it). Everything else is
    litgpt's code path. The fine-tuning scripts' ``main`` get the same wrapper, without the compile part
    (``finetune.py`` here).

    ``setup`` is wrapped (:func:`_own_fabric`): with ``--devices`` x ``--num_nodes`` > 1 litgpt
    builds an ``FSDPStrategy``, which Lightning refuses without CUDA; on a machine without CUDA the Fabric that
    ``setup`` creates gets ``DDPStrategy(process_group_backend="gloo")`` in its place, and says so in the run's
    first lines. Everything after (``fabric.launch``, the data split across ranks, checkpoints, ``--resume``) is
    litgpt's multi-process code path unchanged.

Metrics in a CSV file beside the run's logger (``LITGPT_MKA_METRICS_CSV=DIR``; ``litgpt-mka compare`` sets it for
its runs)
    litgpt pretrain sends its metrics to the one logger ``--logger_name`` names (``L.Fabric(loggers=[logger])``).
    With the variable set, that Fabric gets a second logger, ``CSVLogger(root_dir=DIR, name="csv")`` (litgpt's own
    CSV logger's arguments: ``DIR/csv/version_*/metrics.csv``), unless the first is a CSV logger already. The run's
    logger stays first, so it is ``fabric.logger`` (the hyperparameters go to it, as without the variable); every
    ``fabric.log_dict`` reaches both. So compare reads its throughput and loss curve from the CSV file while a
    user's TensorBoard or W&B logger sees the run as ``litgpt pretrain`` would show it.

Paired initialisation (``LITGPT_MKA_PAIRED_INIT=1``; ``litgpt-mka compare --paired`` sets it for its runs)
    litgpt draws every initial value from one global random stream, in module order, so the same ``--seed`` gives
    two architectures different values even for the parameters they share (embeddings, MLPs, norms, head): one
    extra or wider attention weight early on shifts every later draw. With the variable set, each module that owns
    parameters initialises them from a stream of its own (:func:`pair_initialisations`), seeded from (seed, the
    module's qualified name, its own parameters' names and shapes); so for a seed, every module that two variants
    share by name and parameter shapes starts from the same values, and a variant's own modules (MLA's latent
    projections, MKA's router and memory) from their own streams. Same distributions as litgpt's init (the same
    ``reset_parameters``, only another generator state). The seed is the one ``fabric.seed_everything(seed)``
    gave torch just before (``torch.initial_seed()``). The streams are bound to the modules' ``reset_parameters``,
    so FSDP's meta-device materialisation, which calls them later, module by module, draws the same values.
    Unset (the default for plain ``litgpt pretrain``), the initialisation is litgpt's, draw for draw: a user's
    ``--seed`` keeps giving the weights it gave before the package was installed (for litgpt's own architectures;
    a config with litgpt's ``latent_attention`` and no ``attention_class_name`` builds this package's MLA, the
    compressed cache, whose output projection starts scaled as every variant's here). Parameters on a device other
    than the CPU, CUDA or meta (MPS) are refused with the variable set: their generator is not the one seeded.
"""

import functools
import hashlib
import os
from types import ModuleType, SimpleNamespace

import lightning as L
import torch
from lightning.fabric.strategies import DDPStrategy, FSDPStrategy

import torch
from torch import nn

from litgpt_mka.attention import registry
from litgpt_mka.plugin.litgpt_internals import _first_time, check_litgpt_version
from litgpt_mka.precision import warn_if_emulated_bf16

CPU_COMPILE_ENV_VAR = "LITGPT_MKA_CPU_COMPILE"
PAIRED_INIT_ENV_VAR = "LITGPT_MKA_PAIRED_INIT"
METRICS_CSV_ENV_VAR = "LITGPT_MKA_METRICS_CSV"


def extend_pretrain_module(module: ModuleType) -> None:
    check_litgpt_version()
    if not _first_time(module):
        return
    module.initialize_weights = _every_attention_class_scaled(module, module.initialize_weights)
    module.main = _run_on_the_machine(module.main, skip_cpu_compile=True)
    module.setup = _own_fabric(module, module.setup)


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
        litgpt_class, litgpt_reset = module.CausalSelfAttention, module.reset_parameters
        paired, seed = os.environ.get(PAIRED_INIT_ENV_VAR) == "1", torch.initial_seed()
        module.CausalSelfAttention = _attention_classes()
        if paired:
            fabric.print(f"litgpt-mka: paired initialisation ({PAIRED_INIT_ENV_VAR}=1): each module draws from a"
                         f" stream of its own, seeded from (seed {seed}, its name, its parameters' shapes)")
            # litgpt assigns the init functions, then calls reset_parameters(model) (not under FSDP): the streams
            # are bound in between, and again after it returns, for FSDP's later materialisation
            module.reset_parameters = lambda model_: litgpt_reset(pair_initialisations(model_, seed))
        try:
            litgpt_initialize_weights(fabric, model, n_layer, n_embd)
        finally:
            module.CausalSelfAttention, module.reset_parameters = litgpt_class, litgpt_reset
        if paired:
            pair_initialisations(model, seed)

    return initialize_weights


def stream_seed(seed: int, module_name: str, own_parameters: list[tuple[str, torch.Size]]) -> int:
    """The seed of a module's own initialisation stream: sha256 of (seed, qualified name, parameter names and
    shapes), as a non-negative 63-bit integer."""
    key = f"{seed}|{module_name}|" + ";".join(f"{name}:{tuple(shape)}" for name, shape in own_parameters)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def pair_initialisations(model: nn.Module, seed: int) -> nn.Module:
    """Binds each module's ``reset_parameters`` (those that own parameters) to a random stream of its own.

    The bound function runs the module's current ``reset_parameters`` with torch's generators (the CPU's and
    those of the CUDA devices holding the module) seeded by :func:`stream_seed`, and restores their state
    afterwards. Binding twice is a no-op. Returns `model`.
    """
    for name, mod in model.named_modules():
        own = [(param_name, param.shape) for param_name, param in mod.named_parameters(recurse=False)]
        reset = getattr(mod, "reset_parameters", None)
        if own and callable(reset) and not hasattr(reset, "paired_stream"):
            mod.reset_parameters = _on_own_stream(mod, reset, stream_seed(seed, name, own))
    return model


def _cuda_indices(mod: nn.Module) -> list[int]:
    """The CUDA devices that hold the module's own parameters (none on the CPU and the meta device)."""
    devices = {p.device for p in mod.parameters(recurse=False) if p.device.type == "cuda"}
    return sorted(torch.cuda.current_device() if d.index is None else d.index for d in devices)


PAIRED_DEVICE_TYPES = ("cpu", "cuda", "meta")  # whose generators the paired streams seed (meta draws nothing)


def _on_own_stream(mod: nn.Module, reset, stream: int):
    def reset_parameters() -> None:
        other = sorted({p.device.type for p in mod.parameters(recurse=False)} - set(PAIRED_DEVICE_TYPES))
        if other:  # e.g. mps: its generator is neither seeded nor forked here, so the draws would not be paired
            raise ValueError(f"paired initialisation (LITGPT_MKA_PAIRED_INIT=1, compare --paired) supports parameters"
                             f" on {list(PAIRED_DEVICE_TYPES)}, not {other}; use compare --paired false there")
        cuda = _cuda_indices(mod)
        with torch.random.fork_rng(devices=cuda):  # only the generators seeded here, restored afterwards
            torch.default_generator.manual_seed(stream)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(stream)
            reset()

    reset_parameters.paired_stream = stream
    return reset_parameters


def _fabric_precision(fabric) -> str | None:
    """The precision string Fabric runs with ("bf16-mixed", "32-true", ...)."""
    return getattr(fabric.strategy.precision, "precision", None)


def _run_on_the_machine(litgpt_main, skip_cpu_compile: bool = False):
    """Wraps a training script's ``main(fabric, ...)``: the bf16 warning, and no ``torch.compile`` on the CPU.

    On the CPU, litgpt pretrain's ``torch.compile(model)`` spends its compilation before the first step and, at
    the presets' sizes, buys no speed afterwards (same losses; the timings: ``docs/precision.md``, "torch.compile
    on the CPU"); its slow first iterations also make litgpt's first ETA too long. So CPU runs execute eagerly
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


def _own_fabric(module: ModuleType, litgpt_setup):
    """litgpt pretrain's ``setup``; without CUDA, several processes train with DDP over gloo instead of FSDP; with
    ``LITGPT_MKA_METRICS_CSV``, the metrics also go to a CSV file (see the module docstring).

    litgpt 0.5.13's ``setup`` passes ``FSDPStrategy(auto_wrap_policy={Block}, ...)`` to ``L.Fabric`` whenever
    ``devices * num_nodes > 1``, and Lightning refuses FSDP on a CPU. While litgpt's own ``setup`` runs on a
    machine without CUDA, or with the variable set, the ``L`` it reads is bound to a namespace whose ``Fabric`` is
    :func:`_fabric`; ``L`` appears nowhere else in litgpt's pretrain code but in type hints. With CUDA and without
    the variable, nothing changes. ``pretrain.initialize_weights`` still tests the real ``FSDPStrategy`` class, so
    under DDP it initialises the weights itself, as it does on one device.
    """

    @functools.wraps(litgpt_setup)
    def setup(*args, **kwargs):
        if torch.cuda.is_available() and not os.environ.get(METRICS_CSV_ENV_VAR):
            return litgpt_setup(*args, **kwargs)
        lightning = module.L
        module.L = SimpleNamespace(Fabric=_fabric)
        try:
            return litgpt_setup(*args, **kwargs)
        finally:
            module.L = lightning

    return setup


def _fabric(*args, loggers=None, **kwargs):
    """``L.Fabric(...)`` with the metrics CSV logger added (:func:`with_metrics_csv`), and without CUDA through
    :func:`_fabric_without_fsdp`."""
    make = L.Fabric if torch.cuda.is_available() else _fabric_without_fsdp
    return make(*args, loggers=with_metrics_csv(loggers), **kwargs)


def with_metrics_csv(loggers: list | None) -> list | None:
    """`loggers` and, with ``LITGPT_MKA_METRICS_CSV=DIR`` set and no CSV logger among them,
    ``CSVLogger(root_dir=DIR, name="csv")`` after them (litgpt's ``choose_logger("csv")``, flushed every step)."""
    from lightning.fabric.loggers import CSVLogger

    folder = os.environ.get(METRICS_CSV_ENV_VAR)
    loggers = list(loggers or [])
    if not folder or any(isinstance(logger, CSVLogger) for logger in loggers):
        return loggers or None
    return [*loggers, CSVLogger(root_dir=folder, name="csv", flush_logs_every_n_steps=1)]


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
