"""compare's launchers (litgpt_mka/compare/launch.py) on tasks that record where they ran: every task runs once,
failures are reported by run name, the report hook follows every task; the parallel pool pins one GPU id per
process; SLURM goes through submitit's local executor (real job processes, pickled tasks, a job array)."""

import functools
import json
import os
from pathlib import Path

import pytest

from litgpt_mka.compare.launch import LocalParallel, Sequential, Slurm, launcher_of, visible_devices
from litgpt_mka.compare.options import CompareOptions, validate
from tests.compare.launch_tasks import record_where

NAMES = ["mha-seed1", "mla-seed1", "mka-seed1"]


def tasks(folder: Path, **outcomes: dict) -> list:
    return [(name, functools.partial(record_where, folder, name, **outcomes.get(name, {}))) for name in NAMES]


def run_all(launcher, folder: Path) -> tuple[list[str], int, dict]:
    reports = []
    failed = launcher.run(tasks(folder, **{"mla-seed1": {"fail": True}}), lambda: reports.append(1))
    ran = {name: json.loads((folder / f"{name}.json").read_text()) for name in NAMES}
    return failed, len(reports), ran


def test_sequential_runs_every_task_here_in_order(tmp_path):
    failed, reports, ran = run_all(Sequential(), tmp_path)
    assert failed == ["mla-seed1"] and reports == len(NAMES)
    assert {where["pid"] for where in ran.values()} == {os.getpid()}


def test_parallel_runs_tasks_in_processes_that_see_one_gpu_each(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    assert visible_devices(2) == ["3", "5"]
    failed, reports, ran = run_all(LocalParallel(2), tmp_path)
    assert failed == ["mla-seed1"] and reports == len(NAMES)
    gpus_by_process = {}
    for where in ran.values():
        gpus_by_process.setdefault(where["pid"], set()).add(where["gpu"])
    assert os.getpid() not in gpus_by_process
    assert all(len(gpus) == 1 for gpus in gpus_by_process.values())  # a process keeps its GPU
    assert set().union(*gpus_by_process.values()) <= {"3", "5"}


def test_slurm_submits_a_job_per_task_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    folder = tmp_path / "runs"
    folder.mkdir()
    launcher = launcher_of("slurm", 2, {"cluster": "local", "timeout_min": 5}, tmp_path / "out")
    assert launcher == Slurm(tmp_path / "out" / "slurm", {"cluster": "local", "timeout_min": 5})
    reports = []
    failed = launcher.run(tasks(folder, **{"mka-seed1": {"crash": True}}), lambda: reports.append(1))
    assert sorted(failed) == ["mka-seed1"] and len(reports) == len(NAMES)  # a crashed job fails its run
    ran = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    assert sorted(ran) == ["mha-seed1", "mla-seed1"] and os.getpid() not in {w["pid"] for w in ran.values()}
    assert any((tmp_path / "out" / "slurm").iterdir())  # submitit's job logs


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(launcher="pbs"), r"launcher='pbs' is not one of \('sequential', 'parallel', 'slurm'\)"),
        (dict(slurm={"timeout_min": 5}), r"slurm=\{'timeout_min': 5\} is given with launcher='sequential'"),
        (dict(launcher="parallel", parallel_runs=0), r"parallel_runs=0 must be a positive integer"),
    ],
)
def test_invalid_launcher_options_are_refused(tmp_path, settings, message):
    config = tmp_path / "a.yaml"
    config.write_text("model_name: pythia-14m\n")
    with pytest.raises(ValueError, match=message):
        validate(CompareOptions(configs=[config], **settings))
