"""litgpt pretrain's `initialize_weights` contract, and FSDP-style materialisation from the meta device.

FSDP with ``empty_init`` builds the model on the meta device, then, module by module, allocates its own
tensors (``to_empty(recurse=False)``) and calls ``reset_parameters()`` on every module that holds tensors
directly (torch's ``_materialize_meta_module``). :func:`materialize_like_fsdp` does exactly that, after
filling the fresh memory with NaN so that a tensor nobody initialises is found.
"""

import math
from unittest.mock import Mock

import pytest
import torch
import torch.nn as nn
from lightning.fabric.strategies import FSDPStrategy, SingleDeviceStrategy
from litgpt import lora
from litgpt.model import GPT
from litgpt.pretrain import initialize_weights

from tests.builders import LORA_ALL, VARIANTS, tiny_config_as, variant_config

WIDE = dict(n_embd=128, n_layer=3)  # enough numbers per tensor for the statistics below


def fabric_with(strategy: type) -> Mock:
    fabric = Mock()
    fabric.strategy = Mock(spec=strategy)
    return fabric


def test_accepts_any_module_tree_like_litgpts():
    """litgpt's own test double (tests/test_pretrain.py::test_initialize_weights): no `transformer` at all."""
    for strategy, expected_calls in ((SingleDeviceStrategy, 1), (FSDPStrategy, 0)):
        parent = nn.Module()
        parent.child = nn.Module()
        parent.reset_parameters, parent.child.reset_parameters = Mock(), Mock()
        initialize_weights(fabric_with(strategy), parent, n_layer=2, n_embd=8)
        assert parent.reset_parameters.call_count == expected_calls
        assert parent.child.reset_parameters.call_count == expected_calls


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variants_output_projection_is_scaled(variant):
    config = variant_config(variant, **WIDE)
    torch.manual_seed(0)
    model = GPT(config)
    initialize_weights(fabric_with(SingleDeviceStrategy), model, n_layer=config.n_layer, n_embd=config.n_embd)
    proj_std = 1 / math.sqrt(config.n_embd) / config.n_layer
    other_std = math.sqrt(2.0 / 5 / config.n_embd)
    for block in model.transformer.h:
        assert_std(block.attn.proj.weight, proj_std)
        assert_std(block.mlp.proj.weight, other_std)  # GptNeoxMLP: litgpt scales LLaMAMLP's only
        assert_std(block.mlp.fc.weight, other_std)


def assert_std(tensor: torch.Tensor, expected: float, sigmas: float = 6.0) -> None:
    """The sample std of `tensor` is `expected` within `sigmas` standard errors (std error ~ 1 / sqrt(2n))."""
    n = tensor.numel()
    relative = abs(tensor.std().item() / expected - 1)
    assert relative < sigmas / math.sqrt(2 * n), f"std {tensor.std().item():.5f} vs {expected:.5f} (n={n})"


def materialize_like_fsdp(model: nn.Module) -> None:
    """torch FSDP's meta-device materialisation: per module, allocate own tensors, then `reset_parameters()`."""
    for module in model.modules():
        module.to_empty(device="cpu", recurse=False)
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        with torch.no_grad():
            for tensor in own:
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))  # what was never initialised stays visible
        if own and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()


def build(model_class: type, config, meta: bool, pretrain_init: bool) -> nn.Module:
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            model = model_class(config)
        if pretrain_init:  # under FSDP, litgpt pretrain only assigns the init functions
            initialize_weights(fabric_with(FSDPStrategy), model, n_layer=config.n_layer, n_embd=config.n_embd)
        materialize_like_fsdp(model)
    else:
        model = model_class(config)
        if pretrain_init:
            initialize_weights(fabric_with(SingleDeviceStrategy), model, n_layer=config.n_layer, n_embd=config.n_embd)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("model_class", "pretrain_init"),
    [(GPT, True), (GPT, False), (lora.GPT, False)],
    ids=["pretrain", "default-init", "lora"],
)
def test_meta_device_materialisation_matches_an_eager_build(variant, model_class, pretrain_init):
    if model_class is lora.GPT:
        config = tiny_config_as(lora.Config, variant, **WIDE, **LORA_ALL)
    else:
        config = variant_config(variant, **WIDE)
    eager = build(model_class, config, meta=False, pretrain_init=pretrain_init)
    meta = build(model_class, config, meta=True, pretrain_init=pretrain_init)
    eager_tensors = {**dict(eager.named_parameters()), **dict(eager.named_buffers())}
    meta_tensors = {**dict(meta.named_parameters()), **dict(meta.named_buffers())}
    assert meta_tensors.keys() == eager_tensors.keys()
    for name, tensor in meta_tensors.items():
        expected = eager_tensors[name]
        assert tensor.device.type == "cpu", name
        if not tensor.is_floating_point():
            torch.testing.assert_close(tensor, expected, rtol=0, atol=0, msg=name)
            continue
        assert torch.isfinite(tensor).all(), f"{name} was never initialised after materialisation"
        if expected.min() == expected.max() or name.endswith(("cos", "sin")):  # constants and the RoPE cache
            torch.testing.assert_close(tensor, expected, msg=name)
        else:  # random draws: same distribution (std and mean), not the same numbers
            assert_std(tensor, expected.std().item())
            n = tensor.numel()
            assert abs(tensor.mean() - expected.mean()) < 6 * expected.std() / math.sqrt(n), name
