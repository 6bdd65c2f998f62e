"""The ``litgpt-mka`` command (jsonargparse, like litgpt's): ``litgpt-mka compare|convert|evaluate|cloze|heldout|report``.

Each subcommand is either an options dataclass that jsonargparse reads directly (fields = options, field
docstrings = help) with a function that runs it, or one function whose parameters are the options; either
returns the exit status. Adding a subcommand = one entry in :data:`SUBCOMMANDS`.

List options take several values after one flag, as shells expand globs
(``--configs config_hub/pretrain/pythia-14m-*.yaml --seeds 1 2 3``); the JSON form
(``--seeds '[1, 2, 3]'``) works too. ``--pretrain_args`` takes `litgpt pretrain` arguments as they are
(``--pretrain_args --train.lr_warmup_steps=5 --train.min_lr=1e-5``), up to the next option of ``compare``.
"""

import json
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.convert import convert
from litgpt_mka.evaluate import evaluate


def run_compare(options: CompareOptions) -> int:
    """``litgpt-mka compare``: exit status 0 (every run finished), 1 (a run failed), 2 (invalid options), 130."""
    from litgpt_mka.compare.runner import plan_lines, prepare, run_comparison

    try:
        comparison = prepare(options)
    except (ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka compare: error: {error}", file=sys.stderr)
        return 2
    if options.dry_run:
        print("\n".join(plan_lines(comparison)))
        return 0
    return run_comparison(comparison)


def cloze(val_path: Path, *, out_dir: Path, max_docs: int | None = None) -> int:
    """Build the local TinyStories cloze task for lm-eval (LAMBADA's format: the last word of held-out stories).

    Writes OUT_DIR/tinystories_cloze.jsonl and OUT_DIR/tinystories_cloze.yaml; pass OUT_DIR as --include_path to
    `litgpt-mka evaluate` or `lm_eval` (see litgpt_mka/evaluate/cloze.py). Exit status 0, or 2 for a missing text or
    one with no story to use.

    Args:
        val_path: Held-out .txt file(s) or folder, stories separated by <|endoftext|> lines.
        out_dir: Folder for the task (pass it as --include_path).
        max_docs: At most this many stories; default: all.
    """
    from litgpt_mka.evaluate.cloze import write_cloze_task

    try:
        yaml_file = write_cloze_task(val_path, out_dir, max_docs)
    except (ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka cloze: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {yaml_file} and {yaml_file.with_suffix('.jsonl')}")
    return 0


def heldout(checkpoint_dir: Path, *, val_path: list[Path] | None = None, batch_size: int = 8,
            device: Literal["auto", "cpu", "cuda"] = "auto") -> int:
    """Exact held-out loss of a `litgpt pretrain` checkpoint on whole validation texts, as `compare` evaluates its
    runs: every target of a text scored once, in the run's own windows (litgpt_mka/compare/heldout.py). litgpt's
    own validation reads `eval.max_iters` batches only.

    Prints a line per text: its name, loss (nats/token), perplexity, targets scored. Exit status 0, or 2 for a
    missing checkpoint, tokenizer or text, a run whose validation text is unknown (not a TextCorpus: name one), no
    CUDA for --device cuda, or a bad option.

    Args:
        checkpoint_dir: A checkpoint folder of `litgpt pretrain` (OUT/final or OUT/step-*).
        val_path: Validation texts (.txt files or folders of them), tokenized as TextCorpus does (documents without
            BOS, each followed by EOS); default: the run's own data.val_path.
        batch_size: Windows per forward pass.
        device: "auto" (CUDA where available), "cpu" or "cuda"; the model runs in float32.
    """
    import math

    import torch

    from litgpt_mka.checkpoint import load_model
    from litgpt_mka.compare.heldout import heldout_data, heldout_loss

    refusal = None
    if batch_size < 1:
        refusal = f"batch_size={batch_size} must be at least 1"
    elif val_path == []:
        refusal = "val_path=[] names no text; leave it out for the run's own"
    elif device == "cuda" and not torch.cuda.is_available():
        refusal = "device='cuda', but torch sees no CUDA device here"
    if refusal is not None:
        print(f"litgpt-mka heldout: error: {refusal}", file=sys.stderr)
        return 2
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        texts = [heldout_data(Path(checkpoint_dir), path) for path in (val_path or [None])]
        model = load_model(Path(checkpoint_dir), torch.device(device))
    except (ValueError, OSError) as error:  # OSError: a missing checkpoint, text or tokenizer folder
        print(f"litgpt-mka heldout: error: {error}", file=sys.stderr)
        return 2
    for data in texts:
        result = heldout_loss(model, data, batch_size)
        print(f"{data.val_path.stem}: loss {result.loss:.4f} nats/token, perplexity {math.exp(result.loss):.2f},"
              f" {result.tokens} targets ({data.val_path})")
    return 0


def report(results_json: Path, reference: str | None = None, plots: bool = True,
           verdict_rule: Literal["t-test", "2-SE screening"] | None = None, out_dir: Path | None = None) -> int:
    """Render report.md, results.csv and the plots of a comparison again from its results.json (nothing reruns).

    Exit status 0, or 2 for a missing or unreadable results.json or an unknown reference.

    Args:
        results_json: OUT_DIR/results.json of `litgpt-mka compare`.
        reference: The variant (config file stem) the others are compared with; default: the saved one.
        plots: Write the PNG plots (needs matplotlib).
        verdict_rule: Decide the differences by this rule; default: the saved one (the screening rule for results
            saved before the t-test).
        out_dir: Write there; default: beside results_json, replacing the files it was rendered with.
    """
    from litgpt_mka.compare.report import read_results, write_outputs

    try:
        results = read_results(Path(results_json), reference, verdict_rule)
    except (ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka report: error: {error}", file=sys.stderr)
        return 2
    write_outputs(Path(results_json).parent if out_dir is None else Path(out_dir), results, plots)
    return 0


@dataclass(frozen=True)
class Subcommand:
    options: Callable  # a dataclass whose fields are the options, or a function whose parameters are
    run: Callable[[Any], int] | None = None  # runs a parsed dataclass, returns the exit status (None: a function)


SUBCOMMANDS: dict[str, Subcommand] = {
    "compare": Subcommand(CompareOptions, run_compare),
    "convert": Subcommand(convert),  # its parameters are the options; it returns the exit status
    "evaluate": Subcommand(evaluate),
    "cloze": Subcommand(cloze),
    "heldout": Subcommand(heldout),
    "report": Subcommand(report),
}


def list_options(options: Callable) -> dict[str, type]:
    """``--name`` -> element type, for every ``list[...]`` option (optional or not) of a subcommand's dataclass
    fields or function parameters."""
    lists = {}
    for name, hint in typing.get_type_hints(options).items():
        for kind in (hint, *typing.get_args(hint)):
            if name != "return" and typing.get_origin(kind) is list:
                (element,) = typing.get_args(kind)
                lists[f"--{name}"] = element if element in (int, float) else str
    return lists


# list options whose values are arguments of another command: `--pretrain_args --train.lr_warmup_steps=5 --seed=3`
# takes every value up to the next option of the subcommand itself
PASS_THROUGH_OPTIONS = {"--pretrain_args"}


def own_options(options: Callable) -> set[str]:
    """``--name`` for every option of a subcommand's dataclass fields or function parameters, and the help."""
    return {f"--{name}" for name in typing.get_type_hints(options) if name != "return"} | {"-h", "--help"}


def ends_values(argument: str, flag: str, own: set[str]) -> bool:
    """Whether `argument` is the next option rather than one more value of the list option `flag`."""
    if flag in PASS_THROUGH_OPTIONS:
        return argument.split("=", 1)[0] in own
    return argument.startswith("--")


def join_list_options(argv: list[str]) -> list[str]:
    """``compare --configs a b c`` -> ``compare --configs=["a", "b", "c"]`` (values up to the next ``--`` option;
    for :data:`PASS_THROUGH_OPTIONS`, up to the next option of the subcommand).

    The list options are those of the subcommand named first in `argv`.
    """
    subcommand = SUBCOMMANDS.get(argv[0]) if argv else None
    lists = list_options(subcommand.options) if subcommand else {}
    own = own_options(subcommand.options) if subcommand else set()
    joined, i = [], 0
    while i < len(argv):
        flag = argv[i]
        if flag not in lists:
            joined.append(flag)
            i += 1
            continue
        values, i = [], i + 1
        while i < len(argv) and not ends_values(argv[i], flag, own):
            values.append(argv[i])
            i += 1
        if len(values) == 1 and values[0].lstrip().startswith("["):
            joined += [flag, values[0]]  # already a JSON/YAML list
        else:
            joined.append(f"{flag}={json.dumps([converted(flag, lists[flag], v) for v in values])}")
    return joined


KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def converted(flag: str, kind: type, value: str) -> Any:
    """`value` as `kind`; exits with status 2 and a message naming `flag`, the value and what is allowed."""
    try:
        return kind(value)
    except ValueError:
        print(f"litgpt-mka: error: {flag} {value!r} is not {KIND_NAMES.get(kind, kind.__name__)}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become the options' help
    argv = sys.argv[1:] if argv is None else argv
    result = CLI({name: command.options for name, command in SUBCOMMANDS.items()}, args=join_list_options(argv))
    for command in SUBCOMMANDS.values():
        if command.run is not None and isinstance(result, command.options):
            result = command.run(result)
    sys.exit(result)


if __name__ == "__main__":
    main()
