"""`litgpt-mka compare --kv_cache_quantizations`: the held-out loss of cached decoding through quantized caches.

The cached loss is checked against two references: the full forward's held-out loss (an unquantized cache must
give it back) and litgpt generate's loop written out (tests/helpers.py ``decode_token_by_token``) on the same
windows (a quantized cache must give that loop's loss). Then the summary's paired cost, the report's table, the
CSV columns, the Pareto points and option errors. End to end (a rerun of a finished comparison that adds the
caches and trains nothing): tests/compare/test_compare_e2e.py.
"""

import csv
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from litgpt_mka.attention import registry
from litgpt_mka.compare.heldout import HeldoutData, cached_heldout_loss, heldout_loss
from litgpt_mka.compare.records import CachedLoss, KVQuantizationResult
from litgpt_mka.compare.summary import summarize
from litgpt_mka.data import validation_windows
from tests.compare.helpers import synthetic_run, tiny_yaml
from tests.helpers import TINY_VARIANTS, decode_token_by_token, random_gpt, tiny_config

SEQ = 24


def heldout(length: int, seed: int = 0) -> HeldoutData:
    """Validation windows of SEQ + 1 tokens over a random stream of `length` tokens (a tail window included)."""
    stream = torch.randint(0, 128, (length,), generator=torch.Generator().manual_seed(seed)).numpy()
    windows, new_from = validation_windows(stream, SEQ)
    return HeldoutData(windows, new_from, None, SEQ, length)


def quantized(model, quantization: str | None):
    """`model`'s weights in the class that can quantize its cache, with `kv_cache_quantization` set."""
    config = dataclasses.replace(model.config, attention_class_name=registry.quantizable_attention_class(model.config),
                                 kv_cache_quantization=quantization)
    copy = type(model)(config)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("prefill", [1, SEQ - 3])
def test_cached_loss_of_an_unquantized_cache_is_the_full_forward_loss(variant, prefill):
    model, data = random_gpt(tiny_config(variant)), heldout(5 * SEQ + 7)
    full = heldout_loss(model, data, batch_size=2)
    cached = cached_heldout_loss(model, data, batch_size=3, prefill=prefill)
    assert cached.tokens == full.tokens == data.num_tokens - 1
    torch.testing.assert_close(torch.tensor(cached.loss), torch.tensor(full.loss), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_cached_loss_of_a_quantized_cache_is_that_of_generates_loop(variant):
    """The same windows through tests/helpers.py's generate loop (prefill, then one token at a time)."""
    model, data, prefill = quantized(random_gpt(tiny_config(variant)), "int4"), heldout(4 * SEQ + 9), 5
    with torch.no_grad():
        logits = decode_token_by_token(model, data.windows[:, :-1], prefill)  # (W, SEQ, V)
    nll = F.cross_entropy(logits.transpose(1, 2), data.windows[:, 1:], reduction="none")  # (W, SEQ)
    counted = torch.arange(SEQ)[None, :] >= data.new_from[:, None]
    expected = nll[counted].double().mean()

    cached = cached_heldout_loss(model, data, batch_size=2, prefill=prefill)

    torch.testing.assert_close(torch.tensor(cached.loss, dtype=torch.float64), expected, rtol=1e-5, atol=1e-6)
    unquantized = cached_heldout_loss(quantized(model, None), data, batch_size=2, prefill=prefill)
    assert cached.loss != unquantized.loss  # the quantized cache was read: int4 changes the loss


def test_the_quantizable_class_holds_the_same_weights_and_quantizes_its_cache():
    assert registry.quantizable_attention_class(tiny_config("mha")) == "GroupedQueryAttention"
    for variant in ("gqa", "mla", "mka", "fmka"):
        config = tiny_config(variant)
        assert registry.quantizable_attention_class(config) == config.attention_class_name
    stock_mla = tiny_config("mla", attention_class_name="LitgptMultiheadLatentAttention")
    assert registry.quantizable_attention_class(stock_mla) == "MultiheadLatentAttention"


def test_option_names_are_the_quantizations_of_the_attention_package(tmp_path):
    from litgpt_mka.attention.quantization import DTYPES
    from litgpt_mka.compare.options import KV_CACHE_QUANTIZATIONS, CompareOptions, validate

    assert KV_CACHE_QUANTIZATIONS == tuple(DTYPES)
    config = tiny_yaml(tmp_path, "tiny-mha")
    with pytest.raises(ValueError, match=r"kv_cache_quantizations: 'int2' is not one of \['int8', 'int4', 'float8_e4m3fn'\]"):
        validate(CompareOptions(configs=[config], kv_cache_quantizations=["int8", "int2"]))
    with pytest.raises(ValueError, match=r"kv_cache_quantizations=\[\] is empty"):
        validate(CompareOptions(configs=[config], kv_cache_quantizations=[]))
    with pytest.raises(ValueError, match=r"kv_cache_quantizations=\['int8', 'int8'\] repeat a name"):
        validate(CompareOptions(configs=[config], kv_cache_quantizations=["int8", "int8"]))


def measured(run, unquantized: float, **losses: float):
    """`run` with a kv_quantization record: cached losses per cache, bytes 100 (none), 30 (int8), 16 (int4)."""
    sizes = {"none": 100.0, "int8": 30.0, "int4": 16.0}
    caches = [CachedLoss(name, "GroupedQueryAttention", sizes[name], loss, 999) for name, loss in losses.items()]
    record = KVQuantizationResult(list(losses), "val.txt", 64, CachedLoss("none", "GroupedQueryAttention", 100.0,
                                  unquantized, 999), caches, unquantized + 1e-7, 1.0)
    return dataclasses.replace(run, kv_quantization=record)


def test_summary_pairs_each_cache_with_the_unquantized_cache_of_the_same_checkpoint():
    runs = [measured(synthetic_run("mha", 1, 2.0, kv=100.0), 2.0, int8=2.001, int4=2.03),
            measured(synthetic_run("mha", 2, 2.4, kv=100.0), 2.4, int8=2.403, int4=2.41)]
    (mha,) = summarize(runs, reference="mha")
    int8, int4 = mha.quantized_caches
    assert (int8.quantization, int4.quantization) == ("int8", "int4")
    # paired: the seeds' losses differ by 0.4; int8's costs are 0.001 and 0.003 (std 0.001 sqrt 2)
    assert int8.cost.mean == pytest.approx(0.002) and int8.cost.std == pytest.approx(0.001 * 2**0.5)
    assert int4.cost.mean == pytest.approx(0.02) and int4.loss.mean == pytest.approx(2.22)
    assert int8.kv_bytes_per_token.mean == 30.0


def test_report_csv_and_pareto_points_show_the_quantized_caches(tmp_path):
    from litgpt_mka.compare.plots import pareto_points
    from litgpt_mka.compare.records import Environment, MeasureSettings, Results, Settings
    from litgpt_mka.compare.report import markdown, write_csv

    runs = [measured(synthetic_run("mha", 1, 2.0, kv=100.0), 2.0, int8=2.001, int4=2.03),
            measured(synthetic_run("mha", 2, 2.2, kv=100.0), 2.2, int8=2.203, int4=2.21),
            synthetic_run("mqa", 1, 2.1, kv=25.0)]
    summary = summarize(runs, reference="mha")
    settings = Settings(["configs/mha.yaml", "configs/mqa.yaml"], [1, 2], "train.txt", ["val.txt"], "tok", 42,
                        MeasureSettings(5, 16, 1, 4, "float32", 4))
    environment = Environment("3.11", "2.13", "0.5.13", "0.1.0", "2.6", "Linux", "cpu", 2, 2, [], None)
    results = Results("cmd", "now", environment, settings, "mha", summary, runs)

    section = markdown(results, []).split("## Quantized KV caches")[1].split("\n## ")[0]
    assert "agrees with the full-forward validation loss to 1.0e-07 nats at most" in section
    assert "| mha | none | 100 | 1.000 |" in section
    assert "Decoded by: mha `GroupedQueryAttention`;" in section
    assert "| mha | int8 | 30 | 0.300 | 2.1020 ± 0.1428 | +0.0020 ± 0.0014 |" in section
    assert "| mha | int4 | 16 | 0.160 |" in section and "| mqa |" not in section

    write_csv(tmp_path / "results.csv", results)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert float(rows[0]["cached_val_loss_int4"]) == 2.03 and float(rows[1]["kv_bytes_per_token_int8"]) == 30.0
    assert rows[2]["cached_val_loss_int8"] == ""  # mqa measured no cache

    points = {(p.variant, p.cache): (p.kv_bytes_per_token, p.loss.mean) for p in pareto_points(summary, "val")}
    assert points == {("mha", None): (100.0, pytest.approx(2.1)), ("mha", "int8"): (30.0, pytest.approx(2.102)),
                      ("mha", "int4"): (16.0, pytest.approx(2.12)), ("mqa", None): (25.0, pytest.approx(2.1))}
