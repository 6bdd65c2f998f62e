"""Capacity benchmark: how many sequences fit a KV-cache budget, and how fast litgpt's batched generation decodes them.

    python benchmarks/capacity.py                                  # pythia-70m, context 2048, 0.25 GiB of cache
    python benchmarks/capacity.py --threads 2 --out docs/benchmarks/capacity-70m-cpu-fp32.md
    python benchmarks/capacity.py --device cuda --dtype bfloat16 --cache_budget_gib 8
    python benchmarks/capacity.py --size 14m --context 64 --cache_budget_gib 0.002 --rounds 1 --new_tokens 2

The question a serving user decides by (DeepSeek-V2's "maximum generation throughput", vLLM's "KV capacity"):
at a fixed memory budget for the KV cache, how many sequences of a given context fit, and how many tokens per
second does that batch decode?

Rows: the size's presets (``config_hub/pretrain/pythia-{size}-*.yaml``: MHA, GQA, MQA, MLA, MKA, FMKA) x the
cache quantizations (``--kv_cache_quantizations``: none, int8, int4 by default). An unquantized row runs the
preset's own class (MHA: litgpt's ``CausalSelfAttention``); a quantized row runs the class that quantizes that
preset's cache on the same weights (MHA: ``GroupedQueryAttention``; ``benchmarks/decode.py``'s rows). Weights
are random and the same tensors for every row of a size: each row's model is built from the same seed, then
every parameter whose name and shape MHA has (embedding, MLPs, norms, output head, and MHA-shaped attention
projections) is replaced by MHA's tensor; a preset's quantized rows share its unquantized row's tensors too.
The report lists the parameters of each preset's own (its attention); ``block_size`` is raised to fit.

Capacity, measured by building the caches. A row's cache at batch B is allocated by the model's own
``set_kv_cache(B, S)`` (S = ``--context`` + warm-up + new tokens, the positions one generation writes), then
fed what litgpt's batched generation feeds it: a 2-token prefill chunk and one decode step, both without
``input_pos_maxp1``. Its bytes are the storage bytes of every tensor reachable from the cache modules
(``litgpt_mka.measure.kv_cache_size.held_kv_cache_bytes``): keys and values, quantized codes, scales and
offsets, residual windows, MKA's ring of running sums, and the scratch workspace quantized caches read through
(allocated at their first read: for a prefill chunk it holds one layer's keys and values dequantized for all
B rows and S positions). The batch is the largest B whose bytes fit ``--cache_budget_gib``; B + 1 is built
too and shown to exceed it. The bytes right after ``set_kv_cache`` (no forward yet) are checked against the
analytic bytes of ``kv_cache_bytes`` (bytes per token x B x S + the per-sequence rings).

Decode, through litgpt 0.5.13's own ``litgpt.generate.base.batched_generate_fn`` (the function that generates
for a batch of prompts; ``litgpt serve`` and ``LLM.generate`` run one prompt at a time through ``generate``):
every row gets the same random prompt of ``--context`` tokens, greedy sampling (``temperature`` 0). One change
to the path, for time: its prefill (the first call, B rows x context tokens) runs on batch row 0 only (the same
call, with the output head on the last position only: ``decode_speed.last_position_logits_only``) and copies
row 0's cache to the other rows; the prompts being equal, the cache is the one the batch prefill writes, and
a batch-B prefill would cost B times more. The decode steps are litgpt's as they are: one forward of
(B, 1) tokens without ``input_pos_maxp1`` (so every step reads all S cache positions), then litgpt's
per-row sampling and ``.item()`` per row. ``--rounds`` interleaved rounds: in each, every row in turn allocates
its cache, prefills, decodes ``--warmup_tokens`` untimed and ``--new_tokens`` timed steps, and frees the cache;
a visit's sample is its median step (time between two tokens of the generator). Reported per row: tokens/s =
B / step, median over rounds [min-max], and the ratio to MHA's tokens/s; the model forward's share of the
step (forward hooks); and the peak memory of the visit: the process's peak resident set (Linux ``VmHWM``, reset
per visit through ``/proc/self/clear_refs``; it includes every row's shared weights, printed as the baseline)
on a CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

Prediction, from each row's own step at a tiny context (``--tiny_context`` prompt tokens, the same batch, decoded in
the same rounds the same way), as ``decode.py`` predicts:

    step(S) = step(tiny) + (cache bytes read(S) - cache bytes read(tiny)) / bandwidth + (FLOPs(S) - FLOPs(tiny)) / rate

The tiny step holds what does not grow with the context: the weights read once per step, a step's ~1,100 small
operators, litgpt's per-row sampling and ``.item()``; the two differences are what the longer cache adds. Cache bytes
read: bytes per token x B x positions (the whole cache: no ``input_pos_maxp1``). Bandwidth: a large tensor copy
timed in the same run (STREAM convention, bytes read + written per second, as ``decode.py``). FLOPs: the decode step
of the capacity probe at batch B, at both lengths, counted by torch's ``FlopCounterMode`` (matmuls, and SDPA with
the formula ``4 x queries x keys x head size``, CPU's kernel included). Matmul rate: a square matmul in the run's
dtype (``--matmul_size``: 1024 on a CPU, 4096 on CUDA), timed before and after, the better. Rows more than 25% from
their prediction are flagged: the longer cache costs them more than reading it at copy bandwidth and computing at
the matmul rate (a kernel that reads the cache below copy bandwidth, dequantization work the counter does not
count). The column "cache / bytes read" is cache bytes read / (weight bytes + cache bytes read): below 0.5, reading
the weights, not the cache, dominates the bytes of a step.

Publishability: ``decode.py``'s rule (load average before and after by ``litgpt_mka.measure.load``, at least
5 rounds).

Cost: the default (70m, fp32, 18 rows, 5 rounds of 2 + 8 steps at both contexts, budget 0.25 GiB: MHA fits 5
sequences of 2058 positions, int4 MQA 128) takes about 4 minutes on an idle 2-core CPU and about 1.5 GiB of resident memory
(the weights, 0.86 GiB, shared by every row); not yet run on a GPU.
"""

import argparse
import contextlib
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from litgpt.generate.base import batched_generate_fn
from litgpt.model import GPT
from torch.utils.flop_counter import FlopCounterMode

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt_mka.attention.quantization import DTYPES as QUANTIZATION_DTYPES
from litgpt_mka.measure.decode_speed import copy_first_row_of_every_cache, last_position_logits_only
from litgpt_mka.measure.kv_cache_size import held_kv_cache_bytes, kv_cache_bytes, kv_cache_bytes_per_token
from litgpt_mka.validation import DTYPE_NAMES, torch_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the decode benchmark beside this file
import decode  # noqa: E402  (its rows, bandwidth, device and publishability lines)

GIB, MIB = 2**30, 2**20
OFF_PREDICTION = 0.25  # a row further than this (relative) from its predicted tokens/s is flagged


# ------------------------------------------------------------------------------------------------ setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", choices=("14m", "70m", "160m"), default="70m", help="Pythia size (default: 70m)")
    parser.add_argument("--context", type=int, default=2048, help="prompt tokens per sequence (default: 2048)")
    parser.add_argument(
        "--cache_budget_gib", "--cache-budget-gib", type=float, default=0.25,
        help="bytes every tensor of the KV caches may hold, in GiB (default: 0.25: 5 MHA sequences at 70m x 2048)",
    )
    parser.add_argument(
        "--variants", nargs="+", default=None, help="presets to run (default: all of the size; mha always runs)"
    )
    parser.add_argument(
        "--kv_cache_quantizations", "--kv-cache-quantizations", nargs="+", default=["none", "int8", "int4"],
        choices=["none", *sorted(QUANTIZATION_DTYPES)], help="cache quantizations per preset (default: none int8 int4)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5,
        help=f"interleaved rounds (default: 5; < {decode.MIN_PUBLISHABLE_ROUNDS} is marked)",
    )
    parser.add_argument("--new_tokens", "--new-tokens", type=int, default=8, help="timed decode steps (default: 8)")
    parser.add_argument(
        "--warmup_tokens", "--warmup-tokens", type=int, default=2, help="untimed decode steps first (default: 2)"
    )
    parser.add_argument(
        "--tiny_context", "--tiny-context", type=int, default=16,
        help="prompt tokens of each row's tiny-context visits, the prediction's fixed term (default: 16)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="float32")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--copy_mib", "--copy-mib", type=int, default=None,
        help="MiB copied to measure the bandwidth (default: 256 CPU, 2048 GPU)",
    )
    parser.add_argument(
        "--matmul_size", "--matmul-size", type=int, default=None,
        help="n of the n x n matmul timed for the FLOP rate (default: 1024 CPU, 4096 GPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    for name in ("context", "tiny_context", "rounds", "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be at least 1")
    if args.warmup_tokens < 0:
        parser.error(f"--warmup_tokens={args.warmup_tokens} must be at least 0")
    if args.cache_budget_gib <= 0:
        parser.error(f"--cache_budget_gib={args.cache_budget_gib} must be positive")
    if args.tiny_context >= args.context:
        parser.error(f"--tiny_context={args.tiny_context} must be below --context={args.context}")
    return args


def capacity_rows(size: str, length: int, variants: list[str] | None, quantizations: list[str]) -> list:
    """``decode.py``'s rows of the size's presets, cut to the preset's own class (unquantized) and its quantized
    rows; MHA unquantized first (the ratios are to it). `length`: the block size."""
    rows = decode.preset_rows(size, length, None, [q for q in quantizations if q != "none"])
    known = sorted({row.preset for row in rows})
    unknown = sorted(set(variants or ()) - set(known))
    if unknown:
        raise SystemExit(f"--variants {unknown} unknown; choose from {known}")
    chosen = set(variants or known) | {"mha"}
    rows = [
        row for row in rows
        if row.preset in chosen
        and (row.unquantized is not None or (row.key == row.preset and ("none" in quantizations or row.key == "mha")))
    ]
    return rows


def cache_name(row) -> str:
    return row.config.kv_cache_quantization or "none"


def build_models(rows: list, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, list[str]]:
    """A model per row, on weights shared as the module docstring says (the first row is MHA's); returns, per
    preset, its own parameters (name with ``*`` for the block index, shape), i.e. those it does not share with MHA."""
    mha: dict[str, torch.Tensor] = {}
    by_preset: dict[str, dict[str, torch.Tensor]] = {}
    own: dict[str, list[str]] = {}
    for row in rows:
        torch.manual_seed(seed)
        with torch.device(device):
            row.model = GPT(row.config).to(dtype).eval()
        params = dict(row.model.named_parameters())
        preset = by_preset.setdefault(row.preset, {})
        weights = {
            name: next((src[name] for src in (preset, mha) if name in src and src[name].shape == p.shape), p)
            for name, p in params.items()
        }
        row.model.load_state_dict(weights, strict=False, assign=True)  # every parameter (buffers stay the row's)
        params = dict(row.model.named_parameters())
        preset.update(params)
        if not mha:
            mha.update(params)
        own.setdefault(row.preset, sorted({
            f"{re.sub(r'^transformer.h.[0-9]+.', 'h.*.', name)} {tuple(p.shape)}"
            for name, p in params.items() if name not in mha or mha[name] is not p
        }))
    return own


# ------------------------------------------------------------------------------------------- capacity
@dataclass
class Footprint:
    """The KV caches of one row at one batch size, built and fed as litgpt's batched generation would."""

    batch: int
    allocated: int  # bytes of every cache tensor right after set_kv_cache
    held: int  # bytes of every cache tensor after a prefill chunk and a decode step (workspaces included)
    flops: int  # FLOPs of that decode step


def sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of SDPA (B, nh_q, T, hs) x (B, nh_k, S, hs) x (B, nh_k, S, hs_v): 2 B nh_q T S (hs + hs_v); torch's
    counter has no formula for the CPU's fused kernel."""
    B, heads, T, hs = query_shape
    return 2 * B * heads * T * key_shape[-2] * (hs + value_shape[-1])


FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flops}


def footprint(model: GPT, batch: int, length: int) -> Footprint:
    """Builds `batch` x `length` caches with ``set_kv_cache``, runs a 2-token prefill chunk and a decode step
    (no ``input_pos_maxp1``, as ``batched_generate_fn``), measures what the caches hold, and frees them."""
    parameter = next(model.parameters())
    device = parameter.device
    model.max_seq_length = length
    model.set_kv_cache(batch_size=batch, max_seq_length=length, device=device, dtype=parameter.dtype)
    try:
        allocated = held_kv_cache_bytes(model)
        tokens = torch.zeros(batch, 3, dtype=torch.int64, device=device)
        with torch.inference_mode():
            model(tokens[:, :2], torch.arange(2, device=device))
            with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
                model(tokens[:, 2:], torch.tensor([2], device=device))
        return Footprint(batch, allocated, held_kv_cache_bytes(model), counter.get_total_flops())
    finally:
        model.clear_kv_cache()


def largest_batch(model: GPT, budget: int, length: int) -> tuple[Footprint, Footprint]:
    """The footprints of the largest batch whose caches hold at most `budget` bytes and of one more sequence.

    Starts from the straight line through batches 1 and 2, then steps by one until B fits and B + 1 does not.

    Raises:
        ValueError: not even one sequence fits the budget.
    """
    one = footprint(model, 1, length)
    if one.held > budget:
        raise ValueError(
            f"cache_budget_gib={budget / GIB:g} holds no sequence of {length} positions:"
            f" one needs {one.held / MIB:.2f} MiB ({model.config.attention_class_name},"
            f" kv_cache_quantization={model.config.kv_cache_quantization})"
        )
    per_sequence = max(1, footprint(model, 2, length).held - one.held)
    fits = footprint(model, max(1, (budget - one.held) // per_sequence + 1), length)
    while fits.held > budget:
        fits = footprint(model, fits.batch - 1, length)  # batch 1 fits: checked above
    over = footprint(model, fits.batch + 1, length)
    while over.held <= budget:
        fits, over = over, footprint(model, over.batch + 1, length)
    return fits, over


# -------------------------------------------------------------------------------------------- decoding
class OneRowPrefill:
    """The model as ``batched_generate_fn`` calls it, but a prompt (more than one token per row) is prefilled
    on batch row 0 only and its cache copied to every row (module docstring); decode steps pass through."""

    def __init__(self, model: GPT) -> None:
        self.model = model

    @property
    def max_seq_length(self) -> int:
        return self.model.max_seq_length

    def __call__(self, x: torch.Tensor, input_pos: torch.Tensor, **kwargs) -> torch.Tensor:
        if x.size(1) == 1:
            return self.model(x, input_pos, **kwargs)  # (B, 1, vocab)
        with last_position_logits_only(self.model):
            logits = self.model(x[:1], input_pos, **kwargs)  # (1, 1, vocab): litgpt's prefill call, on one row
        copy_first_row_of_every_cache(self.model, x.size(0))
        return logits.expand(x.size(0), -1, -1)  # (B, 1, vocab)


@dataclass
class Samples:
    """Per visit (round) of one row: median step and forward seconds, and the peak memory in bytes."""

    step: list[float] = field(default_factory=list)
    forward: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new peak: CUDA's allocator statistics, or Linux's peak resident set (``clear_refs`` 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> int:
    """Bytes: ``torch.cuda.max_memory_allocated``, or the peak resident set (``VmHWM``; 0 where unreadable)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return 0


def resident_memory() -> int:
    """The process's resident set now (``VmRSS``, bytes; 0 where unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def decode_visit(model: GPT, batch: int, context: int, args: argparse.Namespace, samples: Samples) -> None:
    """One visit: allocate, prefill a `context`-token prompt, decode through ``batched_generate_fn``, free; appends to
    `samples`."""
    device = next(model.parameters()).device
    length = context + args.warmup_tokens + args.new_tokens
    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=generator)
    prompts = prompt.expand(batch, -1).to(device)  # (B, context): one prompt for every row
    forwards: list[float] = []
    started = model.register_forward_pre_hook(lambda *_: forwards.append(-now(device)))
    finished = model.register_forward_hook(lambda *_: forwards.append(forwards.pop() + now(device)))
    reset_peak_memory(device)
    model.max_seq_length = length
    model.set_kv_cache(batch_size=batch, max_seq_length=length, device=device, dtype=next(model.parameters()).dtype)
    try:
        tokens = batched_generate_fn(
            OneRowPrefill(model), prompts, length + 1, sample_args={"temperature": 0.0},
            include_prompt=False, include_eos=False,
        )
        next(tokens)  # the prefill and the first token
        steps, last = [], now(device)
        for _ in tokens:  # one decode step each
            steps.append(now(device) - last)
            last += steps[-1]
    finally:
        started.remove()
        finished.remove()
        model.clear_kv_cache()
    if len(steps) != args.warmup_tokens + args.new_tokens:
        asked = args.warmup_tokens + args.new_tokens
        raise RuntimeError(f"batched_generate_fn decoded {len(steps)} steps, {asked} asked")
    samples.step.append(statistics.median(steps[args.warmup_tokens:]))
    samples.forward.append(statistics.median(forwards[-args.new_tokens:]))
    samples.peak.append(peak_memory(device))


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul, median of `repeats` after one warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    seconds = []
    for _ in range(repeats + 1):
        start = now(device)
        torch.mm(a, a)
        seconds.append(now(device) - start)
    return 2 * n**3 / statistics.median(seconds[1:])


# ------------------------------------------------------------------------------------------------ report
@dataclass
class Prediction:
    weight_bytes: int
    cache_bytes: int  # read per step
    seconds: float  # predicted step

    @property
    def cache_share(self) -> float:
        return self.cache_bytes / (self.weight_bytes + self.cache_bytes)


def predict(row, fit: Footprint, tiny_flops: int, tiny_step: float, lengths: tuple[int, int], dtype: torch.dtype,
            bandwidth: float, rate: float) -> Prediction:
    """Step time = the tiny-context step + the longer cache's extra bytes / bandwidth + its extra FLOPs / matmul rate
    (module docstring); `lengths`: the cache positions of the tiny and of the full visits."""
    embedding = row.model.transformer.wte.weight
    weight_bytes = sum(p.nbytes for p in row.model.parameters() if p is not embedding)
    per_token = kv_cache_bytes_per_token(row.config, dtype) * fit.batch
    tiny, full = lengths
    extra = (full - tiny) * per_token / bandwidth + (fit.flops - tiny_flops) / rate
    return Prediction(weight_bytes, per_token * full, tiny_step + extra)


def table(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def report(args, device, dtype, rows, fits, overs, samples, tiny, own, machine, seconds) -> str:
    """The markdown report; `tiny`: per row, (FLOPs of a decode step at the tiny context, its visits' Samples)."""
    length = args.context + args.warmup_tokens + args.new_tokens
    tiny_length = args.tiny_context + args.warmup_tokens + args.new_tokens
    budget = args.cache_budget_gib * GIB
    bandwidth, rate = machine["bandwidth"], machine["matmul_rate"]
    lines = [
        f"## Capacity benchmark: pythia-{args.size} shape, {args.dtype}, {decode.describe_device(device)}",
        "",
        f"`python benchmarks/capacity.py {shlex.join(sys.argv[1:])}` ({seconds:.0f} s)",
        "",
        *decode.conditions(device, args.rounds, machine["load_before"], machine["load_after"]),
        f"- KV-cache budget {args.cache_budget_gib:g} GiB ({budget / MIB:.1f} MiB); {args.context}-token prompts,"
        f" {length} cache positions"
        f" per sequence (prompt + {args.warmup_tokens} untimed + {args.new_tokens} timed greedy steps)",
        f"- decode: litgpt's `batched_generate_fn` (prefill of one row copied to the batch); {args.rounds}"
        " interleaved rounds; tokens/s = batch / median step, median over rounds [min-max]",
        f"- copy bandwidth {bandwidth / 1e9:.1f} GB/s (bytes read + written per second); matmul rate"
        f" {rate / 1e9:.0f} GFLOP/s; predicted step = the row's step at a {args.tiny_context}-token context (same"
        f" batch, {tiny_length} positions) + the extra cache bytes read / bandwidth + the extra FLOPs / matmul rate",
        f"- memory before any cache (every row's weights, shared): {machine['baseline'] / GIB:.2f} GiB"
        + (" resident" if device.type == "cpu" else " allocated"),
        "",
        "### Capacity at the budget",
        "",
    ]
    mha = rows[0]
    body = []
    for row in rows:
        fit, over = fits[row.key], overs[row.key]
        analytic = kv_cache_bytes(row.config, fit.batch, length, dtype)
        body.append([
            row.preset.upper(), cache_name(row), row.config.attention_class_name,
            f"{kv_cache_bytes_per_token(row.config, dtype):,}", f"{analytic / MIB:.1f}",
            "yes" if fit.allocated == analytic else f"**no: {fit.allocated / MIB:.1f}**",
            f"{(fit.held - fit.allocated) / MIB:.1f}", f"{fit.held / MIB:.1f}", f"{over.held / MIB:.1f}",
            str(fit.batch), f"{fit.batch / fits[mha.key].batch:.1f}x",
        ])
    lines += table(
        ["variant", "cache", "class", "KV B/token", "allocated MiB (formula)", "allocated = formula",
         "workspace MiB", "held MiB", "held MiB at batch+1", "batch", "x MHA"], body,
    )
    lines += ["", "### Decode at that batch: measured and predicted", ""]
    rates = {row.key: [fits[row.key].batch / t for t in samples[row.key].step] for row in rows}
    body = []
    for row in rows:
        fit, sample = fits[row.key], samples[row.key]
        measured = statistics.median(rates[row.key])
        tiny_flops, tiny_samples = tiny[row.key]
        tiny_step = statistics.median(tiny_samples.step)
        prediction = predict(row, fit, tiny_flops, tiny_step, (tiny_length, length), dtype, bandwidth, rate)
        predicted = fit.batch / prediction.seconds
        off = abs(measured / predicted - 1) > OFF_PREDICTION
        body.append([
            row.preset.upper(), cache_name(row), str(fit.batch),
            f"{measured:.1f} [{min(rates[row.key]):.1f}-{max(rates[row.key]):.1f}]",
            f"{measured / statistics.median(rates[mha.key]):.2f}x",
            f"{statistics.median(sample.step) * 1e3:.1f}", f"{statistics.median(sample.forward) * 1e3:.1f}",
            f"{tiny_step * 1e3:.1f}",
            f"{max(sample.peak) / GIB:.2f}", f"{prediction.cache_share:.2f}", f"{fit.flops / 1e9:.2f}",
            f"{predicted:.1f}", f"{measured / predicted:.2f}" + (" **off**" if off else ""),
        ])
    lines += table(
        ["variant", "cache", "batch", "tok/s median [min-max]", "x MHA", "step ms", "forward ms",
         "tiny-context step ms", "peak GiB",
         "cache / bytes read", "GFLOP/step", "predicted tok/s", "measured / predicted"], body,
    )
    lines += ["", f"**off**: more than {OFF_PREDICTION:.0%} from the prediction (the longer cache costs more, or"
              " less, than its bytes at copy bandwidth and its FLOPs at the matmul rate).", ""]
    lines += ["### Weights", "", "Every row shares MHA's parameter tensors except its preset's own:", ""]
    lines += [f"- {preset.upper()}: {', '.join(names) or 'none'}" for preset, names in own.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = decode.chosen_device(args)
    dtype = torch_dtype("--dtype", args.dtype)
    length = args.context + args.warmup_tokens + args.new_tokens
    budget = int(args.cache_budget_gib * GIB)
    rows = capacity_rows(args.size, length, args.variants, args.kv_cache_quantizations)
    machine = {"load_before": decode.load_average()}
    started = time.perf_counter()
    own = build_models(rows, device, dtype, args.seed)
    machine["baseline"] = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_memory()
    copy_mib = args.copy_mib or (2048 if device.type == "cuda" else 256)
    machine["bandwidth"] = decode.copy_bandwidth(device, copy_mib)
    matmul_size = args.matmul_size or (4096 if device.type == "cuda" else 1024)
    machine["matmul_rate"] = matmul_rate(device, dtype, matmul_size)
    fits, overs = {}, {}
    with contextlib.redirect_stdout(sys.stderr):  # stock litgpt MLA prints warnings in build_kv_cache
        for row in rows:
            fits[row.key], overs[row.key] = largest_batch(row.model, budget, length)
            print(f"{row.key}: batch {fits[row.key].batch}", file=sys.stderr, flush=True)
        tiny_length = args.tiny_context + args.warmup_tokens + args.new_tokens
        tiny = {row.key: (footprint(row.model, fits[row.key].batch, tiny_length).flops, Samples()) for row in rows}
        samples = {row.key: Samples() for row in rows}
        for round_index in range(args.rounds):
            for row in rows:
                decode_visit(row.model, fits[row.key].batch, args.context, args, samples[row.key])
                decode_visit(row.model, fits[row.key].batch, args.tiny_context, args, tiny[row.key][1])
            print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
    machine["bandwidth"] = max(machine["bandwidth"], decode.copy_bandwidth(device, copy_mib))
    machine["matmul_rate"] = max(machine["matmul_rate"], matmul_rate(device, dtype, matmul_size))
    machine["load_after"] = decode.load_average()
    text = report(args, device, dtype, rows, fits, overs, samples, tiny, own, machine, time.perf_counter() - started)
    decode.publish(text, args.out)


if __name__ == "__main__":
    main()
