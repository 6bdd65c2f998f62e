"""The ``litgpt-mka`` command (jsonargparse, like litgpt's): ``litgpt-mka compare|convert|evaluate ...``.

Each subcommand is either an options dataclass that jsonargparse reads directly (fields = options, field
docstrings = help) with a function that runs it, or one function whose parameters are the options; either
returns the exit status. Adding a subcommand = one entry in :data:`SUBCOMMANDS`.

List options take several values after one flag, as shells expand globs
(``--configs config_hub/pretrain/pythia-14m-*.yaml --seeds 1 2 3``); the JSON form
(``--seeds '[1, 2, 3]'``) works too.
"""

import json
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.convert import convert
from litgpt_mka.evaluate import evaluate


def run_compare(options: CompareOptions) -> int:
    """``litgpt-mka compare``: exit status 0 (every run finished), 1 (a run failed), 2 (invalid options), 130."""
    from litgpt_mka.compare.runner import prepare, run_comparison

    try:
        comparison = prepare(options)
    except (ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka compare: error: {error}", file=sys.stderr)
        return 2
    return run_comparison(comparison)


@dataclass(frozen=True)
class Subcommand:
    options: Callable  # a dataclass whose fields are the options, or a function whose parameters are
    run: Callable[[Any], int] | None = None  # runs a parsed dataclass, returns the exit status (None: a function)


SUBCOMMANDS: dict[str, Subcommand] = {
    "compare": Subcommand(CompareOptions, run_compare),
    "convert": Subcommand(convert),  # its parameters are the options; it returns the exit status
    "evaluate": Subcommand(evaluate),
}


def list_options(options: Callable) -> dict[str, type]:
    """``--name`` -> element type, for every ``list[...]`` option (optional or not) of a subcommand's dataclass
    fields or function parameters."""
    lists = {}
    for name, hint in typing.get_type_hints(options).items():
        for kind in (hint, *typing.get_args(hint)):
            if name != "return" and typing.get_origin(kind) is list:
                (element,) = typing.get_args(kind)
                lists[f"--{name}"] = int if element is int else str
    return lists


def join_list_options(argv: list[str]) -> list[str]:
    """``compare --configs a b c`` -> ``compare --configs=["a", "b", "c"]`` (values up to the next ``--`` option).

    The list options are those of the subcommand named first in `argv`.
    """
    subcommand = SUBCOMMANDS.get(argv[0]) if argv else None
    lists = list_options(subcommand.options) if subcommand else {}
    joined, i = [], 0
    while i < len(argv):
        flag = argv[i]
        if flag not in lists:
            joined.append(flag)
            i += 1
            continue
        values, i = [], i + 1
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        if len(values) == 1 and values[0].lstrip().startswith("["):
            joined += [flag, values[0]]  # already a JSON/YAML list
        else:
            joined.append(f"{flag}={json.dumps([lists[flag](v) for v in values])}")
    return joined


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
