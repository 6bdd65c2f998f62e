"""Fixtures of the compare tests: one finished tiny comparison per test session (per pytest-xdist worker), shared
by the end-to-end tests of test_compare_e2e.py and its reruns that add lm-eval scores or quantized caches to it
(copied first). Only that module uses it: under `--dist loadfile` it is built once."""

from pathlib import Path

import pytest

from tests.compare.helpers import TINY_MKA, VAL_STORIES, compare_args, tiny_yaml, write_stories
from tests.conftest import run


@pytest.fixture(scope="session")
def env(subprocess_env) -> dict[str, str]:
    # compile is a no-op: these tests check bookkeeping, not speed (see test_compare_e2e.py's docstring)
    return {**subprocess_env, "TORCHDYNAMO_DISABLE": "1"}


@pytest.fixture(scope="session")
def small_val(tmp_path_factory, shared_data) -> Path:
    """The first VAL_STORIES stories of the shared validation text."""
    return write_stories(tmp_path_factory.mktemp("val") / "val.txt", shared_data, 0, VAL_STORIES)


@pytest.fixture(scope="session")
def finished(tmp_path_factory, env, shared_data, tokenizer_dir) -> dict:
    """A finished comparison of three tiny variants (MHA, MQA, MKA), seed 1, on two validation texts.

    It runs in its own folder with paths relative to it (configs/, val/, out), as a user in a project would;
    the training text and tokenizer are given as absolute paths.
    """
    folder = tmp_path_factory.mktemp("compare")
    configs = [tiny_yaml(folder / "configs", "tiny-mha"), tiny_yaml(folder / "configs", "tiny-mqa", n_query_groups=1),
               tiny_yaml(folder / "configs", "tiny-mka", **TINY_MKA)]
    vals = [write_stories(folder / "val" / "val.txt", shared_data, 0, VAL_STORIES),
            write_stories(folder / "val" / "other.txt", shared_data, VAL_STORIES, 2 * VAL_STORIES)]
    args = compare_args([c.relative_to(folder) for c in configs], Path("out"), shared_data,
                        [v.relative_to(folder) for v in vals], tokenizer_dir)
    result = run(args, env, cwd=folder)
    return {"folder": folder, "out_dir": folder / "out", "args": args, "stdout": result.stdout,
            "stderr": result.stderr, "vals": vals}
