"""litgpt_mka.compare.summary: the difference to the reference, aggregation over seeds, the Pareto frontier."""

import math

import pytest

from tests.compare.helpers import synthetic_run


def test_the_screening_rule_of_comparisons_written_before_the_t_test_decides_as_it_did():
    """The 2-SE rule (Welch SE) that old results.json files were decided by, so that their reports render as written."""
    from litgpt_mka.compare.summary import SCREENING
    from litgpt_mka.compare.summary import difference as t_tested

    def difference(*args):
        return t_tested(*args, rule=SCREENING)

    # reference mean 2.1, sample variance 0.02; SE = sqrt(0.02 / 2 + 0.02 / 2) = 0.1414
    better = difference("v", [1.5, 1.7], "ref", [2.0, 2.2])
    assert (better.verdict, better.n, better.n_reference) == ("better", 2, 2)
    assert better.difference == pytest.approx(-0.5) and better.se == pytest.approx(math.sqrt(0.02))
    assert better.sentence == "v: validation loss -0.5000 nats/token against ref (SE 0.1414; 2 and 2 seeds): better (lower by 3.5 SE)."
    worse = difference("v", [2.6, 2.8], "ref", [2.0, 2.2])
    assert (worse.verdict, round(worse.difference, 6)) == ("worse", 0.6)
    # d = 0.05, SE = sqrt(0.045 / 2 + 0.02 / 2) = 0.1803: |d| < 2 SE
    tied = difference("v", [2.0, 2.3], "ref", [2.0, 2.2])
    assert tied.verdict == "tied within noise" and tied.se == pytest.approx(math.sqrt(0.0325))
    assert tied.sentence.endswith("(SE 0.1803; 2 and 2 seeds): tied within noise (|difference| < 2 SE).")
    one_seed = difference("v", [1.0], "ref", [2.0, 2.2])
    assert (one_seed.verdict, one_seed.se) == ("SE unknown", None) and one_seed.difference == pytest.approx(-1.1)
    assert one_seed.sentence == "v: validation loss -1.1000 nats/token against ref; v has one finished seed, so the SE is unknown and no claim is made."
    assert difference("v", [], "ref", [2.0]).verdict == "no runs"
    assert difference("v", [2.0, 2.0], "ref", [2.0, 2.0]).verdict == "tied within noise"  # no spread, no difference
    assert difference("v", [1.9, 1.9], "ref", [2.0, 2.0]).sentence.endswith(": better (no spread over seeds).")


def test_summary_aggregates_seeds_and_marks_busy_timings():
    from litgpt_mka.compare.records import Routing
    from litgpt_mka.compare.summary import summarize

    def routing(weights):
        return Routing(["local", "session", "long_term"], [weights], 96)

    runs = [synthetic_run("mha", 1, 2.0), synthetic_run("mha", 2, 2.2),
            synthetic_run("mka", 1, 1.5, train_load=2.75, routing=routing([0.6, 0.3, 0.1])),
            synthetic_run("mka", 2, 1.7, routing=routing([0.4, 0.5, 0.1]))]
    mha, mka = summarize(runs, reference="mha")
    assert (mha.val_loss["val"].mean, mha.val_loss["val"].n) == (pytest.approx(2.1), 2)
    assert mha.val_loss["val"].std == pytest.approx(math.sqrt(0.02))
    # -0.5 at 3.5 Welch SEs, df 2: p = 0.0715 (t-test), though the screening rule said "better"
    assert mha.difference is None and mka.difference.verdict == "cannot tell"
    assert mka.difference.p_value == pytest.approx(0.07152331, rel=1e-6)
    assert (mka.train_busy, mka.decode_busy, mha.train_busy) == (True, False, False)
    assert mka.train_tokens_per_s.mean == pytest.approx(501.5)  # raw numbers kept; the report prints "busy"
    assert [s.mean for s in mka.routing[0]] == pytest.approx([0.5, 0.4, 0.1])
    assert mka.routing[0][0].std == pytest.approx(math.sqrt(0.02)) and mha.routing is None


def test_pareto_front_keeps_the_points_that_no_other_beats_on_both_axes():
    from litgpt_mka.compare.summary import pareto_front

    # (KV bytes per token, loss): 3 is dominated by 1 (smaller cache, lower loss), 4 by 0 (same cache, lower loss)
    points = [(6144.0, 2.00), (960.0, 2.05), (1536.0, 2.10), (3072.0, 2.06), (6144.0, 2.01), (240.0, 2.30)]
    assert pareto_front(points) == [5, 1, 0]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]


# ----------------------------------------------------------------------------------- t-test verdicts (issue 36)
def test_a_two_seed_difference_at_2_9_standard_errors_is_not_better():
    """The screening rule called it better; Welch's t-test at df 2 gives p = 0.10 and an interval across 0."""
    from litgpt_mka.compare.summary import SCREENING, difference

    d = -2.9 * math.sqrt(0.02)  # the reference [2.0, 2.2] and the variant both have sample variance 0.02
    values, reference = [2.1 + d - 0.1, 2.1 + d + 0.1], [2.0, 2.2]
    assert difference("v", values, "ref", reference, rule=SCREENING).verdict == "better"
    tested = difference("v", values, "ref", reference)
    assert (tested.verdict, tested.t_test, tested.holm_comparisons) == ("cannot tell", "Welch", 1)
    assert tested.t_df == pytest.approx(2)
    assert tested.p_value == pytest.approx(1 - 2.9 / math.sqrt(2 + 2.9**2))  # closed form at df 2: 0.1012
    half = 4.302653 * math.sqrt(0.02)
    assert (tested.ci95_low, tested.ci95_high) == (pytest.approx(d - half, rel=1e-6), pytest.approx(d + half, rel=1e-6))
    assert tested.sentence == (
        "v: validation loss -0.4101 nats/token against ref (Welch t-test: 95% interval [-1.0186, +0.1984], df 2.0,"
        " p 0.101; 2 and 2 seeds): cannot tell (smallest detectable difference ±0.6085 at 2 and 2 seeds).")


def test_pairing_correlated_seeds_narrows_the_interval_of_the_same_numbers():
    """Seeds that move together (a good and a bad initialisation shared by both): the paired t-test on the per-seed
    differences [0.03, 0.02, 0.04] sees +0.03 ± 0.025; Welch on the same six numbers cannot tell."""
    from litgpt_mka.compare.summary import difference

    reference, values, seeds = [3.60, 3.70, 3.80], [3.63, 3.72, 3.84], [1, 2, 3]
    matched = difference("v", values, "ref", reference, seeds=(seeds, seeds))
    unpaired = difference("v", values, "ref", reference)
    assert (matched.verdict, matched.t_test, matched.pairs, matched.t_df) == ("worse", "paired", 3, pytest.approx(2))
    assert matched.difference == pytest.approx(0.03) and matched.se == pytest.approx(0.01 / math.sqrt(3))
    assert matched.ci95_high - matched.difference == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert unpaired.verdict == "cannot tell" and unpaired.difference == pytest.approx(0.03)
    assert (unpaired.ci95_high - unpaired.difference) > 8 * (matched.ci95_high - matched.difference)
    assert "3 paired seeds" in matched.sentence and matched.sentence.endswith(": worse.")


def test_paired_differences_use_the_seeds_both_sides_finished():
    from litgpt_mka.compare.summary import difference

    paired = difference("v", [3.63, 3.72, 3.84], "ref", [3.80, 3.60], seeds=([1, 2, 3], [3, 1]))
    assert paired.pairs == 2 and paired.difference == pytest.approx((0.03 + 0.04) / 2)  # seed 2 has no partner
    lone = difference("v", [3.63, 3.72], "ref", [3.60, 3.90], seeds=([1, 2], [1, 3]))
    assert (lone.verdict, lone.se) == ("SE unknown", None)
    assert lone.sentence == ("v: validation loss +0.0300 nats/token against ref; only 1 seed finished on both sides,"
                             " fewer than two pairs, so the SE is unknown and no claim is made.")


def test_several_comparisons_with_the_reference_are_adjusted_by_holm():
    """Alone, +0.25 at 3 seeds (Welch p = 0.037) is worse; beside two other variants, Holm's 3 x 0.037 is not."""
    from litgpt_mka.compare.summary import summarize

    reference = [2.0, 2.1, 2.2]
    runs = [synthetic_run("ref", seed, loss) for seed, loss in enumerate(reference, start=1)]
    for variant, shift in (("v1", 0.25), ("v2", 0.1), ("v3", 0.0)):
        runs += [synthetic_run(variant, seed, loss + shift) for seed, loss in enumerate(reference, start=1)]
    alone = summarize([r for r in runs if r.variant in ("ref", "v1")], "ref")[1].difference
    assert alone.verdict == "worse" and alone.p_value == pytest.approx(0.0374, abs=5e-4) and alone.holm_comparisons == 1
    _, v1, v2, v3 = summarize(runs, "ref")
    d = v1.difference
    assert (d.verdict, d.holm_comparisons, d.p_value) == ("cannot tell", 3, pytest.approx(alone.p_value))
    assert d.p_holm == pytest.approx(3 * alone.p_value)
    assert "its interval excludes 0, but not after Holm's adjustment for 3 comparisons" in d.sentence
    assert d.t_df == pytest.approx(4)
    holm_half_width = 3.960786 * d.se  # t_{1 - 0.025/3, 4} (scipy.stats.t.ppf): what Holm's first step asks of 3
    assert d.sentence.endswith(f"smallest detectable difference ±{d.ci95_high - d.difference:.4f} at 3 and 3 seeds,"
                               f" up to ±{holm_half_width:.4f} after Holm's adjustment for 3 comparisons).")
    assert v3.difference.p_holm == 1.0
    assert v2.difference.p_holm == pytest.approx(max(2 * v2.difference.p_value, d.p_holm))
    # paired (the same shift on every seed: the differences spread only by rounding): certain, even after Holm
    paired = summarize(runs, "ref", paired=True)[1].difference
    assert (paired.verdict, paired.t_test, paired.pairs) == ("worse", "paired", 3) and paired.p_holm < 1e-6


def test_holms_half_width_is_the_t_quantile_its_first_step_asks():
    """Six paired seeds (df 5) in a family of five: t_{0.995, 5} = 4.032143 SEs (tabulated), not t_{0.975, 5} =
    2.570582; a family of one asks the interval's own half-width."""
    from litgpt_mka.compare.statistics import paired

    test = paired([0.01, 0.03, 0.02, 0.05, 0.00, 0.04])
    assert test.df == 5 and test.half_width == pytest.approx(2.570582 * test.se, rel=1e-6)
    assert test.holm_half_width(5) == pytest.approx(4.032143 * test.se, rel=1e-6)
    assert test.holm_half_width(1) == test.half_width


def test_a_diverged_run_is_said_not_finite_and_leaves_the_other_verdicts_as_they_are():
    """A NaN loss (a diverged run) makes its variant's comparison "not finite"; the others keep their Holm family."""
    from litgpt_mka.compare.summary import summarize

    runs = [synthetic_run(variant, seed, loss) for seed in (1, 2, 3, 4)
            for variant, loss in (("ref", 3.0 + 0.01 * seed), ("v1", 3.2 + 0.01 * seed), ("v2", 3.2 + 0.011 * seed))]
    diverged = [synthetic_run("nan", seed, math.nan if seed == 4 else 3.0) for seed in (1, 2, 3, 4)]
    for order in (diverged + runs, runs + diverged):
        rows = {row.variant: row for row in summarize(order, "ref")}
        assert rows["nan"].difference.verdict == "not finite"
        assert (rows["v1"].difference.verdict, rows["v2"].difference.verdict) == ("worse", "worse")
        assert rows["v1"].difference.holm_comparisons == 2
