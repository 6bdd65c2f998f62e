"""`litgpt convert_from_litgpt` refuses variants with no Hugging Face counterpart before writing anything."""

import pytest
import torch
from litgpt.scripts import convert_lit_checkpoint
from litgpt.utils import save_config

from tests.finetune.builders import variant_config
from tests.helpers import random_gpt

REFUSED = {
    "mla": r"cannot convert attention_class_name='MultiheadLatentAttention' \(MLA\)",
    "mka": r"cannot convert attention_class_name='MemorizedKeyAttention' \(MKA\)",
    "fmka": r"cannot convert attention_class_name='MemorizedKeyAttention' \(FMKA\)",
    "stock-mla": r"cannot convert attention_class_name='LitgptMultiheadLatentAttention' \(litgpt's stock MLA\)",
    "gqa": r"n_query_groups=2 < n_head=4 to Hugging Face GPT-NeoX .* no grouped key/value heads",
    "mqa": r"n_query_groups=1 < n_head=4 to Hugging Face GPT-NeoX .* no grouped key/value heads",
}


def checkpoint_dir(tmp_path, variant: str, **overrides):
    config = variant_config(variant, **overrides)
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    save_config(config, directory)
    torch.save(random_gpt(config).state_dict(), directory / "lit_model.pth")
    return directory


@pytest.mark.parametrize("variant", REFUSED)
def test_refused_before_anything_is_written(variant, tmp_path):
    source, output = checkpoint_dir(tmp_path, variant), tmp_path / "hf"
    with pytest.raises(ValueError, match=REFUSED[variant]) as error:
        convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    assert "Nothing was written" in str(error.value)
    assert not output.exists()


def test_mha_converts_to_gpt_neox(tmp_path):
    source, output = checkpoint_dir(tmp_path, "mha"), tmp_path / "hf"
    convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    converted = torch.load(output / "model.pth")
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in converted


def test_gqa_converts_where_hugging_face_has_grouped_heads(tmp_path):
    """The Llama layout (LLaMAMLP) has num_key_value_heads: litgpt's GQA conversion is left alone."""
    llama_layout = dict(mlp_class_name="LLaMAMLP", intermediate_size=128, bias=False, norm_class_name="RMSNorm")
    source = checkpoint_dir(tmp_path, "gqa", **llama_layout)
    output = tmp_path / "hf"
    convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    converted = torch.load(output / "model.pth")
    assert converted["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)


def test_the_cli_entry_point_is_the_checking_one():
    from litgpt.__main__ import PARSER_DATA

    assert PARSER_DATA["convert_from_litgpt"] is convert_lit_checkpoint.convert_lit_checkpoint


COPY_FUNCTION_CASES = [
    ("pythia-14m", "GptNeoxMLP"), ("falcon-7b", "GptNeoxMLP"), ("Gemma-2-2b", "GemmaMLP"), ("gemma-2-custom", "GemmaMLP"),
    ("Gemma-3-1b-it", "GemmaMLP"), ("Phi-3-mini-4k-instruct", "LLaMAMLP"), ("phi-2", "GptNeoxMLP"),
    ("Qwen2.5-0.5B", "LLaMAMLP"), ("QwQ-32B", "LLaMAMLP"), ("OLMo-2-1124-7B", "LLaMAMLP"), ("Qwen3-0.6B", "LLaMAMLP"),
    ("Llama-3.2-1B", "LLaMAMLP"), ("my-llama-like", "LLaMAMoE"), ("my-neox-like", "GptNeoxMLP"),
]


@pytest.mark.parametrize("name, mlp_class_name", COPY_FUNCTION_CASES)
def test_the_copy_function_is_the_one_litgpt_picks(name, mlp_class_name, monkeypatch, tmp_path):
    """litgpt's own `convert_lit_checkpoint` (unwrapped) runs with its copy functions replaced by recorders."""
    import contextlib
    import types

    from litgpt.scripts import convert_lit_checkpoint as module

    from litgpt_mka.plugin.litgpt_internals import _litgpt_copy_function_name

    config = types.SimpleNamespace(name=name, mlp_class_name=mlp_class_name)
    picked = []
    for function in [attr for attr in vars(module) if attr.startswith("copy_weights_")]:
        monkeypatch.setattr(module, function, lambda *args, _function=function, **kwargs: picked.append(_function))
    monkeypatch.setattr(module.Config, "from_file", classmethod(lambda cls, path: config))
    monkeypatch.setattr(module, "lazy_load", lambda path: {})
    monkeypatch.setattr(module, "check_conversion_supported", lambda weights: None)
    monkeypatch.setattr(module, "incremental_save", lambda path: contextlib.nullcontext(types.SimpleNamespace(save=lambda sd: None)))
    monkeypatch.setattr(module, "pprint", lambda *args: None)
    monkeypatch.setattr(module, "save_config", lambda *args: None, raising=False)
    module.convert_lit_checkpoint.__wrapped__(tmp_path, tmp_path / "out")
    assert picked and picked[0] == _litgpt_copy_function_name(config)
