"""litgpt_mka.compare.worker: the entry point the other ranks of a multi-device run re-enter."""


def test_worker_runs_litgpt_pretrain_for_the_other_ranks_of_a_multi_device_run(monkeypatch):
    from litgpt_mka.compare import worker

    calls = []
    monkeypatch.setattr(worker, "run_litgpt_pretrain", calls.append)
    worker.main(["pretrain", "--config", "a.yaml", "--devices", "2"])
    assert calls == [["--config", "a.yaml", "--devices", "2"]]


def test_the_training_process_pairs_initialisations_exactly_when_the_spec_says_so(monkeypatch, tmp_path):
    """LITGPT_MKA_PAIRED_INIT is 1 for a paired run and 0 otherwise, whatever the shell exported."""
    import json
    import os

    from litgpt_mka.compare import worker
    from litgpt_mka.compare.layout import RunFolder
    from litgpt_mka.compare.records import MeasureSettings, RunSpec, to_json
    from litgpt_mka.plugin.litgpt_internals.pretrain import PAIRED_INIT_ENV_VAR

    assert worker.PAIRED_INIT_ENV_VAR == PAIRED_INIT_ENV_VAR  # compare does not import the plugin; the same name
    monkeypatch.setenv(PAIRED_INIT_ENV_VAR, "1")  # exported in the shell; restored after the test
    seen = []
    monkeypatch.setattr(worker, "run_litgpt_pretrain", lambda args: seen.append(os.environ[PAIRED_INIT_ENV_VAR]))
    monkeypatch.setattr(worker, "effective_precision", lambda checkpoint_dir: "32-true")
    for paired in (None, True):
        folder = RunFolder(tmp_path / f"paired-{paired}")
        folder.path.mkdir()
        spec = RunSpec("a-seed1", "a", "a.yaml", "0" * 64, 1, [], ["val.txt"], MeasureSettings(1, 16, 1, 4, "float32", 4),
                       paired_init=paired)
        folder.spec_json.write_text(json.dumps(to_json(spec)))
        worker.train(folder.path)
        assert folder.read_train() is not None
    assert seen == ["0", "1"]
