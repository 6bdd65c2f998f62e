"""A few SGD steps of every variant under Lightning Fabric: one process, or 2 DDP processes over gloo (CPU).

Run by ``test_ddp.py`` as ``python tests/finetune/ddp_worker.py OUT_DIR VARIANT...`` (2 processes, spawned by
Fabric's ``ddp_spawn``); :func:`train` is also called in-process for the single-process reference. Every rank
gets an equal, disjoint share of the same global batch, so the DDP run and the single-process run see the
same tokens and (with mean losses and averaged gradients) take the same steps.
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from litgpt.model import GPT

from tests.builders import variant_config
from tests.helpers import tokens

STEPS = 3
GLOBAL_BATCH = 4
SEQUENCE = 16


def train(fabric: L.Fabric, variant: str) -> dict:
    """Trains a seeded tiny model of `variant`; returns the mean loss of each step and the final weights."""
    torch.manual_seed(0)
    model = GPT(variant_config(variant))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = fabric.setup(model, optimizer)
    losses = []
    for step in range(STEPS):
        batch = tokens(GLOBAL_BATCH, SEQUENCE + 1, seed=100 + step)  # (global batch, T + 1)
        shard = batch[fabric.global_rank :: fabric.world_size]  # this rank's rows
        logits = model(shard[:, :-1])  # (B / world, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), shard[:, 1:].flatten())
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(fabric.all_reduce(loss.detach(), reduce_op="mean").item())
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return {"losses": losses, "weights": weights}


def run(fabric: L.Fabric, out_dir: Path, variants: list[str]) -> None:
    for variant in variants:
        torch.save(train(fabric, variant), out_dir / f"{variant}-rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, *names = sys.argv[1:]
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    fabric.launch(run, Path(out), names)
