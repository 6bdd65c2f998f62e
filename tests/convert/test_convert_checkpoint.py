"""The checkpoint side of `litgpt-mka convert`: folders in and out, refusals, atomic writes, the CLI."""

import hashlib
import json

import pytest
import torch
import yaml

from litgpt_mka.cli import main
from litgpt_mka.convert import convert_checkpoint
from tests.convert.convert_helpers import load_converted, mha_checkpoint, write_checkpoint_dir
from tests.helpers import random_gpt, tiny_config, tokens

QUIET = dict(log=lambda message: None, calibration_tokens=64, calibration_seq_length=16)


def folder_digest(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_cli_writes_a_complete_checkpoint_and_leaves_the_source_alone(tmp_path, capsys):
    source, model = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    before = folder_digest(source)
    out = tmp_path / "nested" / "mla16"
    args = ["convert", str(source), "--to", "mla", "--kv_lora_rank", "16", "--out_dir", str(out),
            "--calibration_tokens", "64", "--calibration_seq_length", "16"]
    assert run_cli(args) == 0
    err = capsys.readouterr().err
    assert "[layer 1/2] kv_rel_error" in err and "[layer 2/2]" in err and f"wrote {out}" in err
    assert folder_digest(source) == before
    assert sorted(p.name for p in out.iterdir()) == [
        "conversion.json", "lit_model.pth", "model_config.yaml", "pretrain_model.yaml", "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["mla16"]  # no temporary folder left behind
    saved = yaml.safe_load((out / "model_config.yaml").read_text())
    assert saved["attention_class_name"] == "MultiheadLatentAttention" and saved["attn_bias"] is True
    assert saved["latent_attention"] == {
        "q_lora_rank": None, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 12, "v_head_dim": 16
    }
    pretrain_model = yaml.safe_load((out / "pretrain_model.yaml").read_text())
    assert pretrain_model == {"model_name": saved["name"], "model_config": saved}
    report = json.loads((out / "conversion.json").read_text())
    assert len(report["layers"]) == 2 and report["kv_cache_bytes_per_token_fp32"] == {
        "source": 2 * 2 * 4 * 16 * 4, "converted": 2 * (16 + 4) * 4
    }
    state = torch.load(out / "lit_model.pth", weights_only=True)
    assert "model" not in state  # a plain state dict, as `litgpt download` writes: every command reads it
    for name, tensor in model.state_dict().items():  # everything but attention is copied unchanged
        if ".attn." not in name:
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)

    written = folder_digest(out)
    assert run_cli(args) == 2  # the output exists now: refused, untouched
    assert "is an existing path; choose a folder that does not exist yet" in capsys.readouterr().err
    assert folder_digest(out) == written


def test_existing_out_dir_and_the_source_itself_are_refused(tmp_path):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    with pytest.raises(ValueError, match=r"out_dir='.*source' is the source checkpoint; choose a folder that does not exist"):
        convert_checkpoint(source, "mqa", source, **QUIET)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match=r"out_dir='.*taken' is an existing path"):
        convert_checkpoint(source, "mqa", tmp_path / "taken", **QUIET)


def test_cli_reports_errors_with_exit_status_2(tmp_path, capsys):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    assert run_cli(["convert", str(source), "--to", "gqa", "--n_query_groups", "3", "--out_dir", str(tmp_path / "o")]) == 2
    assert "litgpt-mka convert: error: n_query_groups=3 must divide n_head=4" in capsys.readouterr().err
    assert run_cli(["convert", str(source), "--out_dir", str(tmp_path / "o")]) == 2
    assert 'Key "convert.to" is required' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("variant", "overrides", "message"),
    [
        ("gqa", {}, r"n_query_groups=2 must equal n_head=4: the source must be MHA"),
        ("mla", {}, r"the source must be multi-head attention \(attention_class_name one of \['CausalSelfAttention', 'GroupedQueryAttention'\], latent_attention null\)"),
        ("mka", {}, r"attention_class_name='MemorizedKeyAttention'"),
        ("mha", {"norm_qk": True}, r"norm_qk=True: .*allowed: norm_qk=False"),
    ],
)
def test_sources_that_are_not_plain_mha_are_refused(tmp_path, variant, overrides, message):
    model = random_gpt(tiny_config(variant, **overrides))
    source = write_checkpoint_dir(tmp_path / "source", model)
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(source, "mqa", tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_a_folder_without_weights_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a litgpt checkpoint folder: lit_model.pth is missing"):
        convert_checkpoint(tmp_path, "mqa", tmp_path / "out", **QUIET)


def test_a_folder_without_a_tokenizer_is_refused_before_loading(tmp_path):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    (source / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer \(tokenizer.json or tokenizer.model\)"):
        convert_checkpoint(source, "mqa", tmp_path / "out", **QUIET)


def test_a_fine_tuned_sources_prompt_style_is_copied(tmp_path):
    """litgpt finetune_* writes prompt_style.yaml; generate/chat/serve read it before guessing a style by name."""
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    (source / "prompt_style.yaml").write_text("class_path: litgpt.prompts.Alpaca\n")
    out = tmp_path / "out"
    convert_checkpoint(source, "mqa", out, **QUIET)
    assert (out / "prompt_style.yaml").read_text() == (source / "prompt_style.yaml").read_text()


@pytest.mark.parametrize(
    ("to", "given", "message"),
    [("gqa", dict(n_query_groups=2, kv_lora_rank=8), r"kv_lora_rank=8 applies to --to mla only, not --to gqa"),
     ("mqa", dict(rope_fit="mean"), r"rope_fit='mean' applies to --to mla only, not --to mqa"),
     ("mla", dict(kv_lora_rank=8, n_query_groups=2), r"n_query_groups=2 does not apply to --to mla")],
)
def test_options_the_target_does_not_read_are_refused(tmp_path, to, given, message):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(source, to, tmp_path / "out", **given, **QUIET)
    assert not (tmp_path / "out").exists()


def test_bare_state_dicts_and_half_precision_are_kept(tmp_path):
    """A `litgpt download`-style bare bf16 state dict converts to a bf16 state dict."""
    config = tiny_config("mha")
    model = random_gpt(config).to(torch.bfloat16)
    source = write_checkpoint_dir(tmp_path / "source", model, training_state=False)
    convert_checkpoint(source, "mla", tmp_path / "out", kv_lora_rank=32, **QUIET)
    state = torch.load(tmp_path / "out" / "lit_model.pth", weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}


def test_calibration_from_a_text_file(tmp_path, shared_data):
    """With --calibration_data the windows come from the text (here a model with Pythia's full vocabulary)."""
    config = tiny_config("mha", vocab_size=50254, padded_vocab_size=50304)
    source, model = mha_checkpoint(tmp_path / "source", config)
    report = convert_checkpoint(
        source, "mla", tmp_path / "out", kv_lora_rank=32, calibration_data=shared_data / "val.txt",
        log=lambda message: None, calibration_tokens=256, calibration_seq_length=32,
    )
    assert report["calibration"].startswith("8 windows of 33 tokens from ") and report["calibration"].endswith("val.txt")
    assert report["calibration_loss"]["source"] > 9  # an untrained model on real text: about ln(50304) = 10.8
    idx = tokens(1, 16, vocab_size=50254)
    with torch.no_grad():
        assert load_converted(tmp_path / "out")(idx).shape == model(idx).shape


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    (tmp_path / "outputs").mkdir()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(source, "mqa", tmp_path / "outputs" / "mqa", **QUIET)
    assert list((tmp_path / "outputs").iterdir()) == []  # neither the folder nor its temporary twin
