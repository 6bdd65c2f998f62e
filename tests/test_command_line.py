"""The `litgpt-mka` command as a user meets it: every subcommand's --help lists its choices and marks its required
options, `compare --pretrain_args` passes litgpt's own flags through, and `cloze`, `heldout` and `report` are
subcommands."""

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
    "heldout": ({"device": "'auto', 'cpu', 'cuda'"}, []),
    "report": ({"plots": "{true,false}", "verdict_rule": "'t-test', '2-SE screening'"}, []),
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
    # decided again by t-tests into another folder, as the module's entry point does; the saved files stay
    saved = {name: (tmp_path / "by_subcommand" / name).read_bytes() for name in ("report.md", "results.json")}
    assert exit_status(["report", str(tmp_path / "by_subcommand" / "results.json"), "--plots", "false",
                        "--verdict_rule", "t-test", "--out_dir", str(tmp_path / "again")]) == 0
    report_main([str(tmp_path / "by_module" / "results.json"), "--no_plots", "--verdict_rule", "t-test"])
    assert (tmp_path / "again" / "report.md").read_text() == (tmp_path / "by_module" / "report.md").read_text()
    assert "Welch t-test" in (tmp_path / "again" / "report.md").read_text()
    assert {name: (tmp_path / "by_subcommand" / name).read_bytes() for name in saved} == saved
    assert exit_status(["report", str(tmp_path / "missing.json")]) == 2
    assert "litgpt-mka report: error:" in capsys.readouterr().err


def test_heldout_scores_every_target_of_a_text_once_in_the_runs_windows(tmp_path, tokenizer_dir, monkeypatch, capsys):
    """`litgpt-mka heldout` on a saved checkpoint (an MQA of ours, max_seq_length 16): the loss of each text equals
    a reference written from the documented layout (stride-16 windows, then one window aligned to the end whose
    targets no earlier window scored), the run's own val_path is the default, and bad input exits 2 naming it."""
    import torch
    import torch.nn.functional as F
    import yaml
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer
    from litgpt.utils import save_config

    from litgpt_mka.data import split_documents

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    L = 16
    config = Config.from_name("pythia-14m", n_layer=1, n_embd=32, n_head=2, n_query_groups=1, block_size=64,
                              attention_class_name="GroupedQueryAttention")
    torch.manual_seed(0)
    model = GPT(config).eval()
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    torch.save({"model": model.state_dict()}, checkpoint / "lit_model.pth")
    save_config(config, checkpoint)
    val = tmp_path / "val.txt"
    val.write_text("Once upon a time, a little girl named Lily found a red ball in the park.\n<|endoftext|>\n"
                   "Tom had a big dog. The dog liked to run and jump in the sun all day long.\n")
    other = tmp_path / "other.txt"
    other.write_text("The cat sat on the warm mat and looked at the birds outside the window.\n")
    data = {"class_path": "litgpt_mka.data.TextCorpus", "init_args": {"train_path": str(val), "val_path": str(val)}}
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump(
        {"data": data, "tokenizer_dir": str(tokenizer_dir), "train": {"max_seq_length": L}}))

    def reference(path: Path) -> tuple[float, int]:
        tokenizer = Tokenizer(tokenizer_dir)  # TextCorpus's stream: each document without BOS, followed by EOS
        ids = torch.cat([tokenizer.encode(doc, bos=False, eos=True) for doc in split_documents(path.read_text())]).long()
        starts = list(range(0, len(ids) - 1 - L + 1, L))  # full windows of L + 1 tokens, stride L
        scored_to = starts[-1] + L if starts else 0  # targets 1..scored_to are scored by them
        losses = []
        with torch.no_grad():
            for start in starts:
                window = ids[start : start + L + 1]
                losses.append(F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="none"))
            if scored_to < len(ids) - 1:  # the tail: one window aligned to the end, its new targets only
                window = ids[-(L + 1):]
                nll = F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="none")
                losses.append(nll[L - (len(ids) - 1 - scored_to):])
        nll = torch.cat(losses).double()
        assert len(nll) == len(ids) - 1
        return float(nll.mean()), len(nll)

    assert exit_status(["heldout", str(checkpoint), "--val_path", str(val), str(other), "--batch_size", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert exit_status(["heldout", str(checkpoint)]) == 0  # the run's own val_path
    assert capsys.readouterr().out.splitlines() == printed[:1]
    for line, path in zip(printed, (val, other), strict=True):
        loss, targets = reference(path)
        match = re.fullmatch(rf"{path.stem}: loss ([\d.]+) nats/token, perplexity ([\d.]+), (\d+) targets \(.*\)", line)
        assert match and int(match.group(3)) == targets
        assert float(match.group(1)) == pytest.approx(loss, abs=5e-5)
    assert reference(val)[1] > 2 * L and reference(val)[1] % L != 0  # full windows and a tail; `other` is one window

    assert exit_status(["heldout", str(checkpoint), "--val_path", str(tmp_path / "missing.txt")]) == 2
    assert "val_path='" in (error := capsys.readouterr().err) and "missing.txt' does not exist" in error
    assert exit_status(["heldout", str(checkpoint), "--batch_size", "0"]) == 2
    assert "batch_size=0 must be at least 1" in capsys.readouterr().err
    assert exit_status(["heldout", str(checkpoint), "--val_path", "[]"]) == 2
    assert "val_path=[] names no text" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert exit_status(["heldout", str(checkpoint), "--device", "cuda"]) == 2
        assert "device='cuda', but torch sees no CUDA device here" in capsys.readouterr().err
    hyperparameters = (checkpoint / "hyperparameters.yaml").read_text()
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump({"data": data}))  # no tokenizer_dir, no train
    assert exit_status(["heldout", str(checkpoint)]) == 2
    assert "tokenizer_dir is not set in" in capsys.readouterr().err
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump({"data": data, "tokenizer_dir": str(tmp_path / "gone")}))
    assert exit_status(["heldout", str(checkpoint)]) == 2  # a tokenizer folder that is gone: an error, not a traceback
    assert "litgpt-mka heldout: error:" in capsys.readouterr().err
    (checkpoint / "hyperparameters.yaml").write_text("just a string\n")
    assert exit_status(["heldout", str(checkpoint)]) == 2
    assert "hyperparameters.yaml holds 'just a string', not the settings of a litgpt run" in capsys.readouterr().err
    (checkpoint / "hyperparameters.yaml").write_text(hyperparameters)
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump(
        {"data": {"class_path": "litgpt.data.TinyStories"}, "tokenizer_dir": str(tokenizer_dir),
         "train": {"max_seq_length": L}}))
    assert exit_status(["heldout", str(checkpoint)]) == 2
    assert "is not a TextCorpus; its validation text is unknown: name one (val_path)" in capsys.readouterr().err
    assert exit_status(["heldout", str(checkpoint), "--val_path", str(other)]) == 0  # a named text needs no TextCorpus
    assert capsys.readouterr().out.splitlines() == printed[1:]
