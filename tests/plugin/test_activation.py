"""The plugin switches itself on in every interpreter, costs nothing until litgpt is imported, and can be
switched off; litgpt's own models behave exactly as without it."""

import subprocess
import sys

import pytest
import torch

import litgpt_mka
from litgpt_mka.plugin import litgpt_internals
from tests.conftest import CONFIG_HUB, PROJECT_ROOT, litgpt_command


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)


def test_interpreter_start_imports_no_torch_or_litgpt(subprocess_env):
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=subprocess_env, capture_output=True, text=True)
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "litgpt_mka" in imported, "the .pth hook did not run at interpreter start"
    heavy = [name for name in imported if name.split(".")[0] in ("torch", "litgpt", "numpy", "lightning")]
    assert heavy == []


def test_stock_litgpt_command_knows_our_fields(subprocess_env):
    result = subprocess.run(
        [*litgpt_command(), "pretrain", "--config", str(CONFIG_HUB / "pythia-14m-gqa.yaml"), "--print_config"],
        env=subprocess_env, capture_output=True, text=True, cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "attention_class_name: GroupedQueryAttention" in result.stdout


def test_disabled_plugin_leaves_litgpt_rejecting_our_keys(subprocess_env):
    env = {**subprocess_env, "LITGPT_MKA_DISABLE": "1"}
    result = subprocess.run(
        [*litgpt_command(), "pretrain", "--config", str(CONFIG_HUB / "pythia-14m-gqa.yaml"), "--print_config"],
        env=env, capture_output=True, text=True, cwd=PROJECT_ROOT,
    )
    assert result.returncode != 0
    assert "Key 'attention_class_name' is not expected" in result.stderr


def test_import_activates_when_litgpt_was_imported_first(subprocess_env):
    code = (
        "import litgpt\n"
        "from litgpt import GPT, Config\n"
        "assert not hasattr(Config, 'attention_class')\n"
        "import litgpt_mka\n"
        "litgpt_mka.activate()\n"
        "litgpt_mka.activate()\n"  # idempotent
        "c = Config.from_name('pythia-14m', n_layer=1, attention_class_name='CausalSelfAttention')\n"
        "print(type(GPT(c).transformer.h[0].attn).__name__, [f.name for f in __import__('dataclasses').fields(Config)].count('attention_class_name'))\n"
    )
    result = python(code, {**subprocess_env, "LITGPT_MKA_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["CausalSelfAttention", "1"]


def test_litgpts_config_subclasses_imported_before_activation_gain_the_fields(subprocess_env):
    code = (
        "import litgpt.lora\n"
        "import litgpt_mka\n"
        "litgpt_mka.activate()\n"
        "c = litgpt.lora.Config.from_name('pythia-14m', n_layer=1, attention_class_name='GroupedQueryAttention',"
        " lora_r=4)\n"
        "print(c.attention_class_name, c.lora_r)\n"
    )
    result = python(code, {**subprocess_env, "LITGPT_MKA_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["GroupedQueryAttention", "4"]


def test_a_stock_architectures_saved_config_is_read_by_litgpt_without_the_plugin(subprocess_env, tmp_path):
    """save_config leaves out the plugin's fields at their defaults (a variant's config keeps them)."""
    from litgpt.config import Config
    from litgpt.utils import save_config

    save_config(Config.from_name("pythia-14m"), tmp_path)
    saved = (tmp_path / "model_config.yaml").read_text()
    assert "attention_class_name" not in saved and "kv_cache_quantization" not in saved
    code = f"from litgpt.config import Config; print(Config.from_file({str(tmp_path / 'model_config.yaml')!r}).n_layer)"
    result = python(code, {**subprocess_env, "LITGPT_MKA_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6"]
    gqa = tmp_path / "gqa"
    gqa.mkdir()
    save_config(Config.from_name("pythia-14m", attention_class_name="GroupedQueryAttention", n_query_groups=2), gqa)
    assert "attention_class_name: GroupedQueryAttention" in (gqa / "model_config.yaml").read_text()


def test_activation_is_idempotent():
    from litgpt.config import Config

    fields_before = [f.name for f in __import__("dataclasses").fields(Config)]
    post_init_before = Config.__post_init__
    litgpt_mka.activate()
    litgpt_mka.activate()
    assert [f.name for f in __import__("dataclasses").fields(Config)] == fields_before
    assert Config.__post_init__ is post_init_before


def test_untested_litgpt_version_fails_loudly(monkeypatch):
    monkeypatch.setattr(litgpt_internals, "version", lambda name: "0.5.14")
    with pytest.raises(RuntimeError, match=r"tested with litgpt==0\.5\.13 only; the installed litgpt is 0\.5\.14.*LITGPT_MKA_DISABLE=1"):
        litgpt_internals.check_litgpt_version()


STOCK_CONFIGS = {
    # litgpt presets, shrunk; they exercise MHA, GQA, MQA, RMSNorm/LLaMAMLP, non-parallel residual,
    # qk-norm, sliding windows and softcapping through litgpt's own CausalSelfAttention
    "pythia-14m": dict(n_layer=2),
    "tiny-llama-1.1b": dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128, padded_vocab_size=512),
    "falcon-7b": dict(n_layer=2, n_embd=64, n_head=8, n_query_groups=1, padded_vocab_size=512),
    "gemma-2-2b": dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, head_size=16, intermediate_size=128, padded_vocab_size=512, sliding_window_size=8),
    "OLMo-2-1124-7B": dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=4, intermediate_size=128, padded_vocab_size=512),
}

LOGITS_CODE = """
import sys, torch
from litgpt import GPT, Config
configs, out = eval(sys.argv[1]), sys.argv[2]
results = {}
for name, overrides in configs.items():
    torch.manual_seed(0)
    model = GPT(Config.from_name(name, **overrides)).eval()
    idx = torch.randint(0, model.config.padded_vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    model.set_kv_cache(batch_size=2)
    with torch.no_grad():
        full = model(idx)
        model.clear_kv_cache(); model.set_kv_cache(batch_size=2)
        steps = [model(idx[:, :8], input_pos=torch.arange(8))]
        steps += [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(8, 12)]
    results[name] = {"state_dict": model.state_dict(), "full": full, "cached": torch.cat(steps, 1)}
torch.save(results, out)
"""


@pytest.fixture(scope="module")
def stock_outputs(subprocess_env, tmp_path_factory) -> dict[str, dict]:
    """Logits of every config in STOCK_CONFIGS, computed with the plugin on and off (one process each)."""
    outputs = {}
    for plugin in ("on", "off"):
        env = dict(subprocess_env, **({"LITGPT_MKA_DISABLE": "1"} if plugin == "off" else {}))
        out = tmp_path_factory.mktemp("logits") / f"{plugin}.pt"
        result = subprocess.run(
            [sys.executable, "-c", LOGITS_CODE, repr(STOCK_CONFIGS), str(out)], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        outputs[plugin] = torch.load(out)
    return outputs


@pytest.mark.parametrize("name", sorted(STOCK_CONFIGS))
def test_stock_configs_give_the_same_outputs_with_and_without_plugin(name, stock_outputs):
    on, off = stock_outputs["on"][name], stock_outputs["off"][name]
    assert on["state_dict"].keys() == off["state_dict"].keys()
    torch.testing.assert_close(on["state_dict"], off["state_dict"], rtol=0, atol=0)
    for key in ("full", "cached"):
        torch.testing.assert_close(on[key], off[key], rtol=0, atol=0)
