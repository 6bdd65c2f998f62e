"""Study v2's answers: each variant's verdict against MHA in study v1 (repeated data), in study v2 (unique data),
at every variant's own best learning rate and at each shared one, and MLA's query ablation; the validation curves
of v1 and v2 as differences to MHA, one panel per variant; final loss against peak learning rate; loss against
KV-cache bytes.

    python docs/study-pythia-14m-v2/report.py        # from the project root: writes answers.md,
                                                     # answers-t-test.md and three plots

It reads the records `litgpt-mka compare` wrote (``runs/<run>/result.json`` of every part's folder, finished runs
only; study v1 from its ``results.json``), so it renders a study in progress: a part without enough runs says so
instead of claiming. Every verdict is compare's (:func:`litgpt_mka.compare.summary.difference`)::

    d  = mean(variant) - mean(MHA)          final validation loss on val.txt, nats/token, over seeds
    SE = sqrt(s_v^2 / n_v + s_r^2 / n_r)    Welch; "worse" when d >= 2 SE, "better" when d <= -2 SE

That is compare's screening rule (:data:`litgpt_mka.compare.summary.SCREENING`), with which this study was written;
answers.md keeps it, so that it renders as committed. With 2-3 seeds a side that rule is not a test at 5%, so
answers-t-test.md decides the same cells again by compare's rule now (:data:`~litgpt_mka.compare.summary.T_TEST`):
Welch t-tests (the seeds of v1 and v2 were not paired), 95% intervals, Holm's adjustment within each column (the
variants against MHA at one setting; the ablation's two questions each alone), better or worse only where the
adjusted p < 0.05.

Learning rates: a variant's best is the peak learning rate with the lowest mean final loss over its seeds (1e-3
from the main study, 5e-4, 2e-3, 4e-3, 8e-3 and 1.6e-2 from the sweep); MHA's best likewise. Choosing the lowest
of six noisy means favours every side a little; both sides of a difference are chosen the same way. A best at the
lowest or highest rate the variant has finished runs at is marked: its optimum may lie beyond, and its tuned loss
is then an upper bound.
"""

import dataclasses
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from litgpt_mka.compare.layout import RunFolder
from litgpt_mka.compare.plots import loss_vs_kv_cache
from litgpt_mka.compare.records import Difference, RunResult, VariantSummary
from litgpt_mka.compare.report import read_results
from litgpt_mka.compare.summary import SCREENING, T_TEST, difference, loss_differences, p_text, summarize

STUDY = Path(__file__).resolve().parent
V1_RESULTS = STUDY.parent / "study-pythia-14m" / "main" / "results.json"
MAIN, ABLATION = STUDY / "main", STUDY / "ablation"
MAIN_LEARNING_RATE = 1e-3
# the sweep: peak learning rate -> run.sh's --out_dir for it
SWEEP = {rate: STUDY / f"lr-{rate:g}" for rate in (0.0005, 0.002, 0.004, 0.008, 0.016)}
# seeds of each swept variant (SWEPT) at each rate: 2, and 3 at 8e-3, every variant's best (run.sh's step 4)
SWEEP_SEEDS = {rate: 3 if rate == 0.008 else 2 for rate in SWEEP}
REFERENCE = "pythia-14m-mha"
SWEPT = [REFERENCE, "pythia-14m-mla", "pythia-14m-fmka"]
VARIANTS = ["pythia-14m-gqa", "pythia-14m-mqa", "pythia-14m-mla", "pythia-14m-mka", "pythia-14m-fmka"]
FULL_QUERY = "pythia-14m-mla-fullq"
PRIMARY = "val"  # the primary validation text's name: ../shared/data/tinystories/val.txt
_AT_RATE = " (lr "  # a swept configuration's name is "<variant> (lr 5e-4)": _swept
# pareto-v2.png's loss axis ends this far above the main study's worst mean loss; a configuration above that (MHA at
# 5e-4 ends 0.38 nats above the rest) is drawn at the edge with its loss, instead of squeezing the others together
PARETO_HEADROOM = 0.05
# study v1 read 1,024,000 tokens of a 434K-token sample: its second pass starts here
V1_ONE_PASS_TOKENS = 434_000


# ------------------------------------------------------------------------------------------------ reading
def finished_runs(folder: Path) -> list[RunResult]:
    """The finished runs of a comparison folder (``runs/*/result.json`` with status ok); none if it is absent."""
    records = [RunFolder(path.parent).read_result() for path in sorted(folder.glob("runs/*/result.json"))]
    return [run for run in records if run.ok]


def v1_runs(path: Path = V1_RESULTS) -> list[RunResult]:
    return [run for run in read_results(path).runs if run.ok]


def final_losses(runs: list[RunResult]) -> dict[str, list[float]]:
    """variant -> the final loss on the primary validation text of each finished seed."""
    losses: dict[str, list[float]] = {}
    for run in sorted(runs, key=lambda r: (r.variant, r.seed)):
        losses.setdefault(run.variant, []).append(run.evaluation.validation[0].loss)
    return losses


def losses_by_learning_rate(main: list[RunResult], sweep: dict[float, list[RunResult]]
                            ) -> dict[float, dict[str, list[float]]]:
    """peak learning rate -> variant -> final losses: the main study's 1e-3 and the sweep's rates."""
    return {rate: final_losses(runs) for rate, runs in {MAIN_LEARNING_RATE: main, **sweep}.items()}


# ----------------------------------------------------------------------------------------------- verdicts
def verdicts(losses: dict[str, list[float]], variants: list[str], reference: str = REFERENCE,
             rule: str = SCREENING) -> dict[str, Difference]:
    """Each of `variants` against `reference` by `rule`; under t-tests they are one Holm family."""
    samples = {name: (losses.get(name, []), []) for name in (reference, *variants)}  # unpaired: no seeds
    return loss_differences(samples, reference, paired=False, rule=rule)


def verdict(losses: dict[str, list[float]], variant: str, reference: str = REFERENCE,
            rule: str = SCREENING) -> Difference:
    """One variant against `reference`, alone (a family of one)."""
    return verdicts(losses, [variant], reference, rule)[variant]


@dataclass(frozen=True)
class Tuned:
    """A variant at its best peak learning rate among those with finished runs."""

    variant: str
    learning_rate: float | None  # None: no learning rate has a finished run
    losses: list[float]
    means: dict[float, tuple[float, int]]  # learning rate -> (mean final loss, seeds)


def tuned(variant: str, losses_by_rate: dict[float, dict[str, list[float]]]) -> Tuned:
    means = {rate: (statistics.fmean(values), len(values))
             for rate, losses in sorted(losses_by_rate.items()) if (values := losses.get(variant))}
    if not means:
        return Tuned(variant, None, [], {})
    best = min(means, key=lambda rate: means[rate][0])
    return Tuned(variant, best, losses_by_rate[best][variant], means)


def tuned_verdicts(variants: list[Tuned], reference: Tuned, rule: str = SCREENING) -> dict[str, Difference]:
    """Each variant at its best rate against `reference` at its own, by variant name (one Holm family)."""
    losses = {_swept(v.variant, v.learning_rate): v.losses for v in (*variants, reference)}
    decided = verdicts(losses, [_swept(v.variant, v.learning_rate) for v in variants],
                       _swept(reference.variant, reference.learning_rate), rule)
    return {v.variant: decided[_swept(v.variant, v.learning_rate)] for v in variants}


def tuned_verdict(variant: Tuned, reference: Tuned) -> Difference:
    return tuned_verdicts([variant], reference)[variant.variant]


def at_edge(variant: Tuned) -> bool:
    """Whether the variant's best rate is the lowest or highest of the rates it has finished runs at: not bracketed
    (a rate without runs yet brackets nothing)."""
    return bool(variant.means) and variant.learning_rate in (min(variant.means), max(variant.means))


# ------------------------------------------------------------------------------------------------- curves
def difference_curve(runs: list[RunResult], variant: str, reference: str = REFERENCE
                     ) -> list[tuple[int, float, float | None]]:
    """(tokens, mean(variant) - mean(reference), its Welch SE or None) at every checkpoint both sides have."""
    def by_tokens(name: str) -> dict[int, list[float]]:
        points: dict[int, list[float]] = {}
        for run in (r for r in runs if r.variant == name):
            for point in run.evaluation.curve:
                points.setdefault(point.tokens, []).append(point.val_loss)
        return points

    ours, theirs = by_tokens(variant), by_tokens(reference)
    curve = []
    for tokens in sorted(ours.keys() & theirs.keys()):
        d = difference(variant, ours[tokens], reference, theirs[tokens], rule=SCREENING)
        curve.append((tokens, d.difference, d.se))
    return curve


def plot_curves(path: Path, v1: list[RunResult], v2: list[RunResult]) -> None:
    """One panel per variant: its validation loss minus MHA's during training, v1 and v2 (band: +-2 SE)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 7), layout="constrained")
    axes = figure.subplots(2, 3, sharex=True).flatten()
    for ax, variant in zip(axes, VARIANTS):
        for label, runs, colour in (("v1: 2.4 passes over 434K tokens", v1, "C0"),
                                    ("v2: one pass over 909K unique tokens", v2, "C1")):
            curve = difference_curve(runs, variant)
            if not curve:
                continue
            tokens, d, se = zip(*curve)
            ax.plot(tokens, d, marker="o", markersize=3, color=colour, label=label)
            if all(s is not None for s in se):
                ax.fill_between(tokens, [x - 2 * s for x, s in zip(d, se)], [x + 2 * s for x, s in zip(d, se)],
                                color=colour, alpha=0.2, linewidth=0)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.axvline(V1_ONE_PASS_TOKENS, color="C0", linestyle=":", linewidth=1)
        ax.set_title(f"{variant.removeprefix('pythia-14m-').upper()} - MHA")
        ax.set_xlabel("training tokens")
        ax.tick_params(labelbottom=True)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    axes[-1].axis("off")
    axes[-1].text(0.0, 0.5, "validation loss difference to MHA (nats/token)\nagainst training tokens;\n"
                  "band: +-2 SE over seeds (where both have 2+);\ndotted: v1's second pass begins",
                  fontsize="small", va="center")
    figure.savefig(path, format="png", dpi=110)


def plot_learning_rates(path: Path, losses_by_rate: dict[float, dict[str, list[float]]],
                        colours: dict[str, str]) -> None:
    """Final validation loss against peak learning rate of each swept variant: mean over seeds, bar +-1 std; each
    variant in its ``colours`` entry (pareto-v2.png's), matplotlib's next colour where it has none."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    for variant in SWEPT:
        points = [(rate, losses[variant]) for rate, losses in sorted(losses_by_rate.items()) if losses.get(variant)]
        if not points:
            continue
        rates = [rate for rate, _ in points]
        means = [statistics.fmean(values) for _, values in points]
        stds = [statistics.stdev(values) if len(values) > 1 else 0.0 for _, values in points]
        ax.errorbar(rates, means, yerr=stds, marker="o", capsize=3, color=colours.get(variant),
                    label=variant.removeprefix("pythia-14m-").upper())
    ax.set_xscale("log")
    ax.set_xticks(sorted(losses_by_rate), [_rate(rate) for rate in sorted(losses_by_rate)])
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate (warm-up and cosine decay to 1e-4 unchanged)")
    ax.set_ylabel("final validation loss on val (nats/token)")
    ax.set_title("Study v2: final loss against peak learning rate (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(path, format="png", dpi=110)


def sweep_points(main: list[RunResult], ablation: list[RunResult], sweep: dict[float, list[RunResult]]
                 ) -> list[VariantSummary]:
    """Every configuration of v2 as a row of the loss-vs-KV-bytes plot: the main study's variants, each swept
    variant at each other learning rate ("pythia-14m-mla (lr 5e-4)"), the full-query MLA of the ablation."""
    rows = summarize(main, REFERENCE)
    for rate, runs in sorted(sweep.items()):
        rows += [dataclasses.replace(row, variant=_swept(row.variant, rate)) for row in summarize(runs, None)]
    return rows + [row for row in summarize(ablation, None) if row.variant == FULL_QUERY]


def configuration_colours(configurations: list[VariantSummary]) -> dict[str, str]:
    """The plots' colours: a swept configuration ("pythia-14m-mla (lr 5e-4)") in its variant's, so that a variant's
    learning rates read as one family (their names tell them apart); every other variant its own."""
    variants = list(dict.fromkeys(row.variant.partition(_AT_RATE)[0] for row in configurations))
    return {row.variant: f"C{variants.index(row.variant.partition(_AT_RATE)[0]) % 10}" for row in configurations}


def pareto_max_loss(main: list[RunResult]) -> float | None:
    """The top of pareto-v2.png's loss axis: the main study's worst variant (mean over seeds) + PARETO_HEADROOM."""
    means = [statistics.fmean(values) for values in final_losses(main).values()]
    return max(means) + PARETO_HEADROOM if means else None


# ------------------------------------------------------------------------------------------------- report
def _rate(rate: float | None) -> str:
    """A learning rate as the study writes it: 5e-4, 1e-3, 1.6e-2."""
    if rate is None:
        return "none"
    mantissa, exponent = f"{rate:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _swept(variant: str, rate: float | None) -> str:
    """A configuration's name: the variant at a learning rate, "pythia-14m-mla (lr 5e-4)"."""
    return f"{variant}{_AT_RATE}{_rate(rate)})"


def _mean_cell(mean: float, seeds: int) -> str:
    return f"{mean:.4f} ({seeds} seed{'s' if seeds > 1 else ''})"


def _cell(d: Difference) -> str:
    if d.difference is None:  # "no runs", or "not finite" (a diverged run)
        return d.verdict
    if d.se is None:
        return f"{d.difference:+.4f} (1 seed: no claim)"
    if d.ci95_low is not None:  # a t-test: its interval and Holm-adjusted p
        return f"{d.difference:+.4f} [{d.ci95_low:+.4f}, {d.ci95_high:+.4f}], p {p_text(d.p_holm)}: **{d.verdict}**"
    return f"{d.difference:+.4f} ± {d.se:.4f}: **{d.verdict}**"


def _preamble(rule: str) -> list[str]:
    """How the cells of answers.md (the 2-SE rule) or answers-t-test.md (t-tests) are decided."""
    if rule == SCREENING:
        return ["Written by `python docs/study-pythia-14m-v2/report.py` from the committed run records; every cell is the",
                "difference of the final validation loss on `val.txt` to MHA (nats/token), ± its SE over seeds, and the",
                "verdict by the 2-SE rule (the module docstring of `report.py` says how)."]
    return ["Written by `python docs/study-pythia-14m-v2/report.py` from the committed run records: the cells of",
            "[answers.md](answers.md), which keeps the 2-SE screening rule the study was written with, decided again by",
            "compare's rule now ([comparing.md](../comparing.md#paired-runs-and-verdicts)). Every cell is the difference",
            "of the final validation loss on `val.txt` to MHA (nats/token), its 95% interval by Welch's t-test (the seeds",
            "of v1 and v2 were not paired) and its p adjusted by Holm's method within the column (the variants against MHA",
            "at one setting; the ablation's two questions each alone; a comparison in two tables, as at 1e-3, takes each",
            "table's family); **better** or **worse** only where that p < 0.05, else **cannot tell**."]


def answers(v1: list[RunResult], main: list[RunResult], ablation: list[RunResult],
            sweep: dict[float, list[RunResult]], rule: str = SCREENING) -> str:
    """answers.md (`rule` SCREENING) or answers-t-test.md (T_TEST): the verdict table and its sentences, the learning
    rates, the ablation, the curves."""
    v1_losses, v2_losses = final_losses(v1), final_losses(main)
    full_query = [run for run in ablation if run.variant == FULL_QUERY]
    losses_by_rate = losses_by_learning_rate(main, sweep)
    rates = sorted(losses_by_rate)
    reference = tuned(REFERENCE, losses_by_rate)
    sweep_runs = len(SWEPT) * sum(SWEEP_SEEDS[rate] for rate in sweep)
    title = "# Study v2: the answers" + ("" if rule == SCREENING else ", decided by t-tests")
    p_label = "" if rule == SCREENING else " (95% interval, p Holm)"
    lines = [
        title, "", *_preamble(rule), "",
        f"Finished runs: v1 {len(v1)} of 18; v2 main {len(main)} of 18, ablation {len(full_query)} of 3 (its MHA and",
        f"MLA runs are the main study's), learning-rate sweep {sum(map(len, sweep.values()))} of {sweep_runs}.", "",
        "## Verdicts against MHA" + p_label, "",
        "| variant | v1: repeated data, lr 1e-3 | v2: unique data, lr 1e-3 | v2: each at its best lr |",
        "|---|---|---|---|",
    ]
    v1_ds, v2_ds = verdicts(v1_losses, VARIANTS, rule=rule), verdicts(v2_losses, VARIANTS, rule=rule)
    best_rates = {variant: tuned(variant, losses_by_rate) for variant in VARIANTS}
    swept = [variant for variant, best in best_rates.items() if any(rate in best.means for rate in sweep)]
    tuned_ds = tuned_verdicts([best_rates[variant] for variant in swept], reference, rule)
    sentences = []
    for variant in VARIANTS:
        v1_d, v2_d, best = v1_ds[variant], v2_ds[variant], best_rates[variant]
        tuned_d = tuned_ds.get(variant)
        lines.append(f"| {variant} | {_cell(v1_d)} | {_cell(v2_d)} | "
                     f"{_cell(tuned_d) + f' (lr {_rate(best.learning_rate)})' if tuned_d else 'not swept'} |")
        sentences += [f"- v1: {v1_d.sentence}", f"- v2: {v2_d.sentence}"]
        if tuned_d:
            sentences.append(f"- best learning rates: {tuned_d.sentence}")
    lines += ["", *sentences, "", "## Learning rates (mean final loss over the finished seeds)", "",
              "| variant | " + " | ".join(f"lr {_rate(rate)}" for rate in rates) + " | best |",
              "|---|" + "---:|" * len(rates) + "---|"]
    for variant in SWEPT:
        best = tuned(variant, losses_by_rate)
        cells = [_mean_cell(*best.means[rate]) if rate in best.means else "—" for rate in rates]
        edge = " (edge of the sweep: the optimum may lie beyond)" if at_edge(best) else ""
        lines.append(f"| {variant} | {' | '.join(cells)} | {_rate(best.learning_rate)}{edge} |")
    lines += ["", "![final validation loss against peak learning rate](learning-rates.png)", "",
              "## Verdicts at each shared learning rate" + p_label, "",
              "| variant | " + " | ".join(f"lr {_rate(rate)}" for rate in rates) + " |",
              "|---|" + "---|" * len(rates)]
    compared = [v for v in SWEPT if v != REFERENCE]
    at_rate = {rate: verdicts(losses_by_rate[rate], compared, rule=rule) for rate in rates}
    for variant in compared:
        cells = [_cell(at_rate[rate][variant]) for rate in rates]
        lines.append(f"| {variant} | {' | '.join(cells)} |")
    lines += ["", "Where the variants' optima differ, the verdict at one shared rate depends on which rate: hence the",
              "verdict at each one's own best (above)."]
    # the ablation's MHA and MLA runs are the main study's: run.sh copies them instead of retraining, and only the
    # new runs' records are committed in the ablation's folder
    ablation_losses = final_losses(main + full_query)
    lines += ["", "## MLA's query ablation (full-rank query, `q_lora_rank: null`)", "",
              f"- full-rank query against MHA: {verdict(ablation_losses, FULL_QUERY, rule=rule).sentence}",
              "- the query bottleneck's cost:"
              f" {verdict(ablation_losses, 'pythia-14m-mla', FULL_QUERY, rule=rule).sentence}",
              "", "## Curves", "",
              "![v1 and v2 loss differences to MHA during training](curves-v1-v2.png)", "",
              "## Loss against KV-cache bytes, every configuration of v2", "",
              "![v2: final validation loss against KV-cache bytes per token](pareto-v2.png)", "",
              "Only MHA, MLA and FMKA were swept: GQA, MQA, MKA and the full-query MLA ran at 1e-3 alone, so a swept",
              "configuration at a higher rate lies below them by its learning rate, not by its attention. Compare",
              "points at the same rate; the frontier drawn is over every point, tuned or not.", ""]
    return "\n".join(lines)


def main(out_dir: Path = STUDY) -> None:
    v1, main_runs = v1_runs(), finished_runs(MAIN)
    sweep = {rate: finished_runs(folder) for rate, folder in SWEEP.items()}
    ablation = finished_runs(ABLATION)
    (out_dir / "answers.md").write_text(answers(v1, main_runs, ablation, sweep))
    (out_dir / "answers-t-test.md").write_text(answers(v1, main_runs, ablation, sweep, rule=T_TEST))
    plot_curves(out_dir / "curves-v1-v2.png", v1, main_runs)
    configurations = sweep_points(main_runs, ablation, sweep)
    colours = configuration_colours(configurations)
    plot_learning_rates(out_dir / "learning-rates.png", losses_by_learning_rate(main_runs, sweep), colours)
    loss_vs_kv_cache(out_dir / "pareto-v2.png", configurations, PRIMARY, max_loss=pareto_max_loss(main_runs),
                     colours=colours)
    print(f"wrote answers.md, answers-t-test.md, curves-v1-v2.png, learning-rates.png and pareto-v2.png in {out_dir}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
