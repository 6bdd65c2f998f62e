"""litgpt_mka.compare.worker: the entry point the other ranks of a multi-device run re-enter."""


def test_worker_runs_litgpt_pretrain_for_the_other_ranks_of_a_multi_device_run(monkeypatch):
    from litgpt_mka.compare import worker

    calls = []
    monkeypatch.setattr(worker, "run_litgpt_pretrain", calls.append)
    worker.main(["pretrain", "--config", "a.yaml", "--devices", "2"])
    assert calls == [["--config", "a.yaml", "--devices", "2"]]
