"""litgpt_mka.compare.statistics: Student's t against tabulated quantiles, closed forms and scipy; the tests of a
difference on chosen numbers; Holm's adjustment."""

import math

import pytest

from litgpt_mka.compare.statistics import holm, paired, t_quantile, two_sided_p, welch

# t_{0.975, df} and t_{0.995, df}, as printed in every table of Student's t (three decimals)
TABLE_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 8: 2.306, 10: 2.228, 20: 2.086, 30: 2.042,
            math.inf: 1.960}
TABLE_99 = {1: 63.657, 2: 9.925, 5: 4.032, 10: 3.169, math.inf: 2.576}


@pytest.mark.parametrize(("level", "table"), [(0.95, TABLE_95), (0.99, TABLE_99)], ids=["95%", "99%"])
def test_quantiles_match_the_printed_table(level, table):
    for df, printed in table.items():
        assert t_quantile(level, df) == pytest.approx(printed, abs=5e-4), df


def test_p_values_match_the_closed_forms_for_one_two_and_infinitely_many_degrees_of_freedom():
    for t in (0.0, 0.3, 1.0, 2.9, 4.303, 12.706, 50.0):
        assert two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10, abs=1e-14)  # Cauchy
        assert two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10, abs=1e-14)
        assert two_sided_p(-t, 2) == two_sided_p(t, 2)
        assert two_sided_p(t, math.inf) == pytest.approx(math.erfc(t / math.sqrt(2)), rel=1e-12, abs=1e-300)
    assert two_sided_p(math.inf, 3) == 0.0


def test_p_values_and_quantiles_match_scipy_at_fractional_degrees_of_freedom():
    from scipy import stats

    for df in (1.0, 1.37, 2.0, 2.9, 4.6, 7.25, 30.0, 250.0):
        for t in (0.1, 1.0, 2.0, 3.5, 8.0):
            assert two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9), (t, df)
        for level in (0.9, 0.95, 0.99):
            assert t_quantile(level, df) == pytest.approx(stats.t.ppf((1 + level) / 2, df), rel=1e-9), (level, df)


def test_welch_gives_the_textbook_numbers():
    # means 1.6 and 2.1, sample variances 0.02 and 0.02: SE = sqrt(0.01 + 0.01), df = 0.02^2 / (2 x 0.01^2) = 2
    test = welch([1.5, 1.7], [2.0, 2.2])
    assert (test.design, test.difference, test.se, test.df) == ("Welch", pytest.approx(-0.5), pytest.approx(math.sqrt(0.02)),
                                                                pytest.approx(2.0))
    t = 0.5 / math.sqrt(0.02)
    assert test.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.0715
    assert (test.low, test.high) == (pytest.approx(-0.5 - 4.302653 * math.sqrt(0.02)), pytest.approx(-0.5 + 4.302653 * math.sqrt(0.02)))
    assert not test.excludes_zero
    # unequal sizes and spreads: a = 0.09 / 3 = 0.03, b = 0.01 / 2 = 0.005; df = 0.035^2 / (0.03^2 / 2 + 0.005^2 / 1)
    unequal = welch([1.0, 1.3, 1.6], [2.0, 2.0 + math.sqrt(0.02)])
    assert unequal.df == pytest.approx(0.035 ** 2 / (0.03 ** 2 / 2 + 0.005 ** 2 / 1), rel=1e-6)


def test_paired_test_of_the_per_seed_differences():
    test = paired([0.10, 0.12, 0.08])  # mean 0.1, s_d = 0.02, SE = 0.02 / sqrt(3), df 2
    assert (test.design, test.difference, test.df) == ("paired", pytest.approx(0.1), pytest.approx(2))
    assert test.se == pytest.approx(0.02 / math.sqrt(3))
    assert test.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert test.excludes_zero
    # a known variance (lm-eval's) counts as infinitely many df: df = SE^4 / ((s_d^2 / k)^2 / (k - 1))
    with_known = paired([0.10, 0.12, 0.08], known_variance=0.0004 / 3)
    assert with_known.df == pytest.approx((0.0008 / 3) ** 2 / ((0.0004 / 3) ** 2 / 2))


def test_no_spread_gives_a_certain_answer_either_way():
    assert (welch([1.9, 1.9], [2.0, 2.0]).p, welch([1.9, 1.9], [2.0, 2.0]).df) == (0.0, None)
    assert welch([2.0, 2.0], [2.0, 2.0]).p == 1.0


def test_holm_adjusts_in_the_order_given():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.05, 0.04, 0.03, 0.02, 0.01]) == pytest.approx([0.09, 0.09, 0.09, 0.08, 0.05])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9]) and holm([0.7]) == [0.7] and holm([]) == []


def test_seeds_for_a_half_width_plan_a_study_from_a_pilots_spread():
    from litgpt_mka.compare.statistics import seeds_for_half_width

    # s_d = 0.02: k = 3 gives 4.303 x 0.02 / sqrt(3) = 0.0497; k = 4: 3.182 x 0.02 / 2 = 0.0318; k = 5: 0.0248; 6: 0.0210
    assert seeds_for_half_width(0.02, 0.05) == 3 and seeds_for_half_width(0.02, 0.03) == 5
    assert seeds_for_half_width(0.02, 0.02) == 7  # 2.447 x 0.02 / sqrt(7) = 0.0185
    assert seeds_for_half_width(0.0, 0.01) == 2 and seeds_for_half_width(1.0, 1e-3, most=100) is None


def test_a_nan_p_value_counts_as_1_and_moves_no_other_adjustment():
    from litgpt_mka.compare.statistics import holm

    for order in ([0.001, 0.002, math.nan], [math.nan, 0.001, 0.002], [0.002, math.nan, 0.001]):
        adjusted = dict(zip(map(str, order), holm(order)))
        assert (adjusted["0.001"], adjusted["0.002"], adjusted["nan"]) == (0.003, 0.004, 1.0)
