"""The ``litgpt`` command, recording the loss of every training micro-batch on every rank.

``python tests/plugin/recording_pretrain.py pretrain ...`` runs litgpt's own CLI with the arguments given; with
``LOSS_RECORD_DIR`` set, each rank appends the loss of each of its training micro-batches (litgpt pretrain's
``chunked_cross_entropy`` while gradients are recorded, on a real device; validation runs under ``no_grad``) as one line to
``LOSS_RECORD_DIR/rank<r>.txt``. litgpt logs only rank 0's loss; the test needs every rank's. Lightning's launcher
starts ranks 1.. by running this same script again, so every rank records (the directory travels in the
environment, not in the arguments that the launcher repeats).
"""

import os
from pathlib import Path

import torch

import litgpt_mka  # noqa: F401  (activates the plugin before litgpt is imported)
from litgpt import pretrain

RECORD_DIR_ENV_VAR = "LOSS_RECORD_DIR"


def recording(litgpt_loss, record_dir: Path):
    def chunked_cross_entropy(*args, **kwargs):
        loss = litgpt_loss(*args, **kwargs)
        if torch.is_grad_enabled() and loss.device.type != "meta":  # not litgpt's FLOP count on the meta device
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with open(record_dir / f"rank{rank}.txt", "a") as record:
                record.write(f"{loss.item()!r}\n")
        return loss

    return chunked_cross_entropy


def recorded_losses(record_dir: Path, rank: int) -> list[float]:
    return [float(line) for line in (record_dir / f"rank{rank}.txt").read_text().split()]


if __name__ == "__main__":
    from litgpt.__main__ import main  # litgpt's CLI imports every litgpt command: only where it runs

    if RECORD_DIR_ENV_VAR in os.environ:
        pretrain.chunked_cross_entropy = recording(pretrain.chunked_cross_entropy, Path(os.environ[RECORD_DIR_ENV_VAR]))
    main()
