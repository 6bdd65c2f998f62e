"""compare's estimate of the time left of a whole sweep: each pending run takes the mean time of its variant's
finished runs, or of all finished runs while its variant has none."""

import pytest

from litgpt_mka.compare.eta import SweepClock, duration, sweep_line


def test_pending_runs_take_their_variants_mean_or_the_overall_one():
    clock = SweepClock()
    assert clock.seconds_left(["mha", "mla"]) is None  # nothing finished here yet
    clock.record("mha", 100.0)
    clock.record("mha", 140.0)
    clock.record("mla", 300.0)
    # mha: 120 each; mla: 300; fmka has no finished run: the mean of all three, (100 + 140 + 300) / 3 = 180
    assert clock.seconds_left(["mha", "mla", "fmka"]) == pytest.approx(120 + 300 + 180)
    assert clock.seconds_left([]) == 0


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m 05s"), (7620, "2h 07m")])
def test_durations_read_as_hours_minutes_seconds(seconds, text):
    assert duration(seconds) == text


def test_the_sweep_line_says_runs_done_and_time_left(monkeypatch):
    clock = SweepClock(started=1000.0)
    monkeypatch.setattr("litgpt_mka.compare.eta.time.perf_counter", lambda: 1190.0)
    assert sweep_line(0, 3, clock, ["mha", "mha", "mla"]) == "sweep: 0/3 runs done in 3m 10s"
    clock.record("mha", 95.0)
    assert sweep_line(1, 3, clock, ["mha", "mla"]) == "sweep: 1/3 runs done in 3m 10s, about 3m 10s left"
    assert sweep_line(3, 3, clock, []) == "sweep: 3/3 runs done in 3m 10s"
