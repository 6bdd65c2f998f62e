"""Tests of litgpt_mka/attention/mka.py: the equations (naive reference), causality, the KV cache, FlashAttention
dispatch, validation, initialisation and the routing inspection.

Every numerical check runs in float32 on the CPU with fixed seeds and compares whole tensors with
``torch.testing.assert_close`` (default float32 tolerances: rtol 1.3e-6, atol 1e-5).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import GPT, CausalSelfAttention
from torch.profiler import ProfilerActivity, profile

import litgpt_mka  # noqa: F401  (activates the plugin for litgpt modules imported below)
from litgpt_mka.attention import mka
from litgpt_mka.attention.mka import MemorizedKeyAttention, MemorizedKeyCache, routing_weights
from tests.helpers import (
    assert_cached_decode_matches_full_forward,
    decode_token_by_token,
    assert_chunked_prefill_matches_single_prefill,
    attention_kernels_run,
    random_gpt,
    tiny_config,
)
from tests.helpers import tokens as random_tokens

ROUTINGS = ("keys", "keys_values", "outputs")
LAYOUTS = {"mha": 4, "gqa": 2, "mqa": 1}  # n_query_groups for n_head = 4
SEQ = 12


def make_config(routing: str = "keys", n_query_groups: int = 4, **overrides) -> Config:
    """helpers.tiny_config("mka") with `routing` and `n_query_groups` (head size 16, rope on 4 of 16 features)."""
    settings = overrides.pop("memorized_key_attention", {"routing": routing})
    return tiny_config(
        "mka", n_query_groups=n_query_groups, block_size=32, memorized_key_attention=settings, **overrides
    )


def make_model(routing: str = "keys", n_query_groups: int = 4, seed: int = 0, **overrides) -> GPT:
    """A GPT with every parameter drawn from N(0, 0.3), the router's zero-initialised output layer included."""
    return random_gpt(make_config(routing, n_query_groups, **overrides), seed=seed, std=0.3)


def tokens(batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    return random_tokens(batch, seq, seed=seed)


# ------------------------------------------------------------------------- reference implementation
def reference_attention(module: MemorizedKeyAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The module docstring's equations, one position at a time: memories in x-space, no cache, no shortcut.

    x (B, T, C); cos, sin (1, T, rope_n_elem) -> (B, T, C). The long-term branch of ``outputs`` is
    computed by attention like the other two.
    """
    cfg = module.config
    B, T, C = x.shape
    nh, nkv, hs, r = cfg.n_head, cfg.n_query_groups, cfg.head_size, cfg.rope_n_elem
    W_Q, W_K, W_V = module.qkv.weight.split((nh * hs, nkv * hs, nkv * hs))
    b_Q, b_K, b_V = module.qkv.bias.split((nh * hs, nkv * hs, nkv * hs))
    router = module.router

    def lam(x_t):  # (C,) -> (3,)
        hidden = F.gelu(router.fc.weight @ x_t + router.fc.bias)
        return torch.softmax(router.out_weight @ hidden + router.out_bias, dim=0)

    def rope(vec, t):  # (n, hs) at position t
        half = r // 2
        rotated = torch.cat((-vec[:, half:r], vec[:, :half]), dim=1)
        return torch.cat((vec[:, :r] * cos[0, t] + rotated * sin[0, t], vec[:, r:]), dim=1)

    def attention(q_t, keys, values, t):  # q_t (nh, hs); keys/values: lists over s <= t of (nkv, hs)
        out = torch.empty(nh, hs)
        for h in range(nh):
            g = h // (nh // nkv)
            scores = torch.stack([q_t[h] @ keys[s][g] for s in range(t + 1)]) / math.sqrt(hs)
            weights = torch.softmax(scores, dim=0)
            out[h] = sum(weights[s] * values[s][g] for s in range(t + 1))
        return out

    y = torch.empty(B, T, nh * hs)
    for b in range(B):
        memories = [[x[b, t], x[b, : t + 1].mean(dim=0), module.memory] for t in range(T)]  # m1, m2, m3
        lams = [lam(x[b, t]) for t in range(T)]
        queries = [rope((W_Q @ x[b, t] + b_Q).view(nh, hs), t) for t in range(T)]
        if module.routing in ("keys", "keys_values"):
            keys, values = [], []
            for t in range(T):
                if module.routing == "keys":
                    key = sum(lams[t][i] * (W_K @ memories[t][i] + b_K) for i in range(3))
                    value = W_V @ x[b, t] + b_V
                else:
                    u = sum(lams[t][i] * memories[t][i] for i in range(3))
                    key, value = W_K @ u + b_K, W_V @ u + b_V
                keys.append(rope(key.view(nkv, hs), t))
                values.append(value.view(nkv, hs))
            for t in range(T):
                y[b, t] = attention(queries[t], keys, values, t).flatten()
        else:
            branches = []
            for i in range(3):
                keys = [rope((W_K @ memories[s][i] + b_K).view(nkv, hs), s) for s in range(T)]
                values = [(W_V @ memories[s][i] + b_V).view(nkv, hs) for s in range(T)]
                branches.append([attention(queries[t], keys, values, t) for t in range(T)])
            for t in range(T):
                y[b, t] = sum(lams[t][i] * branches[i][t] for i in range(3)).flatten()
    return module.proj(y)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_module_matches_reference(routing, layout):
    model = make_model(routing, LAYOUTS[layout])
    module = model.transformer.h[0].attn
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(2))
    cos, sin = model.cos[:8].unsqueeze(0), model.sin[:8].unsqueeze(0)
    lam = module.router(x)
    assert lam.std() > 0.05, "the routing weights must vary for this test to check the mixing"
    with torch.no_grad():
        torch.testing.assert_close(module(x, cos, sin), reference_attention(module, x, cos, sin))


# ------------------------------------------------------------------------------------------ causality
def assert_causal(model: GPT, k: int = 5) -> None:
    """Changing the tokens at positions >= k leaves the logits at positions < k unchanged (and changes the rest)."""
    idx = tokens()
    changed = idx.clone()
    changed[:, k:] = (idx[:, k:] + 1 + torch.arange(SEQ - k)) % 100
    with torch.no_grad():
        logits, logits_changed = model(idx), model(changed)
    torch.testing.assert_close(logits_changed[:, :k], logits[:, :k])
    assert not torch.allclose(logits_changed[:, k:], logits[:, k:], atol=1e-3)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_logits_are_causal(routing):
    assert_causal(make_model(routing, n_query_groups=2))


def test_causality_check_detects_a_whole_sequence_mean(monkeypatch):
    """The check above fails for the public implementation's session summary (a mean over the whole sequence)."""

    def whole_sequence_sums(src, prefix=None):
        positions = torch.arange(1, src.size(1) + 1).view(1, -1, 1)  # (1, T, 1)
        return src.float().mean(dim=1, keepdim=True) * positions  # every position sees the future

    monkeypatch.setattr(mka, "running_sums", whole_sequence_sums)
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        assert_causal(make_model("keys"))


# ------------------------------------------------------------------------------------------ KV cache
def expected_logits(full: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Full-forward logits (B, SEQ, V) at `input_pos` (T,) or (B, T) -> (B, T, V)."""
    rows = torch.arange(full.size(0)).unsqueeze(1)  # (B, 1)
    return full[rows, input_pos.expand(full.size(0), -1)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_batched_decoding_matches_full_forward(routing, layout):
    """Rows at different positions (B, T), chunks then single tokens, earlier positions rewritten."""
    model = make_model(routing, LAYOUTS[layout])
    idx = tokens()
    schedule = [  # input_pos (B, T) per forward: row 0 runs ahead, row 1 rewrites positions 2-3, both end on 10-11
        [[0, 1, 2, 3], [0, 1, 2, 3]],
        [[4, 5, 6], [2, 3, 4]],
        *([[7 + j], [5 + j]] for j in range(5)),
        [[10, 11], [10, 11]],
    ]
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2)
        for positions in schedule:
            input_pos = torch.tensor(positions)  # (B, T)
            logits = model(idx.gather(1, input_pos), input_pos)
            torch.testing.assert_close(logits, expected_logits(full, input_pos))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_token_by_token_decoding_matches_full_forward(routing, layout):
    """litgpt's generate loop: 1-D input_pos, a prompt, then one token at a time with input_pos_maxp1."""
    assert_cached_decode_matches_full_forward(make_model(routing, LAYOUTS[layout]), tokens(), prompt=3)


@pytest.mark.parametrize("routing", ("keys", "keys_values"))
def test_decoding_under_autocast_mixes_in_the_models_dtype_as_the_full_forward(routing):
    """Under bf16 autocast the projection's output is bf16 while the mix is in the input's dtype (float32): decode
    steps then take the general path, give the full forward's logits and keep the float32 cache."""
    model = make_model(routing, LAYOUTS["gqa"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_cached_decode_matches_full_forward(model, tokens(), prompt=3, rtol=0, atol=0)
    assert {block.attn.kv_cache.k.dtype for block in model.transformer.h} == {torch.float32}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_chunked_prefill_matches_single_prefill(routing, layout):
    assert_chunked_prefill_matches_single_prefill(make_model(routing, LAYOUTS[layout]), tokens(), [5, 4, 2, 1])


def test_cache_errors_of_its_own():
    model = make_model("keys")
    idx = tokens()
    with pytest.raises(TypeError, match=r"call `gpt.set_kv_cache\(\)`"):
        model(idx[:, :2], torch.arange(2))
    model.set_kv_cache(batch_size=1, max_seq_length=16)
    attn = model.transformer.h[0].attn
    x, cos, sin = torch.randn(1, 2, 64), model.cos[:2].unsqueeze(0), model.sin[:2].unsqueeze(0)
    with pytest.raises(ValueError, match=r"input_pos must hold consecutive positions"):
        attn(x, cos, sin, None, torch.tensor([3, 5]))
    with pytest.raises(ValueError, match=r"rope_cache_length=3 must equal rope_n_elem=4 for MemorizedKeyAttention"):
        attn.build_kv_cache(1, 16, rope_cache_length=3)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_rewrites_within_the_sum_window_are_exact_and_beyond_it_refused(routing):
    """Decode 0..11, roll back to 9 (the last sum_window - 1 = 3 positions) and decode other tokens; 8 is refused."""
    model = make_model(routing, memorized_key_attention={"routing": routing, "sum_window": 4})
    idx, other = tokens(batch=1), tokens(batch=1, seed=5)
    rewritten = torch.cat((idx[:, :9], other[:, 9:]), dim=1)
    with torch.no_grad():
        expected = model(rewritten)
        model.set_kv_cache(batch_size=1)
        for t in range(SEQ):
            model(idx[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1)
        logits = [model(rewritten[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1) for t in range(9, SEQ)]
        torch.testing.assert_close(torch.cat(logits, dim=1), expected[:, 9:])
        match = (
            r"batch row 0 writes position 8, but the running sum of position 7 is no longer cached: the cache keeps"
            r" the sums of the last memorized_key_attention.sum_window=4 positions written. Set"
        )
        with pytest.raises(ValueError, match=match):
            model(idx[:, 8:9], torch.tensor([8]), input_pos_maxp1=9)


def test_speculative_decoding_with_an_mka_target_model():
    """litgpt's speculative decoding rolls the target back by up to speculative_k positions: the tokens equal
    greedy decoding of the target alone (greedy drafts are accepted iff they are the target's argmax)."""
    from litgpt.generate.base import generate as greedy_generate
    from litgpt.generate.speculative_decoding import generate as speculative_generate

    target = make_model("keys_values", seed=0, memorized_key_attention={"routing": "keys_values", "sum_window": 4})
    draft = make_model("keys", seed=1)
    prompt = tokens(batch=1, seq=5)[0]
    with torch.no_grad():
        target.set_kv_cache(batch_size=1)
        expected = greedy_generate(target, prompt, max_returned_tokens=20, temperature=0.0)
        target.set_kv_cache(batch_size=1)
        draft.set_kv_cache(batch_size=1)
        speculative, acceptance_rate = speculative_generate(
            draft, target, prompt, max_returned_tokens=20, speculative_k=3, temperature=0.0
        )
    assert acceptance_rate < 1  # drafts were rejected: the target's cache was rolled back
    assert len(speculative) >= len(expected) - 1  # litgpt's speculative loop may stop one token earlier
    assert speculative.tolist() == expected[: len(speculative)].tolist()


# -------------------------------------------------------------------------- training path, FlashAttention
def count_ops(model: GPT, idx: torch.Tensor, name: str) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(idx)
    return sum(1 for event in prof.events() if event.name == name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("routing", ROUTINGS)
def test_flash_attention_dispatched_in_training_forward(routing, layout):
    """One SDPA call per layer for keys/keys_values (two for outputs), all on the CPU flash kernel."""
    model = make_model(routing, LAYOUTS[layout])
    calls_per_layer = 2 if routing == "outputs" else 1
    expected = calls_per_layer * model.config.n_layer
    assert count_ops(model, tokens(), "aten::_scaled_dot_product_flash_attention_for_cpu") == expected
    assert count_ops(model, tokens(), "aten::scaled_dot_product_attention") == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("routing", ("keys", "keys_values"))
def test_fused_attention_dispatched_on_cuda(routing):
    """A fused kernel per layer (which one is PyTorch's choice on that GPU, printed), never the math fallback."""
    model = make_model(routing, 2).to(device="cuda", dtype=torch.bfloat16)
    kernels = attention_kernels_run(model, tokens().cuda())
    print(f"{routing}: {kernels}")
    assert len(kernels) == model.config.n_layer and "math" not in kernels


@pytest.mark.parametrize("routing", ROUTINGS)
def test_training_forward_compiles_without_graph_breaks(routing):
    model = make_model(routing, 2)
    idx = tokens()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(idx), model(idx))


@pytest.mark.parametrize("routing", ROUTINGS)
def test_meta_device_forward(routing):
    """litgpt pretrain measures FLOPs on a meta-device GPT."""
    with torch.device("meta"):
        model = GPT(make_config(routing, 2))
        logits = model(torch.randint(0, 1, (2, 7)))
    assert logits.shape == (2, 7, 128) and logits.is_meta


# ------------------------------------------------------------------------------------------ validation
def test_defaults_are_written_into_the_config():
    config = make_config(memorized_key_attention={})
    defaults = {"routing": "keys", "router_hidden": 8, "sum_window": 16}  # router_hidden = n_embd 64 // 8
    assert config.memorized_key_attention == defaults
    assert make_config(memorized_key_attention=None).memorized_key_attention == defaults
    config = make_config(memorized_key_attention={"router_hidden": 5, "routing": "outputs", "sum_window": 3})
    assert config.memorized_key_attention == {"routing": "outputs", "router_hidden": 5, "sum_window": 3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"memorized_key_attention": {"routing": "keys", "gate": 1}},
            r"memorized_key_attention has unknown key\(s\) \['gate'\]; allowed keys are \['routing', 'router_hidden', 'sum_window'\]",
        ),
        (
            {"memorized_key_attention": {"routing": "values"}},
            r"memorized_key_attention.routing='values' must be one of \['keys', 'keys_values', 'outputs'\]",
        ),
        (
            {"memorized_key_attention": {"router_hidden": 0}},
            r"memorized_key_attention.router_hidden=0 must be a positive integer",
        ),
        (
            {"memorized_key_attention": {"router_hidden": True}},
            r"memorized_key_attention.router_hidden=True must be a positive integer",
        ),
        (
            {"memorized_key_attention": {"router_hidden": "16"}},
            r"memorized_key_attention.router_hidden='16' must be a positive integer",
        ),
        (
            {"memorized_key_attention": {"sum_window": 0}},
            r"memorized_key_attention.sum_window=0 must be a positive integer",
        ),
        ({"norm_qk": True}, r"norm_qk=True is not supported with attention_class_name='MemorizedKeyAttention'"),
        (
            {"sliding_window_size": 4},
            r"sliding_window_size=4 is not supported with attention_class_name='MemorizedKeyAttention'",
        ),
    ],
)
def test_invalid_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


# ------------------------------------------------------------------------------ init and inspection
def test_router_starts_uniform_under_pretrain_init():
    """litgpt pretrain: empty_init, then its initialize_weights, as the plugin extends it (every nn.Linear re-initialised)."""
    import lightning as L
    from litgpt.pretrain import initialize_weights

    fabric = L.Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    with fabric.init_module(empty_init=True):
        model = GPT(make_config("keys"))
    initialize_weights(fabric, model, n_layer=model.config.n_layer, n_embd=model.config.n_embd)
    for block in model.transformer.h:
        assert issubclass(type(block.attn), CausalSelfAttention)
        torch.testing.assert_close(block.attn.router.out_weight, torch.zeros(3, 8))
        torch.testing.assert_close(block.attn.router.out_bias, torch.zeros(3))
        assert 0.5 < block.attn.memory.std() < 1.5  # p ~ N(0, 1), 64 draws
        assert 0.05 < block.attn.router.fc.weight.std() < 0.15  # GPT-NeoX sqrt(2 / (5 * 64)) = 0.079
    torch.testing.assert_close(routing_weights(model, tokens()), torch.full((2, 3), 1 / 3))


def test_routing_weights_are_the_mean_router_output_per_layer():
    model = make_model("keys_values")
    idx = tokens()
    layer_inputs = []
    blocks = model.transformer.h
    hooks = [block.norm_1.register_forward_hook(lambda _m, _i, out: layer_inputs.append(out)) for block in blocks]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    expected = []
    for block, x in zip(model.transformer.h, layer_inputs):
        router = block.attn.router
        hidden = F.gelu(torch.einsum("btc,hc->bth", x, router.fc.weight) + router.fc.bias)  # (B, T, H)
        lam = torch.softmax(torch.einsum("bth,ph->btp", hidden, router.out_weight) + router.out_bias, dim=-1)
        expected.append(lam.mean(dim=(0, 1)))  # (B, T, P) -> (P,)
    weights = routing_weights(model, idx)
    torch.testing.assert_close(weights, torch.stack(expected))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))


def test_routing_weights_reject_other_attention():
    model = GPT(tiny_config("mha"))
    with pytest.raises(ValueError, match=r"block 0 uses CausalSelfAttention; routing_weights needs"):
        routing_weights(model, tokens())


def test_cache_class_is_built_by_set_kv_cache():
    model = make_model("outputs")
    model.set_kv_cache(batch_size=2, max_seq_length=16)
    cache = model.transformer.h[1].attn.kv_cache
    assert isinstance(cache, MemorizedKeyCache)
    assert cache.k.shape == cache.v.shape == cache.k_session.shape == (2, 4, 16, 16)
    assert cache.sums.shape == (2, 16, 128)


def test_long_term_memory_is_computed_once_per_weight_change(monkeypatch):
    """Decoding projects p once per weight version (not per step); a load, an in-place edit and an optimizer step
    each refresh it: decoding then gives the logits of a fresh model holding the same weights (an independent
    reference: a stale (k(p), v(p)) would agree with the model's own full forward, which reads the same cache)."""
    model, other = make_model("keys", seed=0), make_model("keys", seed=1)
    calls = []
    for block in model.transformer.h:
        original = block.attn._project_memory
        monkeypatch.setattr(block.attn, "_project_memory", lambda _o=original: calls.append(1) or _o())
    idx = tokens()

    def decodes_as_a_fresh_model_with_its_weights() -> torch.Tensor:
        fresh = make_model("keys", seed=2)
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            expected = fresh(idx)
        decoded = decode_token_by_token(model, idx, prompt=3)
        torch.testing.assert_close(decoded, expected)
        return decoded

    assert_cached_decode_matches_full_forward(model, idx, prompt=3)
    assert len(calls) == 2  # one per layer, for the full forward and every decode step together
    before = decode_token_by_token(model, idx, prompt=3)
    assert len(calls) == 2  # decoding again: the same weights, nothing recomputed
    model.load_state_dict(other.state_dict())
    loaded = decodes_as_a_fresh_model_with_its_weights()
    assert len(calls) == 4 and (loaded - before).abs().max() > 0.1
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.qkv.weight.mul_(1.5)  # in place: a new version
    edited = decodes_as_a_fresh_model_with_its_weights()
    assert len(calls) == 6 and (edited - loaded).abs().max() > 0.1
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0)  # a large step, so that its change is well above tolerance
    model(idx).logsumexp(-1).mean().backward()  # grad enabled: computed afresh, not cached
    optimizer.step()  # in-place update: new version
    model.eval()
    stepped = decodes_as_a_fresh_model_with_its_weights()
    assert (stepped - edited).abs().max() > 1e-3


def test_an_edit_through_data_is_seen_after_clear_derived_weights():
    """``.data`` edits bump no version, so (k(p), v(p)) stays derived from the old weights until the module forgets
    it; after ``clear_derived_weights`` decoding gives the logits of a fresh model loaded with the edited weights."""
    model, fresh, idx = make_model("keys"), make_model("keys", seed=1), tokens()
    assert_cached_decode_matches_full_forward(model, idx, prompt=3)  # derives (k(p), v(p))
    for block in model.transformer.h:
        block.attn.qkv.weight.data.mul_(1.5)
        block.attn.clear_derived_weights()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = fresh(idx)
    torch.testing.assert_close(decode_token_by_token(model, idx, prompt=3), expected)
