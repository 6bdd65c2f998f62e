"""The README's main job, as the README writes it: parsed from README.md and run end to end.

Only the token budget (two optimizer steps, appended as `--train.max_tokens`) and the output folder change; every
other argument, the configs and the precision default included, is the README's. A README edit that breaks the
first screen fails here.
"""

import re
import shlex

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, litgpt_command, run

README = PROJECT_ROOT / "README.md"


def readme_commands(text: str) -> list[list[str]]:
    """The `litgpt ...` commands of the first ```bash block that runs `litgpt pretrain`, continuations joined."""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        if "litgpt pretrain" in block:
            joined = block.replace("\\\n", " ")
            lines = [line.split("#")[0].strip() for line in joined.splitlines()]
            return [shlex.split(line) for line in lines if line.startswith("litgpt ")]
    raise AssertionError("README.md has no ```bash block with `litgpt pretrain`")


def replace_value(args: list[str], flag: str, value: str) -> list[str]:
    assert flag in args, f"the README's command has no {flag}: {shlex.join(args)}"
    index = args.index(flag) + 1
    return [*args[:index], value, *args[index + 1 :]]


def tokens_per_step(pretrain: list[str]) -> int:
    """global_batch_size x max_seq_length of the last --config that sets them (the recipe after the preset)."""
    train = {}
    for index, arg in enumerate(pretrain):
        if arg == "--config":
            train.update(yaml.safe_load((PROJECT_ROOT / pretrain[index + 1]).read_text()).get("train", {}))
    return train["global_batch_size"] * train["max_seq_length"]


def test_readme_commands_are_found():
    commands = readme_commands(README.read_text())
    assert [command[:2] for command in commands] == [["litgpt", "pretrain"], ["litgpt", "generate"]]
    pretrain, generate = commands
    out_dir = pretrain[pretrain.index("--out_dir") + 1]
    assert generate[2] == f"{out_dir}/final", "generate must read the checkpoint that pretrain writes"
    assert "--precision" not in pretrain, "the main job leaves the precision to the machine's default"


@pytest.mark.slow
def test_readme_main_job_runs_verbatim_at_a_tiny_budget(shared_data, tokenizer_dir, subprocess_env, tmp_path):
    pretrain, generate = readme_commands(README.read_text())
    out_dir = tmp_path / "out"
    steps = 2
    pretrain = [*replace_value(pretrain, "--out_dir", str(out_dir)), "--train.max_tokens", str(steps * tokens_per_step(pretrain))]
    trained = run([*litgpt_command(), *pretrain[1:]], env=subprocess_env)
    assert "Final evaluation | val loss:" in trained.stdout + trained.stderr
    assert (out_dir / "final" / "lit_model.pth").is_file()

    generated = run([*litgpt_command(), *generate[1:2], str(out_dir / "final"), *generate[3:]], env=subprocess_env)
    prompt = generate[generate.index("--prompt") + 1]
    text = generated.stdout.strip().splitlines()[-1]
    assert text.startswith(prompt) and len(text) > len(prompt) + 10
