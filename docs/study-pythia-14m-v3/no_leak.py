"""A trained checkpoint's loss cannot see the tokens it predicts: later tokens never change earlier logits (causal),
and a row's logits do not depend on the other rows of its batch (no memory shared across sequences).

    python docs/study-pythia-14m-v3/no_leak.py <run>/checkpoints/final docs/study-pythia-14m-v3/data/val-verdict.txt

The test suite checks both on random weights (tests/attention/test_mka.py); this runs them on trained ones, in fp32,
on four 512-token windows of a text: tokens from position 200 on are replaced at random, then rows 2-4 are, and the
first row is also run alone; each time the logits that must not move are compared to 1e-5.
"""

import sys
from pathlib import Path

import torch
from litgpt import Tokenizer

from litgpt_mka.checkpoint import load_model

ROWS, WINDOW, KEPT = 4, 512, 200
TOKENIZER_DIR = Path(__file__).resolve().parents[3] / "shared" / "tokenizers" / "pythia"


def assert_no_leak(model: torch.nn.Module, ids: torch.Tensor, kept: int = KEPT) -> None:
    """`ids` (B, T), B >= 2: logits before `kept` ignore the tokens after it; row 0's ignore rows 1 and up."""
    generator = torch.Generator().manual_seed(0)
    rows, length = ids.shape
    later_replaced, rows_replaced = ids.clone(), ids.clone()
    later_replaced[:, kept:] = torch.randint(0, model.config.vocab_size, (rows, length - kept), generator=generator)
    rows_replaced[1:] = torch.randint(0, model.config.vocab_size, (rows - 1, length), generator=generator)
    with torch.no_grad():
        logits = model(ids)  # (B, T, V)
        torch.testing.assert_close(model(later_replaced)[:, :kept], logits[:, :kept], rtol=0, atol=1e-5)
        torch.testing.assert_close(model(rows_replaced)[0], logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(model(ids[:1])[0], logits[0], rtol=0, atol=1e-5)


def main(checkpoint_dir: Path, text_path: Path) -> None:
    model = load_model(checkpoint_dir, torch.device("cpu"))
    ids = Tokenizer(TOKENIZER_DIR).encode(text_path.read_text())[: ROWS * WINDOW].view(ROWS, WINDOW)  # (B, T)
    assert_no_leak(model, ids)
    print(f"{checkpoint_dir}: causal and independent of the other rows (to 1e-5, fp32)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
