"""The `litgpt-mka` command as a user meets it: every subcommand's --help lists its choices and marks its required
options, `compare --pretrain_args` passes litgpt's own flags through, and `cloze` and `report` are subcommands."""

import json
import re
import shutil
from pathlib import Path

import pytest

from litgpt_mka import cli
from litgpt_mka.compare.options import CompareOptions
from litgpt_mka.compare.report import main as report_main
from tests.conftest import PROJECT_ROOT

# subcommand -> (options whose --help must list their choices, options --help must mark required)
HELP = {
    "compare": ({"precision": "'bf16-true', 'bf16-mixed', '32-true'", "decode_dtype": "'float32', 'bfloat16', 'float16'",
                 "kv_cache_quantizations": "'int8', 'int4', 'float8_e4m3fn'"}, []),
    "convert": ({"to": "{gqa,mqa,mla}", "rope_fit": "{complex,mean}", "svd": "{exact,randomized}"}, ["to", "out_dir"]),
    "evaluate": ({"precision": "{32-true,bf16-true,16-true}", "batch_size": "'auto'"}, ["tasks"]),
    "cloze": ({}, ["out_dir"]),
    "report": ({"plots": "{true,false}"}, []),
}
STUDY_RESULTS = PROJECT_ROOT / "docs" / "study-pythia-14m-v2" / "lr-0.002" / "results.json"


def exit_status(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return exited.value.code


def option_help(help_text: str, name: str) -> str:
    """The help of `--name`: from its line up to the next option's line."""
    match = re.search(rf"^  --{name}\b.*?(?=^  -)", help_text + "\n  -", re.MULTILINE | re.DOTALL)
    assert match, f"--{name} is not in the help"
    return " ".join(match.group(0).split())


def test_every_subcommand_has_help_here():
    assert set(HELP) == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("subcommand", sorted(HELP))
def test_help_lists_choices_and_marks_required_options(subcommand, capsys):
    assert exit_status([subcommand, "--help"]) == 0
    help_text = capsys.readouterr().out
    choices, required = HELP[subcommand]
    for name, listed in choices.items():
        assert listed in option_help(help_text, name)
    for name in required:
        assert "(required" in option_help(help_text, name) and "default: null" not in option_help(help_text, name)


def test_a_choice_outside_the_literal_is_refused_by_the_parser(capsys):
    assert exit_status(["evaluate", "ckpt", "--tasks", "piqa", "--precision", "bf16-mixed"]) == 2
    assert "precision" in capsys.readouterr().err


def test_pretrain_args_pass_litgpts_flags_through(monkeypatch):
    parsed = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "compare", cli.Subcommand(CompareOptions, lambda o: parsed.append(o) or 0))
    argv = ["compare", "--configs", "a.yaml", "--pretrain_args", "--train.lr_warmup_steps=5", "--train.min_lr", "1e-5",
            "--seeds", "3", "--pretrain_args=[\"--optimizer.lr=0.01\"]"]
    assert cli.join_list_options(argv[:-1]) == [
        "compare", '--configs=["a.yaml"]', '--pretrain_args=["--train.lr_warmup_steps=5", "--train.min_lr", "1e-5"]',
        "--seeds=[3]",
    ]
    assert exit_status(argv[:-1]) == 0
    assert parsed[-1].pretrain_args == ["--train.lr_warmup_steps=5", "--train.min_lr", "1e-5"]
    assert parsed[-1].seeds == [3]


def test_cloze_subcommand_writes_the_task(tmp_path, capsys):
    (tmp_path / "val.txt").write_text("Ben saw a big dog.\n<|endoftext|>\nIt was 5.\n<|endoftext|>\nThe sun was hot!\n")
    assert exit_status(["cloze", str(tmp_path / "val.txt"), "--out_dir", str(tmp_path / "task"), "--max_docs", "3"]) == 0
    lines = (tmp_path / "task" / "tinystories_cloze.jsonl").read_text().splitlines()
    assert [json.loads(line)["target"] for line in lines] == ["dog", "hot"]
    assert "task: tinystories_cloze" in (tmp_path / "task" / "tinystories_cloze.yaml").read_text()
    (tmp_path / "numbers.txt").write_text("It was 5.\n")
    assert exit_status(["cloze", str(tmp_path / "numbers.txt"), "--out_dir", str(tmp_path / "none")]) == 2
    assert "litgpt-mka cloze: error: val_path=" in capsys.readouterr().err


def test_report_subcommand_renders_a_saved_comparison_again(tmp_path, capsys):
    """The same report.md and results.csv as the module's own entry point writes."""
    for folder in ("by_subcommand", "by_module"):
        (tmp_path / folder).mkdir()
        shutil.copy(STUDY_RESULTS, tmp_path / folder / "results.json")
    assert exit_status(["report", str(tmp_path / "by_subcommand" / "results.json"), "--plots", "false"]) == 0
    report_main([str(tmp_path / "by_module" / "results.json"), "--no_plots"])
    for name in ("report.md", "results.csv"):
        assert (tmp_path / "by_subcommand" / name).read_text() == (tmp_path / "by_module" / name).read_text()
    assert "## Differences to the reference" in (tmp_path / "by_subcommand" / "report.md").read_text()
    assert exit_status(["report", str(tmp_path / "missing.json")]) == 2
    assert "litgpt-mka report: error:" in capsys.readouterr().err
