"""Quantized KV caches (litgpt_mka/attention/quantization.py): the quantizers against a reference written from
the equations, the cache against a dense reference cache, every variant through the model and `litgpt generate`,
the byte accounting against what `set_kv_cache` allocates, and `kv_cache_quantization: null` unchanged."""

import math
import shutil

import pytest
import torch
import yaml
from litgpt.model import GPT, KVCache
from litgpt.utils import save_config

from litgpt_mka.attention import quantization as quant
from litgpt_mka.attention.quantization import KVQuantization, QuantizedSequence, parse_quantization
from litgpt_mka.measure.kv_cache_size import allocated_kv_cache_bytes, kv_cache_bytes
from tests.conftest import litgpt_command, run
from tests.helpers import decode_token_by_token, preset_config, prefill_in_chunks, random_gpt, tiny_config, tokens

VARIANTS = ("gqa", "mqa", "mla", "mka", "fmka")
DTYPES = ("int8", "int4", "float8_e4m3fn")


def quantized_config(variant: str, quantization, **overrides):
    return tiny_config(variant, kv_cache_quantization=quantization, **overrides)


# ------------------------------------------------------------------------------- reference quantizers
def half_rounded(value: torch.Tensor, up: bool) -> float:
    """float32 `value` as the nearest float16 on its `up` (or down) side: the docstring's rounding of s (up) and z
    (down). s and z are computed in float32 as the quantizer computes them, so that the stored numbers are equal."""
    half = value.half()
    if (half.float() < value) if up else (half.float() > value):
        half = torch.nextafter(half, torch.tensor(math.inf if up else -math.inf, dtype=torch.float16))
    return half.double().item()


def reference_round_trip(x: torch.Tensor, dtype: str, group: int) -> torch.Tensor:
    """x (..., F) quantized and dequantized group by group, from the module docstring's equations, in float64."""
    out = torch.empty(x.shape, dtype=torch.float64)
    flat, result = x.double().reshape(-1, x.size(-1)), out.view(-1, x.size(-1))
    for r in range(flat.size(0)):
        for start in range(0, flat.size(1), group):
            g = flat[r, start : start + group]
            g32 = g.float()
            if dtype == "int4":
                z = half_rounded(g32.min().clamp(-65504.0, 65504.0), up=False)
                s = half_rounded(((g32.max() - z) / 15).clamp(2.0**-24, 65504.0), up=True)
                q = ((g - z) / s).round().clamp(0, 15)
                result[r, start : start + group] = q * s + z
            else:
                limit = 127.0 if dtype == "int8" else 448.0
                s = half_rounded((g32.abs().max() / limit).clamp(2.0**-24, 65504.0), up=True)
                if dtype == "int8":
                    q = (g / s).round().clamp(-127, 127)
                else:
                    q = (g / s).float().to(torch.float8_e4m3fn).double()
                result[r, start : start + group] = q * s
    return out.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", (8, 16))
def test_round_trip_equals_the_reference_quantizer(dtype, group):
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * 3
    spec = KVQuantization(dtype, group)
    codes, scales, offsets = quant.quantize(x, spec)
    assert codes.shape == (3, 5, 16 * spec.bits // 8) and scales.shape == (3, 5, 16 // group)
    assert scales.dtype == torch.float16 and (offsets is not None) == (dtype == "int4")
    got = quant.dequantize(codes, scales, offsets, spec, torch.float32)
    torch.testing.assert_close(got, reference_round_trip(x, dtype, group), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ("int8", "int4"))
def test_integer_error_is_at_most_half_a_step(dtype):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    spec = KVQuantization(dtype, 16)
    codes, scales, offsets = quant.quantize(x, spec)
    error = (quant.dequantize(codes, scales, offsets, spec, torch.float32) - x).abs().unflatten(-1, (2, 16))
    step = scales.float().unsqueeze(-1)  # (64, 2, 1)
    assert bool((error <= step / 2 * (1 + 1e-3) + 1e-7).all())


@pytest.mark.parametrize("dtype", ("int8", "int4"))
@pytest.mark.parametrize("case", ("offset far from zero", "float16 subnormal scales", "near float16's maximum"))
def test_half_a_step_holds_where_float16_rounding_of_s_and_z_would_break_it(dtype, case):
    """z rounded down and s rounded up (from the rounded z): rounding to nearest put z above the group's minimum
    (int4 at 1000.26: codes clamped, 370 steps off) and s below its value among float16's subnormals (18 steps)."""
    generator = torch.Generator().manual_seed(2)
    x = {"offset far from zero": 1000.26 + 0.01 * torch.rand(64, 32, generator=generator),
         "float16 subnormal scales": 1e-5 * torch.randn(64, 32, generator=generator),
         "near float16's maximum": 6e4 * torch.rand(64, 32, generator=generator) - 3e4}[case]
    spec = KVQuantization(dtype, 16)
    codes, scales, offsets = quant.quantize(x, spec)
    error = (quant.dequantize(codes, scales, offsets, spec, torch.float64) - x.double()).abs().unflatten(-1, (2, 16))
    step = scales.double().unsqueeze(-1)  # (64, 2, 1)
    assert bool((error <= step / 2 * (1 + 1e-3)).all()), float((error / step).max())


def test_int4_numbers_beyond_float16s_range_stay_finite():
    """The offset is clamped to float16's range: numbers below -65504 come back as -65504, the others within half a
    step (before, an offset beyond the range was inf and the whole group came back inf or NaN)."""
    x = torch.tensor([[1e5] * 8, [-1e5] * 8, [-1e5 + 1e4 * k for k in range(8)]])
    spec = KVQuantization("int4", 8)
    codes, scales, offsets = quant.quantize(x, spec)
    got = quant.dequantize(codes, scales, offsets, spec, torch.float64)
    assert bool(torch.isfinite(got).all())
    representable = x >= -65504
    torch.testing.assert_close(got[~representable], torch.full_like(got[~representable], -65504.0))
    error = (got - x.double()).abs()[representable]
    assert bool((error <= scales.double().expand_as(x)[representable] / 2 * (1 + 1e-3)).all())


def test_zero_groups_come_back_as_zeros_and_int4_constants_exactly():
    """No division by a zero scale (the scale is clamped); int4's offset holds a constant group."""
    x = torch.cat((torch.zeros(1, 8), torch.full((1, 8), 0.75)), dim=0)
    for dtype in DTYPES:
        spec = KVQuantization(dtype, 8)
        got = quant.dequantize(*quant.quantize(x, spec), spec, torch.float32)
        torch.testing.assert_close(got[0], x[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], x[1], **({"rtol": 0, "atol": 0} if dtype == "int4" else {"rtol": 1e-3, "atol": 0}))


# ------------------------------------------------------------------------------------- the sequence store
def dense_reference(shape, dtype_name, group, writes):
    """What a quantized sequence must return: a dense buffer of round-tripped rows, written in order."""
    buffer = torch.zeros(shape)
    for input_pos, new in writes:
        rows = reference_round_trip(new, dtype_name, group)
        for b in range(new.size(0)):
            positions = input_pos if input_pos.dim() == 1 else input_pos[b]
            buffer[b, ..., positions, :] = rows[b]
    return buffer


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_positions_and_rewrites_equal_a_dense_reference(dtype):
    """Prefill, append, rewrite earlier positions per row ((B, T) positions), as speculative decoding does."""
    g = torch.Generator().manual_seed(2)
    shape = (2, 3, 12, 16)  # (B, heads, S, F)
    store = QuantizedSequence(shape, KVQuantization(dtype, 8), dtype=torch.float32)
    writes = [
        (torch.arange(6), torch.randn(2, 3, 6, 16, generator=g)),
        (torch.tensor([6]), torch.randn(2, 3, 1, 16, generator=g)),
        (torch.tensor([[3, 4], [5, 6]]), torch.randn(2, 3, 2, 16, generator=g)),
    ]
    for input_pos, new in writes:
        got = store.update(input_pos, new, 7)
    torch.testing.assert_close(got, dense_reference(shape, dtype, 8, writes)[:, :, :7], rtol=1e-6, atol=1e-6)


def test_residual_window_returns_the_last_positions_exactly():
    g = torch.Generator().manual_seed(3)
    R, shape = 4, (2, 10, 8)  # MLA's layout: (B, S, L)
    store = QuantizedSequence(shape, KVQuantization("int4", 8, residual=R), dtype=torch.float32)
    rows = torch.randn(2, 9, 8, generator=g)
    store.update(torch.arange(5), rows[:, :5], 5)  # chunked prefill, then decoding
    for t in range(5, 9):
        got = store.update(torch.tensor([t]), rows[:, t : t + 1], t + 1)
    torch.testing.assert_close(got[:, 9 - R :], rows[:, 9 - R :], rtol=0, atol=0)  # exact
    torch.testing.assert_close(got[:, : 9 - R], reference_round_trip(rows[:, : 9 - R], "int4", 8))
    assert not torch.equal(got[:, : 9 - R], rows[:, : 9 - R])
    # a rewrite one position back (speculative decoding's rollback) is exact too
    new = torch.randn(2, 1, 8, generator=g)
    got = store.update(torch.tensor([7]), new, 8)
    torch.testing.assert_close(got[:, 7:8], new, rtol=0, atol=0)
    store.reset()
    assert bool((store.recent_positions == -1).all()) and not store.codes.any()


def test_a_chunk_that_rewrites_a_ring_position_without_keeping_it_reads_the_new_codes():
    """R = 2, positions 0-3 written (the ring holds 2 and 3), then a chunk at [2, 5, 7]: it rewrites 2 and keeps 5
    and 7 (one slot: both left out of the ring). Position 2 reads the new row's codes, not the ring's old exact row."""
    g = torch.Generator().manual_seed(0)
    store = QuantizedSequence((1, 1, 8, 16), KVQuantization("int8", 16, residual=2), dtype=torch.float32)
    old, new = torch.randn(1, 1, 4, 16, generator=g), torch.randn(1, 1, 3, 16, generator=g)
    store.write(torch.arange(4), old)
    got = store.update(torch.tensor([2, 5, 7]), new, 8)
    expected = reference_round_trip(new, "int8", 16)  # (1, 1, 3, 16): positions 2, 5, 7 from the codes
    torch.testing.assert_close(got[:, :, [2, 5, 7]], expected)
    assert store.recent_positions.tolist() == [[-1, -1]]  # 2 forgotten; 5 and 7 share slot 1 (3's): left empty
    torch.testing.assert_close(got[:, :, 3], reference_round_trip(old, "int8", 16)[:, :, 3])  # 3: from the codes


# --------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("int3", r"kv_cache_quantization\.dtype='int3' must be one of \['int8', 'int4', 'float8_e4m3fn'\]"),
        ({"dtype": "int8", "bits": 8}, r"kv_cache_quantization has unknown key\(s\) \['bits'\]"),
        ({"dtype": "int8", "group_size": 0}, r"kv_cache_quantization\.group_size=0 must be a positive integer"),
        ({"dtype": "int4", "group_size": 3}, r"group_size=3 must be even for int4"),
        ({"dtype": "int8", "residual": -1}, r"kv_cache_quantization\.residual=-1 must be a non-negative integer"),
        (8, r"kv_cache_quantization=8 must be null, one of"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(value, message):
    with pytest.raises(ValueError, match=message):
        parse_quantization(value)
    with pytest.raises(ValueError, match=message):
        quantized_config("gqa", value)


def test_a_group_that_does_not_divide_a_row_is_refused():
    with pytest.raises(ValueError, match=r"group_size=12 must divide the cached key/value head width 16"):
        quantized_config("gqa", {"dtype": "int8", "group_size": 12})
    with pytest.raises(ValueError, match=r"must divide the cached latent \(kv_lora_rank\) width 32"):
        quantized_config("mla", {"dtype": "int8", "group_size": 24})


@pytest.mark.parametrize("overrides", [{}, {"attention_class_name": "LitgptMultiheadLatentAttention"}],
                         ids=("CausalSelfAttention", "LitgptMultiheadLatentAttention"))
def test_litgpt_own_classes_refuse_the_key_and_say_what_to_use(overrides):
    variant = "mla" if overrides else "mha"
    with pytest.raises(ValueError, match=r"kv_cache_quantization='int8' is not supported with .*GroupedQueryAttention"):
        quantized_config(variant, "int8", **overrides)


@pytest.mark.parametrize("variant", ("mha", *VARIANTS))
def test_null_keeps_todays_cache_bit_for_bit(variant):
    """``kv_cache_quantization: null`` builds the same cache classes and buffers and decodes to equal logits."""
    plain, explicit = random_gpt(tiny_config(variant)), random_gpt(quantized_config(variant, None))
    idx = tokens(2, 12)
    torch.testing.assert_close(decode_token_by_token(explicit, idx, 5), decode_token_by_token(plain, idx, 5),
                               rtol=0, atol=0)
    for a, b in zip(plain.transformer.h, explicit.transformer.h):
        assert type(a.attn.kv_cache) is type(b.attn.kv_cache)
        assert [(n, t.shape, t.dtype) for n, t in a.attn.kv_cache.named_buffers()] == [
            (n, t.shape, t.dtype) for n, t in b.attn.kv_cache.named_buffers()
        ]
    if variant in ("mha", "gqa", "mqa"):
        assert isinstance(explicit.transformer.h[0].attn.kv_cache, KVCache)  # litgpt's own


# ------------------------------------------------------------------------------------- through the model
class DenseRoundTrip(torch.nn.Module):
    """Reference for a QuantizedSequence: a dense buffer of rows round-tripped by the reference quantizer."""

    def __init__(self, store: QuantizedSequence) -> None:
        super().__init__()
        *lead, S, _ = store.codes.shape
        self.spec, self.buffer = store.quantization, torch.zeros(*lead, S, store.width)

    def update(self, input_pos, new, upto):
        from litgpt_mka.attention.kv_cache import write_positions

        rows = reference_round_trip(new, self.spec.dtype, self.spec.group_for(new.size(-1)))
        return write_positions(self.buffer[: new.size(0)], new.dim() - 2, input_pos, rows)[..., :upto, :]

    def reset(self) -> None:
        self.buffer.zero_()


def with_reference_sequences(model: GPT) -> GPT:
    """The model's quantized sequences replaced by dense round-trip references (after ``set_kv_cache``)."""
    for block in model.transformer.h:
        cache = block.attn.kv_cache
        for name, child in list(cache.named_children()):
            setattr(cache, name, DenseRoundTrip(child))
    return model


def decode_with(model: GPT, idx: torch.Tensor, prompt: int, reference: bool) -> torch.Tensor:
    """decode_token_by_token, its cache optionally swapped for the reference after allocation."""
    model.set_kv_cache(batch_size=idx.size(0))
    if reference:
        with_reference_sequences(model)
    logits = [model(idx[:, :prompt], torch.arange(prompt), input_pos_maxp1=prompt)]
    for t in range(prompt, idx.size(1)):
        logits.append(model(idx[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1))
    return torch.cat(logits, dim=1)


def count_blocks(monkeypatch) -> list[int]:
    """Counts the blocks that decode steps read from the codes (``QuantizedSequence.block``)."""
    calls, block = [], QuantizedSequence.block

    def counted(self, *args, **kwargs):
        calls.append(1)
        return block(self, *args, **kwargs)

    monkeypatch.setattr(QuantizedSequence, "block", counted)
    return calls


# group 8: several groups per cached row (hs 16, latent 32), scaled in place, one cached row per block;
# group 64 (capped at the row): one group per row, the scales folded into scores and weights, default blocks
LAYOUTS = {"groups-of-8-row-blocks": (8, 1), "row-groups-default-blocks": (64, None)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", (*VARIANTS, "outputs"))
@torch.no_grad()
def test_cached_decoding_equals_decoding_through_the_reference_quantizer(variant, dtype, layout, monkeypatch):
    """The model reads exactly the round-tripped keys/values (MLA: the latent; its RoPE key, MKA's sums exact):
    prefill through the dequantized rows, decode steps through the codes (quantized_attention), against
    dequantized reference rows for both."""
    group, block_bytes = LAYOUTS[layout]
    if block_bytes is not None:
        monkeypatch.setattr("litgpt_mka.attention.quantized_attention.BLOCK_BYTES", block_bytes)
    routing = {"memorized_key_attention": {"routing": "outputs"}} if variant == "outputs" else {}
    config = quantized_config("mka" if variant == "outputs" else variant, {"dtype": dtype, "group_size": group},
                              **routing)
    model = random_gpt(config)
    idx = tokens(2, 14)
    reference = decode_with(model, idx, 6, True)
    blocks = count_blocks(monkeypatch)
    # Row groups fold the scale into the scores, (q . c) s against the reference's q . (c s): equal up to fp32
    # rounding, which a later layer's float8 e4m3 rounding (3 mantissa bits) can turn into one code a step apart
    # (seen on a 2-core AMD EPYC for GQA: 27 of 3584 logits off by up to 2.4e-5); a wrong scale or block is off by O(1)
    atol = 1e-4 if dtype == "float8_e4m3fn" and block_bytes is None else 1e-5
    torch.testing.assert_close(decode_with(model, idx, 6, False), reference, rtol=1e-5, atol=atol)
    assert blocks, "the decode steps did not read the codes"


@pytest.mark.parametrize("input_pos_maxp1", (True, False))
@pytest.mark.parametrize("variant", ("gqa", "mla", "mka"))
@torch.no_grad()
def test_masked_decode_steps_from_the_codes_softcap_before_masking(variant, input_pos_maxp1, monkeypatch):
    """Rows at different positions (a mask on the decode step) and attention_logit_softcapping: the codes path
    equals the dequantized reference, whose masked positions stay hidden (softcapping would turn a masked score
    added before it into -softcapping, a visible weight)."""
    model = random_gpt(quantized_config(variant, "int8", attention_logit_softcapping=1.0))
    idx = tokens(2, 16)

    def decode(reference: bool) -> torch.Tensor:
        model.set_kv_cache(batch_size=2, max_seq_length=20)
        if reference:
            with_reference_sequences(model)
        model(idx[:, :8], torch.arange(8), input_pos_maxp1=8)
        logits = []
        for i in range(4):  # row 0 continues at 8, row 1 rewrites from 4: masked steps
            position = torch.tensor([[8 + i], [4 + i]])
            logits.append(model(idx[:, 8 + i : 9 + i], position, input_pos_maxp1=9 + i if input_pos_maxp1 else None))
        return torch.cat(logits, dim=1)

    reference = decode(True)
    blocks = count_blocks(monkeypatch)
    torch.testing.assert_close(decode(False), reference, rtol=1e-5, atol=1e-5)
    assert blocks, "the decode steps did not read the codes"


@pytest.mark.parametrize("variant", ("mha", "mla", "fmka"))
@torch.no_grad()
def test_litgpt_generate_loop_decodes_from_the_codes_and_greedily_as_the_reference(variant, monkeypatch):
    """litgpt's own generate loop (prompt prefill, then one query per step with input_pos_maxp1) reads its decode
    steps from the codes and picks the tokens that the dequantized reference cache picks."""
    from litgpt.generate.base import generate

    overrides = {"attention_class_name": "GroupedQueryAttention"} if variant == "mha" else {}
    model = random_gpt(quantized_config(variant, "int8", **overrides))
    prompt = tokens(1, 6)[0]

    def greedy(reference: bool) -> torch.Tensor:
        model.set_kv_cache(batch_size=1, max_seq_length=16)
        if reference:
            with_reference_sequences(model)
        return generate(model, prompt, max_returned_tokens=14, temperature=0.0)

    expected = greedy(reference=True)
    blocks = count_blocks(monkeypatch)
    assert torch.equal(greedy(reference=False), expected)
    assert blocks, "litgpt generate's decode steps did not read the codes"


def test_a_block_holds_whole_rows_within_the_budget(monkeypatch):
    """Blocks of about BLOCK_BYTES on a CPU, a multiple of the threads over which bmm splits its batch; on other
    devices the budget alone (never all N rows regardless of their bytes)."""
    from litgpt_mka.attention import quantized_attention as qa

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu, budget = torch.device("cpu"), qa.BLOCK_BYTES
    assert [qa._rows_per_block(budget // n, 128, cpu) for n in (1, 2, 3, 5, 7, 8)] == [1, 2, 4, 4, 8, 8]
    assert qa._rows_per_block(4 * budget, 128, cpu) == 1  # a row larger than the budget is a block of its own
    assert qa._rows_per_block(1, 128, cpu) == 128  # never more than the rows there are
    meta = torch.device("meta")
    assert [qa._rows_per_block(budget // n, 128, meta) for n in (1, 3, 5)] == [1, 3, 5]  # no rounding to threads


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_quantized_decoding_stays_close_to_the_full_forward(variant):
    """int8 differs from the unquantized logits by little, int4 by more, both far less than the logits' scale."""
    idx = tokens(2, 14)
    full = random_gpt(tiny_config(variant))(idx)
    errors = {}
    for dtype in ("int8", "int4"):
        model = random_gpt(quantized_config(variant, dtype))
        errors[dtype] = (decode_token_by_token(model, idx, 6) - full).abs().max().item()
    assert errors["int8"] < 0.02 < full.abs().max().item() and errors["int8"] < errors["int4"] < 0.2


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_chunked_prefill_equals_one_prefill_and_token_by_token(variant):
    """Per-token quantization: every chunking writes the same codes, so the logits agree to float error (1e-4:
    MKA's running sums differ by float error between chunkings, which can move a key across an int4 rounding
    boundary)."""
    model = random_gpt(quantized_config(variant, {"dtype": "int4", "group_size": 8, "residual": 0}))
    idx = tokens(2, 12)
    single = prefill_in_chunks(model, idx, [12])
    torch.testing.assert_close(prefill_in_chunks(model, idx, [5, 4, 3]), single, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decode_token_by_token(model, idx, 1), single, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_a_residual_window_longer_than_the_sequence_decodes_exactly():
    """With every position in the residual window the quantized cache returns exact rows: unquantized logits."""
    idx = tokens(2, 10)
    for variant in VARIANTS:
        exact = decode_token_by_token(random_gpt(tiny_config(variant)), idx, 4)
        window = random_gpt(quantized_config(variant, {"dtype": "int4", "residual": 16}))
        torch.testing.assert_close(decode_token_by_token(window, idx, 4), exact, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ accounting
@pytest.mark.parametrize("quantization", [*DTYPES, {"dtype": "int4", "group_size": 8, "residual": 5}],
                         ids=lambda q: str(q))
@pytest.mark.parametrize("variant", (*VARIANTS, "outputs"))
def test_accounted_bytes_equal_what_set_kv_cache_allocates(variant, quantization):
    routing = {"memorized_key_attention": {"routing": "outputs"}} if variant == "outputs" else {}
    config = quantized_config("mka" if variant == "outputs" else variant, quantization, **routing)
    model = GPT(config)
    for length in (20, 4):  # 4: shorter than the residual window (5) and MKA's ring of sums (16), both capped
        model.set_kv_cache(batch_size=3, max_seq_length=length)
        assert allocated_kv_cache_bytes(model) == kv_cache_bytes(config, 3, length)


@pytest.mark.parametrize("preset", ("pythia-70m-gqa", "pythia-70m-mqa", "pythia-70m-mka", "pythia-70m-fmka"))
def test_the_70m_caches_shrink_to_the_targets(preset):
    """fp32 cache at context 4096, MKA's ring included: int8 <= 0.28x, int4 <= 0.16x of the unquantized bytes."""
    overrides = {"attention_class_name": "GroupedQueryAttention"} if preset.endswith("qa") else {}
    full = kv_cache_bytes(preset_config(preset, **overrides), 1, 4096)
    for dtype, target in (("int8", 0.28), ("int4", 0.16)):
        assert kv_cache_bytes(preset_config(preset, kv_cache_quantization=dtype), 1, 4096) <= target * full


def test_mla_quantizes_its_latent_and_keeps_the_rope_key():
    config = preset_config("pythia-70m-mla", kv_cache_quantization="int8")
    L, R = config.kv_lora_rank, config.qk_rope_head_dim
    per_token = kv_cache_bytes(config, 1, 1)
    assert per_token == config.n_layer * (KVQuantization("int8").bytes_per_row(L) + R * 4)


# -------------------------------------------------------------------------------------- litgpt generate
@pytest.mark.slow
# the plumbing (model_config.yaml -> litgpt generate) is the same for every dtype: each variant once, the dtypes
# rotated (every dtype's decoding of every variant is tested in process above)
@pytest.mark.parametrize(("variant", "dtype"),
                         [("mha", "int8"), *((v, ("int4", "float8_e4m3fn", "int8")[i % 3]) for i, v in enumerate(VARIANTS))])
def test_litgpt_generate_decodes_through_a_quantized_cache(variant, dtype, tokenizer_dir, subprocess_env, tmp_path):
    """The key in a checkpoint's model_config.yaml is all `litgpt generate` needs (MHA: our grouped class)."""
    overrides = dict(n_layer=2, n_embd=64, n_head=4, block_size=64, kv_cache_quantization=dtype)
    if variant == "mha":
        overrides["attention_class_name"] = "GroupedQueryAttention"
    config = tiny_config(variant, **overrides)
    config.vocab_size, config.padded_vocab_size = 50254, 50304  # the Pythia tokenizer's
    torch.manual_seed(0)
    torch.save(GPT(config).state_dict(), tmp_path / "lit_model.pth")
    save_config(config, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, tmp_path / name)
    assert yaml.safe_load((tmp_path / "model_config.yaml").read_text())["kv_cache_quantization"] == dtype
    prompt = "Once upon a time, there was a little girl"
    generated = run([*litgpt_command(), "generate", str(tmp_path), "--prompt", prompt, "--max_new_tokens", "12",
                     "--precision", "32-true"], env=subprocess_env)
    text = generated.stdout.strip().splitlines()[-1]
    assert text.startswith(prompt) and len(text) > len(prompt) + 12
    assert f"'kv_cache_quantization': '{dtype}'" in generated.stderr


@pytest.mark.parametrize("variant", ("gqa", "mla", "mka"))
def test_a_cache_first_read_under_inference_mode_stays_usable_under_no_grad(variant):
    """litgpt generate reads under torch.inference_mode; the same cache, reset, then serves a no_grad forward (the
    workspace is allocated as a normal tensor, as the cache's buffers are)."""
    model = random_gpt(quantized_config(variant, "int8"))
    idx = tokens(1, 10)
    model.set_kv_cache(batch_size=1, max_seq_length=16)
    with torch.inference_mode():
        expected = [model(idx[:, :4], torch.arange(4), input_pos_maxp1=4),
                    model(idx[:, 4:5], torch.tensor([4]), input_pos_maxp1=5)]
    for block in model.transformer.h:
        block.attn.kv_cache.reset_parameters()
    with torch.no_grad():
        got = [model(idx[:, :4], torch.arange(4), input_pos_maxp1=4),
               model(idx[:, 4:5], torch.tensor([4]), input_pos_maxp1=5)]
    torch.testing.assert_close(got, expected)


@torch.no_grad()
def test_caches_of_a_model_share_one_workspace_that_decode_steps_never_reallocate():
    """``GPT.set_kv_cache`` links every quantized sequence to one Workspace (one layer's scratch, not n_layer);
    after the first step of each kind its tensors stay the same ones, however long the decode runs."""
    model = random_gpt(quantized_config("gqa", "int8"))
    model.set_kv_cache(batch_size=2, max_seq_length=32)
    sequences = [module for module in model.modules() if isinstance(module, QuantizedSequence)]
    assert len(sequences) == 2 * model.config.n_layer
    assert len({id(sequence.workspace) for sequence in sequences}) == 1
    workspace, idx = sequences[0].workspace, tokens(2, 24)
    model(idx[:, :5], torch.arange(5), input_pos_maxp1=5)  # prefill: the dequantized rows
    model(idx[:, 5:6], torch.tensor([5]), input_pos_maxp1=6)  # a decode step: the blocks
    held = {role: tensor.data_ptr() for role, tensor in workspace._held.items()}
    assert set(held) == {"k", "v", "k/block", "v/block"}
    for t in range(6, 24):
        model(idx[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1)
    assert {role: tensor.data_ptr() for role, tensor in workspace._held.items()} == held
