"""litgpt_mka.compare.measurements: training throughput from litgpt's metrics.csv rows."""

from litgpt_mka.compare.measurements import training_throughput


def test_throughput_times_only_the_last_training_process_whose_load_was_sampled():
    def rows(first_iter, times):
        return [{"iter": float(i), "total_tokens": 100.0 * i, "iter_time": t} for i, t in enumerate(times, start=first_iter)]

    # a run interrupted after iteration 3 (its process slowed by load nobody sampled) and resumed at iteration 4
    segments = [rows(1, [9.0, 5.0, 5.0]), rows(4, [7.0, 1.0, 2.0])]
    result = training_throughput(segments, skip_iters=1)
    assert (result.tokens_per_iteration, result.timed_iterations) == (100, 2)
    assert result.tokens_per_s == 2 * 100 / (1.0 + 2.0)
    too_short = training_throughput([rows(1, [9.0, 1.0]), rows(3, [9.0])], skip_iters=1)
    assert too_short.tokens_per_s is None and "last training process, its first 1 skipped" in too_short.note
