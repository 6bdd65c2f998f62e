"""``litgpt-mka evaluate``: the command (:func:`evaluate`, its options) and what it runs: lm-eval's
``simple_evaluate`` on the registered model ``litgpt-mka`` (:func:`evaluate_checkpoint`), with litgpt evaluate's
defaults (seed 1234, results beside the checkpoint).

Also the checks of its options and tasks, and the message that names the ``[eval]`` extra when lm-eval is missing.
"""

import math
import sys
from pathlib import Path
from typing import Any, Literal

from litgpt_mka.precision import EVALUATION_PRECISIONS as PRECISIONS
from litgpt_mka.validation import int_in_range

DEFAULT_SEED = 1234  # litgpt evaluate's
LM_EVAL_DISTRIBUTION = "lm-eval"


def lm_eval_requirement() -> str:
    """The ``lm-eval`` requirement of this package's ``[eval]`` extra, as pyproject.toml pins it."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requirements = requires("litgpt-mka") or []
    except PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        name_and_version, _, marker = requirement.partition(";")
        if name_and_version.startswith(LM_EVAL_DISTRIBUTION) and "eval" in marker.replace("'", '"').split('"'):
            return name_and_version.strip()
    return LM_EVAL_DISTRIBUTION


def lm_eval_missing_message(command: str = "litgpt-mka evaluate") -> str:
    return (
        f"{command} needs lm-evaluation-harness, the optional extra [eval]: run "
        f"pip install -e \".[eval]\" in the project (or pip install \"{lm_eval_requirement()}\")"
    )


def require_lm_eval() -> None:
    """Raises:
        ImportError: lm-eval is not installed; the message says what to install."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as error:
        raise ImportError(lm_eval_missing_message()) from error


def check_options(
    tasks: str | None, batch_size: int | str, precision: str, limit: float | None, num_fewshot: int | None,
    max_batch_size: int | None = None,
) -> list[str]:
    """The task names of `tasks` (comma-separated).

    Raises:
        ValueError: an option out of range, naming it, its value and what is allowed.
    """
    names = [name.strip() for name in (tasks or "").split(",") if name.strip()]
    if not names:
        raise ValueError(f"tasks={tasks!r}: give one or more lm-eval task names, comma-separated (--tasks piqa,sciq)")
    if batch_size != "auto":
        int_in_range("batch_size", batch_size, note=" or 'auto'")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
    from litgpt_mka.evaluate.lm import DEFAULT_MAX_BATCH_SIZE  # lm-eval is installed by now (require_lm_eval)

    int_in_range("max_batch_size", max_batch_size, allow_none=f"the default, {DEFAULT_MAX_BATCH_SIZE}")
    check_limit(limit)
    int_in_range("num_fewshot", num_fewshot, 0, allow_none="each task's own")
    return names


def check_limit(limit: float | None) -> None:
    """Raises ValueError unless `limit` is None, a whole count of examples (>= 1) or a fraction in (0, 1)."""
    allowed = "a whole count of examples per task (1 or more), or a fraction of each task in (0, 1)"
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"limit={limit!r} must be positive and finite: {allowed}")
    if limit >= 1 and limit != int(limit):
        raise ValueError(f"limit={limit!r} is above 1 but not a whole number: {allowed}")


def task_manager(include_path: Path | None, include_defaults: bool = True):
    """lm-eval's ``TaskManager`` over its own tasks (unless `include_defaults` is false) and `include_path`.

    Raises:
        FileNotFoundError: `include_path` is not a folder.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"include_path={str(include_path)!r} is not a folder of lm-eval task YAML files")
    return TaskManager(include_path=None if include_path is None else str(include_path), include_defaults=include_defaults)


def check_tasks_known(names: list[str], manager: Any) -> None:
    """Raises:
        ValueError: a task name (or glob) that neither lm-eval nor the include_path defines."""
    unknown = [name for name in names if not manager.match_tasks([name])]
    if unknown:
        raise ValueError(
            f"tasks={','.join(names)!r}: unknown {unknown}; list lm-eval's tasks with `lm-eval ls tasks`, or pass "
            "--include_path with your own task YAML files"
        )


def evaluate_checkpoint(
    checkpoint_dir: Path,
    tasks: str,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    max_batch_size: int | None = None,
    limit: float | None = None,
    include_path: Path | None = None,
    include_defaults: bool = True,
    device: str | None = None,
    precision: str = "32-true",
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """lm-eval's results dictionary for `checkpoint_dir` on `tasks` (see :func:`evaluate` for the options), by
    ``simple_evaluate`` on the registered model ``litgpt-mka``.

    Raises:
        ImportError: lm-eval is missing.
        ValueError: an invalid option or unknown task.
        FileNotFoundError: not a litgpt checkpoint folder, or a missing include_path.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model

    import litgpt_mka  # noqa: F401  (the plugin builds every variant, also without the .pth hook)
    from litgpt_mka.evaluate.registration import MODEL_NAME, register_with_lm_eval

    names = check_options(tasks, batch_size, precision, limit, num_fewshot, max_batch_size)
    manager = task_manager(include_path, include_defaults)
    check_tasks_known(names, manager)
    register_with_lm_eval()  # done already by the .pth's import finder, unless LITGPT_MKA_DISABLE=1
    model_args = {"checkpoint_dir": str(checkpoint_dir), "precision": precision}
    # what `lm_eval --model litgpt-mka --model_args ... --batch_size ... --device ...` builds
    lm = get_model(MODEL_NAME).create_from_arg_obj(
        model_args, {"batch_size": batch_size, "max_batch_size": max_batch_size, "device": device}
    )
    results = simple_evaluate(
        model=lm,
        model_args=model_args,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    # lm-eval names a model object by its class, and 0.4.9 records get_model_info() for its HFLM only
    results["config"].update({"model": MODEL_NAME, **lm.get_model_info()})
    return results


def evaluate(
    checkpoint_dir: Path,
    *,
    tasks: str,
    num_fewshot: int | None = None,
    batch_size: int | Literal["auto"] = 1,
    max_batch_size: int | None = None,
    limit: float | None = None,
    include_path: Path | None = None,
    include_defaults: bool = True,
    device: str | None = None,
    precision: Literal["32-true", "bf16-true", "16-true"] = "32-true",
    out_dir: Path | None = None,
    seed: int = DEFAULT_SEED,
) -> int:
    """Evaluate a litgpt checkpoint (any variant) on lm-evaluation-harness tasks, without a Hugging Face copy.

    Needs the optional extra: pip install -e ".[eval]". Exit status 0, or 2 for invalid options, a missing
    checkpoint file or a missing lm-eval.

    Args:
        checkpoint_dir: A litgpt checkpoint folder: lit_model.pth, model_config.yaml and the tokenizer files.
        tasks: Comma-separated lm-eval task names (or globs), e.g. "lambada_openai,piqa,sciq"; with
            --include_path also the tasks defined there.
        num_fewshot: Few-shot examples per prompt; default: each task's own.
        batch_size: Rows per forward pass, one row per group of requests that read the same input (a
            multiple-choice document whose choices are one token each is one row; a rolling window is one row);
            auto: the largest that fits in memory, halving from --max_batch_size.
        max_batch_size: The largest batch that auto tries; default: 64 (lm-eval's HFLM's).
        limit: Examples per task: a count, or a fraction of each task when below 1; default: all.
        include_path: A folder of extra lm-eval task YAML files (e.g. tasks on a local JSON file).
        include_defaults: Also index lm-eval's own tasks (false: only --include_path's; skips indexing
            lm-eval's thousands of task files).
        device: torch device, e.g. cpu, cuda, cuda:1; default: cuda when available, else cpu.
        precision: Weights and KV cache: 32-true (float32), bf16-true or 16-true.
        out_dir: Where results.json and results.md go; default: CHECKPOINT_DIR/evaluate.
        seed: Seed of lm-eval's few-shot sampling, Python, NumPy and torch.
    """
    from litgpt_mka.evaluate.results import write_results

    try:
        results = evaluate_checkpoint(
            checkpoint_dir, tasks, num_fewshot=num_fewshot, batch_size=batch_size, max_batch_size=max_batch_size, limit=limit,
            include_path=include_path, include_defaults=include_defaults, device=device, precision=precision, seed=seed,
        )
    except (ImportError, ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka evaluate: error: {error}", file=sys.stderr)
        return 2
    json_path, table_path = write_results(Path(out_dir or Path(checkpoint_dir) / "evaluate"), results)
    print(table_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {table_path}", file=sys.stderr)
    return 0
