"""`litgpt convert_from_litgpt` refuses what no Hugging Face model can hold, through litgpt's own converter, and
leaves nothing written."""

import pytest
import torch
from litgpt.scripts import convert_lit_checkpoint
from litgpt.utils import save_config

from tests.builders import variant_config
from tests.helpers import random_gpt

# no Hugging Face architecture holds these: refused before litgpt's converter starts
WITHOUT_COUNTERPART = {
    "mla": r"cannot convert attention_class_name='MultiheadLatentAttention' \(MLA\)",
    "mka": r"cannot convert attention_class_name='MemorizedKeyAttention' \(MKA\)",
    "fmka": r"cannot convert attention_class_name='MemorizedKeyAttention' \(FMKA\)",
    "stock-mla": r"cannot convert attention_class_name='LitgptMultiheadLatentAttention' \(litgpt's stock MLA\)",
}
# grouped key/value heads on the tiny configs' Pythia layout: refused when litgpt copies them to GPT-NeoX
GROUPED_HEADS = {
    "gqa": r"n_query_groups=2 < n_head=4 to Hugging Face GPT-NeoX .* no grouped key/value heads",
    "mqa": r"n_query_groups=1 < n_head=4 to Hugging Face GPT-NeoX .* no grouped key/value heads",
}
LLAMA_LAYOUT = dict(mlp_class_name="LLaMAMLP", intermediate_size=128, bias=False, norm_class_name="RMSNorm")


def checkpoint_dir(tmp_path, variant: str, **overrides):
    config = variant_config(variant, **overrides)
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    save_config(config, directory)
    torch.save(random_gpt(config).state_dict(), directory / "lit_model.pth")
    return directory


def raised_in_litgpts_converter(error: pytest.ExceptionInfo) -> bool:
    """Whether litgpt's own `convert_lit_checkpoint` was running when `error` was raised."""
    litgpt_file = convert_lit_checkpoint.__file__
    return any(entry.name == "convert_lit_checkpoint" and str(entry.path) == litgpt_file for entry in error.traceback)


@pytest.mark.parametrize("variant", WITHOUT_COUNTERPART)
def test_variants_without_counterpart_are_refused_before_anything_is_written(variant, tmp_path, monkeypatch):
    source, output = checkpoint_dir(tmp_path, variant), tmp_path / "hf"
    opened, litgpt_incremental_save = [], convert_lit_checkpoint.incremental_save
    monkeypatch.setattr(convert_lit_checkpoint, "incremental_save", lambda path: opened.append(path) or litgpt_incremental_save(path))
    with pytest.raises(ValueError, match=WITHOUT_COUNTERPART[variant]) as error:
        convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    assert "Nothing was written" in str(error.value)
    assert not raised_in_litgpts_converter(error)
    assert opened == [] and not output.exists()


@pytest.mark.parametrize("variant", GROUPED_HEADS)
def test_grouped_heads_are_refused_for_gpt_neox_and_nothing_is_left(variant, tmp_path):
    """litgpt's dispatch picks GPT-NeoX, creates the output directories and model.pth, then calls the copy function."""
    source, output = checkpoint_dir(tmp_path, variant), tmp_path / "new" / "hf"
    with pytest.raises(ValueError, match=GROUPED_HEADS[variant]) as error:
        convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    assert "Nothing was written" in str(error.value)
    assert raised_in_litgpts_converter(error)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("model_file_before", [False, True])
def test_a_refusal_leaves_an_existing_output_directory_as_it_was(model_file_before, tmp_path):
    """Only what the call created is removed: the directory and what was in it stay, an earlier model.pth with its
    bytes (litgpt empties it on opening; the wrapper moved it aside and puts it back)."""
    source, output = checkpoint_dir(tmp_path, "gqa"), tmp_path / "hf"
    output.mkdir()
    (output / "README.md").write_text("kept")
    if model_file_before:
        (output / "model.pth").write_bytes(b"an earlier conversion")
    with pytest.raises(ValueError, match=GROUPED_HEADS["gqa"]):
        convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    assert sorted(path.name for path in output.iterdir()) == ["README.md", "model.pth"][: 2 if model_file_before else 1]
    if model_file_before:
        assert (output / "model.pth").read_bytes() == b"an earlier conversion"


def test_mha_converts_to_gpt_neox(tmp_path):
    source, output = checkpoint_dir(tmp_path, "mha"), tmp_path / "hf"
    convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    converted = torch.load(output / "model.pth")
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in converted


def test_gqa_converts_where_hugging_face_has_grouped_heads(tmp_path):
    """The Llama layout (LLaMAMLP) has num_key_value_heads: litgpt's GQA conversion is left alone."""
    source = checkpoint_dir(tmp_path, "gqa", **LLAMA_LAYOUT)
    output = tmp_path / "hf"
    convert_lit_checkpoint.convert_lit_checkpoint(source, output)
    converted = torch.load(output / "model.pth")
    assert converted["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)


def test_the_cli_entry_point_is_the_checking_one():
    from litgpt.__main__ import PARSER_DATA

    assert PARSER_DATA["convert_from_litgpt"] is convert_lit_checkpoint.convert_lit_checkpoint
