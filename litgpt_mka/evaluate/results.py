"""What ``litgpt-mka evaluate`` writes, and the task scores read back from it.

``results.json`` is lm-eval's own results dictionary (``simple_evaluate``'s return value without the
per-sample records), as ``litgpt evaluate`` saves it; ``results.md`` is lm-eval's table of it
(``lm_eval.utils.make_table``): one row per task and metric, with its standard error.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litgpt_mka.atomic import write_text

STDERR_SUFFIX = "_stderr"


@dataclass(frozen=True)
class TaskScore:
    """One metric of one lm-eval task on one checkpoint, as lm-eval's results.json gives it."""

    task: str
    metric: str  # lm-eval's key with its filter, e.g. "acc,none"
    value: float
    stderr: float | None  # lm-eval's standard error over the task's examples; None where it gives none ("N/A")
    higher_is_better: bool | None  # lm-eval's direction of the metric; None when the task declares none


def write_results(out_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Writes ``results.json`` and ``results.md`` into `out_dir`; returns their paths."""
    from lm_eval.utils import make_table

    out_dir = Path(out_dir)
    saved = {key: value for key, value in results.items() if key != "samples"}
    json_path, table_path = out_dir / "results.json", out_dir / "results.md"
    write_text(json_path, json.dumps(saved, indent=2, ensure_ascii=False, default=str) + "\n")
    tables = [make_table(saved)] + ([make_table(saved, "groups")] if saved.get("groups") else [])
    write_text(table_path, "\n".join(tables))
    return json_path, table_path


def task_scores(results: dict[str, Any]) -> list[TaskScore]:
    """Every numeric metric of every task in lm-eval's ``results`` section, with its standard error and direction."""
    scores = []
    for task, metrics in results.get("results", {}).items():
        directions = results.get("higher_is_better", {}).get(task, {})
        for key, value in metrics.items():
            # metrics are "name,filter" keys; "sample_len", "alias" and the "*_stderr,filter" keys are not
            if "," not in key or STDERR_SUFFIX in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, _, metric_filter = key.partition(",")
            stderr = metrics.get(f"{name}{STDERR_SUFFIX},{metric_filter}")
            scores.append(TaskScore(task, key, float(value), _number_or_none(stderr), directions.get(name)))
    return scores


def _number_or_none(value: Any) -> float | None:
    """lm-eval writes "N/A" for a standard error it cannot compute."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
