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


def test_a_phase_on_a_gpu_machine_counts_one_busy_cpu(monkeypatch):
    """The busy rule's threads: torch's CPU threads on a CPU, 1 where a GPU drives the work (measure/load.py)."""
    import os

    import torch

    from litgpt_mka.compare.measurements import measure_phase

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert measure_phase(lambda: 0)[1].threads == min(2, os.cpu_count() or 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert measure_phase(lambda: 0)[1].threads == 1
