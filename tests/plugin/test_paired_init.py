"""Paired initialisation (``LITGPT_MKA_PAIRED_INIT=1``, set by ``compare --paired``) in litgpt pretrain's
``initialize_weights``: for a seed, the parameters two variants share by name and shape start equal, their own
parameters from streams of their own; the distributions are litgpt's GPT-NeoX init; FSDP's meta-device
materialisation draws the same values; unset, litgpt's init is unchanged."""

import pytest
import torch
from lightning.fabric.strategies import FSDPStrategy, SingleDeviceStrategy
from litgpt.model import GPT
from litgpt.pretrain import initialize_weights

from litgpt_mka.plugin.litgpt_internals import pretrain as pretrain_internals
from litgpt_mka.plugin.litgpt_internals.pretrain import PAIRED_INIT_ENV_VAR, stream_seed
from tests.builders import variant_config
from tests.plugin.test_initialization import WIDE, assert_std, fabric_with, materialize_like_fsdp


def initialised(variant: str, seed: int, strategy: type = SingleDeviceStrategy, meta: bool = False,
                **overrides) -> dict[str, torch.Tensor]:
    """`variant`'s parameters after litgpt pretrain's init at `seed` (under FSDP: materialised from the meta device)."""
    config = variant_config(variant, **{**WIDE, **overrides})
    torch.manual_seed(seed)  # what litgpt pretrain's fabric.seed_everything(seed) does first
    with torch.device("meta" if meta else "cpu"):
        model = GPT(config)
    initialize_weights(fabric_with(strategy), model, n_layer=config.n_layer, n_embd=config.n_embd)
    if meta:
        materialize_like_fsdp(model)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.fixture
def paired(monkeypatch):
    monkeypatch.setenv(PAIRED_INIT_ENV_VAR, "1")


def random_draws(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters that are random draws (not constants such as norms, biases, MKA's zero router output)."""
    return {name: p for name, p in params.items() if p.min() != p.max()}


@pytest.mark.parametrize("variant", ["mla", "mka", "gqa"])
def test_shared_parameters_start_equal_and_the_variants_own_do_not(paired, variant):
    mha, other = initialised("mha", seed=7), initialised(variant, seed=7)
    shared = [name for name in mha.keys() & other.keys() if mha[name].shape == other[name].shape]
    assert {"lm_head.weight", "transformer.wte.weight", "transformer.h.2.mlp.fc.weight",
            "transformer.h.2.mlp.proj.weight"} <= set(shared)
    for name in shared:
        torch.testing.assert_close(other[name], mha[name], rtol=0, atol=0, msg=name)
    resized = [name for name in random_draws(mha).keys() & other.keys() if name not in shared]  # GQA's narrower qkv
    own = [name for name in other if name not in mha]  # e.g. MLA's latent projections, MKA's router and memory
    assert resized or own
    for name in resized:  # same name, another shape: another stream, not a prefix of the same draws
        n = min(mha[name].numel(), other[name].numel())
        assert not torch.equal(mha[name].flatten()[:n], other[name].flatten()[:n]), name
    draws = random_draws(other)
    firsts = {name: tuple(p.flatten()[:4].tolist()) for name, p in draws.items()}
    assert len(set(firsts.values())) == len(firsts), "two modules drew from the same stream"


def test_unpaired_the_same_seed_gives_shared_parameters_other_values():
    """What pairing fixes: litgpt's one stream, consumed in module order, shifts every draw after the attention."""
    mha, mla = initialised("mha", seed=7), initialised("mla", seed=7)
    assert not torch.equal(mha["transformer.h.2.mlp.fc.weight"], mla["transformer.h.2.mlp.fc.weight"])


def test_paired_draws_depend_on_the_seed_only(paired):
    first, again = initialised("mla", seed=7), initialised("mla", seed=7)
    other_seed = initialised("mla", seed=8)
    for name in first:
        torch.testing.assert_close(again[name], first[name], rtol=0, atol=0, msg=name)
    for name in random_draws(first):
        assert not torch.equal(other_seed[name], first[name]), name
    wte = [("weight", torch.Size([8, 2]))]
    assert stream_seed(7, "transformer.wte", wte) != stream_seed(8, "transformer.wte", wte)
    assert stream_seed(7, "transformer.wte", wte) != stream_seed(7, "transformer.wte", [("weight", torch.Size([8, 3]))])


@pytest.mark.parametrize("variant", ["mha", "mla", "mka", "fmka"])
def test_paired_init_keeps_litgpts_distributions(paired, monkeypatch, variant):
    """Every parameter: a constant stays the same constant; a random draw has litgpt's std and mean (6 SE)."""
    draws = initialised(variant, seed=3)
    monkeypatch.delenv(PAIRED_INIT_ENV_VAR)
    litgpt = initialised(variant, seed=3)
    assert draws.keys() == litgpt.keys()
    for name, expected in litgpt.items():
        if expected.min() == expected.max():
            torch.testing.assert_close(draws[name], expected, rtol=0, atol=0, msg=name)
            continue
        assert_std(draws[name], expected.std().item())
        assert abs(draws[name].mean() - expected.mean()) < 6 * expected.std() / draws[name].numel() ** 0.5, name


@pytest.mark.parametrize("variant", ["mha", "mla", "mka"])
def test_fsdp_materialisation_from_the_meta_device_draws_the_same_values(paired, variant):
    eager = initialised(variant, seed=5)
    meta = initialised(variant, seed=5, strategy=FSDPStrategy, meta=True)
    assert meta.keys() == eager.keys()
    for name, tensor in meta.items():
        torch.testing.assert_close(tensor, eager[name], rtol=0, atol=0, msg=name)


def test_litgpts_functions_are_restored_and_the_global_stream_is_left_alone(paired):
    import litgpt.pretrain
    import litgpt.utils

    torch.manual_seed(11)
    model = GPT(variant_config("mha", **WIDE))
    after_build = torch.get_rng_state()
    initialize_weights(fabric_with(SingleDeviceStrategy), model, n_layer=3, n_embd=128)
    assert litgpt.pretrain.reset_parameters is litgpt.utils.reset_parameters
    assert torch.equal(torch.get_rng_state(), after_build)  # every module drew from its own stream

