"""The Python of ``benchmarks/gpu.sh``'s stages 1 and 2: each subcommand appends one markdown section to ``--out``.

    python benchmarks/gpu_checks.py versions --out stage1.md
    python benchmarks/gpu_checks.py backends --size 70m --dtype bfloat16 --out stage1.md
    python benchmarks/gpu_checks.py fsdp --size 70m --dtype bfloat16 --steps 3 --out stage1.md
    python benchmarks/gpu_checks.py decode-speed --size 70m --dtype bfloat16 --out stage2.md
    python benchmarks/gpu_checks.py decode-growth --size 70m --dtype bfloat16 --steps 512 --out stage2.md

Every subcommand runs on ``--device`` (``auto``: CUDA where present, else the CPU; ``cpu`` only checks the
script) with random weights of the ``config_hub/pretrain/pythia-{size}-{variant}.yaml`` presets, and writes its
table row by row (each row flushed), so a run cut off by a time limit still leaves the rows it finished.

``versions``: torch, CUDA, cuDNN, the GPU and its compute capability, litgpt, litgpt-mka, lightning, and
which SDPA backends torch has switched on.

``backends``: the SDPA kernel each attention call site reaches, per variant (variant x call site -> kernel),
read from the op names ``torch.profiler`` records (one ``aten::_scaled_dot_product_*`` op per SDPA call,
under the public ``aten::scaled_dot_product_attention``). Call sites, on a batch of B = 2 rows:

    training           model(idx)                                      no cache, (B, T) tokens
    prefill            model(prompt, arange(P), input_pos_maxp1=P)     fresh cache, P prompt tokens
    decode             model(tok, tensor([P]), input_pos_maxp1=P+1)    litgpt generate's step, whole cache
    decode rows (B,1)  model(tok, tensor([[P], [P-1]]), ...=P+1)       rows at different positions
    decode, no maxp1   model(tok, tensor([P]))                         litgpt batched_generate_fn's step
    int8-cache decode  as decode, kv_cache_quantization: int8           (MHA through our grouped class)

A cell names each kernel and how many calls reached it (``flash x6``: six calls, one per layer), and in brackets
the site :mod:`litgpt_mka.attention.dispatch` named for each call (``outside dispatch``: an SDPA call it did not
make); ``no SDPA`` means the call site computed its attention without ``scaled_dot_product_attention``. A line
after the table names every cell that reached the math fallback, an unknown kernel or an error ("none" on a GPU
is what the dispatch module promises for the presets).

``fsdp``: torch FSDP2 (``fully_shard`` per ``Block``, then the whole model) on one process (world size 1:
NCCL on CUDA, gloo on the CPU), a few AdamW steps of each preset on one fixed random batch, against the same
model unsharded from the same weights; the losses (cross-entropy in float32 of the model's logits) of both.

``decode-speed``: tokens/s of greedy cached decode (batch x context, ``litgpt generate``'s step) with the
package's default SDPA policy (:mod:`litgpt_mka.attention.dispatch`) and with each backend forced on every
call site through ``litgpt_mka.attention.dispatch.override_backends``. A forced backend that cannot run a call
site reads ``no kernel``. Forcing also opens torch's ``sdpa_kernel`` around the step, so that SDPA calls outside
the dispatch module (MHA's preset is litgpt's own ``CausalSelfAttention``) are forced too; their "default" is
PyTorch's own choice.

``decode-growth``: ``--steps`` decode steps in one run, key length growing by one each step, with the default
policy and with cuDNN forced: step time percentiles and memory before and after (``memory_allocated``,
``memory_reserved`` and the device's used memory from ``mem_get_info``, which also counts what cuDNN allocates
outside torch). A kernel plan built per sequence length shows as slow steps throughout and as growing memory.
"""

import argparse
import contextlib
import copy
import importlib.metadata
import os
import platform
import re
import socket
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import GPT
from torch.nn.attention import SDPBackend

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt_mka.attention import registry
from litgpt_mka.attention.dispatch import override_backends, record_calls
from litgpt_mka.measure.decode_speed import prefill_random_prompt, time_decode_steps
from litgpt_mka.presets import load_pretrain_yaml
from litgpt_mka.validation import DTYPE_NAMES, torch_dtype

CONFIG_HUB = Path(__file__).resolve().parents[1] / "config_hub" / "pretrain"
VARIANTS = ("mha", "gqa", "mqa", "mla", "mka", "fmka")
# the op each SDPA backend records under aten::scaled_dot_product_attention, and its short name
KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
SDPA_OP = "aten::scaled_dot_product_attention"
FORCED = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


# ------------------------------------------------------------------------------------------------ models
def model_config(size: str, variant: str, quantization: str | None = None, **overrides) -> Config:
    """The preset ``pythia-{size}-{variant}``'s model config; with a cache quantization, in the class that
    quantizes the preset's cache on the same weights (MHA: our grouped class in place of litgpt's)."""
    settings = {**load_pretrain_yaml(CONFIG_HUB / f"pythia-{size}-{variant}.yaml")["model_config"], **overrides}
    if quantization is None:
        return Config(**settings)
    name = registry.quantizable_attention_class(Config(**settings))
    return Config(**{**settings, "attention_class_name": name, "kv_cache_quantization": quantization})


def build_model(config: Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    with torch.device(device):
        return GPT(config).to(dtype).eval()


def random_tokens(config: Config, batch: int, length: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length), generator=generator).to(device)  # (B, T)


# ---------------------------------------------------------------------------------------------- report
class Section:
    """A markdown section appended to a file line by line, each line flushed (a cut-off run keeps its rows)."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
        if self.path is not None:
            with self.path.open("a") as file:
                file.write("".join(line + "\n" for line in lines))

    def table(self, header: list[str]) -> None:
        self.write("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")

    def row(self, cells: list[str]) -> None:
        self.write("| " + " | ".join(cells) + " |")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def short_error(error: Exception) -> str:
    """The first line of an error, shortened for a table cell (no '|', which would split the cell)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "No available kernel" in text or "No viable backend" in text:
        return "no kernel"
    return (type(error).__name__ + ": " + text)[:80].replace("|", "/")


# -------------------------------------------------------------------------------------------- versions
def versions(args: argparse.Namespace, section: Section) -> None:
    """Raises SystemExit(3) with ``--require_device`` when ``--device`` is not there (CUDA absent)."""
    if args.require_device and resolve(args)[0].type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(3)

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    lines = [
        f"- python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda},"
        f" cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'unavailable'}",
        f"- litgpt {version('litgpt')}, litgpt-mka {version('litgpt-mka')}, lightning {version('lightning')}",
        "- SDPA backends switched on: " + ", ".join(
            f"{name} {getattr(torch.backends.cuda, f'{name}_sdp_enabled')()}"
            for name in ("flash", "cudnn", "mem_efficient", "math")
        ),
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            lines.append(
                f"- GPU {index}: {properties.name}, compute capability {properties.major}.{properties.minor},"
                f" {properties.total_memory / 2**30:.1f} GiB"
            )
    else:
        lines.append(f"- no CUDA device; {describe_device(torch.device('cpu'))}")
    section.write("## Versions", "", *lines, "")


# -------------------------------------------------------------------------------------------- backends
def sdpa_kernels(call: Callable[[], object], grad: bool = False) -> str:
    """Runs `call` once under the profiler (with autograd recording where `grad`) and under
    :func:`litgpt_mka.attention.dispatch.record_calls`; a table cell: how many SDPA calls reached each kernel
    (short names; ``?`` for none of :data:`KERNELS`) and, in brackets, the dispatch site of each call (``outside
    dispatch``: an SDPA call the dispatch module did not make, e.g. litgpt's own ``CausalSelfAttention``)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler, record_calls() as calls:
        with torch.set_grad_enabled(grad):
            call()
    kernels, sdpa_calls = Counter(), 0
    for event in profiler.key_averages():
        if event.key in KERNELS:
            kernels[KERNELS[event.key]] += event.count
        elif event.key == SDPA_OP:
            sdpa_calls += event.count
    kernels["?"] = sdpa_calls - sum(kernels.values())
    sites = Counter(recorded.site.value for recorded in calls)
    sites["outside dispatch"] = sdpa_calls - sum(sites.values())
    if not sdpa_calls:
        return "no SDPA"
    return f"{counted(kernels)} [{counted(sites)}]"


def counted(counts: Counter) -> str:
    """``name xN`` for every positive count, by name."""
    return ", ".join(f"{name} x{count}" for name, count in sorted(counts.items()) if count > 0)


def call_sites(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[Callable, str | None]]:
    """Per call site: a function that prepares a model of the variant (its cache) and returns the call to record,
    and the cache quantization that model needs."""
    batch, prompt = 2, args.prompt

    def cached(model: GPT) -> torch.Tensor:
        with torch.no_grad():
            return prefill_random_prompt(model, batch, prompt, max_seq_length=prompt + 1)  # (B, 1)

    def training(model):
        idx = random_tokens(model.config, batch, args.train_length, device)
        return lambda: model.train()(idx)

    def prefill(model):
        model.eval().set_kv_cache(batch_size=batch, max_seq_length=prompt, device=device, dtype=args.torch_dtype)
        idx = random_tokens(model.config, batch, prompt, device)
        return lambda: model(idx, torch.arange(prompt, device=device), input_pos_maxp1=prompt)

    def decode(model):
        token = cached(model)
        return lambda: model(token, torch.tensor([prompt], device=device), input_pos_maxp1=prompt + 1)

    def decode_rows(model):
        token = cached(model)
        positions = torch.tensor([[prompt], [prompt - 1]], device=device)  # (B, 1): row 1 rewrites its last position
        return lambda: model(token, positions, input_pos_maxp1=prompt + 1)

    def decode_without_maxp1(model):
        token = cached(model)
        return lambda: model(token, torch.tensor([prompt], device=device))

    return {
        "training": (training, None),
        "prefill": (prefill, None),
        "decode": (decode, None),
        "decode rows (B,1)": (decode_rows, None),
        "decode, no maxp1": (decode_without_maxp1, None),
        "int8-cache decode": (decode, "int8"),
    }


def backends(args: argparse.Namespace, section: Section) -> None:
    device, dtype = resolve(args)
    sites = call_sites(args, device)
    section.write(
        f"## SDPA kernel per call site: pythia-{args.size} presets, {args.dtype}, {describe_device(device)}", "",
        f"torch.profiler op names; B = 2, training T = {args.train_length} (train mode, autograd on), prompt P ="
        f" {args.prompt}; `kernel xN`: N SDPA calls reached it; [site xN]: litgpt_mka.attention.dispatch's site of"
        " those calls (`outside dispatch`: not made by it); `no SDPA`: attention without"
        " scaled_dot_product_attention.", "",
    )
    section.table(["variant"] + list(sites))
    unfused = []  # "variant / site" of the cells whose calls reached no fused kernel (or failed)
    for variant in args.variants:
        cells, models = [variant], {}
        for name, (prepare, quantization) in sites.items():
            try:
                if quantization not in models:
                    models[quantization] = build_model(model_config(args.size, variant, quantization), device, dtype)
                cells.append(sdpa_kernels(prepare(models[quantization]), grad=name == "training"))
            except Exception as error:  # noqa: BLE001  (the table reports it; the other cells still run)
                cells.append(f"error: {short_error(error)}")
            if re.search(r"\b(math|\?) x|^error", cells[-1]):
                unfused.append(f"{variant} / {name}")
        section.row(cells)
    section.write("", f"Math fallback, unknown kernel or error at: {', '.join(unfused) or 'none'}.", "")


# ------------------------------------------------------------------------------------------------ fsdp
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def one_process_group(device: torch.device) -> Iterator[None]:
    """A process group of world size 1 on this machine (NCCL on CUDA, gloo on the CPU)."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_losses(model: GPT, batch: torch.Tensor, steps: int, lr: float) -> list[float]:
    """AdamW steps on one batch (B, T + 1); the float32 cross-entropy before each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
    losses = []
    for _ in range(steps):
        logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def fsdp(args: argparse.Namespace, section: Section) -> None:
    from torch.distributed.fsdp import fully_shard

    device, dtype = resolve(args)
    section.write(
        f"## One-process FSDP2 against unsharded: pythia-{args.size} presets, {args.dtype},"
        f" {describe_device(device)}", "",
        f"fully_shard per Block, then the model; world size 1; AdamW lr {args.lr}, {args.steps} steps on one random"
        f" batch of {args.batch} x {args.train_length}; float32 cross-entropy before each step.", "",
    )
    section.table(["variant", "unsharded losses", "FSDP losses", "max abs difference", "seconds"])
    with one_process_group(device):
        for variant in args.variants:
            started = time.perf_counter()
            try:
                reference = build_model(model_config(args.size, variant), device, dtype).train()
                sharded = copy.deepcopy(reference)
                for block in sharded.transformer.h:
                    fully_shard(block)
                fully_shard(sharded)
                batch = random_tokens(reference.config, args.batch, args.train_length + 1, device)
                plain = train_losses(reference, batch, args.steps, args.lr)
                shard = train_losses(sharded, batch, args.steps, args.lr)
                difference = f"{max(abs(a - b) for a, b in zip(plain, shard)):.2e}"
                cells = [" ".join(f"{x:.4f}" for x in plain), " ".join(f"{x:.4f}" for x in shard), difference]
            except Exception as error:  # noqa: BLE001  (the table reports it; the other variants still run)
                cells = [f"error: {short_error(error)}", "", ""]
            section.row([variant, *cells, f"{time.perf_counter() - started:.1f}"])
    section.write("")


# ---------------------------------------------------------------------------------------------- decode
def policies(names: list[str]) -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """Per policy name, a function returning its context manager: "default" first (the dispatch module's own
    choice, whether named or not), then each key of :data:`FORCED` in `names`, forced on every call site."""
    chosen = {"default": contextlib.nullcontext}
    for name in names:
        if name != "default":
            chosen[name] = lambda backend=FORCED[name]: forced(backend)
    return chosen


@contextlib.contextmanager
def forced(backend: SDPBackend) -> Iterator[None]:
    """`backend` on every SDPA call: the dispatch module's sites, and (torch's ``sdpa_kernel``) any other."""
    with override_backends([backend]), torch.nn.attention.sdpa_kernel([backend]):
        yield


def timed_decode(
    model: GPT, token: torch.Tensor, position: int, warmup: int, steps: int, policy: Callable,
    seconds: float = float("inf"), chunk: int = 8,
) -> list[float]:
    """Greedy decode steps from `position` on a filled cache under `policy`: `warmup` untimed, then up to
    `steps` timed ones, in chunks of `chunk`, stopping early once `seconds` have passed. Step seconds."""
    step_seconds, started = [], time.perf_counter()
    with policy():
        time_decode_steps(model, token, position, warmup, 0)
        position += warmup
        while len(step_seconds) < steps and time.perf_counter() - started < seconds:
            count = min(chunk, steps - len(step_seconds))
            step_seconds += time_decode_steps(model, token, position, 0, count)
            position += count
    return step_seconds


def decode_rows_of(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(variant, cache quantization) per table row: every variant, then each with each quantization."""
    return [(variant, None) for variant in args.variants] + [
        (variant, quantization) for quantization in args.kv_cache_quantizations for variant in args.variants
    ]


def decode_speed(args: argparse.Namespace, section: Section) -> None:
    device, dtype = resolve(args)
    chosen = policies(args.policies)
    section.write(
        f"## Decode tokens/s, default policy against forced backends: pythia-{args.size} presets, {args.dtype},"
        f" {describe_device(device)}", "",
        f"batch {args.batch}, context {args.context}, {args.warmup} untimed + {args.steps} timed greedy steps"
        f" (litgpt generate's step); tokens/s = batch / median step (ratio to the default policy). Forced with dispatch.override_backends and torch's sdpa_kernel.",
        "",
    )
    section.table(["variant", *chosen])
    for variant, quantization in decode_rows_of(args):
        model = build_model(model_config(args.size, variant, quantization, block_size=args.context + args.warmup
                                         + args.steps), device, dtype)
        cells, default = [variant + (f", {quantization} cache" if quantization else "")], None
        for name, policy in chosen.items():
            try:
                length = args.context + args.warmup + args.steps
                token = prefill_random_prompt(model, args.batch, args.context, length, copy_one_row=True)
                step_seconds = timed_decode(model, token, args.context, args.warmup, args.steps, policy)
                model.clear_kv_cache()
                rate = args.batch / statistics.median(step_seconds)
                default = rate if name == "default" else default
                cells.append(f"{rate:.1f}" + (f" ({rate / default:.2f}x)" if default else ""))
            except Exception as error:  # noqa: BLE001  (a backend that cannot run the call site is a finding)
                cells.append(short_error(error))
        section.row(cells)
    section.write("")


def memory_now(device: torch.device) -> tuple[float, float, float]:
    """MiB allocated by torch, reserved by torch's allocator, and used on the device (everything, cuDNN too)."""
    if device.type != "cuda":
        return float("nan"), float("nan"), float("nan")
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20, (total - free) / 2**20


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def decode_growth(args: argparse.Namespace, section: Section) -> None:
    device, dtype = resolve(args)
    chosen = policies(args.policies)
    section.write(
        f"## Decode over {args.steps} steps, memory and step times: pythia-{args.size} presets, {args.dtype},"
        f" {describe_device(device)}", "",
        f"batch {args.batch}, prompt {args.context}, one untimed step, then {args.steps} timed greedy steps in one"
        f" run (key length {args.context + 2} to {args.context + args.steps + 1}); each run stops after"
        f" {args.seconds:g} s. Memory growth in MiB from after the untimed step to after the last: torch allocated /"
        " torch reserved /"
        f" device used (mem_get_info; not on the CPU). Forced with dispatch.override_backends and torch's sdpa_kernel.", "",
    )
    section.table(["variant", "policy", "steps", "ms p50", "p90", "p99", "max", "first 32 / last 32 mean ms",
                   "memory growth MiB"])
    for variant in args.variants:
        config = model_config(args.size, variant, block_size=args.context + args.steps + 2)
        model = build_model(config, device, dtype)
        for name, policy in chosen.items():
            cells = [variant, name]
            try:
                token = prefill_random_prompt(model, args.batch, args.context, config.block_size, copy_one_row=True)
                timed_decode(model, token, args.context, 1, 0, policy)  # one step: the policy's first allocations
                before = memory_now(device)
                step_seconds = timed_decode(model, token, args.context + 1, 0, args.steps, policy, args.seconds)
                after = memory_now(device)
                model.clear_kv_cache()
                ms = [s * 1e3 for s in step_seconds]
                head, tail = ms[:32], ms[-32:]
                cells += [str(len(ms))] + [f"{percentile(ms, q):.2f}" for q in (0.5, 0.9, 0.99, 1.0)]
                cells.append(f"{statistics.mean(head):.2f} / {statistics.mean(tail):.2f}")
                growth = " / ".join(f"{a - b:+.1f}" for a, b in zip(after, before))
                cells.append(growth if device.type == "cuda" else "n/a (CPU)")
            except Exception as error:  # noqa: BLE001  (a backend that cannot run the call site is a finding)
                cells.append(short_error(error))
            section.row(cells)
    section.write("")


# -------------------------------------------------------------------------------------------------- cli
def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.torch_dtype = torch_dtype("--dtype", args.dtype)
    return device, args.torch_dtype


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, function: Callable, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(function=function)
        sub.add_argument("--out", type=Path, default=None, help="markdown file to append the section to")
        sub.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
        sub.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bfloat16")
        sub.add_argument("--size", choices=("14m", "70m", "160m"), default="70m")
        sub.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
        return sub

    sub = command("versions", versions, "torch/CUDA/cuDNN/litgpt versions and the GPU")
    sub.add_argument("--require_device", action="store_true", help="exit with status 3 when --device is absent")
    sub = command("backends", backends, "the SDPA kernel of every variant x call site")
    sub.add_argument("--prompt", type=int, default=256, help="prompt tokens in the cache (default: 256)")
    sub.add_argument("--train_length", type=int, default=512, help="training forward tokens (default: 512)")
    sub = command("fsdp", fsdp, "one-process FSDP2 steps against the unsharded model")
    sub.add_argument("--steps", type=int, default=3)
    sub.add_argument("--batch", type=int, default=4)
    sub.add_argument("--train_length", type=int, default=512)
    sub.add_argument("--lr", type=float, default=1e-3)
    for name, function, help, steps in (
        ("decode-speed", decode_speed, "tokens/s, default policy against forced backends", 64),
        ("decode-growth", decode_growth, "memory and step times over many decode steps", 512),
    ):
        sub = command(name, function, help)
        sub.add_argument("--batch", type=int, default=8)
        sub.add_argument("--context", type=int, default=1024, help="prompt tokens before decoding (default: 1024)")
        sub.add_argument("--steps", type=int, default=steps, help=f"timed decode steps (default: {steps})")
        sub.add_argument("--policies", nargs="+", choices=["default", *FORCED], default=None)
    commands.choices["decode-speed"].add_argument("--warmup", type=int, default=4)
    commands.choices["decode-speed"].add_argument(
        "--kv_cache_quantizations", nargs="*", default=["int8"], help="rows with these caches too (default: int8)"
    )
    commands.choices["decode-growth"].add_argument("--seconds", type=float, default=20.0,
                                                   help="stop a run after this many seconds (default: 20)")
    args = parser.parse_args(argv)
    if getattr(args, "policies", 0) is None:
        args.policies = ["default", *FORCED] if args.command == "decode-speed" else ["default", "cudnn"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    args.function(args, Section(args.out))


if __name__ == "__main__":
    main()
