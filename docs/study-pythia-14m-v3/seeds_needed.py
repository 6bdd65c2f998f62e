"""How many paired seeds bring the 95% interval of a variant's loss difference to MHA within a target half-width.

    python docs/study-pythia-14m-v3/seeds_needed.py docs/study-pythia-14m-v3/pilot/results.json \
        [--variant pythia-14m-mla] [--reference pythia-14m-mha] [--text val-verdict] [--half_width 0.02]

From a finished compare run (results.json), per seed s present for both: d_s = loss_variant,s - loss_reference,s on
`--text` (the final validation loss). With n seeds the paired interval is d ± t(0.975, n-1) s_d / sqrt(n), s_d the
sample standard deviation of the d_s; the seeds needed are the smallest n with t(0.975, n-1) s_d / sqrt(n) <= the
target. Beside it, the unpaired view of the same runs: the implied correlation of paired runs,

    rho = 1 - s_d^2 / (s_v^2 + s_r^2)                       (s_v, s_r: each side's standard deviation over seeds)

and the seeds the Welch interval would need at those standard deviations (t with n-1 df per side, a close bound).
With 2 seeds every standard deviation has 1 degree of freedom: the estimates are rough, and the answer is a
planning number, not a result.
"""

import argparse
import json
import math
from pathlib import Path

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


def seeds_for(half_width: float, std: float, per_side_terms: int = 1) -> int:
    """Smallest n >= 2 with t(0.975, n-1) * std * sqrt(per_side_terms / n) <= half_width."""
    n = 2
    while stats.t.ppf(0.975, n - 1) * std * math.sqrt(per_side_terms / n) > half_width:
        n += 1
    return n


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
    rho = 1 - s_d**2 / (s_v**2 + s_r**2)
    n = len(seeds)
    mean = sum(differences) / n
    half = stats.t.ppf(0.975, n - 1) * s_d / math.sqrt(n)
    unpaired_std = math.sqrt((s_v**2 + s_r**2) / 2)  # the pooled per-run standard deviation
    print(f"{args.text}: seeds {seeds}")
    print(f"  {args.reference}: " + ", ".join(f"{reference[s]:.4f}" for s in seeds) + f"  (std {s_r:.4f})")
    print(f"  {args.variant}: " + ", ".join(f"{variant[s]:.4f}" for s in seeds) + f"  (std {s_v:.4f})")
    print(f"  paired differences: " + ", ".join(f"{d:+.4f}" for d in differences) + f"  (std {s_d:.4f})")
    print(f"  mean difference {mean:+.4f}, paired 95% interval ±{half:.4f} at n = {n}")
    print(f"  implied correlation of paired runs: {rho:+.2f}")
    print(f"  seeds for ±{args.half_width}: paired {seeds_for(args.half_width, s_d)},"
          f" unpaired (Welch, per side) {seeds_for(args.half_width, unpaired_std, per_side_terms=2)}")


if __name__ == "__main__":
    main()
