"""No decode path of this package reads a tensor back to the host, on a device where that would synchronise.

On an accelerator a read of a tensor's values (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``,
``nonzero``) makes the host wait for every queued kernel, each decode step and each layer. The package decides
such reads by :func:`~litgpt_mka.attention.kv_cache.host_reads_are_free` (free on the CPU, where validation
reads stay). Here that function is replaced to take an accelerator's decisions on the CPU, litgpt's own
generation loops run, and a ``TorchFunctionMode`` records every read whose caller is a file of the package.
"""

import inspect
from pathlib import Path

import pytest
import torch
from litgpt.generate.base import batched_generate_fn, generate_fn
from torch.overrides import TorchFunctionMode

import litgpt_mka
from litgpt_mka.attention import kv_cache, mka
from tests.helpers import TINY_VARIANTS, random_gpt, tiny_config, tokens

PACKAGE = Path(litgpt_mka.__file__).parent
TORCH = Path(torch.__file__).parent
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"}
VARIANTS = {
    **{name: tiny_config(name) for name in TINY_VARIANTS},
    "mka-outputs": tiny_config("mka", memorized_key_attention={"routing": "outputs"}),
    **{f"{name}-int8": tiny_config(name, kv_cache_quantization="int8") for name in ("gqa", "mla", "mka", "fmka")},
    "mha-int4": tiny_config("gqa", n_query_groups=4, kv_cache_quantization="int4"),
}


class PackageReads(TorchFunctionMode):
    """Records (function, file:line) of every host read called from a file of the package."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            frame = inspect.currentframe().f_back
            while frame is not None and Path(frame.f_code.co_filename).is_relative_to(TORCH):
                frame = frame.f_back  # torch's own Python wrappers between the read and its caller
            if frame is not None and Path(frame.f_code.co_filename).is_relative_to(PACKAGE):
                self.reads.append((name, f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def accelerator_decisions(monkeypatch):
    """The package decides as on an accelerator: reading a tensor's values is never free."""
    for module in (kv_cache, mka):
        monkeypatch.setattr(module, "host_reads_are_free", lambda t: False)


def generated(model, batched: bool) -> tuple[torch.Tensor, list]:
    """Greedy tokens of litgpt's generate_fn (input_pos_maxp1 given) or batched_generate_fn (none), and the reads."""
    prompts = tokens(2, 5)
    model.max_seq_length = 16
    model.set_kv_cache(batch_size=2 if batched else 1)
    with PackageReads() as mode:
        if batched:
            steps = batched_generate_fn(model, prompts, 12, sample_args={"top_k": 1}, include_prompt=False,
                                        include_eos=True)
            out = torch.stack([torch.cat(step) for step in steps])  # (new tokens, B)
        else:
            out = torch.cat(list(generate_fn(model, prompts[0], 12, top_k=1, include_prompt=False, include_eos=True)))
    return out, mode.reads


@pytest.mark.parametrize("batched", [False, True], ids=["generate_fn", "batched_generate_fn"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_litgpt_generation_reads_nothing_back(variant, batched, accelerator_decisions):
    model = random_gpt(VARIANTS[variant])
    tokens_out, reads = generated(model, batched)
    assert reads == [], f"{variant} read tensors back to the host: {reads}"
    assert tokens_out.numel() == (2 * 7 if batched else 7)  # 12 returned tokens after a prompt of 5


@pytest.mark.parametrize("variant", ["mka", "gqa-int8"])
def test_the_recorder_sees_the_cpus_validation_reads(variant):
    """Without an input_pos_maxp1 the CPU validates positions by reading them: the recorder must see it, or the
    test above could not fail. The tokens are the same either way."""
    model = random_gpt(VARIANTS[variant])
    tokens_out, reads = generated(model, batched=True)
    assert any(file.startswith("kv_cache.py") for _, file in reads), reads
    with pytest.MonkeyPatch.context() as patch:
        for module in (kv_cache, mka):
            patch.setattr(module, "host_reads_are_free", lambda t: False)
        torch.testing.assert_close(generated(model, batched=True)[0], tokens_out, rtol=0, atol=0)


def rewind_beyond_the_ring(model, input_pos_maxp1: bool) -> torch.Tensor:
    """Decodes positions 0..9 with sum_window 4, then writes position 5 again (its previous sum is gone)."""
    model.set_kv_cache(batch_size=1, max_seq_length=16)
    idx = tokens(1, 10)
    with torch.no_grad():
        for t in range(10):
            model(idx[:, t : t + 1], torch.tensor([t]), input_pos_maxp1=t + 1 if input_pos_maxp1 else None)
        return model(idx[:, 5:6], torch.tensor([5]), input_pos_maxp1=6 if input_pos_maxp1 else None)


def test_mka_window_overrun_is_a_value_error_without_a_read(accelerator_decisions):
    """With input_pos_maxp1 the host knows the positions: the ring's limit is checked on integers."""
    model = random_gpt(tiny_config("mka", memorized_key_attention={"routing": "keys", "sum_window": 4}))
    match = r"batch row 0 writes position 5, but the running sum of position 4 is no longer cached.*sum_window=4"
    with PackageReads() as mode, pytest.raises(ValueError, match=match):
        rewind_beyond_the_ring(model, input_pos_maxp1=True)
    assert mode.reads == []


def test_mka_window_overrun_unknown_to_the_host_poisons_instead_of_asserting(accelerator_decisions):
    """Without input_pos_maxp1 an accelerator cannot check without a synchronisation: the chunk's outputs become
    NaN (a device assert would end the process's CUDA context); the CPU raises (above)."""
    model = random_gpt(tiny_config("mka", memorized_key_attention={"routing": "keys", "sum_window": 4}))
    with PackageReads() as mode:
        logits = rewind_beyond_the_ring(model, input_pos_maxp1=False)
    assert mode.reads == []
    assert logits.isnan().all()
