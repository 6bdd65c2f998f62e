"""The default precision that fits the machine: float32 on CPUs that only emulate bfloat16.

litgpt 0.5.13 (``litgpt.utils.get_default_supported_precision``) picks ``bf16-mixed`` for training and
``bf16-true`` for inference whenever no CUDA GPU is present, on every CPU. PyTorch computes bfloat16 on a
CPU without bf16 instructions by emulation, and that is an order of magnitude slower than float32, while a
CPU with bf16 instructions runs bf16 about as fast as float32 or faster (the timings, per machine and preset:
``docs/precision.md``, "Measured").

The default therefore depends on the machine (:func:`default_precision`):

* a CUDA GPU or Apple's MPS: litgpt's choice, unchanged;
* a CPU with native bf16 (x86 ``avx512_bf16`` or ``amx_bf16``; Arm ``FEAT_BF16``, ``bf16`` in
  ``/proc/cpuinfo``): litgpt's choice, bf16;
* any other CPU: ``32-true``, said once per process on stderr with the flag that overrides it.

Detection reads the CPU's feature flags (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), no timing: it is
instant and the same on a loaded machine. An explicit ``--precision`` is always honoured;
:func:`warn_if_emulated_bf16` warns when it asks a CPU for bf16 that the CPU emulates.
"""

import functools
import platform
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

# litgpt's precision strings that evaluation (litgpt-mka evaluate, lm_eval --model litgpt-mka) accepts -> the torch
# dtype name of the weights and the KV cache
EVALUATION_PRECISIONS = {"32-true": "float32", "bf16-true": "bfloat16", "16-true": "float16"}

# CPU feature flags that mean bfloat16 arithmetic in hardware (Linux /proc/cpuinfo names)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# macOS: sysctl keys that are 1 on Apple silicon with FEAT_BF16 (M2 and later)
_MACOS_BF16_SYSCTL = "hw.optional.arm.FEAT_BF16"

# what the messages say of emulated bf16; the measured slow-downs are in docs/precision.md ("Measured")
EMULATED_BF16_SLOWDOWN = "an order of magnitude slower than float32"
MEASUREMENTS_PAGE = "docs/precision.md"
CPU_FALLBACK_PRECISION = "32-true"


def has_native_bf16(cpu_flags: Iterable[str]) -> bool:
    """True when the CPU feature flags include a bfloat16 instruction set (see `NATIVE_BF16_FLAGS`)."""
    return not NATIVE_BF16_FLAGS.isdisjoint(cpu_flags)


def parse_cpuinfo_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's text: x86's ``flags`` lines, Arm's ``Features`` lines."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (empty when the platform does not tell)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return parse_cpuinfo_flags(cpuinfo.read_text(errors="replace"))
    if platform.system() == "Darwin":
        try:
            answer = subprocess.run(["sysctl", "-n", _MACOS_BF16_SYSCTL], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        return frozenset({"bf16"}) if answer.stdout.strip() == "1" else frozenset()
    return frozenset()


def cpu_description(flags: Iterable[str]) -> str:
    """What was detected, in words, for the log line and the warning."""
    found = sorted(NATIVE_BF16_FLAGS.intersection(flags))
    if found:
        return f"this CPU has native bfloat16 ({', '.join(found)})"
    return f"this CPU has no native bfloat16 (none of {', '.join(sorted(NATIVE_BF16_FLAGS))} in its feature flags)"


def default_precision(
    training: bool, litgpt_default: Callable[[bool], str], *, accelerator: str, native_bf16: bool
) -> str:
    """The precision to use when the user left it unset.

    `accelerator` is "cuda", "mps" or "cpu" (what training would run on); `litgpt_default` is litgpt's
    ``get_default_supported_precision``. Only a CPU without native bf16 changes litgpt's answer.
    """
    if accelerator != "cpu" or native_bf16:
        return litgpt_default(training)
    return CPU_FALLBACK_PRECISION


def available_accelerator() -> str:
    """The accelerator litgpt's ``devices: auto`` would pick: "cuda", "mps" or "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


@functools.cache
def _say_once(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_default_precision(training: bool, litgpt_default: Callable[[bool], str]) -> str:
    """`default_precision` for this machine; on a CPU that emulates bf16, one line on stderr says why."""
    flags = cpu_flags()
    accelerator = available_accelerator()
    precision = default_precision(training, litgpt_default, accelerator=accelerator, native_bf16=has_native_bf16(flags))
    if precision != litgpt_default(training):
        emulated = litgpt_default(training)
        _say_once(
            f"litgpt-mka: {cpu_description(flags)}, so the default precision is {precision} instead of litgpt's"
            f" {emulated} (emulated bfloat16 is {EMULATED_BF16_SLOWDOWN}: {MEASUREMENTS_PAGE}); pass"
            f" --precision {emulated} to use it anyway."
        )
    return precision


def warn_if_emulated_bf16(precision: str | None, device_type: str, flags: Iterable[str] | None = None) -> bool:
    """Warns when `precision` asks a CPU for bfloat16 that it emulates; True when it warned.

    The run goes on as asked: an explicit precision is always honoured.
    """
    if device_type != "cpu" or not str(precision).startswith("bf16"):
        return False
    flags = cpu_flags() if flags is None else frozenset(flags)
    if has_native_bf16(flags):
        return False
    warnings.warn(
        f"precision {precision} on the CPU: {cpu_description(flags)}, so PyTorch emulates it,"
        f" {EMULATED_BF16_SLOWDOWN} ({MEASUREMENTS_PAGE}). --precision {CPU_FALLBACK_PRECISION} avoids it.",
        stacklevel=2,
    )
    return True
