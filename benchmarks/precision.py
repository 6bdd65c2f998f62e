"""float32 against bf16 autocast for one training step on this CPU: the measurement behind the precision default.

    python benchmarks/precision.py --presets pythia-14m-mqa pythia-14m-mha --batch 4 --seq 128 --rounds 5

Each round times one full AdamW step (forward, loss, backward, optimizer) of every preset in both precisions,
interleaved, so that both see the same machine state; the table gives the median and the range over rounds and
the ratio of the medians. The header says what the CPU's flags say about bf16 (litgpt_mka/precision.py) and the
load average before and after: publish only numbers from an idle machine.
"""

import argparse
import os
import platform
import statistics
import time

import torch

import litgpt_mka  # noqa: F401  (activates the plugin for direct `python benchmarks/...` runs)
from litgpt_mka.precision import cpu_description, cpu_flags
from litgpt_mka.presets import load_pretrain_yaml

PRECISIONS = ("32-true", "bf16-mixed")
CONFIG_HUB = os.path.join(os.path.dirname(__file__), "..", "config_hub", "pretrain")


def build(preset: str, seed: int):
    from litgpt.config import Config
    from litgpt.model import GPT

    config = Config(**load_pretrain_yaml(os.path.join(CONFIG_HUB, f"{preset}.yaml"))["model_config"])
    torch.manual_seed(seed)
    model = GPT(config)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def step_seconds(model, optimizer, tokens: torch.Tensor, precision: str) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        logits = model(tokens[:, :-1])  # (B, T, vocab)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["pythia-14m-mqa"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one untimed warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    runs = {(preset, precision): build(preset, seed=0) for preset in args.presets for precision in PRECISIONS}
    tokens = torch.randint(0, 50_000, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(0))
    times = {key: [] for key in runs}
    for round_index in range(args.rounds + 1):
        for key, (model, optimizer) in runs.items():
            seconds = step_seconds(model, optimizer, tokens, key[1])
            if round_index:
                times[key].append(seconds)
    load_after = os.getloadavg()[0]

    print(f"# {platform.processor() or platform.machine()}: {cpu_description(cpu_flags())}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x {args.seq} tokens,"
          f" {args.rounds} rounds; load average {load_before:.2f} before, {load_after:.2f} after")
    print("| preset | 32-true s/step (range) | bf16-mixed s/step (range) | bf16 / fp32 time |")
    print("|---|---:|---:|---:|")
    for preset in args.presets:
        fp32, bf16 = times[(preset, "32-true")], times[(preset, "bf16-mixed")]
        cells = [f"{statistics.median(t):.3f} ({min(t):.3f}-{max(t):.3f})" for t in (fp32, bf16)]
        print(f"| {preset} | {cells[0]} | {cells[1]} | {statistics.median(bf16) / statistics.median(fp32):.2f}x |")


if __name__ == "__main__":
    main()
