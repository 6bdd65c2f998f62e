"""Decode benchmark: cached greedy decode speed of every attention variant, against its own bound.

    python benchmarks/decode.py                                   # pythia-70m shape, fp32, CUDA if present
    python benchmarks/decode.py --threads 2 --out docs/decode-70m-cpu.md
    python benchmarks/decode.py --device cuda --dtype bfloat16 --out decode-70m-cuda-bf16.md
    python benchmarks/decode.py --size 14m --rounds 1 --contexts 256 --batch_sizes 1 --cache_dominated none

Rows: every preset of the size (``config_hub/pretrain/pythia-{size}-*.yaml``: MHA, GQA, MQA, MLA, MKA,
FMKA) and, where our class has a litgpt counterpart, litgpt's class on the same weights: GQA and MQA
with litgpt's ``CausalSelfAttention`` and with ours (``GroupedQueryAttention``), MLA with litgpt's
``MultiheadLatentAttention`` (expanded per-head cache) and with ours (latent cache, absorbed decode).
``--kv_cache_quantizations int8 int4`` adds, per preset, our class with a quantized cache on the same
weights (``kv_cache_quantization``; MHA through ``GroupedQueryAttention``, with one more unquantized MHA row
of that class) and a table of each against the same class unquantized.
Weights and prompts are random (speed does not depend on them); ``block_size`` is raised to fit the
longest context (Pythia has no learned positions).

Settings: every ``--batch_sizes`` x ``--contexts`` pair, plus a cache-dominated one
(``--cache_dominated``, default batch 16 at context 4096, where the cache bytes read per step outweigh
the weights), plus a tiny context per batch size for the weights term (below).

Protocol. Each (variant, setting) gets its own KV cache, filled by prefilling one random row of
``context - rounds k / 2`` tokens (k = warm-up + timed steps per visit) and copying that row to the other
batch rows (the values do not change the work; prefilling every row would cost 16x more). Then
``--rounds`` interleaved rounds: in each round every setting and every variant is visited once, in
turn, and a visit decodes k more tokens greedily from where the previous visit of that cache stopped
(no position is ever rewritten, which MKA's bounded ring of running sums requires), timing the last
``--new_tokens`` steps; the visit's sample is its median step time. The rounds' visits together decode
the positions ``context - rounds k / 2 .. context + rounds k / 2``, centred on the context. Reported per
row: tokens/s = batch / step time, median over the rounds and min-max (a wide range says the machine
was disturbed), and the ratio of medians to MHA's.

Predicted step time: ``weights + batch x context x B_tok / bandwidth``. ``weights`` is the variant's
own step time at the tiny context (the first rounds x k positions, no prefill) less the same bytes
term at that context: projections, MLP, output head and per-step overheads. ``B_tok`` is the variant's
KV-cache bytes per token (all layers; ``litgpt_mka.measure.kv_cache_size``), i.e. what reading the
whole cache once per step costs; ``bandwidth`` is measured in the same run by timing a large tensor
copy (STREAM convention: bytes read + written per second). A row far above its prediction moves more
data than its cache (litgpt's GQA/MQA repeat the cache per query head) or computes more than it reads;
a kernel that reads the cache below copy bandwidth puts every row above 1 where the cache dominates
(MHA itself about 1.5 at batch 16 x 4096 in a single-round, single-thread CPU check).

Publishability: the 1-minute load average is printed before and after; the table is marked NOT
PUBLISHABLE when other processes kept the machine busy (:mod:`litgpt_mka.measure.load`'s rule, the one
``compare`` uses: either load above this process's threads + 0.5) or when fewer than 5 rounds ran.

Cost: the default grid (70m, fp32, 9 rows x 7 settings + 3 tiny ones, 5 rounds) needs about 11 GiB of memory at the
batch 16 x 4096 setting (7.6 GiB of caches, printed before measuring; 160m: 22 GiB of caches) and takes,
by estimate, half an hour on an idle 2-core CPU, mostly litgpt's GQA/MQA rows at batch 16 x 4096 (each of
their steps repeats the whole cache); fewer ``--new_tokens`` or ``--cache_dominated none`` shorten it.
A GPU takes a minute or two.
"""

import argparse
import contextlib
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from litgpt.config import Config
from litgpt.model import GPT, build_mask_cache

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt_mka.attention import registry
from litgpt_mka.attention.quantization import DTYPES as QUANTIZATION_DTYPES
from litgpt_mka.measure.decode_speed import prefill_random_prompt, time_decode_steps
from litgpt_mka.measure.kv_cache_size import kv_cache_bytes, kv_cache_bytes_per_token
from litgpt_mka.measure.load import busy_threshold, is_busy
from litgpt_mka.presets import load_pretrain_yaml
from litgpt_mka.validation import DTYPE_NAMES, torch_dtype

CONFIG_HUB = Path(__file__).resolve().parents[1] / "config_hub" / "pretrain"
PRESET_ORDER = ("mha", "gqa", "mqa", "mla", "mka", "fmka")  # others follow, alphabetically
MIN_PUBLISHABLE_ROUNDS = 5


# ------------------------------------------------------------------------------------------------ setup
@dataclass
class Row:
    """One table row: a preset, possibly with litgpt's class in place of ours."""

    key: str  # e.g. "gqa", "gqa-litgpt", "gqa-int8"
    label: str
    config: Config
    model: GPT | None = None
    preset: str = ""  # rows of one preset share its weights
    unquantized: str | None = None  # a quantized-cache row: the key of the same variant's row without


@dataclass
class Setting:
    """A batch size and a nominal context; `prefill` tokens are cached before the first visit."""

    batch: int
    context: int
    prefill: int
    length: int  # cache positions allocated
    tiny: bool = False

    @property
    def name(self) -> str:
        return f"b={self.batch} ctx={self.context}" + (" (tiny)" if self.tiny else "")


@dataclass
class Visit:
    """The KV caches of one (row, setting) and the next position to decode."""

    caches: list
    position: int
    token: torch.Tensor
    samples: list[float] = field(default_factory=list)  # median step seconds per round


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", choices=("14m", "70m", "160m"), default="70m", help="Pythia size (default: 70m)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048], help="tokens in the cache")
    parser.add_argument("--batch_sizes", "--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--cache_dominated", "--cache-dominated", default="16x4096",
        help="one more BATCHxCONTEXT setting, or 'none' (default: 16x4096)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help=f"interleaved rounds (default: 5; < {MIN_PUBLISHABLE_ROUNDS} is marked)"
    )
    parser.add_argument(
        "--new_tokens", "--new-tokens", type=int, default=16, help="timed decode steps per visit (default: 16)"
    )
    parser.add_argument(
        "--warmup_tokens", "--warmup-tokens", type=int, default=2, help="untimed decode steps per visit (default: 2)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="float32")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+", default=None, help="row keys to run (default: all; mha always runs)")
    parser.add_argument(
        "--copy_mib", "--copy-mib", type=int, default=None,
        help="MiB copied to measure the bandwidth (default: 256 CPU, 2048 GPU)",
    )
    parser.add_argument(
        "--kv_cache_quantizations", "--kv-cache-quantizations", nargs="+", default=[],
        choices=sorted(QUANTIZATION_DTYPES),
        help="also a row per preset and kv_cache_quantization (its defaults; MHA through GroupedQueryAttention)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    for name in ("rounds", "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be at least 1")
    if args.warmup_tokens < 0:
        parser.error(f"--warmup_tokens={args.warmup_tokens} must be at least 0")
    args.extra = None
    if args.cache_dominated != "none":
        try:
            batch, context = (int(part) for part in args.cache_dominated.lower().split("x"))
        except ValueError:
            parser.error(f"--cache_dominated={args.cache_dominated!r} must look like 16x4096, or be 'none'")
        args.extra = (batch, context)
    half_span = args.rounds * (args.warmup_tokens + args.new_tokens) // 2
    contexts = args.contexts + ([args.extra[1]] if args.extra else [])
    if min(contexts) <= half_span:
        parser.error(
            f"every context must exceed rounds x (warmup + new tokens) / 2 = {half_span}: the visits decode"
            f" positions centred on it; got {min(contexts)}"
        )
    return args


def quantized_rows(row: Row, model_config: dict, quantizations: list[str]) -> list[Row]:
    """One row per quantization of `row`'s preset, in the class that quantizes its cache with the same weights
    (``registry.quantizable_attention_class``: litgpt's own caches are never quantized), each against that
    class unquantized: `row` itself, or (MHA, whose row is litgpt's class) one more row of our class."""
    name = registry.quantizable_attention_class(row.config)
    rows, unquantized = [], row
    if quantizations and name != row.config.attention_class_name:
        config = Config(**{**model_config, "attention_class_name": name})
        unquantized = Row(f"{row.preset}-ours", f"{row.preset.upper()}, ours ({name})", config, preset=row.preset)
        rows.append(unquantized)
    for quantization in quantizations:
        config = Config(**{**model_config, "attention_class_name": name, "kv_cache_quantization": quantization})
        rows.append(Row(f"{row.preset}-{quantization}", f"{row.preset.upper()}, {quantization} cache", config,
                        preset=row.preset, unquantized=unquantized.key))
    return rows


def preset_rows(
    size: str, block_size: int, selected: list[str] | None, quantizations: list[str] = ()
) -> list[Row]:
    """The rows of the size's presets (MHA first), each litgpt counterpart right before our class, and our
    class's quantized-cache rows right after it."""
    paths = sorted(CONFIG_HUB.glob(f"pythia-{size}-*.yaml"))
    if not paths:
        raise SystemExit(f"no presets {CONFIG_HUB}/pythia-{size}-*.yaml")

    def order(path: Path) -> tuple:
        suffix = path.stem.removeprefix(f"pythia-{size}-")
        return (PRESET_ORDER.index(suffix) if suffix in PRESET_ORDER else len(PRESET_ORDER), suffix)

    rows = []
    for path in sorted(paths, key=order):
        suffix = path.stem.removeprefix(f"pythia-{size}-")
        model_config = {**load_pretrain_yaml(path)["model_config"], "block_size": block_size}
        config = Config(**model_config)
        ours = config.attention_class_name
        theirs = registry.lookup(ours).litgpt_counterpart  # litgpt's class for the same config and weights
        if theirs is not None:
            litgpt_config = Config(**{**model_config, "attention_class_name": theirs})
            rows.append(Row(f"{suffix}-litgpt", f"{suffix.upper()}, litgpt ({theirs})", litgpt_config, preset=suffix))
            rows.append(Row(suffix, f"{suffix.upper()}, ours ({ours})", config, preset=suffix))
        else:
            rows.append(Row(suffix, f"{suffix.upper()} ({ours})", config, preset=suffix))
        rows += quantized_rows(rows[-1], model_config, quantizations)
    if selected is not None:
        unknown = sorted(set(selected) - {row.key for row in rows})
        if unknown:
            raise SystemExit(f"--variants {unknown} unknown; choose from {[row.key for row in rows]}")
        keep = set(selected) | {"mha"} | {row.unquantized for row in rows if row.key in selected and row.unquantized}
        rows = [row for row in rows if row.key in keep]
    if rows[0].key != "mha":
        raise SystemExit(f"pythia-{size}-mha.yaml is missing: the ratios are to MHA")
    return rows


def build_models(rows: list[Row], device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """A model per row; a litgpt row and ours of the same preset share one set of weights."""
    weights = {}
    for row in rows:
        torch.manual_seed(seed)
        with torch.device(device):
            row.model = GPT(row.config).to(dtype).eval()
        if row.preset in weights:
            row.model.load_state_dict(weights[row.preset])
        else:
            weights[row.preset] = row.model.state_dict()


def settings_by_batch(args: argparse.Namespace) -> dict[int, list[Setting]]:
    """Per batch size: its tiny-context setting first, then its contexts (the extra setting included)."""
    k = args.warmup_tokens + args.new_tokens
    span = args.rounds * k
    pairs = [(b, c) for b in args.batch_sizes for c in sorted(args.contexts)] + ([args.extra] if args.extra else [])
    groups: dict[int, list[Setting]] = {}
    for batch, context in pairs:
        if batch not in groups:
            groups[batch] = [Setting(batch, span // 2, prefill=0, length=span, tiny=True)]
        groups[batch].append(Setting(batch, context, prefill=context - span // 2, length=context - span // 2 + span))
    return groups


# -------------------------------------------------------------------------------------------- measuring
def copy_bandwidth(device: torch.device, mib: int, repeats: int = 7) -> float:
    """Bytes per second of a large tensor copy, counting bytes read + written (STREAM's convention)."""
    src = torch.ones(mib * 2**20 // 4, device=device)  # float32
    dst = torch.empty_like(src)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(seconds[1:])


def fill_cache(model: GPT, setting: Setting, seed: int) -> Visit:
    """Allocates the setting's caches, prefills one random row and copies it to every batch row."""
    token = prefill_random_prompt(
        model, setting.batch, setting.prefill, max_seq_length=setting.length, seed=seed, copy_one_row=True
    )
    return Visit([block.attn.kv_cache for block in model.transformer.h], setting.prefill, token)


def measure(args: argparse.Namespace, rows: list[Row], groups: dict[int, list[Setting]]) -> dict:
    """Median step seconds per (row key, setting name) and round; see the module docstring."""
    samples = {}
    for batch, settings in groups.items():
        visits = {}
        for row in rows:
            for setting in settings:
                visits[(row.key, setting.name)] = fill_cache(row.model, setting, args.seed)
            # one mask for every cache of the group (GPT.forward slices it to input_pos_maxp1)
            row.model.mask_cache = build_mask_cache(max(s.length for s in settings), row.model.lm_head.weight.device)
        print(f"batch {batch}: caches filled", file=sys.stderr, flush=True)
        for round_index in range(args.rounds):
            for setting in settings:
                for row in rows:
                    visit = visits[(row.key, setting.name)]
                    for block, cache in zip(row.model.transformer.h, visit.caches):
                        block.attn.kv_cache = cache
                    steps = time_decode_steps(
                        row.model, visit.token, visit.position, args.warmup_tokens, args.new_tokens
                    )
                    visit.position += args.warmup_tokens + args.new_tokens
                    visit.samples.append(statistics.median(steps))
            print(f"batch {batch}: round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for (key, name), visit in visits.items():
            samples[(key, name)] = visit.samples
        for row in rows:
            row.model.clear_kv_cache()
        visits.clear()
    return samples


# ------------------------------------------------------------------------------------------------ report
def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (NaN where the OS has none: never busy)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def conditions(device: torch.device, rounds: int, load_before: tuple, load_after: tuple) -> list[str]:
    """The report lines on publishability and load: the verdict (NOT PUBLISHABLE when the machine was busy by
    :mod:`litgpt_mka.measure.load`'s rule or fewer than ``MIN_PUBLISHABLE_ROUNDS`` rounds ran) and the load
    averages before and after."""
    cores = os.cpu_count() or 1
    own_threads = 1 if device.type == "cuda" else min(torch.get_num_threads(), cores)
    reasons = []
    if is_busy([load_before[0], load_after[0]], own_threads):
        reasons.append(
            f"machine busy (1-minute load {load_before[0]:.2f} before, {load_after[0]:.2f} after; limit"
            f" {busy_threshold(own_threads):g}: this process's {own_threads} thread(s) + the margin of"
            " litgpt_mka.measure.load)"
        )
    if rounds < MIN_PUBLISHABLE_ROUNDS:
        reasons.append(f"{rounds} round(s), fewer than {MIN_PUBLISHABLE_ROUNDS}")
    verdict = "publishable" if not reasons else "**NOT PUBLISHABLE**: " + "; ".join(reasons)
    return [
        f"- {verdict}",
        f"- load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after"
        f" {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
        f" ({cores} cores; this process adds about {own_threads})",
    ]


def report(args, device, dtype, rows, groups, samples, bandwidth, load_before, load_after, seconds) -> str:
    k = args.warmup_tokens + args.new_tokens
    lines = [
        f"## Decode benchmark: pythia-{args.size} shape, {args.dtype}, {describe_device(device)}",
        "",
        f"`python benchmarks/decode.py {shlex.join(sys.argv[1:])}` ({seconds:.0f} s)",
        "",
        *conditions(device, args.rounds, load_before, load_after),
        f"- copy bandwidth {bandwidth / 1e9:.1f} GB/s (bytes read + written per second)",
        f"- {args.rounds} interleaved rounds; per visit {args.warmup_tokens} untimed + {args.new_tokens} timed greedy"
        " steps"
        f" continuing the cache; tokens/s = batch / median step time, median over rounds [min-max];"
        f" positions {args.rounds * k // 2} below to {args.rounds * k - args.rounds * k // 2} above the context",
        "- predicted = weights (the row's own step at the tiny context, less its cache term) + batch x context x"
        " KV bytes/token / bandwidth",
        "",
    ]
    measured = {key: statistics.median(values) for key, values in samples.items()}  # step seconds
    settings = [s for group in groups.values() for s in group if not s.tiny]

    def tokens_per_second(row: Row, setting: Setting) -> float:
        return setting.batch / measured[(row.key, setting.name)]

    lines += ["### Tokens/s (median) and ratio to MHA", ""]
    header = ["variant", "params", "KV B/token"] + [s.name for s in settings]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row.label, f"{sum(p.numel() for p in row.model.parameters()) / 1e6:.1f}M"]
        cells.append(f"{kv_cache_bytes_per_token(row.config, dtype):,}")
        for s in settings:
            ratio = tokens_per_second(row, s) / tokens_per_second(rows[0], s)
            cells.append(f"{tokens_per_second(row, s):.1f} ({ratio:.2f}x)")
        lines.append("| " + " | ".join(cells) + " |")

    quantized = [row for row in rows if row.unquantized]
    if quantized:
        by_key = {row.key: row for row in rows}
        lines += ["", "### Quantized caches against the same class unquantized (tokens/s ratio, KV bytes ratio)", ""]
        header = ["variant", "KV bytes / unquantized"] + [s.name for s in settings]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for row in quantized:
            base = by_key[row.unquantized]
            longest = max(s.context for s in settings)
            bytes_ratio = kv_cache_bytes(row.config, 1, longest, dtype) / kv_cache_bytes(base.config, 1, longest, dtype)
            cells = [row.label, f"{bytes_ratio:.3f}"]
            cells += [f"{tokens_per_second(row, s) / tokens_per_second(base, s):.2f}x" for s in settings]
            lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "### Every setting: measured against predicted", ""]
    header = ["setting", "variant", "cache MiB read/step", "tok/s median", "tok/s min-max", "step ms", "weights ms",
              "predicted ms", "step / predicted", "x MHA"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for s in settings:
        tiny = groups[s.batch][0]
        for row in rows:
            per_token = kv_cache_bytes_per_token(row.config, dtype)
            weights = measured[(row.key, tiny.name)] - s.batch * tiny.context * per_token / bandwidth
            cache_bytes = s.batch * s.context * per_token
            predicted = weights + cache_bytes / bandwidth
            step = measured[(row.key, s.name)]
            rates = [s.batch / t for t in samples[(row.key, s.name)]]
            lines.append("| " + " | ".join([
                s.name, row.label, f"{cache_bytes / 2**20:.1f}", f"{s.batch / step:.1f}",
                f"{min(rates):.1f}-{max(rates):.1f}", f"{step * 1e3:.2f}", f"{weights * 1e3:.2f}",
                f"{predicted * 1e3:.2f}", f"{step / predicted:.2f}",
                f"{tokens_per_second(row, s) / tokens_per_second(rows[0], s):.2f}",
            ]) + " |")
    return "\n".join(lines) + "\n"


def chosen_device(args: argparse.Namespace) -> torch.device:
    """Applies ``--threads`` and returns ``--device`` (auto: CUDA if available, else the CPU)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)


def publish(text: str, out: Path | None) -> None:
    """Prints the report, and writes it to `out` too when given."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = chosen_device(args)
    dtype = torch_dtype("--dtype", args.dtype)
    groups = settings_by_batch(args)
    block_size = max(s.length for group in groups.values() for s in group)
    rows = preset_rows(args.size, block_size, args.variants, args.kv_cache_quantizations)
    peak = max(
        sum(kv_cache_bytes(row.config, s.batch, s.length, dtype) for row in rows for s in group)
        for group in groups.values()
    )
    print(f"{len(rows)} rows; KV caches of the largest batch group: {peak / 2**30:.2f} GiB", file=sys.stderr)
    load_before = load_average()
    started = time.perf_counter()
    build_models(rows, device, dtype, args.seed)
    copy_mib = args.copy_mib or (2048 if device.type == "cuda" else 256)
    bandwidth = copy_bandwidth(device, copy_mib)
    with contextlib.redirect_stdout(sys.stderr):  # stock litgpt MLA prints warnings in build_kv_cache
        samples = measure(args, rows, groups)
    bandwidth = max(bandwidth, copy_bandwidth(device, copy_mib))  # the better of before and after
    load_after = load_average()
    text = report(args, device, dtype, rows, groups, samples, bandwidth, load_before, load_after,
                  time.perf_counter() - started)
    publish(text, args.out)


if __name__ == "__main__":
    main()
