"""Runs a comparison: every run in its own worker processes, resumable; one after the other by default, or handed
to another launcher (``--launcher parallel`` or ``slurm``: :mod:`litgpt_mka.compare.launch`).

For run ``i`` of ``n`` (configs outermost, then learning rates, seeds innermost; with ``--selection_seeds``, the
other seeds' runs come in a second batch, planned once each variant's rate is chosen: :func:`plan_comparison`):

1. finished (``result.json`` with ``"status": "ok"`` and this spec's sha256)? skip it.
2. no ``train.json``? ``python -m litgpt_mka.compare.worker train RUN_DIR`` (``--resume auto``).
3. ``python -m litgpt_mka.compare.worker evaluate RUN_DIR`` writes ``result.json``.
4. with ``--lm_eval_tasks``, unless ``lm_eval.json`` holds those tasks already:
   ``python -m litgpt_mka.compare.worker lm_eval RUN_DIR --tasks ...`` writes it (a failure there leaves the
   run finished, without scores, and makes the exit status 1).
5. with ``--kv_cache_quantizations``, the same for ``kv_quantization.json``:
   ``python -m litgpt_mka.compare.worker kv_quantization RUN_DIR --quantizations ...``.

A worker that exits nonzero (exception, out-of-memory kill, ...) makes the run "failed": its
``result.json`` records the phase, exit status and the tail of ``run.log``, and the next run starts.
Failed and unfinished runs are started again by the next invocation. The report (results.json,
results.csv, report.md, plots) is rewritten after every run, so it always shows what is finished.

Progress: each phase of each run is announced as ``[run i/n] NAME: phase``, and the worker's own
output is streamed below it, every line prefixed with ``[i/n NAME]`` (and saved unprefixed in the
run's ``run.log``); after each run, one line for the whole sweep: runs done, time so far and the time left,
estimated from the runs this process finished (``sweep: 2/6 runs done in 3m 10s, about 6m 20s left``;
:mod:`litgpt_mka.compare.eta`). Ctrl-C (or SIGTERM) stops the worker (terminate, then kill after 10 s), rewrites
the report of the finished runs and exits with status 130; finished runs stay finished.

Before any run, both data files are tokenized into the shared token cache, so that no run's wall
time includes tokenization. Exit status: 0 when every run finished, 1 when any failed, 130 on Ctrl-C.
"""

import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from litgpt_mka.atomic import read_json, write_json
from litgpt_mka.compare import report
from litgpt_mka.compare.environment import command_line, environment, utc_now
from litgpt_mka.compare.eta import SweepClock, sweep_line
from litgpt_mka.compare.kv_quantization import read_kv_quantization
from litgpt_mka.compare.launch import launcher_of
from litgpt_mka.compare.layout import REPORT_MD, RunPlan
from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.compare.learning_rates import all_rates, chosen_rates
from litgpt_mka.compare.plan import SharedSettings, grids_of, plan_runs, waiting_runs
from litgpt_mka.compare.records import Failure, RunResult, Settings, to_json
from litgpt_mka.compare.summary import T_TEST
from litgpt_mka.compare.tasks import read_lm_eval

TAIL_LINES = 40
INTERRUPTED = 130
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*:|^[\w.]*(Error|Exception)$")


@dataclass(frozen=True)
class Comparison:
    """A validated comparison, ready to run."""

    options: CompareOptions
    shared: SharedSettings
    runs: list[RunPlan]
    out_dir: Path
    command: str  # as typed
    cwd: Path  # where compare ran: the report's paths are relative to it
    reference: str | None  # the variant the others are compared with (None: no MHA config and no --reference)
    waiting: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (variant, seed) until its rate is chosen

    @property
    def total(self) -> int:
        """Runs planned and waiting."""
        return len(self.runs) + len(self.waiting)


# ------------------------------------------------------------------------------------------ preparation
def prepare(options: CompareOptions, argv: list[str] | None = None) -> Comparison:
    """Plans the runs and checks them against what `out_dir` already holds.

    Raises:
        ValueError: invalid options or configs, or `out_dir` holds a run of the same name with other settings.
        FileNotFoundError: a config, data file or tokenizer folder is missing.
    """
    shared, runs, reference, waiting = plan_comparison(options)
    return Comparison(options, shared, runs, Path(options.out_dir).expanduser().resolve(), command_line(argv),
                      Path.cwd(), reference, waiting)


def plan_comparison(options: CompareOptions) -> tuple[SharedSettings, list[RunPlan], str | None, list[tuple[str, int]]]:
    """The runs to bring to a result now, checked against their folders, and those that wait for a chosen rate.

    With ``--selection_seeds``, the variants whose selection runs have all finished (read from their folders) have
    their rate chosen, and their other seeds' runs are planned at it; the rest wait.
    """
    from litgpt_mka.compare.measurements import default_decode_dtype

    decode_dtype = options.decode_dtype or default_decode_dtype()
    shared, runs, reference = plan_runs(options, decode_dtype)
    runs = [as_recorded(run) for run in runs]
    chosen = {}
    if options.selection_seeds:
        finished = [result for result in (run.read_result() for run in runs) if result is not None]
        chosen = chosen_rates(finished, grids_of(options), options.selection_val, options.selection_seeds)
        if chosen:
            shared, runs, reference = plan_runs(options, decode_dtype, chosen)
            runs = [as_recorded(run) for run in runs]
    for run in runs:
        check_existing_spec(run)
    return shared, runs, reference, waiting_runs(options, chosen)


EARLIER_LOGGER = "csv"  # what compare gave every run before it kept the YAML's logger


def as_recorded(run: RunPlan) -> RunPlan:
    """The run with its folder's spec where that spec differs from the planned one only in ``--logger_name csv``:
    compare gave every run the CSV logger before it kept the YAML's, and those runs resume as they were (compare
    reads their metrics.csv either way)."""
    path = run.folder.spec_json
    if not path.is_file():
        return run
    recorded, planned = read_json(path), to_json(run.spec)
    args = list(planned["pretrain_args"])
    if recorded == planned or "--logger_name" not in args:
        return run
    args[args.index("--logger_name") + 1] = EARLIER_LOGGER
    if recorded != {**planned, "pretrain_args": args}:
        return run
    return dataclasses.replace(run, spec=dataclasses.replace(run.spec, pretrain_args=args))


def run_state(run: RunPlan) -> tuple[str, str]:
    """What the next invocation does with a run: (``finished``, ``failed before``, ``to evaluate``, ``to resume`` or
    ``to start``; the detail: its loss, the phase that failed, the checkpoint it resumes from)."""
    from litgpt_mka.checkpoint import checkpoint_dirs

    result = run.read_result()
    if result is not None and result.ok:
        primary = result.evaluation.primary
        return "finished", f"loss {primary.loss:.4f} on {primary.name}"
    if result is not None and result.status == "failed":
        return "failed before", f"in {result.failure.phase}; runs again"
    if run.folder.train_json.is_file():
        return "to evaluate", "trained"
    steps = [path for path in checkpoint_dirs(run.folder.checkpoints) if path.name != "final"]
    return ("to resume", f"from {steps[-1].name}") if steps else ("to start", "")


def plan_lines(comparison: Comparison) -> list[str]:
    """``compare --dry_run``'s output: the plan, one line per run, then the runs waiting for a chosen rate."""
    states = [run_state(run) for run in comparison.runs]
    counts: dict[str, int] = {}
    for kind, _ in states:
        counts[kind] = counts.get(kind, 0) + 1
    if comparison.waiting:
        counts["waiting for a chosen rate"] = len(comparison.waiting)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    lines = [f"compare plan: {comparison.total} runs ({summary}) in {comparison.out_dir};"
             f" reference: {comparison.reference or 'none'}"]
    width, digits = max(len(run.name) for run in comparison.runs), len(str(comparison.total))
    lines += [f"  [{run.index:>{digits}}/{comparison.total}] {run.name:<{width}}  {kind}"
              + (f" ({detail})" if detail else "") for run, (kind, detail) in zip(comparison.runs, states)]
    waiting: dict[str, list[str]] = {}
    for variant, seed in comparison.waiting:
        waiting.setdefault(variant, []).append(str(seed))
    lines += [f"  {variant}: seed{'s' * (len(seeds) > 1)} {', '.join(seeds)} wait{'s' * (len(seeds) == 1)} for its"
              " rate, chosen once its selection runs have finished" for variant, seeds in waiting.items()]
    return lines


def check_existing_spec(run: RunPlan) -> None:
    """Refuses to reuse a run folder that was made with other settings."""
    path = run.folder.spec_json
    if not path.is_file():
        return
    existing, wanted = read_json(path), to_json(run.spec)
    if "val_paths" not in existing:
        raise ValueError(
            f"{run.run_dir} holds a run made by an earlier version of compare (spec.json without val_paths, results"
            " schema v1, which this version no longer reads); use another --out_dir, or delete that folder to start"
            " the run again"
        )
    if existing != wanted:
        differing = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
        unpaired = "; it was not paired-initialised: --paired false resumes it" if "paired_init" in differing else ""
        raise ValueError(
            f"{run.run_dir} holds a run made with other settings (differing: {', '.join(differing)}{unpaired}); use"
            " another --out_dir, or delete that folder to start the run again"
        )


def prepare_data(shared: SharedSettings) -> None:
    """Tokenizes the training and validation text into the shared cache (what TextCorpus reads)."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_mka.data import load_or_tokenize

    tokenizer = Tokenizer(shared.tokenizer_dir)
    load_or_tokenize(shared.train_path, tokenizer, shared.cache_dir, field_name="train_path")
    for val_path in shared.val_paths:
        load_or_tokenize(val_path, tokenizer, shared.cache_dir, field_name="val_path")


# ------------------------------------------------------------------------------------------------- runs
def announce(run: RunPlan, total: int, message: str) -> None:
    print(f"[run {run.index}/{total}] {run.name}: {message}", flush=True)


def worker_command(run: RunPlan, phase: str, keep_step_checkpoints: bool) -> list[str]:
    command = [sys.executable, "-m", "litgpt_mka.compare.worker", phase, str(run.run_dir)]
    return command + (["--keep_step_checkpoints"] if keep_step_checkpoints and phase == "evaluate" else [])


def lm_eval_command(run: RunPlan, tasks: list[str], include_path: Path | None) -> list[str]:
    command = worker_command(run, "lm_eval", keep_step_checkpoints=False) + ["--tasks", ",".join(tasks)]
    return command + ([] if include_path is None else ["--include_path", str(Path(include_path).resolve())])


def kv_quantization_command(run: RunPlan, quantizations: list[str]) -> list[str]:
    return worker_command(run, "kv_quantization", keep_step_checkpoints=False) + ["--quantizations", ",".join(quantizations)]


def score_tasks(run: RunPlan, total: int, tasks: list[str] | None, include_path: Path | None) -> bool:
    """lm-eval task scores of a finished run, unless it has those already; True if it has them now."""
    if not tasks or read_lm_eval(run.run_dir, tasks, include_path) is not None:
        return True
    return run_extra_phase(run, total, "lm_eval", f"lm-eval tasks {', '.join(tasks)}",
                           lm_eval_command(run, tasks, include_path))


def measure_quantized_caches(run: RunPlan, total: int, quantizations: list[str] | None) -> bool:
    """Cached decoding of a finished run through quantized caches, unless it has those already; True if it has."""
    if not quantizations or read_kv_quantization(run.run_dir, quantizations) is not None:
        return True
    return run_extra_phase(run, total, "kv_quantization", f"quantized KV caches {', '.join(quantizations)}",
                           kv_quantization_command(run, quantizations))


def run_extra_phase(run: RunPlan, total: int, phase: str, what: str, command: list[str]) -> bool:
    """A phase after the run finished (lm-eval scores, quantized caches); True if it succeeded.

    A failure is announced and leaves result.json as it is: the run stays finished, that phase's file missing.
    """
    announce(run, total, what)
    returncode = launch(run, total, command)
    if returncode in (-signal.SIGINT, INTERRUPTED):
        raise KeyboardInterrupt
    if returncode != 0:
        tail = log_tail(run.folder.log)
        announce(run, total, f"FAILED in {phase}, {describe_exit(returncode)}: {error_summary(tail)}"
                             f" (log: {run.folder.log})")
        return False
    return True


def stop(process: subprocess.Popen) -> None:
    """Terminates a worker, and kills it if it is still alive 10 s later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(run: RunPlan, total: int, command: list[str]) -> int:
    """Runs a worker; streams its output to the screen (prefixed) and to run.log. Returns its exit status."""
    prefix = f"[{run.index}/{total} {run.name}] "
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run.folder.log, "a", encoding="utf-8") as log:
        log.write(f"=== {utc_now()} {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", env=env)
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(prefix + line)
                sys.stdout.flush()
            return process.wait()
        except BaseException:
            stop(process)
            raise


def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    name = signal.Signals(-returncode).name
    hint = " (often the out-of-memory killer)" if -returncode == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of the latest attempt in a run.log."""
    tail: deque[str] = deque(maxlen=lines)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("=== "):
                tail.clear()
            tail.append(line.rstrip("\n"))
    return list(tail)


def error_summary(tail: list[str], max_chars: int = 400) -> str:
    """What a failed worker said last: its last exception line and the lines after it, else its last line.

    Lines after the exception (jsonargparse lists the real reasons there) are joined with " / ";
    jsonargparse's "Given value" dumps are left out.
    """
    lines = [line.strip() for line in tail if line.strip() and not line.startswith("=== ")]
    starts = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line)]
    if not starts:
        return lines[-1][:max_chars] if lines else ""
    kept = [line for line in lines[starts[-1]:] if not line.startswith("Given value")]
    summary = " / ".join(kept)
    return summary if len(summary) <= max_chars else summary[: max_chars - 3] + "..."


def record_failure(run: RunPlan, phase: str, returncode: int) -> Failure:
    folder, spec = run.folder, run.spec
    tail = log_tail(folder.log)
    failure = Failure(phase=phase, returncode=returncode, reason=describe_exit(returncode), error=error_summary(tail),
                      log=str(folder.log), log_tail=tail)
    write_json(folder.result_json, to_json(RunResult(
        status="failed", name=spec.name, variant=spec.variant, seed=spec.seed, config_path=spec.config_path,
        config_sha256=spec.config_sha256, spec_sha256=run.spec_sha256(), train=folder.read_train(),
        failure=failure, finished=utc_now(), learning_rate=spec.learning_rate,
    )))
    return failure


def execute(run: RunPlan, total: int, keep_step_checkpoints: bool) -> bool:
    """Brings one run to a result; True if it finished, False if it failed."""
    if run.is_finished():
        announce(run, total, "finished earlier, skipped")
        return True
    folder = run.folder
    folder.path.mkdir(parents=True, exist_ok=True)
    if not folder.spec_json.is_file():
        write_json(folder.spec_json, to_json(run.spec))
    phases = ["evaluate"] if folder.train_json.is_file() else ["train", "evaluate"]
    for phase in phases:
        announce(run, total, {"train": "training (litgpt pretrain)", "evaluate": "evaluating and measuring"}[phase])
        returncode = launch(run, total, worker_command(run, phase, keep_step_checkpoints))
        if returncode in (-signal.SIGINT, INTERRUPTED):  # Ctrl-C reached the worker first: not a failure
            raise KeyboardInterrupt
        if returncode != 0:
            failure = record_failure(run, phase, returncode)
            announce(run, total, f"FAILED in {phase}, {failure.reason}: {failure.error} (log: {failure.log})")
            return False
    announce(run, total, f"done: validation loss {run.read_result().evaluation.primary.loss:.4f}")
    return True


# ----------------------------------------------------------------------------------------------- report
def run_results(comparison: Comparison) -> list[RunResult]:
    """Every run's result in plan order (paths relative to where compare ran); runs without one are pending."""
    options = comparison.options
    tasks, include_path, quantizations = options.lm_eval_tasks, options.include_path, options.kv_cache_quantizations
    results = []
    for run in comparison.runs:
        result = run.read_result()
        if result is None:
            result = RunResult(status="pending", name=run.name, variant=run.variant, seed=run.seed,
                               learning_rate=run.spec.learning_rate)
        else:
            if tasks:
                result = dataclasses.replace(result, lm_eval=read_lm_eval(run.run_dir, tasks, include_path))
            if quantizations:
                result = dataclasses.replace(result, kv_quantization=read_kv_quantization(run.run_dir, quantizations))
        results.append(report.public_run(result, comparison.cwd))
    for variant, seed in comparison.waiting:  # at the rate to be chosen: no rate in its name yet
        results.append(RunResult(status="pending", name=f"{variant}-seed{seed}", variant=variant, seed=seed))
    return results


def settings_of(comparison: Comparison) -> Settings:
    """What every run shares, with paths relative to where compare ran."""
    shared, cwd, relative, options = comparison.shared, comparison.cwd, report.relative, comparison.options
    return Settings(
        configs=list(dict.fromkeys(relative(run.spec.config_path, cwd) for run in comparison.runs)),
        seeds=list(comparison.options.seeds),
        train_path=relative(shared.train_path, cwd),
        val_paths=[relative(p, cwd) for p in shared.val_paths],
        tokenizer_dir=relative(shared.tokenizer_dir, cwd),
        data_seed=shared.data_seed,
        measure=comparison.runs[0].spec.measure,
        paired_init=comparison.options.paired,
        verdict_rule=T_TEST,
        learning_rates=all_rates(grids_of(options)),
        selection_val=options.selection_val,
        rate_grids=None if options.config_learning_rates is None else {
            variant: [float(r) for r in grid] for variant, grid in grids_of(options).items() if grid != [None]},
        selection_seeds=options.selection_seeds,
    )


def write_report(comparison: Comparison) -> None:
    """Reads every run's result back from its folder and writes the report into the comparison's folder."""
    settings = settings_of(comparison)
    results = report.results_of(comparison.command, utc_now(), environment(), settings, comparison.reference,
                                run_results(comparison))
    report.write_outputs(comparison.out_dir, results, comparison.options.plots)


def finish_run(comparison: Comparison, plan: RunPlan) -> list[str]:
    """Brings one run to its result, then its extra phases; the labels of what failed (a launcher's task)."""
    options, total = comparison.options, comparison.total
    if not execute(plan, total, options.keep_step_checkpoints):
        return [plan.name]
    failed = []
    if not score_tasks(plan, total, options.lm_eval_tasks, options.include_path):
        failed.append(f"{plan.name} (lm-eval)")
    if not measure_quantized_caches(plan, total, options.kv_cache_quantizations):
        failed.append(f"{plan.name} (quantized KV caches)")
    return failed


def _timed(clock: SweepClock, plan: RunPlan, task) -> list[str]:
    """Runs a launcher's task in this process and records its wall time for the sweep's estimate (a run an earlier
    ``compare`` finished is skipped by its task and not counted)."""
    finished_earlier, started = plan.is_finished(), time.perf_counter()
    failed = task()
    if not finished_earlier:
        clock.record(plan.variant, time.perf_counter() - started)
    return failed


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_comparison(comparison: Comparison) -> int:
    """Runs every run of a prepared comparison and writes the report; returns the exit status.

    With ``--selection_seeds`` it plans again after each batch: a variant whose selection runs all finished has its
    rate chosen, and its other seeds' runs follow in the next batch.
    SIGTERM (a job scheduler, ``kill``) is handled like Ctrl-C: the worker is stopped, the report rewritten.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    clock, done, failed, attempted = SweepClock(), [], [], set()
    try:
        prepare_data(comparison.shared)
        launcher = launcher_of(comparison.options.launcher, comparison.options.parallel_runs,
                               comparison.options.slurm, comparison.out_dir)
        while batch := next_batch(comparison, attempted):
            attempted |= {plan.name for plan in batch}
            failed += run_batch(comparison, batch, launcher, clock, done)
            if comparison.options.selection_seeds:  # a rate chosen now adds its variant's other seeds
                try:
                    _, runs, _, waiting = plan_comparison(comparison.options)
                except (ValueError, FileNotFoundError) as error:  # e.g. a config edited while the runs trained
                    write_report(comparison)
                    print(f"litgpt-mka compare: error while planning the runs after a chosen rate: {error}",
                          file=sys.stderr, flush=True)
                    return 2
                comparison = dataclasses.replace(comparison, runs=runs, waiting=waiting)
    except KeyboardInterrupt:
        write_report(comparison)
        print(f"interrupted: finished runs are kept in {comparison.out_dir}; run the same command again to resume",
              file=sys.stderr, flush=True)
        return INTERRUPTED
    waiting = (f"; waiting for a chosen rate (a selection run did not finish): {len(comparison.waiting)} runs"
               if comparison.waiting else "")
    failures = f"; failed runs: {', '.join(failed)}" if failed else ""
    print(f"report: {comparison.out_dir / REPORT_MD}{failures}{waiting}", flush=True)
    return 1 if failed or comparison.waiting else 0


def next_batch(comparison: Comparison, attempted: set[str]) -> list[RunPlan]:
    """The planned runs not attempted yet by this invocation; with ``--selection_seeds``, the selection runs first,
    all of them, before any other seed's (a variant with a given rate is chosen at once, and its later seeds would
    otherwise run ahead of the others': seed by seed across the configs only holds when they start together)."""
    batch = [plan for plan in comparison.runs if plan.name not in attempted]
    selection_seeds = comparison.options.selection_seeds
    if selection_seeds:
        selecting = [plan for plan in batch if plan.seed in selection_seeds]
        return selecting or batch
    return batch


def run_batch(comparison: Comparison, batch: list[RunPlan], launcher, clock: SweepClock, done: list) -> list[str]:
    """Hands a batch of runs to the launcher; the labels of what failed."""
    tasks = [(plan.name, functools.partial(finish_run, comparison, plan)) for plan in batch]
    if comparison.options.launcher == "sequential":  # runs in this process: their wall times feed the sweep's estimate
        tasks = [(name, functools.partial(_timed, clock, plan, task)) for (name, task), plan in zip(tasks, batch)]

    def after_each() -> None:
        write_report(comparison)
        done.append(True)
        pending = [run.variant for run in comparison.runs if not run.is_finished()]
        pending += [variant for variant, _ in comparison.waiting]
        print(sweep_line(len(done), comparison.total, clock, pending), flush=True)

    return launcher.run(tasks, after_each)
