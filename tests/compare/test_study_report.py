"""docs/study-pythia-14m-v2/report.py: the verdicts across study v1, v2, the learning-rate sweep and the ablation,
on chosen numbers, and on the committed records (study v1 must give the verdicts its own results.json holds)."""

import dataclasses
import json
import re

import pytest

from litgpt_mka.compare.records import CurvePoint
from tests.compare.helpers import synthetic_run
from tests.conftest import PROJECT_ROOT
from tests.helpers import load_script

SCRIPT = PROJECT_ROOT / "docs" / "study-pythia-14m-v2" / "report.py"


@pytest.fixture(scope="module")
def report():
    return load_script(SCRIPT, "study_v2_report")


def runs(variant: str, losses: list[float]):
    return [synthetic_run(variant, seed, loss) for seed, loss in enumerate(losses, start=1)]


def test_each_variant_is_compared_at_its_own_best_learning_rate(report):
    by_rate = {5e-4: {"mha": [4.30, 4.32], "mla": [4.20, 4.22]},
               1e-3: {"mha": [4.10, 4.12, 4.11], "mla": [4.25, 4.27, 4.26]},
               2e-3: {"mha": [4.15, 4.17], "mla": [4.40, 4.41]}}
    mha, mla = report.tuned("mha", by_rate), report.tuned("mla", by_rate)
    assert (mha.learning_rate, mla.learning_rate) == (1e-3, 5e-4)
    assert mla.losses == [4.20, 4.22] and mla.means[2e-3] == (pytest.approx(4.405), 2)

    d = report.tuned_verdict(mla, mha)
    assert d.difference == pytest.approx(4.21 - 4.11)
    assert d.verdict == "worse" and "mla (lr 5e-4)" in d.sentence and "mha (lr 1e-3)" in d.sentence
    assert report.tuned("gqa", by_rate).learning_rate is None


def test_learning_rates_are_written_with_their_significant_digits(report):
    rates = (5e-4, 1e-3, 0.008, 0.016, None)
    assert [report._rate(rate) for rate in rates] == ["5e-4", "1e-3", "8e-3", "1.6e-2", "none"]


def test_the_sweep_is_the_same_in_run_sh_its_configs_and_the_report(report):
    """run.sh trains, configs/ holds and report.py reads the same peak rates, each in run.sh's ``lr-<rate>``."""
    loop = re.search(r"^for lr in ([\d. ]+); do$", (report.STUDY / "run.sh").read_text(), re.MULTILINE)
    trained = sorted(float(rate) for rate in loop.group(1).split())
    configs = sorted(float(path.stem.removeprefix("optimizer-lr-"))
                     for path in (report.STUDY / "configs").glob("optimizer-lr-*.yaml"))
    assert trained == configs == sorted(report.SWEEP)
    for rate in trained:
        assert report.SWEEP[rate] == report.STUDY / f"lr-{rate:g}"
    assert "--out_dir $S/lr-$lr" in (report.STUDY / "run.sh").read_text()


def test_the_sweeps_third_seeds_are_where_run_sh_trains_them(report):
    """run.sh's loop trains 2 seeds at every rate; its later --seeds 1 2 3 invocations are SWEEP_SEEDS's 3s."""
    script = (report.STUDY / "run.sh").read_text()
    assert re.search(r'^  for seeds in "1" "1 2"; do$', script, re.MULTILINE)
    three = re.findall(r"--seeds 1 2 3 [^\n]*\\\n[^\n]*--out_dir \$S/lr-([\d.]+)", script)
    assert sorted(float(rate) for rate in three) == sorted(r for r, n in report.SWEEP_SEEDS.items() if n == 3)
    assert set(report.SWEEP_SEEDS.values()) == {2, 3}


def test_a_best_learning_rate_at_the_edge_of_the_sweep_is_marked(report):
    main = runs("pythia-14m-mha", [4.10, 4.12, 4.11]) + runs("pythia-14m-mla", [4.16, 4.17, 4.15])
    sweep = {5e-4: runs("pythia-14m-mha", [4.20, 4.21]) + runs("pythia-14m-mla", [4.25, 4.26]),
             2e-3: runs("pythia-14m-mha", [4.13, 4.14]) + runs("pythia-14m-mla", [4.12, 4.13]),
             4e-3: []}  # a rate not run yet: brackets nothing

    text = report.answers([], main, [], sweep)

    assert ("| pythia-14m-mha | 4.2050 (2 seeds) | 4.1100 (3 seeds) | 4.1350 (2 seeds) | — | 1e-3 |") in text
    assert ("| pythia-14m-mla | 4.2550 (2 seeds) | 4.1600 (3 seeds) | 4.1250 (2 seeds) | — | 2e-3 (edge of the "
            "sweep: the optimum may lie beyond) |") in text
    assert "| pythia-14m-fmka | — | — | — | — | none |" in text  # no runs: no best, no edge
    assert "| pythia-14m-mla | no runs | +0.0500 ± 0.0082: **worse** | +0.0150 ± 0.0076: **tied within noise** (lr 2e-3) |" in text


def test_each_shared_learning_rate_has_its_own_verdict(report):
    """The verdict at each rate, both sides trained at it; one seed on a side claims nothing, no runs say so."""
    main = runs("pythia-14m-mha", [4.10, 4.12, 4.11]) + runs("pythia-14m-mla", [4.16, 4.17, 4.15])
    sweep = {2e-3: runs("pythia-14m-mha", [4.20, 4.22]) + runs("pythia-14m-mla", [4.10, 4.11]),
             4e-3: runs("pythia-14m-mha", [4.30]) + runs("pythia-14m-mla", [4.25])}

    text = report.answers([], main, [], sweep)

    table = text.split("## Verdicts at each shared learning rate")[1]
    assert "| variant | lr 1e-3 | lr 2e-3 | lr 4e-3 |" in table
    assert ("| pythia-14m-mla | +0.0500 ± 0.0082: **worse** | -0.1050 ± 0.0112: **better** | -0.0500 (1 seed: no claim) |") in table
    assert "| pythia-14m-fmka | no runs | no runs | no runs |" in table


def test_the_t_test_answers_decide_each_column_as_one_holm_family(report):
    """answers-t-test.md: the screening answers' cells decided by Welch t-tests (95% interval, Holm's p within the
    column); a 2-seed difference at 3.5 SE, better by the screening rule, cannot be told (df 2, p 0.072)."""
    main = (runs("pythia-14m-mha", [4.10, 4.12, 4.11]) + runs("pythia-14m-mla", [4.16, 4.17, 4.15])
            + runs("pythia-14m-fmka", [4.12, 4.14, 4.13]))
    sweep = {4e-3: runs("pythia-14m-mha", [4.30, 4.32]) + runs("pythia-14m-mla", [4.25, 4.27])
                   + runs("pythia-14m-fmka", [4.05, 4.07])}  # FMKA's best rate: 4e-3, MLA's and MHA's 1e-3

    screened, tested = report.answers([], main, [], sweep), report.answers([], main, [], sweep, rule="t-test")

    assert "| pythia-14m-mla | +0.0500 ± 0.0082: **worse** | -0.0500 ± 0.0141: **better** |" in screened
    shared = tested.split("## Verdicts at each shared learning rate (95% interval, p Holm)")[1]
    assert ("| pythia-14m-mla | +0.0500 [+0.0273, +0.0727], p 0.007: **worse** |"
            " -0.0500 [-0.1108, +0.0108], p 0.072: **cannot tell** |") in shared
    # the main column's family: MLA (p 0.0036) and FMKA (+0.02, p 0.0705): Holm 2 x 0.0036 and max(0.0072, 0.0705)
    assert "v2: pythia-14m-mla: validation loss +0.0500 nats/token against pythia-14m-mha (Welch t-test" in tested
    assert "p 0.004, Holm-adjusted over 2 comparisons 0.007; 3 and 3 seeds): worse." in tested
    assert "Holm-adjusted over 2 comparisons 0.070; 3 and 3 seeds): cannot tell" in tested
    # the best-rate column is one family too: MLA at 1e-3 (p 0.0036) and FMKA at 4e-3 against MHA at 1e-3
    best = [line for line in tested.splitlines() if line.startswith("- best learning rates:")]
    assert len(best) == 2 and all("Holm-adjusted over 2 comparisons" in line for line in best)
    assert "pythia-14m-fmka (lr 4e-3): validation loss -0.0500 nats/token against pythia-14m-mha (lr 1e-3)" in best[1]


def test_the_pareto_plots_loss_axis_ends_a_little_above_the_main_studys_worst_variant(report):
    main = runs("pythia-14m-mha", [4.10, 4.12]) + runs("pythia-14m-fmka", [4.20, 4.24])
    assert report.pareto_max_loss(main) == pytest.approx(4.22 + report.PARETO_HEADROOM)
    assert report.pareto_max_loss([]) is None


def test_difference_curve_pairs_checkpoints_by_tokens(report):
    def with_curve(run, points):
        curve = [CurvePoint(i, tokens, loss, 999, f"step-{i}") for i, (tokens, loss) in enumerate(points)]
        return dataclasses.replace(run, evaluation=dataclasses.replace(run.evaluation, curve=curve))

    v = [with_curve(synthetic_run("pythia-14m-mla", 1, 4.0), [(100, 5.0), (200, 4.5), (300, 4.0)]),
         with_curve(synthetic_run("pythia-14m-mla", 2, 4.2), [(100, 5.2), (200, 4.7), (300, 4.2)])]
    r = [with_curve(synthetic_run("pythia-14m-mha", 1, 3.9), [(100, 5.0), (200, 4.4)]),
         with_curve(synthetic_run("pythia-14m-mha", 2, 3.9), [(100, 5.0), (200, 4.4)])]

    curve = report.difference_curve(v + r, "pythia-14m-mla")

    assert [tokens for tokens, _, _ in curve] == [100, 200]  # 300: MHA has no checkpoint there
    assert [d for _, d, _ in curve] == pytest.approx([0.1, 0.2])
    assert curve[0][2] == pytest.approx(0.1)  # sqrt(0.02 / 2 + 0 / 2): the variant's spread only


def test_a_study_in_progress_claims_nothing_without_two_seeds(report):
    v1 = runs("pythia-14m-mha", [4.10, 4.12, 4.11]) + runs("pythia-14m-mla", [4.16, 4.17, 4.15])
    main = runs("pythia-14m-mha", [4.19]) + runs("pythia-14m-gqa", [4.18])

    text = report.answers(v1, main, [], {5e-4: [], 2e-3: []})

    assert "| pythia-14m-mla | +0.0500 ± 0.0082: **worse** | no runs | not swept |" in text
    assert "| pythia-14m-gqa | no runs | -0.0100 (1 seed: no claim) | not swept |" in text
    assert "Finished runs: v1 6 of 18; v2 main 2 of 18, ablation 0 of 3" in text


def test_the_ablation_sets_its_full_query_runs_against_the_main_studys_mha_and_mla(report):
    main = runs("pythia-14m-mha", [4.10, 4.12, 4.11]) + runs("pythia-14m-mla", [4.16, 4.17, 4.15])
    ablation = runs("pythia-14m-mla-fullq", [4.12, 4.13, 4.11])  # only the new runs: MHA and MLA are main's

    text = report.answers([], main, ablation, {5e-4: [], 2e-3: []})

    assert "ablation 3 of 3" in text
    assert ("- full-rank query against MHA: pythia-14m-mla-fullq: validation loss +0.0100 nats/token against "
            "pythia-14m-mha (SE 0.0082; 3 and 3 seeds): tied within noise") in text
    assert ("- the query bottleneck's cost: pythia-14m-mla: validation loss +0.0400 nats/token against "
            "pythia-14m-mla-fullq (SE 0.0082; 3 and 3 seeds): worse") in text


def test_the_committed_v1_verdicts_are_those_of_v1s_own_results(report, tmp_path):
    results = json.loads(report.V1_RESULTS.read_text())
    committed = {row["variant"]: row["difference"] for row in results["summary"] if row.get("difference")}
    losses = report.final_losses(report.v1_runs())

    for variant in report.VARIANTS:
        d = report.verdict(losses, variant)
        assert (d.difference, d.se, d.verdict) == (
            pytest.approx(committed[variant]["difference"]), pytest.approx(committed[variant]["se"]),
            committed[variant]["verdict"])

    report.main(tmp_path)  # the committed records render again, by either rule, as committed
    for answers in ("answers.md", "answers-t-test.md"):
        assert (tmp_path / answers).read_text() == (SCRIPT.parent / answers).read_text(), answers
    for plot in ("curves-v1-v2.png", "learning-rates.png", "pareto-v2.png"):
        assert (tmp_path / plot).stat().st_size > 10_000, plot


def test_the_pareto_plot_has_every_configuration_of_v2_once(report, tmp_path):
    main = runs("pythia-14m-mha", [4.11, 4.12]) + runs("pythia-14m-mla", [4.16, 4.17])
    sweep = {5e-4: runs("pythia-14m-mla", [4.13, 4.14]), 2e-3: []}
    ablation = runs("pythia-14m-mha", [4.11]) + runs("pythia-14m-mla-fullq", [4.14])  # MHA: the main run's copy

    rows = report.sweep_points(main, ablation, sweep)

    assert [row.variant for row in rows] == ["pythia-14m-mha", "pythia-14m-mla", "pythia-14m-mla (lr 5e-4)",
                                             "pythia-14m-mla-fullq"]
    assert rows[2].val_loss["val"].mean == pytest.approx(4.135)
    assert report.configuration_colours(rows) == {  # a variant's learning rates in its colour; the ablation its own
        "pythia-14m-mha": "C0", "pythia-14m-mla": "C1", "pythia-14m-mla (lr 5e-4)": "C1", "pythia-14m-mla-fullq": "C2"}
