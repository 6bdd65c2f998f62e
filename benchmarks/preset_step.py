"""One training step of every variant of a preset size on this machine: the presets build, train and step.

    python benchmarks/preset_step.py                                   # pythia-410m, 1 x 128 tokens, CPU
    python benchmarks/preset_step.py --size 1b --micro-batch 1 --seq-len 64
    python benchmarks/preset_step.py --variants mla mqa               # some of the six

For each ``config_hub/pretrain/pythia-<size>-*.yaml``: the model of its ``model_config``, initialised as
``litgpt pretrain`` does (``initialize_weights``), its optimizer (AdamW with the YAML's lr, weight decay and
betas), one batch of its own data (``litgpt_mka.data.TextCorpus`` over the YAML's train_path, tokenizer and
seed), then forward, litgpt's chunked cross-entropy, backward, gradient clipping at ``train.max_norm`` and one
optimizer step, in float32. Printed per preset: parameters, the loss before the step and on the same batch
after it (a finite loss that falls shows that the step trained), seconds and the process's peak resident
memory so far. Not a speed benchmark: a smaller micro batch than the preset's (a CPU), one step, no warm-up.
"""

import argparse
import gc
import resource
import time
from pathlib import Path

import lightning as L
import torch

import litgpt_mka  # noqa: F401  (activates the plugin)
from litgpt import pretrain
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from litgpt.utils import chunked_cross_entropy
from litgpt_mka.data import TextCorpus
from litgpt_mka.presets import load_pretrain_yaml, model_config_from_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_HUB = ROOT / "config_hub" / "pretrain"


def first_batch(hparams: dict, micro_batch: int, seq_len: int) -> torch.Tensor:
    """The first training batch of the preset's own data module: (micro_batch, seq_len + 1) token ids."""
    init_args = hparams["data"]["init_args"]
    data = TextCorpus(train_path=ROOT / init_args["train_path"], val_path=ROOT / init_args["val_path"], seed=init_args["seed"])
    data.connect(Tokenizer(ROOT / hparams["tokenizer_dir"]), batch_size=micro_batch, max_seq_length=seq_len)
    data.setup()
    return next(iter(data.train_dataloader()))


def one_step(path: Path, micro_batch: int, seq_len: int) -> dict:
    hparams = load_pretrain_yaml(path)
    config = model_config_from_yaml(path)
    batch = first_batch(hparams, micro_batch, seq_len)
    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
    torch.manual_seed(hparams["seed"])
    model = GPT(config)
    pretrain.initialize_weights(L.Fabric(accelerator="cpu", devices=1), model, n_layer=config.n_layer, n_embd=config.n_embd)
    optimizer_args = hparams["optimizer"]["init_args"]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optimizer_args["lr"], weight_decay=optimizer_args["weight_decay"], betas=optimizer_args["betas"]
    )
    start = time.perf_counter()
    loss = chunked_cross_entropy(model(inputs), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), hparams["train"]["max_norm"])
    optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        after = chunked_cross_entropy(model(inputs), targets)
    return {
        "preset": path.stem,
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss": loss.item(),
        "after": after.item(),
        "seconds": seconds,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="410m", help="the presets config_hub/pretrain/pythia-<size>-*.yaml")
    parser.add_argument("--micro_batch", "--micro-batch", type=int, default=1)
    parser.add_argument("--seq_len", "--seq-len", type=int, default=128)
    parser.add_argument("--variants", nargs="+", help="e.g. mha mla (default: every preset of the size)")
    args = parser.parse_args()
    paths = sorted(CONFIG_HUB.glob(f"pythia-{args.size}-*.yaml"))
    if args.variants:
        paths = [path for path in paths if path.stem.removeprefix(f"pythia-{args.size}-") in args.variants]
    if not paths:
        raise SystemExit(f"no presets {CONFIG_HUB}/pythia-{args.size}-*.yaml")
    print(f"one float32 training step, {args.micro_batch} x {args.seq_len} tokens, {torch.get_num_threads()} threads\n")
    print("| preset | parameters | loss | loss after the step | seconds | peak RSS GiB |\n|---|---|---|---|---|---|")
    for path in paths:
        row = one_step(path, args.micro_batch, args.seq_len)
        print(f"| `{row['preset']}` | {row['parameters']:,} | {row['loss']:.4f} | {row['after']:.4f} | {row['seconds']:.1f} | {row['peak_gib']:.1f} |", flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
