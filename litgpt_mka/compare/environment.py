"""Where and with what a run happened: versions, machine and command line, for ``results.json``."""

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from litgpt_mka.compare.records import Environment


def utc_now() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def environment() -> Environment:
    """Versions of Python, torch, litgpt and litgpt-mka; OS, CPU model and count, GPU names."""
    import torch

    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        litgpt=package_version("litgpt"),
        litgpt_mka=package_version("litgpt-mka"),
        lightning=package_version("lightning"),
        platform=platform.platform(),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        gpus=gpu_names(),
        cuda=torch.version.cuda if torch.cuda.is_available() else None,
    )


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (program name without its folder), shell-quoted."""
    argv = sys.argv if argv is None else argv
    return shlex.join([os.path.basename(argv[0]), *argv[1:]])
