"""MHA -> GQA / MQA: mean-pooled key and value heads in litgpt's fused qkv layout."""

import pytest
import torch

from litgpt_mka.convert import convert_checkpoint
from litgpt_mka.convert.gqa import kv_head_groups, pool_qkv
from tests.convert.convert_helpers import load_converted, mha_checkpoint, qkv_heads
from tests.helpers import tiny_config, tokens

QUIET = dict(log=lambda message: None, calibration_tokens=64, calibration_seq_length=16)


def reference_pool(weight: torch.Tensor, n_head: int, head_size: int, groups: int) -> torch.Tensor:
    """Written from the paper with loops: group g's key (value) head is the mean of heads g m .. g m + m - 1."""
    m = n_head // groups
    q, k, v = weight.split(n_head * head_size)
    pooled = []
    for part in (k, v):
        heads = [part[h * head_size : (h + 1) * head_size] for h in range(n_head)]
        pooled += [sum(heads[g * m + j] for j in range(m)) / m for g in range(groups)]
    return torch.cat([q, *pooled])


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_pool_qkv_matches_the_reference(groups):
    torch.manual_seed(0)
    n_head, head_size, C = 4, 8, 16
    weight, bias = torch.randn(3 * n_head * head_size, C), torch.randn(3 * n_head * head_size)
    new_weight, new_bias, errors = pool_qkv(weight, bias, n_head, head_size, groups)
    torch.testing.assert_close(new_weight, reference_pool(weight, n_head, head_size, groups))
    torch.testing.assert_close(new_bias, reference_pool(bias[:, None], n_head, head_size, groups)[:, 0])
    assert new_weight.shape == ((n_head + 2 * groups) * head_size, C)
    if groups == n_head:
        assert errors == {"k_rel_error": 0.0, "v_rel_error": 0.0}
    else:
        assert 0.5 < errors["k_rel_error"] < 1 and 0.5 < errors["v_rel_error"] < 1  # independent random heads


def test_n_query_groups_equal_to_n_head_gives_the_source_model(tmp_path):
    config = tiny_config("mha")
    source, model = mha_checkpoint(tmp_path / "source", config)
    report = convert_checkpoint(source, "gqa", tmp_path / "out", n_query_groups=config.n_head, **QUIET)
    converted = load_converted(tmp_path / "out")
    torch.testing.assert_close(converted.state_dict(), model.state_dict(), rtol=0, atol=0)
    idx = tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(idx), model(idx), rtol=0, atol=0)
    assert report["calibration_loss"]["converted"] == report["calibration_loss"]["source"]


@pytest.mark.parametrize(("to", "groups"), [("gqa", 2), ("mqa", 1)])
def test_heads_equal_within_each_group_convert_exactly(tmp_path, to, groups):
    """When the key and value heads of each group already agree, pooling loses nothing: same logits.

    Pooling the wrong heads together (another order of the fused layout) would change the model."""
    config = tiny_config("mha")
    m = config.n_head // groups

    def tie_heads(model):
        for layer in range(config.n_layer):
            _, k, v, _, bk, bv = qkv_heads(model, layer)
            for t in (k, v, bk, bv):
                for h in range(config.n_head):
                    t[h] = t[(h // m) * m]  # every head copies the first of its group

    source, model = mha_checkpoint(tmp_path / "source", config, edit=tie_heads)
    report = convert_checkpoint(source, to, tmp_path / "out", n_query_groups=groups if to == "gqa" else None, **QUIET)
    converted = load_converted(tmp_path / "out")
    assert converted.config.n_query_groups == groups
    idx = tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(idx), model(idx), rtol=1e-5, atol=1e-5)
    assert all(layer["k_rel_error"] == 0 and layer["v_rel_error"] == 0 for layer in report["layers"])


def test_random_heads_convert_with_the_reported_error(tmp_path):
    config = tiny_config("mha")
    source, model = mha_checkpoint(tmp_path / "source", config)
    report = convert_checkpoint(source, "gqa", tmp_path / "out", n_query_groups=2, **QUIET)
    converted = load_converted(tmp_path / "out")
    for i, layer in enumerate(report["layers"]):
        source = model.transformer.h[i].attn.qkv.weight.detach()
        pooled = reference_pool(source, 4, 16, 2)
        torch.testing.assert_close(converted.transformer.h[i].attn.qkv.weight, pooled)
        # the reported error from the reference: ||W - repeat_interleave(pool(W), m)||_F / ||W||_F, m = 2 heads a group
        (_, k, v), (_, k_pooled, v_pooled) = source.split(4 * 16), pooled.split([4 * 16, 2 * 16, 2 * 16])
        expected = {name: float((w - part.reshape(2, 16, -1).repeat_interleave(2, dim=0).reshape(w.shape)).norm()
                                / w.norm()) for name, w, part in (("k_rel_error", k, k_pooled), ("v_rel_error", v, v_pooled))}
        assert layer == pytest.approx(expected, rel=1e-5)
    assert report["kv_cache_bytes_per_token_fp32"] == {"source": 2 * 2 * 4 * 16 * 4, "converted": 2 * 2 * 2 * 16 * 4}


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (3, r"n_query_groups=3 must divide n_head=4; allowed: \[1, 2, 4\]"),
        (0, r"n_query_groups=0 must be an integer in \[1, n_head=4\]"),
        (8, r"n_query_groups=8 must be an integer in \[1, n_head=4\]"),
    ],
)
def test_invalid_groups_are_refused(groups, message):
    with pytest.raises(ValueError, match=message):
        kv_head_groups(4, groups)


def test_gqa_needs_its_group_count_and_mqa_refuses_another(tmp_path):
    source, _ = mha_checkpoint(tmp_path / "source", tiny_config("mha"))
    with pytest.raises(ValueError, match=r"--to gqa needs --n_query_groups, a divisor of n_head=4"):
        convert_checkpoint(source, "gqa", tmp_path / "a", **QUIET)
    with pytest.raises(ValueError, match=r"n_query_groups=2 contradicts --to mqa"):
        convert_checkpoint(source, "mqa", tmp_path / "b", n_query_groups=2, **QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
