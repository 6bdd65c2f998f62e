"""benchmarks/decode.py: its rows, settings, cache filling and publishability rule (not its timings)."""

import sys
from pathlib import Path

import pytest
import torch

import litgpt_mka  # noqa: F401  (activates the plugin)
from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py"


@pytest.fixture(scope="module")
def decode():
    return load_script(SCRIPT, "decode_benchmark")


def test_rows_are_every_preset_with_litgpt_counterparts_on_shared_weights(decode):
    rows = decode.preset_rows("14m", block_size=64, selected=None)
    assert [row.key for row in rows] == [
        "mha", "gqa-litgpt", "gqa", "mqa-litgpt", "mqa", "mla-litgpt", "mla", "mka", "fmka"
    ]
    assert [row.config.attention_class_name for row in rows] == [
        "CausalSelfAttention", "CausalSelfAttention", "GroupedQueryAttention", "CausalSelfAttention",
        "GroupedQueryAttention", "LitgptMultiheadLatentAttention", "MultiheadLatentAttention",
        "MemorizedKeyAttention", "MemorizedKeyAttention",
    ]
    rows = [row for row in rows if row.key in ("mha", "mla-litgpt", "mla")]
    decode.build_models(rows, torch.device("cpu"), torch.float32, seed=0)
    litgpt, ours = rows[1].model.state_dict(), rows[2].model.state_dict()
    assert litgpt.keys() == ours.keys()
    assert all(torch.equal(litgpt[name], ours[name]) for name in litgpt)


def test_selected_rows_keep_mha_and_unknown_keys_are_refused(decode):
    assert [row.key for row in decode.preset_rows("14m", 64, ["mqa"])] == ["mha", "mqa"]
    with pytest.raises(SystemExit, match=r"--variants \['gqa-ours'\] unknown"):
        decode.preset_rows("14m", 64, ["gqa-ours"])


def test_settings_centre_the_decoded_positions_on_the_context(decode):
    args = decode.parse_args(["--contexts", "256", "1024", "--batch-sizes", "1", "8", "--cache-dominated", "16x4096"])
    groups = decode.settings_by_batch(args)
    assert sorted(groups) == [1, 8, 16]
    span = args.rounds * (args.warmup_tokens + args.new_tokens)  # 5 x 18 positions decoded per setting
    tiny, *settings = groups[8]
    assert tiny.tiny and (tiny.prefill, tiny.context, tiny.length) == (0, span // 2, span)
    assert [(s.context, s.prefill, s.length) for s in settings] == [
        (256, 256 - span // 2, 256 - span // 2 + span), (1024, 1024 - span // 2, 1024 - span // 2 + span)
    ]
    assert [s.context for s in groups[16]] == [span // 2, 4096]


def test_contexts_too_short_for_the_rounds_are_refused(decode, capsys):
    with pytest.raises(SystemExit):
        decode.parse_args(["--contexts", "40", "--rounds", "5"])  # 5 x 18 / 2 = 45 positions below the context
    assert "every context must exceed rounds x (warmup + new tokens) / 2 = 45" in capsys.readouterr().err


def test_filled_cache_is_the_shared_prefill_of_one_copied_row(decode):
    """fill_cache is litgpt_mka.measure.decode_speed.prefill_random_prompt (tested there) with the setting's sizes."""
    row = next(row for row in decode.preset_rows("14m", 64, ["mqa"]) if row.key == "mqa")
    decode.build_models([row], torch.device("cpu"), torch.float32, seed=0)
    setting = decode.Setting(batch=3, context=20, prefill=12, length=30)
    visit = decode.fill_cache(row.model, setting, seed=1)
    assert visit.position == 12 and [cache.k.shape for cache in visit.caches] == [(3, 1, 30, 32)] * 6
    with torch.no_grad():
        logits = row.model(visit.token, torch.tensor([12]), input_pos_maxp1=13)  # (3, 1, vocab)
    prompt = torch.randint(0, row.config.vocab_size, (1, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = row.model(prompt)[:, -1:]  # the same tokens without a cache
    torch.testing.assert_close(logits, full.expand(3, -1, -1))


def test_report_is_marked_not_publishable_when_busy_or_short(decode, monkeypatch, tmp_path):
    monkeypatch.setattr(decode, "load_average", lambda: (0.0, 0.0, 0.0))
    out = tmp_path / "decode.md"
    argv = ["--size", "14m", "--rounds", "1", "--contexts", "24", "--batch-sizes", "2", "--cache-dominated", "none",
            "--warmup-tokens", "0", "--new-tokens", "2", "--variants", "mqa-litgpt", "mqa", "--copy-mib", "8",
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["decode.py", *argv])
    decode.main(argv)
    text = out.read_text()
    assert "**NOT PUBLISHABLE**: 1 round(s), fewer than 5" in text
    assert "machine busy" not in text
    for label in ("MHA (CausalSelfAttention)", "MQA, litgpt (CausalSelfAttention)", "MQA, ours (GroupedQueryAttention)"):
        assert f"| b=2 ctx=24 | {label} |" in text
    threads = decode.torch.get_num_threads()
    monkeypatch.setattr(decode, "load_average", lambda: (threads + 0.5, 0.0, 0.0))  # at the limit: quiet
    decode.main(argv)
    assert "machine busy" not in out.read_text()
    monkeypatch.setattr(decode, "load_average", lambda: (threads + 0.51, 0.0, 0.0))
    decode.main(argv)
    busy = f"{threads + 0.51:.2f}"
    assert f"machine busy (1-minute load {busy} before, {busy} after; limit {threads + 0.5:g}:" in out.read_text()


def test_quantized_rows_follow_their_preset_on_its_weights_and_get_their_own_table(decode, monkeypatch, tmp_path):
    rows = decode.preset_rows("14m", 64, ["mha-int8", "mla-int4"], ["int8", "int4"])
    assert [(row.key, row.config.attention_class_name, row.config.kv_cache_quantization, row.unquantized)
            for row in rows] == [
        ("mha", "CausalSelfAttention", None, None),
        ("mha-ours", "GroupedQueryAttention", None, None),  # kept: MHA's weights in the class that quantizes
        ("mha-int8", "GroupedQueryAttention", "int8", "mha-ours"),  # against that class unquantized
        ("mla", "MultiheadLatentAttention", None, None),  # kept: the quantized row's reference
        ("mla-int4", "MultiheadLatentAttention", "int4", "mla"),
    ]
    decode.build_models(rows[:3], torch.device("cpu"), torch.float32, seed=0)
    mha, ours, int8 = (row.model.state_dict() for row in rows[:3])
    assert mha.keys() == ours.keys() == int8.keys()
    assert all(torch.equal(mha[name], ours[name]) and torch.equal(mha[name], int8[name]) for name in mha)

    monkeypatch.setattr(decode, "load_average", lambda: (0.0, 0.0, 0.0))
    out = tmp_path / "decode.md"
    argv = ["--size", "14m", "--rounds", "1", "--contexts", "24", "--batch-sizes", "2", "--cache-dominated", "none",
            "--warmup-tokens", "0", "--new-tokens", "2", "--variants", "mqa-int4", "--copy-mib", "8",
            "--kv-cache-quantizations", "int4", "--out", str(out)]
    decode.main(argv)
    table = out.read_text().split("### Quantized caches against the same class unquantized")[1]
    assert "| MQA, int4 cache | 0.156 |" in table  # a row of hs 32: 16 B of codes + float16 scale and offset, of 128
