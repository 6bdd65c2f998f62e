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
