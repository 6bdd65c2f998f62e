"""lm-eval task scores of a comparison's runs (``--lm_eval_tasks``): ``runs/<run>/lm_eval.json``.

The scores are a phase of their own after a run finished (``python -m litgpt_mka.compare.worker lm_eval
RUN_DIR --tasks a,b [--include_path DIR]``), written beside ``result.json`` and never into it: a rerun with
other tasks scores the finished checkpoints again and trains nothing. A file counts for the report only when
its tasks and include_path are the requested ones. The checkpoint is scored exactly as ``litgpt-mka evaluate``
scores it (:func:`litgpt_mka.evaluate.evaluate_checkpoint`, float32, the run's seed), with
``eval_batch_size`` requests per forward pass.
"""

import time
from pathlib import Path

from litgpt_mka.atomic import read_json, write_json
from litgpt_mka.compare.records import LmEvalResult, from_json, to_json

LM_EVAL_FILE = "lm_eval.json"


def requested(tasks: list[str], include_path: Path | None) -> tuple[list[str], str | None]:
    """What identifies a task request: the task names and the include_path (absolute)."""
    return list(tasks), None if include_path is None else str(Path(include_path).resolve())


def read_lm_eval(run_dir: Path, tasks: list[str], include_path: Path | None) -> LmEvalResult | None:
    """The run's lm_eval.json if it scored exactly `tasks` from `include_path`, else None."""
    path = Path(run_dir) / LM_EVAL_FILE
    if not path.is_file():
        return None
    result = from_json(LmEvalResult, read_json(path))
    return result if (result.tasks, result.include_path) == requested(tasks, include_path) else None


def score_run(run_dir: Path, tasks: list[str], include_path: Path | None, batch_size: int, seed: int) -> LmEvalResult:
    """Scores ``run_dir/checkpoints/final`` on `tasks` and writes ``run_dir/lm_eval.json``."""
    from importlib.metadata import version

    from litgpt_mka.evaluate import evaluate_checkpoint, task_manager
    from litgpt_mka.evaluate.results import task_scores

    started = time.perf_counter()
    local = None if include_path is None else task_manager(include_path, include_defaults=False)
    only_local = local is not None and all(local.match_tasks([task]) for task in tasks)  # skip indexing lm-eval's
    results = evaluate_checkpoint(
        Path(run_dir) / "checkpoints" / "final", ",".join(tasks), batch_size=batch_size, include_path=include_path,
        include_defaults=not only_local, seed=seed,
    )
    names, path = requested(tasks, include_path)
    result = LmEvalResult(tasks=names, include_path=path, scores=task_scores(results),
                          lm_eval_version=version("lm-eval"), wall_time_s=time.perf_counter() - started)
    write_json(Path(run_dir) / LM_EVAL_FILE, to_json(result))
    return result
