"""Every variant under torch's FSDP2 (``fully_shard`` per Block, as litgpt's FSDP auto-wrap policy) on 2 CPU
processes over gloo, initialised from the meta device by litgpt pretrain's ``initialize_weights``, against the
unsharded model built from the gathered initial weights: forward, gradients, one AdamW step, and cached
decoding through the sharded model before and after that step (`fsdp2_worker.py` says how).

Tolerances (float32): 1e-5 relative and absolute for logits and gradients (the sharded model computes the same
sums; its gradients are averaged by a reduce-scatter instead of one backward over the whole batch). The step is
checked on the gradients of the sharded run, within 1e-6: AdamW's first update, lr g / (|g| + eps), turns the
rounding of a gradient near eps = 1e-8 into a far larger difference of the update (measured: 3e-5 at lr 1e-2, on
one element each of MKA's and FMKA's weights), which says nothing about sharding.
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from litgpt.model import GPT

from tests.attention import fsdp2_worker as worker
from tests.conftest import PROJECT_ROOT
from tests.helpers import TINY_VARIANTS, decode_token_by_token, run_worker, tiny_config, tokens

VARIANTS = list(TINY_VARIANTS)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
STEP_TOLERANCE = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    run_worker(PROJECT_ROOT / "tests" / "attention" / "fsdp2_worker.py", out, *VARIANTS)
    return out


def unsharded_gpt(variant: str, weights: dict[str, torch.Tensor]) -> GPT:
    model = GPT(tiny_config(variant))
    model.load_state_dict(weights)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_model_matches_the_unsharded_one(variant, sharded_results):
    sharded = torch.load(sharded_results / f"{variant}.pt")
    for name, tensor in sharded["initial"].items():
        assert torch.isfinite(tensor).all(), f"{name} was not initialised by initialize_weights"
    model = unsharded_gpt(variant, sharded["initial"])
    batch = tokens(worker.GLOBAL_BATCH, worker.SEQUENCE + 1, seed=5)  # (B, T + 1)
    logits = model(batch[:, :-1])  # (B, T, V)
    F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
    for rank, rank_logits in enumerate(sharded["logits"]):
        torch.testing.assert_close(rank_logits, logits[rank :: worker.WORLD_SIZE].detach(), **TOLERANCE)
    gradients = {name: p.grad for name, p in model.named_parameters()}
    torch.testing.assert_close(sharded["gradients"], gradients, **TOLERANCE)

    idx = tokens(worker.DECODE_BATCH, worker.DECODE_LENGTH, seed=6)
    model.eval()
    torch.testing.assert_close(sharded["decoded_before_step"], decode_token_by_token(model, idx, worker.PROMPT), **TOLERANCE)
    model.train()
    for name, parameter in model.named_parameters():
        parameter.grad = sharded["gradients"][name]  # AdamW's m / sqrt(v) would amplify the rounding of tiny ones
    torch.optim.AdamW(model.parameters(), lr=worker.LEARNING_RATE).step()
    torch.testing.assert_close(sharded["stepped"], model.state_dict(), **STEP_TOLERANCE)
    model.eval()
    decoded_after_step = decode_token_by_token(model, idx, worker.PROMPT)
    assert not torch.allclose(decoded_after_step, sharded["decoded_before_step"], **TOLERANCE)  # the step counts
    torch.testing.assert_close(sharded["decoded_after_step"], decoded_after_step, **TOLERANCE)


def regather_like_fsdp(model: GPT, seed: int) -> None:
    """FSDP's copy of freshly gathered values into the same storage, keeping the version counter
    (``foreach_all_gather_copy_out``): a new value under the old data pointer and version."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            with torch.autograd._unsafe_preserve_version_counter(parameter):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def decode_after_a_regather(variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached decoding after weights were re-gathered in place, and the full forward of a fresh model holding
    those weights."""
    model = GPT(tiny_config(variant)).eval()
    idx = tokens(worker.DECODE_BATCH, worker.DECODE_LENGTH, seed=6)
    decode_token_by_token(model, idx, worker.PROMPT)  # the derived weights are cached now
    regather_like_fsdp(model, seed=7)
    fresh = unsharded_gpt(variant, model.state_dict()).eval()
    with torch.no_grad():
        return decode_token_by_token(model, idx, worker.PROMPT), fresh(idx)


@pytest.mark.parametrize("variant", ["mla", "mka", "fmka"])
def test_derived_weights_follow_a_regather_in_a_distributed_process(variant):
    """In a process group, MLA's absorbed weights and MKA's long-term memory are derived at every call; outside
    one, the same in-place edit goes unnoticed (like a ``.data`` edit), which shows the edit keeps what the cache
    compares."""
    torch.manual_seed(0)
    decoded, full = decode_after_a_regather(variant)
    assert not torch.allclose(decoded, full, **TOLERANCE)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        decoded, full = decode_after_a_regather(variant)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(decoded, full, **TOLERANCE)
