"""How many paired seeds bring the 95% interval of a variant's loss difference to MHA within a target half-width.

    python docs/study-pythia-14m-v3/seeds_needed.py docs/study-pythia-14m-v3/pilot/results.json \
        [--variant pythia-14m-mla] [--reference pythia-14m-mha] [--text val-verdict] [--half_width 0.02]

From a finished compare run (results.json), per seed s present for both: d_s = loss_variant,s - loss_reference,s on
`--text` (the final validation loss). With n seeds the paired interval is d ± t(0.975, n-1) s_d / sqrt(n), s_d the
sample standard deviation of the d_s; the seeds needed are the smallest n with t(0.975, n-1) s_d / sqrt(n) <= the
target. s_d is itself an estimate with n - 1 degrees of freedom: its 95% interval, s_d sqrt((n - 1) / chi2_{0.975})
to s_d sqrt((n - 1) / chi2_{0.025}), gives the range of seeds the same target could take. Beside it, the unpaired
view of the same runs: the share of an unpaired difference's variance that pairing removed,

    removed = 1 - s_d^2 / (s_v^2 + s_r^2)                   (s_v, s_r: each side's standard deviation over seeds)

which equals the correlation r of paired runs only where s_v = s_r (in general removed = 2 r s_v s_r / (s_v^2 +
s_r^2), at most 2 s_v s_r / (s_v^2 + s_r^2) when the spreads differ); the correlation itself (Pearson's; with 2 seeds
always +-1, so no estimate); and the seeds the Welch interval would need at those standard deviations (t with n-1 df
per side, a close bound). With 2 seeds every standard deviation has 1 degree of freedom: the answer is a planning
number, not a result.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats


def final_losses(saved: dict, variant: str, text: str) -> dict[int, float]:
    """Seed -> final validation loss on `text`, finished runs of `variant` only (at its chosen learning rate, where
    the results choose one: compare --learning_rates --selection_val)."""
    chosen = {entry["variant"]: entry["chosen"] for entry in saved.get("rate_selection", [])}
    if variant in chosen and chosen[variant] is None:
        raise SystemExit(f"{variant}: no learning rate chosen yet (a selection run has not finished)")
    losses = {}
    for run in saved["runs"]:
        if run["variant"] == variant and run["status"] == "ok" and run.get("learning_rate") == chosen.get(variant):
            (entry,) = [value for value in run["evaluation"]["validation"] if value["name"] == text]
            losses[run["seed"]] = entry["loss"]
    return losses


def sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


MOST_SEEDS = 10_000


def seeds_for(half_width: float, std: float, per_side_terms: int = 1) -> int | None:
    """Smallest n >= 2 with t(0.975, n-1) * std * sqrt(per_side_terms / n) <= half_width; None beyond MOST_SEEDS."""
    n = 2
    while stats.t.ppf(0.975, n - 1) * std * math.sqrt(per_side_terms / n) > half_width:
        n += 1
        if n > MOST_SEEDS:
            return None
    return n


def spread_interval(std: float, n: int) -> tuple[float, float]:
    """The 95% interval of the standard deviation whose estimate from n values is `std` (chi-square, n - 1 df)."""
    return tuple(std * math.sqrt((n - 1) / stats.chi2.ppf(q, n - 1)) for q in (0.975, 0.025))


def seeds_text(n: int | None) -> str:
    return f"over {MOST_SEEDS:,}" if n is None else str(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--variant", default="pythia-14m-mla")
    parser.add_argument("--reference", default="pythia-14m-mha")
    parser.add_argument("--text", default="val-verdict")
    parser.add_argument("--half_width", type=float, default=0.02)
    args = parser.parse_args()
    saved = json.loads(args.results.read_text())
    variant, reference = (final_losses(saved, name, args.text) for name in (args.variant, args.reference))
    seeds = sorted(set(variant) & set(reference))
    if len(seeds) < 2:
        raise SystemExit(f"{args.results}: {len(seeds)} seed(s) finished for both {args.variant} and {args.reference}; need 2")
    differences = [variant[s] - reference[s] for s in seeds]
    s_d = sample_std(differences)
    s_v, s_r = sample_std([variant[s] for s in seeds]), sample_std([reference[s] for s in seeds])
    removed = 1 - s_d**2 / (s_v**2 + s_r**2)
    correlation = float(np.corrcoef([variant[s] for s in seeds], [reference[s] for s in seeds])[0, 1])
    n = len(seeds)
    mean = sum(differences) / n
    half = stats.t.ppf(0.975, n - 1) * s_d / math.sqrt(n)
    unpaired_std = math.sqrt((s_v**2 + s_r**2) / 2)  # the pooled per-run standard deviation
    print(f"{args.text}: seeds {seeds}")
    print(f"  {args.reference}: " + ", ".join(f"{reference[s]:.4f}" for s in seeds) + f"  (std {s_r:.4f})")
    print(f"  {args.variant}: " + ", ".join(f"{variant[s]:.4f}" for s in seeds) + f"  (std {s_v:.4f})")
    print(f"  paired differences: " + ", ".join(f"{d:+.4f}" for d in differences) + f"  (std {s_d:.4f})")
    print(f"  mean difference {mean:+.4f}, paired 95% interval ±{half:.4f} at n = {n}")
    print(f"  pairing removed {removed:.0%} of an unpaired difference's variance (at most"
          f" {2 * s_v * s_r / (s_v**2 + s_r**2):.0%} at these spreads)")
    print(f"  correlation of paired runs: {correlation:+.2f}" + (" (two seeds: always ±1, no estimate)" if n == 2 else ""))
    low, high = (seeds_for(args.half_width, spread) for spread in spread_interval(s_d, n))
    print(f"  seeds for ±{args.half_width}: paired {seeds_text(seeds_for(args.half_width, s_d))} (from {seeds_text(low)}"
          f" to {seeds_text(high)} over the 95% interval of s_d, {n - 1} df),"
          f" unpaired (Welch, per side) {seeds_text(seeds_for(args.half_width, unpaired_std, per_side_terms=2))}")


if __name__ == "__main__":
    main()
