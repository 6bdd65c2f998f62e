"""litgpt_mka.compare.summary: the difference to the reference, aggregation over seeds, the Pareto frontier."""

import math

import pytest

from tests.compare.helpers import synthetic_run


def test_difference_to_the_reference_uses_the_welch_standard_error_and_the_2_se_rule():
    from litgpt_mka.compare.summary import difference

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
    assert mha.difference is None and mka.difference.verdict == "better"
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
