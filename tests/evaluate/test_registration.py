"""lm-eval knows the model `litgpt-mka` with no import by the user: its own command line (`lm_eval --model
litgpt-mka --model_args checkpoint_dir=...`) scores a checkpoint as `litgpt-mka evaluate` does; lm-eval's
`--batch_size auto` and its arguments reach the model; wrong model arguments raise naming them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval.api.registry import get_model  # noqa: E402

from litgpt_mka.evaluate import evaluate_checkpoint  # noqa: E402
from litgpt_mka.evaluate.lm import LitgptLM, parse_batch_size  # noqa: E402
from litgpt_mka.evaluate.registration import MODEL_NAME, register_with_lm_eval  # noqa: E402
from litgpt_mka.evaluate.scoring import largest_batch_that_fits  # noqa: E402
from tests.conftest import run  # noqa: E402
from tests.evaluate.checkpoints import TASKS_DIR  # noqa: E402
from tests.helpers import preset_config, random_gpt  # noqa: E402

TASKS = "tiny_story_choice"


def test_the_model_is_registered_by_the_plugin_at_interpreter_start(subprocess_env):
    """A fresh interpreter that imports only lm-eval finds the model, before any call of ours; registering again
    changes nothing."""
    code = (
        "import lm_eval.models; from lm_eval.api import registry; "
        f"assert {MODEL_NAME!r} in registry.MODEL_REGISTRY, 'not registered when lm_eval.models was imported'; "
        f"before = registry.get_model({MODEL_NAME!r}); "
        "from litgpt_mka.evaluate.registration import register_with_lm_eval; register_with_lm_eval(); "
        f"assert registry.get_model({MODEL_NAME!r}) is before, 'registering again replaced the model'; "
        "print(before.__qualname__)"
    )
    assert run([sys.executable, "-c", code], env=subprocess_env).stdout.strip() == "LitgptLM"
    disabled = subprocess.run([sys.executable, "-c", code], env={**subprocess_env, "LITGPT_MKA_DISABLE": "1"},
                              capture_output=True, text=True, timeout=600)  # the plugin off: the check can fail
    assert disabled.returncode != 0 and "not registered when lm_eval.models was imported" in disabled.stderr


def test_lm_eval_builds_the_model_from_model_args(preset_checkpoints):
    register_with_lm_eval()
    checkpoint = preset_checkpoints["pythia-14m-mla"]
    lm = get_model(MODEL_NAME).create_from_arg_string(
        f"checkpoint_dir={checkpoint},precision=bf16-true", {"batch_size": "auto", "max_batch_size": 8, "device": "cpu"}
    )
    assert (lm.batch_size, lm.max_batch_size, lm.device.type) == ("auto", 8, "cpu")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.get_model_info()["attention_class_name"] == "MultiheadLatentAttention"


@pytest.mark.parametrize(
    "model_args, message",
    [
        ("precision=32-true", r"model_args has no checkpoint_dir: pass --model_args checkpoint_dir=DIR"),
        ("checkpoint_dir=x,temperature=0.5", r"model_args \['temperature'\]: litgpt-mka takes \['checkpoint_dir', "),
        ("checkpoint_dir={},precision=bf16-mixed", r"precision='bf16-mixed' must be one of \['32-true', 'bf16-true'"),
        ("checkpoint_dir={},batch_size=0", r"batch_size=0 must be a positive integer or 'auto'"),
        ("checkpoint_dir={},max_batch_size=auto", r"max_batch_size='auto' must be a positive integer$"),
    ],
)
def test_wrong_model_args_raise_naming_them(model_args, message, preset_checkpoints):
    arguments = model_args.format(preset_checkpoints["pythia-14m-mha"])
    with pytest.raises(ValueError, match=message):
        LitgptLM.create_from_arg_string(arguments, {"device": "cpu"})


def test_batch_sizes_of_lm_evals_command_line():
    assert [parse_batch_size(value) for value in ("4", 4, "auto", "auto:3")] == [4, 4, "auto", "auto"]


def test_auto_batch_size_halves_until_the_forward_fits(monkeypatch):
    """A model that runs out of memory above 6 sequences: 64, 32, 16, 8 fail, 4 fits."""
    model = random_gpt(preset_config("pythia-14m-mha", n_layer=1))
    forward, tried = model.forward, []

    def forward_with_little_memory(idx, *args, **kwargs):
        tried.append(idx.shape[0])
        if idx.shape[0] > 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(idx, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward_with_little_memory)
    assert largest_batch_that_fits(model, length=16, max_batch_size=64) == 4
    assert tried == [64, 32, 16, 8, 4]


def test_an_error_other_than_out_of_memory_is_not_taken_for_one(monkeypatch):
    model = random_gpt(preset_config("pythia-14m-mha", n_layer=1))
    monkeypatch.setattr(model, "forward", lambda idx: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        largest_batch_that_fits(model, length=16, max_batch_size=64)


@pytest.mark.slow
def test_lm_evals_own_command_scores_as_litgpt_mka_evaluate(preset_checkpoints, subprocess_env, tmp_path, in_project_root):
    """`lm_eval --model litgpt-mka` (lm-eval's console script, auto batch size) gives the task scores that
    `litgpt-mka evaluate`'s path gives with a fixed batch size (an MLA checkpoint, the multiple-choice task)."""
    checkpoint = preset_checkpoints["pythia-14m-mla"]
    out = tmp_path / "lm_eval_out"
    completed = run(
        [
            str(Path(sys.executable).parent / "lm_eval"), "--model", MODEL_NAME, "--model_args",
            f"checkpoint_dir={checkpoint}", "--tasks", TASKS, "--include_path", str(TASKS_DIR),
            "--batch_size", "auto", "--max_batch_size", "4", "--device", "cpu", "--output_path", str(out),
        ],
        env=subprocess_env | {"HF_DATASETS_CACHE": str(tmp_path / "datasets")},
    )
    assert "loglikelihood: 100%" in completed.stderr  # the model's tqdm bar
    (results_file,) = out.rglob("results_*.json")
    by_lm_eval = json.loads(results_file.read_text())
    ours = evaluate_checkpoint(checkpoint, TASKS, batch_size=3, include_path=TASKS_DIR, include_defaults=False, device="cpu")
    assert by_lm_eval["config"]["batch_sizes"] == [4]
    assert by_lm_eval["config"]["model"] == ours["config"]["model"] == MODEL_NAME
    for task in TASKS.split(","):
        expected = {key: value for key, value in ours["results"][task].items() if isinstance(value, float)}
        assert {key: by_lm_eval["results"][task][key] for key in expected} == pytest.approx(expected, rel=1e-5)
