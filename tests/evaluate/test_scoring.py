"""The token-level scoring of continuations: left truncation to the context window, padding."""

import pytest
import torch

from litgpt_mka.evaluate.scoring import continuation_score, padded_forward, scored_window
from tests.helpers import random_gpt, tiny_config, tokens


def test_a_long_request_is_left_truncated_to_the_context_window():
    window = scored_window(context=list(range(10)), continuation=[10, 11, 12], max_length=8)
    assert window.input_ids == [4, 5, 6, 7, 8, 9, 10, 11]  # the last 9 tokens, without the last one
    assert window.continuation == [10, 11, 12]


def test_a_short_request_is_read_whole():
    window = scored_window(context=[1, 2], continuation=[3], max_length=8)
    assert (window.input_ids, window.continuation) == ([1, 2], [3])


@pytest.mark.parametrize(
    "context, continuation, message",
    [
        ([], [1], r"context is empty"),
        ([1], [], r"continuation is empty \(context of 1 tokens\)"),
        ([1], list(range(9)), r"continuation of 9 tokens does not fit the context window of 8 tokens"),
    ],
)
def test_requests_that_cannot_be_scored_are_refused(context, continuation, message):
    with pytest.raises(ValueError, match=message):
        scored_window(context, continuation, max_length=8)


def test_right_padding_changes_no_requests_score():
    """Windows of different lengths in one padded forward score as each alone (no padding at all)."""
    model = random_gpt(tiny_config(block_size=16))
    ids = tokens(1, 16, seed=3)[0].tolist()
    windows = [scored_window(ids[:n], ids[n : n + 2], max_length=16) for n in (3, 12, 7, 9)]

    def score(batch):
        logits = padded_forward(model, [w.input_ids for w in batch])  # (B, T, V)
        return [continuation_score(row, len(w.input_ids), w.continuation) for row, w in zip(logits, batch)]

    batched = score(windows)
    one_by_one = [score([window])[0] for window in windows]
    torch.testing.assert_close(
        torch.tensor([s.log_likelihood for s in batched]), torch.tensor([s.log_likelihood for s in one_by_one])
    )
    assert [s.is_greedy for s in batched] == [s.is_greedy for s in one_by_one]
