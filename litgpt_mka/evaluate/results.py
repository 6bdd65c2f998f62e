"""What ``litgpt-mka evaluate`` writes, and the task scores read back from it.

``results.json`` is lm-eval's own results dictionary (``simple_evaluate``'s return value without the
per-sample records), as ``litgpt evaluate`` saves it; ``results.md`` is lm-eval's table of it
(``lm_eval.utils.make_table``): one row per task and metric, with its standard error.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litgpt_mka.compare.atomic import write_text

STDERR_SUFFIX = "_stderr"


@dataclass(frozen=True)
class TaskScore:
    """One metric of one task: lm-eval's value and its standard error (NaN where lm-eval gives none)."""

    task: str
    metric: str  # lm-eval's metric key with its filter, e.g. "acc,none"
    value: float
    stderr: float


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
    """Every numeric metric of every task in lm-eval's ``results`` section, with its standard error."""
    scores = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key == "alias" or STDERR_SUFFIX in key or not isinstance(value, (int, float)):
                continue
            name, _, metric_filter = key.partition(",")
            stderr = metrics.get(f"{name}{STDERR_SUFFIX},{metric_filter}" if metric_filter else f"{name}{STDERR_SUFFIX}")
            scores.append(TaskScore(task, key, float(value), _number_or_nan(stderr)))
    return scores


def _number_or_nan(value: Any) -> float:
    """lm-eval writes "N/A" for a standard error it cannot compute."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
