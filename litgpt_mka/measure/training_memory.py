"""What a model costs to train before it runs: parameters and training memory per GPU, from its config.

``benchmarks/preset_costs.py`` prints them with the KV-cache bytes per token for the presets
(docs/pythia-scale/costs.md holds its output for 410m, 1b and 1.4b).

Notation: ``P`` parameters, ``C`` = n_embd, ``V`` = padded vocabulary, ``n`` = n_layer, ``b`` = micro batch,
``s`` = train.max_seq_length, ``N`` GPUs. Parameters are counted on the meta device (no memory, no weights).

Training memory per GPU in bytes, litgpt pretrain with ``precision: bf16-mixed``:

* ``N = 1`` (litgpt runs a single device, autocast): ``16 P + 2 P_mm + A``. ``16 P``: fp32 weights (4),
  fp32 gradients (4) and AdamW's two fp32 moments (8). ``2 P_mm``: the bf16 copy of every matmul weight
  (``nn.Linear`` weights, the output head included) that autocast makes in the forward and autograd keeps
  for the backward.
* ``N > 1`` (litgpt's FSDP: ``HYBRID_SHARD`` within a node, i.e. fully sharded over the node's N GPUs,
  one unit per ``Block`` plus the root; Lightning's ``MixedPrecision(param_dtype=bf16)``):
  ``16 P / N + 4 (P_root + 2 P_block) + A``. The sharded fp32 states as above, plus the unit's gathered bf16
  weights and their unsharded bf16 gradients for the root (embedding, final norm, head: held through the
  whole step) and two blocks (the one computing and the one prefetched).
* Activations ``A = b s (n a_block C + 10 V + 6 C)``: ``a_block C`` bytes per token and layer that one block
  saves for the backward (:data:`BLOCK_ACTIVATION_WIDTHS`), and at the head the final LayerNorm's fp32
  input and the head's bf16 input (6 C), the fp32 log-probabilities the loss saves (4 V), the bf16 logits
  (2 V) and the fp32 gradient of the log-probabilities at the start of the backward (4 V).

Not counted: the CUDA context and the allocator's caching and fragmentation (typically 0.5-2 GiB), NCCL
buffers, the optimizer step's temporaries. litgpt pretrain checkpoints no activations and uses SDPA's flash
or memory-efficient kernel, so no ``s x s`` score matrix is stored.
"""

from dataclasses import dataclass
from typing import Any

import torch

from litgpt_mka.validation import positive_int

# Bytes per token and layer that one block saves for the backward under bf16 autocast, in multiples of n_embd,
# by attention family and key/value layout ("mha": one key/value head per query head, "grouped": fewer).
# Counted from autograd's saved tensors (tests/measure/test_training_memory.py checks them at two widths).
# MHA, 38 C: the fp32 block input read by both LayerNorms (4 C); the bf16 inputs of the QKV projection and of
# the MLP (2 C + 2 C); the QKV output (6 C, kept alive by the value view); the rotated q and k (4 C); the SDPA
# output and the output projection's input (2 C + 2 C); the MLP's fc output and GELU output (2 x 8 C).
BLOCK_ACTIVATION_WIDTHS = {
    ("CausalSelfAttention", "mha"): 38.0,
    ("CausalSelfAttention", "grouped"): 34.0,
    ("GroupedQueryAttention", "mha"): 38.0,  # grouped: grouped_query_width(r), below
    ("MultiheadLatentAttention", "mha"): 45.1,  # at the presets' dims: L = C / 4, Lq = C / 2, P + R = V = hs
    ("MemorizedKeyAttention/keys", "mha"): 42.6,
    ("MemorizedKeyAttention/keys", "grouped"): 40.1,
    ("MemorizedKeyAttention/keys_values", "mha"): 46.6,
}
ADAMW_STATE_BYTES = 8  # two fp32 moments per parameter
MIXED_PRECISION_STATE_BYTES = 4 + 4 + ADAMW_STATE_BYTES  # fp32 weights, fp32 gradients, AdamW moments
GIB = 2**30


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a GPT, counted on the meta device."""

    total: int
    per_block: int  # the largest block
    root: int  # outside the blocks: embedding, final norm, head (FSDP's root unit)
    matmul: int  # weights of nn.Linear layers (autocast casts them to bf16), the head included


def parameter_counts(config: Any) -> ParameterCounts:
    from litgpt.model import GPT

    with torch.device("meta"):
        model = GPT(config)
    total = sum(p.numel() for p in model.parameters())
    blocks = [sum(p.numel() for p in block.parameters()) for block in model.transformer.h]
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return ParameterCounts(total=total, per_block=max(blocks), root=total - sum(blocks), matmul=matmul)


def grouped_query_width(r: float) -> float:
    """``GroupedQueryAttention`` reads its key/value heads shared (SDPA's ``enable_gqa``, no repeated copies), so
    its QKV output (2 C (1 + 2r)) and rotated q and k (2 C (1 + r)) shrink with r = n_query_groups / n_head:
    32 C + 6 r C (38 C at r = 1, as MHA); counted at 14m and 160m for r = 1/12 to 1, within 0.8%."""
    return 32.0 + 6.0 * r


def block_activation_width(config: Any) -> float:
    """``a_block``: bytes per token and layer that a block saves for the backward, over n_embd.

    Raises:
        ValueError: the attention family and layout is not one of :data:`BLOCK_ACTIVATION_WIDTHS`.
    """
    family = config.attention_class_name
    if family == "GroupedQueryAttention":
        return grouped_query_width(config.n_query_groups / config.n_head)
    if family == "MemorizedKeyAttention":
        family += "/" + (config.memorized_key_attention or {}).get("routing", "keys")
    layout = "mha" if config.n_query_groups == config.n_head else "grouped"
    if (family, layout) not in BLOCK_ACTIVATION_WIDTHS:
        raise ValueError(
            f"attention_class_name={config.attention_class_name!r} with n_query_groups={config.n_query_groups}"
            f" has no activation count; counted: {sorted(BLOCK_ACTIVATION_WIDTHS)}"
        )
    return BLOCK_ACTIVATION_WIDTHS[(family, layout)]


def activation_bytes(config: Any, micro_batch_size: int, seq_length: int) -> float:
    """``A = b s (n a_block C + 10 V + 6 C)`` (module docstring)."""
    C, V = config.n_embd, config.padded_vocab_size
    per_token = config.n_layer * block_activation_width(config) * C + 10 * V + 6 * C
    return micro_batch_size * seq_length * per_token


def training_bytes_per_gpu(
    config: Any, micro_batch_size: int, seq_length: int, devices: int, counts: ParameterCounts | None = None
) -> float:
    """Training memory per GPU of litgpt pretrain in bf16-mixed on `devices` GPUs of one node (docstring);
    `counts`: the config's :func:`parameter_counts`, if already counted.

    Raises:
        ValueError: devices is not a positive integer.
    """
    positive_int("devices", devices)
    counts = parameter_counts(config) if counts is None else counts
    if devices == 1:
        fixed = MIXED_PRECISION_STATE_BYTES * counts.total + 2 * counts.matmul
    else:
        gathered = counts.root + 2 * counts.per_block
        fixed = MIXED_PRECISION_STATE_BYTES * counts.total / devices + 4 * gathered
    return fixed + activation_bytes(config, micro_batch_size, seq_length)
