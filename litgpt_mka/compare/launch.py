"""Who starts a comparison's runs: one after another here, several at once here, or SLURM jobs (``--launcher``).

The runner hands every run over as a *task*: its name and a picklable callable that brings that run to its result
(training, evaluation, the extra phases; the runner's ``finish_run``) and returns the labels of what failed. The
tasks write only into their own run folders; the runner rewrites the report after each one finishes
(``after_each``), in its own process. So every launcher keeps the same records, the same resume (a finished run is
skipped by its task, wherever it runs) and the same report.

=============  =============================================================================================
launcher       what runs where
=============  =============================================================================================
``sequential`` (default) each task in this process, in plan order: the behaviour of compare before launchers.
``parallel``   ``parallel_runs`` tasks at once, each in its own process pinned to one GPU: slot k of the pool
               gets ``CUDA_VISIBLE_DEVICES`` = the k-th entry of this process's ``CUDA_VISIBLE_DEVICES`` (or k).
               Output lines stay prefixed by their run.
``slurm``      one SLURM job per task, submitted together as one job array through ``submitit``
               (``pip install 'litgpt-mka[slurm]'``); ``slurm`` holds submitit's parameters (``slurm_partition``,
               ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ...); ``{"cluster": "local"}`` runs the jobs
               on this machine with submitit's local executor. Job logs go to ``OUT/slurm/``. This process waits
               for the jobs and writes the report as they finish; if it is stopped, running the same command
               again skips the finished runs.
=============  =============================================================================================
"""

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHERS = ("sequential", "parallel", "slurm")
SLURM_FOLDER = "slurm"

Task = tuple[str, Callable[[], list[str]]]  # (run name, brings the run to its result; returns what failed)


@dataclass(frozen=True)
class Sequential:
    """Each task in this process, one after another."""

    def run(self, tasks: list[Task], after_each: Callable[[], None]) -> list[str]:
        failed = []
        for _, task in tasks:
            failed += task()
            after_each()
        return failed


@dataclass(frozen=True)
class LocalParallel:
    """`runs_at_once` tasks at a time, each in a process of a pool whose slot k sees only GPU k."""

    runs_at_once: int

    def run(self, tasks: list[Task], after_each: Callable[[], None]) -> list[str]:
        context = multiprocessing.get_context("spawn")  # no CUDA state inherited from this process
        slots = context.Queue()
        for device in visible_devices(self.runs_at_once):
            slots.put(device)
        failed = []
        with ProcessPoolExecutor(self.runs_at_once, mp_context=context, initializer=_take_device,
                                 initargs=(slots,)) as pool:
            futures = {pool.submit(task): name for name, task in tasks}
            try:
                for future in as_completed(futures):
                    failed += _outcome(futures[future], future.result)
                    after_each()
            except KeyboardInterrupt:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return failed


def visible_devices(count: int) -> list[str]:
    """The first `count` GPU ids this process may use: its CUDA_VISIBLE_DEVICES entries, else 0..count-1."""
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(k) for k in range(count)]


def _take_device(slots) -> None:
    """Pool initializer: this worker process and the run workers it starts see one GPU."""
    os.environ["CUDA_VISIBLE_DEVICES"] = slots.get()


@dataclass(frozen=True)
class Slurm:
    """One submitit job per task, submitted as one array; `parameters` are submitit's (``cluster`` picks the
    executor: ``"slurm"`` by default where SLURM is installed, ``"local"`` for this machine)."""

    folder: Path
    parameters: dict = field(default_factory=dict)

    def run(self, tasks: list[Task], after_each: Callable[[], None]) -> list[str]:
        submitit = _import_submitit()
        parameters = dict(self.parameters)
        executor = submitit.AutoExecutor(folder=self.folder, cluster=parameters.pop("cluster", None))
        executor.update_parameters(**parameters)
        with executor.batch():
            jobs = [executor.submit(task) for _, task in tasks]
        names = {job: name for job, (name, _) in zip(jobs, tasks)}
        failed = []
        for job in submitit.helpers.as_completed(jobs):
            failed += _outcome(names[job], job.result)
            after_each()
        return failed


def _import_submitit():
    try:
        import submitit
    except ImportError as error:
        raise ValueError("launcher='slurm' needs submitit: pip install 'litgpt-mka[slurm]'") from error
    return submitit


def _outcome(name: str, result: Callable[[], list[str]]) -> list[str]:
    """What failed in a task run elsewhere; a task that raised (a job killed, an import error) failed as a whole."""
    try:
        return result()
    except Exception as error:  # the report lists the run as failed; its folder keeps what it wrote
        print(f"{name}: its task failed: {type(error).__name__}: {error}", flush=True)
        return [name]


def check_launcher(launcher: str, slurm: dict | None) -> None:
    """Raises ValueError for an unknown launcher, or ``slurm`` parameters given to another launcher."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r} is not one of {LAUNCHERS}")
    if slurm is not None and launcher != "slurm":
        raise ValueError(f"slurm={slurm!r} is given with launcher={launcher!r}; it is read by launcher='slurm' only")


def launcher_of(launcher: str, parallel_runs: int, slurm: dict | None, out_dir: Path):
    """The launcher the options name.

    Raises:
        ValueError: see :func:`check_launcher`.
    """
    check_launcher(launcher, slurm)
    if launcher == "parallel":
        return LocalParallel(parallel_runs)
    if launcher == "slurm":
        return Slurm(Path(out_dir) / SLURM_FOLDER, dict(slurm or {}))
    return Sequential()
