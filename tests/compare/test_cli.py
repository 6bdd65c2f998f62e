"""litgpt_mka.cli as compare uses it: the options dataclass filled from the command line, list options."""

from pathlib import Path

import pytest

from litgpt_mka.cli import join_list_options
from litgpt_mka.compare.options import CompareOptions


def test_the_command_line_fills_the_options_dataclass(monkeypatch):
    from litgpt_mka import cli

    parsed = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "compare", cli.Subcommand(CompareOptions, lambda o: parsed.append(o) or 0))
    with pytest.raises(SystemExit) as exit_status:
        cli.main(["compare", "--configs", "a.yaml", "b.yaml", "--seeds", "1", "2", "--val_path", "in.txt", "out.txt",
                  "--reference", "a", "--max_tokens", "1000", "--plots", "false", "--lm_eval_tasks", "piqa", "sciq"])
    assert exit_status.value.code == 0
    assert parsed == [CompareOptions(configs=[Path("a.yaml"), Path("b.yaml")], seeds=[1, 2],
                                     val_path=[Path("in.txt"), Path("out.txt")], reference="a", max_tokens=1000,
                                     plots=False, lm_eval_tasks=["piqa", "sciq"])]
    assert cli.list_options(CompareOptions) == {"--configs": str, "--seeds": int, "--learning_rates": float,
                                                "--val_path": str, "--pretrain_args": str, "--lm_eval_tasks": str,
                                                "--kv_cache_quantizations": str, "--selection_seeds": int}
    with pytest.raises(SystemExit):
        cli.main(["compare", "--configs", "a.yaml", "--learning_rates", "4e-3", "0.008", "1.6e-2", "--selection_val", "s"])
    assert (parsed[-1].learning_rates, parsed[-1].selection_val) == ([0.004, 0.008, 0.016], "s")
    with pytest.raises(SystemExit):
        cli.main(["compare", "--configs", "a.yaml", "--config_learning_rates", '{"a": [8e-3], "b": [0.004, 0.016]}',
                  "--seeds", "1", "2", "3", "--selection_seeds", "1", "2"])
    assert (parsed[-1].config_learning_rates, parsed[-1].selection_seeds) == ({"a": [0.008], "b": [0.004, 0.016]},
                                                                            [1, 2])


def test_list_options_take_several_values_after_one_flag():
    assert join_list_options(["compare", "--configs", "a.yaml", "b.yaml", "--seeds", "1", "2", "--out_dir", "o"]) == [
        "compare", '--configs=["a.yaml", "b.yaml"]', "--seeds=[1, 2]", "--out_dir", "o"]
    assert join_list_options(["--seeds", "[3, 4]"]) == ["--seeds", "[3, 4]"]


def test_a_list_value_of_the_wrong_type_exits_2_naming_the_option(capsys):
    from litgpt_mka import cli

    with pytest.raises(SystemExit) as exit_status:
        cli.main(["compare", "--configs", "a.yaml", "--learning_rates", "0.004", "abc"])
    assert exit_status.value.code == 2
    assert "litgpt-mka: error: --learning_rates 'abc' is not a number" in capsys.readouterr().err
