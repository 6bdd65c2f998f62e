"""Training throughput of the attention variants, side by side in one run, as ratios to MHA.

    python benchmarks/train_throughput.py                       # pythia-14m and pythia-70m shapes, eager
    python benchmarks/train_throughput.py --compile             # torch.compile, as litgpt pretrain does
    python benchmarks/train_throughput.py --models pythia-14m --batch_size 8 --seq_len 512 --steps 6
    python benchmarks/train_throughput.py --threads 1 --clock cpu  # on a machine shared with other work

One training step = forward, cross-entropy over the next tokens, backward, AdamW step, zero_grad, on
random token ids (throughput does not depend on the data). For each model shape every variant is
built from the same preset (``Config.from_name``; only the attention fields differ), takes
``--warmup`` untimed steps (compilation included), then timed rounds (at least ``--steps``, and more
until ``--min_seconds`` of timed steps have passed, so that short steps get more rounds; at most
``--max_steps``); within a round the variants run one step each, in an order rotated every round, so
that drift in the machine's load (other processes, thermal state) falls on all variants alike.
Reported per variant: the best and the median tokens/s over the rounds and their ratios to MHA's. On
a machine shared with other work the best round (least interference, the usual estimator of a step's
intrinsic cost) is the one to read; a median far below the best says the run was disturbed.

Variants: every preset of the model size in ``config_hub/pretrain/<model>-*.yaml`` (its attention keys
applied to ``Config.from_name(model)``), plus MKA with ``routing: outputs``; ratios are to the ``mha`` row.
Defaults (batch 4 x 256 tokens, float32, eager) take about 4 minutes on an otherwise idle 2-core CPU (2 threads).
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt.config import Config
from litgpt.model import GPT
from litgpt_mka.attention import registry
from litgpt_mka.presets import load_pretrain_yaml

CONFIG_HUB = Path(__file__).resolve().parents[1] / "config_hub" / "pretrain"
# wall: elapsed time; cpu: CPU time of this process (all its threads), which other processes on a shared
# machine disturb far less (best read with --threads 1, where no thread waits for a descheduled sibling)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def variants(model_name: str) -> dict[str, dict]:
    """Row label -> Config overrides: the attention keys of every ``config_hub/pretrain/<model_name>-*.yaml``
    (MHA first), plus MKA with ``routing: outputs``. The keys are the registry's: ``n_query_groups``,
    ``attention_class_name`` and every variant's config dict."""
    keys = ("n_query_groups", "attention_class_name", *registry.config_fields())
    table = {}
    for path in sorted(CONFIG_HUB.glob(f"{model_name}-*.yaml"), key=lambda p: (not p.stem.endswith("-mha"), p.stem)):
        model_config = load_pretrain_yaml(path)["model_config"]
        table[path.stem.removeprefix(f"{model_name}-")] = {key: model_config[key] for key in keys if key in model_config}
    if not table:
        raise SystemExit(f"no presets {CONFIG_HUB}/{model_name}-*.yaml")
    if "mka" in table:
        mka = table["mka"]
        table["mka outputs"] = {**mka, "memorized_key_attention": {**mka["memorized_key_attention"], "routing": "outputs"}}
    return table


class Runner:
    """One variant: model, optimizer, and one timed training step."""

    def __init__(self, config: Config, batch_size: int, seq_len: int, compile_model: bool, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = GPT(config)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.forward = torch.compile(self.model) if compile_model else self.model
        generator = torch.Generator().manual_seed(seed)
        self.batch = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), generator=generator)
        self.tokens_per_step = batch_size * seq_len

    def step(self, clock=time.perf_counter) -> float:
        """Seconds (of `clock`) for one forward + backward + AdamW step."""
        start = clock()
        logits = self.forward(self.batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), self.batch[:, 1:].flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return clock() - start


def benchmark(model_name: str, args: argparse.Namespace) -> list[tuple]:
    runners = {
        label: Runner(Config.from_name(model_name, **overrides), args.batch_size, args.seq_len, args.compile, args.seed)
        for label, overrides in variants(model_name).items()
    }
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step()
    labels = list(runners)
    rates = {label: [] for label in labels}
    start = time.perf_counter()
    round_idx = 0
    while round_idx < args.steps or (time.perf_counter() - start < args.min_seconds and round_idx < args.max_steps):
        shift = round_idx % len(labels)
        round_idx += 1
        for label in labels[shift:] + labels[:shift]:
            runner = runners[label]
            rates[label].append(runner.tokens_per_step / runner.step(CLOCKS[args.clock]))
    mha_best, mha_median = max(rates["mha"]), statistics.median(rates["mha"])
    rows = []
    for label in labels:
        best, median = max(rates[label]), statistics.median(rates[label])
        rows.append(
            (model_name, label, runners[label].params, best, best / mha_best, median, median / mha_median, round_idx)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["pythia-14m", "pythia-70m"], help="litgpt preset names")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=4)
    parser.add_argument("--seq_len", "--seq-len", type=int, default=256)
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per variant incl. compilation (default 1; 2 compiled)"
    )
    parser.add_argument("--steps", type=int, default=6, help="least timed rounds (one step per variant each)")
    parser.add_argument("--min_seconds", "--min-seconds", type=float, default=90.0, help="more rounds until this much time is timed")
    parser.add_argument("--max_steps", "--max-steps", type=int, default=30, help="most timed rounds")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model, as litgpt pretrain does")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what a step's time is measured in")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = 2 if args.compile else 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    rows = [row for model_name in args.models for row in benchmark(model_name, args)]
    load_after = os.getloadavg()
    rounds = ", ".join(f"{model_name}: {n}" for model_name, n in sorted({(row[0], row[-1]) for row in rows}))
    print(
        f"Training throughput (tokens per {args.clock}-clock second), forward+backward+AdamW, batch"
        f" {args.batch_size} x seq {args.seq_len} tokens, float32,"
        f" {'torch.compile' if args.compile else 'eager'}, {args.warmup} warm-up step(s) excluded,"
        f" {rounds} interleaved rounds; torch {torch.__version__}, {torch.get_num_threads()} threads,"
        f" {platform.processor() or platform.machine()}, device cpu;"
        f" 1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print("| model | attention | parameters | tokens/s (best) | vs MHA (best) | tokens/s (median) | vs MHA (median) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model_name, label, params, best, best_ratio, median, median_ratio, _ in rows:
        print(
            f"| {model_name} | {label} | {params / 1e6:.2f}M | {best:.0f} | {best_ratio:.2f}x | {median:.0f} |"
            f" {median_ratio:.2f}x |"
        )
    disturbed = sorted({row[1] for row in rows if row[5] < 0.9 * row[3]})
    if disturbed:
        print(
            f"\nNote: the median is more than 10% below the best for {', '.join(disturbed)}: the rounds varied (other"
            " work, or the machine's own variation); read the best columns, or rerun with `--threads 1 --clock cpu`."
        )


if __name__ == "__main__":
    main()
