"""Every variant's GPT under torch's FSDP2 (``fully_shard``) on 2 CPU processes over gloo.

Run by ``test_fsdp2.py`` as ``python tests/attention/fsdp2_worker.py OUT_DIR VARIANT...``. Per variant, both ranks:

1. build the GPT on the meta device and shard it as litgpt's ``FSDPStrategy(auto_wrap_policy={Block})`` does:
   every ``Block``, then the whole model (what is left: embedding, final norm, head);
2. allocate the shards (``to_empty``), fill them with NaN (a tensor nobody initialises stays visible) and
   initialise them with litgpt pretrain's ``initialize_weights`` (wrapped by the plugin), given a Fabric whose
   strategy is Lightning's FSDP2 one (``ModelParallelStrategy``): litgpt then calls ``reset_parameters``;
3. gather the initial weights (``full_tensor``), then one forward and backward on the rank's rows of a global
   batch (rows ``rank::2``), the gathered gradients (averaged over the ranks by FSDP's reduce-scatter), one AdamW
   step and the gathered new weights;
4. cached decoding (prefill, then one token at a time) through the sharded model, whose every forward gathers a
   block's weights, before and after the optimizer step: the derived-weight caches of MLA (absorbed projections)
   and MKA (long-term memory) must see the re-gathered, updated weights.

Rank 0 saves ``OUT_DIR/<variant>.pt`` (every rank's logits); the test rebuilds the unsharded model from the
gathered initial weights and compares.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.fabric.strategies import ModelParallelStrategy
from litgpt.model import GPT
from litgpt.pretrain import initialize_weights
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from tests.helpers import decode_token_by_token, tiny_config, tokens

WORLD_SIZE = 2
GLOBAL_BATCH, SEQUENCE = 4, 16
DECODE_BATCH, DECODE_LENGTH, PROMPT = 2, 12, 5
LEARNING_RATE = 1e-2


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (an all-gather), or the tensor itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered(named_tensors) -> dict[str, torch.Tensor]:
    return {name: full(tensor).detach().clone() for name, tensor in named_tensors}


def sharded_gpt(variant: str) -> GPT:
    """The variant's tiny GPT from the meta device, sharded per Block, initialised by litgpt pretrain's init."""
    config = tiny_config(variant)
    with torch.device("meta"):
        model = GPT(config)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    fabric = SimpleNamespace(strategy=ModelParallelStrategy(parallelize_fn=lambda module, mesh: module))
    initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    return model


def train_and_decode(variant: str) -> dict:
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = sharded_gpt(variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)  # over the shards, as Fabric sets it up
    result = {"initial": gathered(model.state_dict().items())}

    batch = tokens(GLOBAL_BATCH, SEQUENCE + 1, seed=5)[rank::WORLD_SIZE]  # (B / world, T + 1): this rank's rows
    logits = model(batch[:, :-1])  # (B / world, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    result["logits"] = logits.detach()
    result["gradients"] = gathered((name, p.grad) for name, p in model.named_parameters())

    idx = tokens(DECODE_BATCH, DECODE_LENGTH, seed=6)
    model.eval()
    result["decoded_before_step"] = decode_token_by_token(model, idx, PROMPT)
    model.train()
    optimizer.step()
    result["stepped"] = gathered(model.state_dict().items())
    model.eval()
    result["decoded_after_step"] = decode_token_by_token(model, idx, PROMPT)
    return result


def run(rank: int, out_dir: Path, variants: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank, world_size=WORLD_SIZE)
    try:
        for variant in variants:
            result = train_and_decode(variant)
            logits = [torch.empty_like(result["logits"]) for _ in range(WORLD_SIZE)]
            dist.all_gather(logits, result["logits"])
            if rank == 0:
                torch.save({**result, "logits": logits}, out_dir / f"{variant}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    out, *names = sys.argv[1:]
    torch.multiprocessing.start_processes(run, args=(Path(out), names), nprocs=WORLD_SIZE, start_method="fork")
