"""litgpt_mka.measure.training_memory: each piece of the memory formula against an independent computation."""

import pytest
import torch

from litgpt.config import Config
from litgpt.model import GPT
from litgpt.utils import chunked_cross_entropy
from litgpt_mka.measure.training_memory import (
    ADAMW_STATE_BYTES,
    BLOCK_ACTIVATION_WIDTHS,
    block_activation_width,
    parameter_counts,
    training_bytes_per_gpu,
)
from tests.conftest import PROJECT_ROOT
from tests.helpers import load_script, preset_config

# Pythia's published parameter counts (Biderman et al. 2023, arXiv:2304.01373, Table 1, "Total Params")
PYTHIA_PARAMETERS = {
    "70m": 70_426_624,
    "160m": 162_322_944,
    "410m": 405_334_016,
    "1b": 1_011_781_632,
    "1.4b": 1_414_647_808,
}
VARIANTS = ("mha", "gqa", "mqa", "mla", "mka", "fmka")


@pytest.mark.parametrize("size", PYTHIA_PARAMETERS)
def test_mha_presets_have_pythias_published_parameter_counts(size):
    counts = parameter_counts(preset_config(f"pythia-{size}-mha"))
    assert counts.total == PYTHIA_PARAMETERS[size]
    assert counts.total == parameter_counts(Config.from_name(f"pythia-{size}")).total  # litgpt's own preset


@pytest.mark.parametrize("size", ("410m", "1b", "1.4b"))
def test_parameter_split_is_the_gpt_neox_formula(size):
    """Root (embedding, final norm, head) and block counts against Pythia's closed form, on the MHA presets."""
    config = preset_config(f"pythia-{size}-mha")
    C, V, I = config.n_embd, config.padded_vocab_size, config.intermediate_size
    counts = parameter_counts(config)
    assert counts.root == 2 * V * C + 2 * C
    assert counts.per_block == (4 * C * C + 4 * C) + (2 * C * I + I + C) + 4 * C  # attention, MLP, 2 LayerNorms
    assert counts.total == counts.root + config.n_layer * counts.per_block
    assert counts.matmul == config.n_layer * (4 * C * C + 2 * C * I) + V * C


def saved_tensors(model: GPT, batch_size: int, seq_length: int) -> dict[int, torch.Tensor]:
    """The tensors (other than parameters) autograd saves for a training step's backward under bf16 autocast,
    litgpt's forward and chunked cross-entropy as litgpt pretrain runs them, one per storage."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved[tensor.untyped_storage().data_ptr()] = tensor
        return tensor

    idx = torch.randint(0, model.config.vocab_size, (batch_size, seq_length + 1), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_cross_entropy(model(idx[:, :-1]), idx[:, 1:])
    return saved


def saved_bytes(model: GPT, batch_size: int, seq_length: int) -> int:
    return sum(t.untyped_storage().nbytes() for t in saved_tensors(model, batch_size, seq_length).values())


def per_token_saved_bytes(config: Config, seq_length: int = 16) -> int:
    """Saved bytes per token: the difference between batch sizes 2 and 1 (the weights' copies cancel)."""
    model = GPT(config)
    return (saved_bytes(model, 2, seq_length) - saved_bytes(model, 1, seq_length)) / seq_length


@pytest.mark.parametrize("size", ("14m", pytest.param("160m", marks=pytest.mark.slow)))
@pytest.mark.parametrize("variant", VARIANTS)
def test_block_activation_widths_are_autograds_saved_tensors(variant, size):
    """a_block C bytes per token and layer: the step from one layer to two, at two widths (14m's 128, 160m's 768)."""
    small_vocab = dict(vocab_size=1000, padded_vocab_size=1024)
    one, two = (per_token_saved_bytes(preset_config(f"pythia-{size}-{variant}", n_layer=n, **small_vocab)) for n in (1, 2))
    config = preset_config(f"pythia-{size}-{variant}", **small_vocab)
    assert two - one == pytest.approx(block_activation_width(config) * config.n_embd, rel=0.01)
    # the head: the final LayerNorm's fp32 input and the head's bf16 input (6 C), the fp32 log-probabilities (4 V)
    head = one - block_activation_width(config) * config.n_embd
    assert head == pytest.approx(6 * config.n_embd + 4 * config.padded_vocab_size, rel=0.02)


def test_single_device_fixed_bytes_are_states_and_autocast_weight_copies():
    """16 P: the fp32 weights, gradients and AdamW moments of a real step; 2 P_mm: the weights' bf16 copies it saves."""
    config = preset_config("pythia-14m-mha", n_layer=2, vocab_size=1000, padded_vocab_size=1024)
    torch.manual_seed(0)
    model = GPT(config)
    counts = parameter_counts(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 1000, (1, 9))
    chunked_cross_entropy(model(idx[:, :-1]), idx[:, 1:]).backward()
    optimizer.step()
    state_bytes = sum(t.nbytes for state in optimizer.state.values() for t in state.values() if t.dim() > 0)
    assert state_bytes == ADAMW_STATE_BYTES * counts.total
    assert sum(p.nbytes + p.grad.nbytes for p in model.parameters()) == 8 * counts.total
    # the bf16 copies autocast makes of every matmul weight (one saved tensor per nn.Linear, the weight's shape)
    weight_shapes = sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    saved = saved_tensors(model, 1, 8).values()
    copies = [t.mT for t in saved if t.dtype == torch.bfloat16 and t.dim() == 2]  # saved as W^T: (in, out)
    copies = [t for t in copies if tuple(t.shape) in weight_shapes and t.is_contiguous()]
    assert sorted(tuple(t.shape) for t in copies) == weight_shapes
    assert sum(t.nbytes for t in copies) == 2 * counts.matmul


def test_sharding_divides_the_states_and_adds_the_gathered_units():
    config = preset_config("pythia-410m-mha")
    counts = parameter_counts(config)
    one, eight = (training_bytes_per_gpu(config, 8, 512, n) for n in (1, 8))
    assert one - eight == pytest.approx(16 * counts.total * 7 / 8 + 2 * counts.matmul - 4 * (counts.root + 2 * counts.per_block))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention_class_name="LitgptMultiheadLatentAttention"), r"attention_class_name='LitgptMultiheadLatentAttention' with n_query_groups=12 has no activation count"),
        (dict(memorized_key_attention={"routing": "outputs"}), r"attention_class_name='MemorizedKeyAttention' with n_query_groups=12 has no activation count"),
    ],
)
def test_uncounted_variants_raise_value_errors(overrides, message):
    base = "pythia-160m-mla" if "attention_class_name" in overrides else "pythia-160m-mka"
    with pytest.raises(ValueError, match=message):
        block_activation_width(preset_config(base, **overrides))


def test_devices_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=r"devices=0 must be a positive integer"):
        training_bytes_per_gpu(preset_config("pythia-14m-mha"), 1, 8, 0)


def test_every_counted_family_is_a_registered_attention_class():
    from litgpt_mka.attention import registry

    classes = {family.split("/")[0] for family, _ in BLOCK_ACTIVATION_WIDTHS}
    assert classes <= set(registry.VARIANTS)


def test_docs_table_is_the_generators_output(capsys):
    """docs/pythia-scale/costs.md holds what its stated command prints (checked for the 410m presets, to stay cheap)."""
    script = load_script(PROJECT_ROOT / "benchmarks" / "preset_costs.py", "preset_costs")
    script.main([str(PROJECT_ROOT / f"config_hub/pretrain/pythia-410m-{variant}.yaml") for variant in VARIANTS])
    assert capsys.readouterr().out.strip() in (PROJECT_ROOT / "docs" / "pythia-scale" / "costs.md").read_text()
