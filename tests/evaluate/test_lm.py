"""LitgptLM answers lm-eval's three request types for every Pythia-14m preset as their definitions say:
log-likelihoods equal unbatched full forwards, rolling windows predict each token once, and generate_until is
greedy `litgpt generate` cut at the stop strings."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from litgpt.tokenizer import Tokenizer  # noqa: E402

from litgpt_mka.checkpoint import load_model  # noqa: E402
from litgpt_mka.evaluate.lm import LitgptLM, load_lm  # noqa: E402
from tests.evaluate.checkpoints import PRESETS, TASKS_DIR  # noqa: E402
from tests.evaluate.reference import greedy_litgpt_generate, log_likelihood, pythia_tokenizer, request_tokens  # noqa: E402
from tests.evaluate.reference import rolling_log_likelihood  # noqa: E402
from tests.helpers import preset_config, random_gpt  # noqa: E402

# contexts of different lengths (padding in a batch of 3), an empty one, and a trailing space
PAIRS = [
    ("Once upon a time, there was a little girl named Lily. She loved to play", " outside"),
    ("", "The cat sat on the mat."),
    ("Tom had a big red ball. ", "He threw it to his dog, and the dog ran after it."),
    ("The sun", " was hot and bright"),
    ("One day, Ben and his mom went to the park to see the ducks and the big", " pond."),
]


def requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


def quiet_lm(checkpoint_dir, batch_size: int) -> LitgptLM:
    return load_lm(checkpoint_dir, "cpu", batch_size=batch_size)


@pytest.mark.parametrize("preset", PRESETS)
def test_loglikelihood_is_the_sum_of_full_forward_log_probabilities(preset, preset_checkpoints, tokenizer_dir):
    lm = quiet_lm(preset_checkpoints[preset], batch_size=3)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)

    model, tokenizer = load_model(preset_checkpoints[preset], torch.device("cpu")), pythia_tokenizer(tokenizer_dir)
    expected = [log_likelihood(model, tokenizer, context, continuation) for context, continuation in PAIRS]
    torch.testing.assert_close(torch.tensor([g[0] for g in got]), torch.tensor([e[0] for e in expected]))
    assert [g[1] for g in got] == [e[1] for e in expected]


@pytest.mark.parametrize("preset", PRESETS)
def test_a_greedy_continuation_is_flagged_greedy(preset, preset_checkpoints, tokenizer_dir):
    """The model's own argmax continuation is greedy; the same with its last token changed is not."""
    lm = quiet_lm(preset_checkpoints[preset], batch_size=2)
    context = lm.tok_encode("Once upon a time")
    with torch.no_grad():
        idx = torch.tensor([context])
        for _ in range(3):
            idx = torch.cat((idx, lm.model(idx)[:, -1:].argmax(-1)), dim=1)
    greedy = idx[0, len(context) :].tolist()
    other = greedy[:-1] + [(greedy[-1] + 1) % lm.model.config.vocab_size]
    flags = [is_greedy for _, is_greedy in lm._loglikelihood_tokens([(None, context, greedy), (None, context, other)])]
    assert flags == [True, False]


@pytest.mark.parametrize("preset", PRESETS)
def test_rolling_windows_predict_every_token_once_with_the_context_window(preset, tokenizer_dir):
    """block_size 32 and texts of up to ~100 tokens: several windows, the last one shorter."""
    model = random_gpt(preset_config(preset, block_size=32))
    lm = LitgptLM(model, Tokenizer(tokenizer_dir), batch_size=3)
    texts = [
        " ".join(f"Step {i}: the little fox looked at the river and smiled." for i in range(8)),
        "A short one.",
        "Mia had a kite. It was red and blue, and it flew high above the trees on a windy day in May.",
    ]
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,) for text in texts]), disable_tqdm=True)
    assert len(lm.rolling_windows(texts[0])) > 2
    tokenizer = pythia_tokenizer(tokenizer_dir)
    expected = [rolling_log_likelihood(model, tokenizer, text) for text in texts]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected, dtype=torch.float32))


def stop_string_past_the_middle(text: str) -> str:
    """Two characters without whitespace that occur in `text` after its middle."""
    pairs = [text[i : i + 2] for i in range(len(text) // 2, len(text) - 1)]
    return next(pair for pair in pairs if not any(c.isspace() for c in pair))


@pytest.mark.parametrize("preset", PRESETS)
def test_generate_until_is_greedy_litgpt_generate_cut_at_the_stop_string(preset, preset_checkpoints):
    checkpoint = preset_checkpoints[preset]
    prompts = ["Once upon a time", "The little dog"]
    full = [greedy_litgpt_generate(checkpoint, prompt, 16) for prompt in prompts]
    stop = stop_string_past_the_middle(full[0])
    lm = quiet_lm(checkpoint, batch_size=2)
    gen_kwargs = [{"until": [stop], "max_gen_toks": 16, "do_sample": False}, {"until": ["\u2603"], "max_gen_toks": 16}]
    got = lm.generate_until(requests("generate_until", list(zip(prompts, gen_kwargs))), disable_tqdm=True)
    assert got == [full[0].split(stop)[0], full[1]]


def test_generate_until_refuses_sampling(preset_checkpoints):
    lm = quiet_lm(preset_checkpoints["pythia-14m-mha"], batch_size=1)
    request = requests("generate_until", [("Once", {"until": ["."], "do_sample": True, "temperature": 0.7})])
    with pytest.raises(ValueError, match=r"only greedy decoding is supported"):
        lm.generate_until(request)


def test_generate_until_refuses_more_new_tokens_than_the_context_window(preset_checkpoints):
    lm = quiet_lm(preset_checkpoints["pythia-14m-mha"], batch_size=1)
    request = requests("generate_until", [("Once", {"until": ["."], "max_gen_toks": 512})])
    with pytest.raises(ValueError, match=r"max_gen_toks=512 must be in \[1, 511\].*block_size=512"):
        lm.generate_until(request)


def test_tokens_follow_hflm_for_pythia(preset_checkpoints, tokenizer_dir):
    """No BOS is added (add_bos_token false); the empty context is the EOS token; a text may contain EOS."""
    lm = quiet_lm(preset_checkpoints["pythia-14m-mha"], batch_size=1)
    tokenizer = pythia_tokenizer(tokenizer_dir)
    text = "The end.<|endoftext|>"
    assert lm.tok_encode(text) == tokenizer.encode(text, add_special_tokens=False).ids
    assert lm.tok_encode(text)[-1] == lm.eot_token_id == lm.prefix_token_id == tokenizer.token_to_id("<|endoftext|>")


def multiple_choice_pairs() -> list[tuple[str, str]]:
    """tiny_story_choice's requests as lm-eval builds them (each story, then each choice after a space), and one
    continuation of several tokens after the last story."""
    documents = [json.loads(line) for line in (TASKS_DIR / "tiny_story_choice.jsonl").read_text().splitlines()]
    pairs = [(document["story"], f" {choice}") for document in documents for choice in document["choices"]]
    return pairs + [(documents[-1]["story"], " sky and the sea at night")]


def count_forward_rows(model: torch.nn.Module, monkeypatch) -> list[int]:
    """The batch size of each forward `model` runs from now on."""
    forward, rows = model.forward, []

    def counted(idx, *args, **kwargs):
        rows.append(idx.shape[0])
        return forward(idx, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    return rows


@pytest.fixture(scope="module")
def mla_and_unbatched_answers(tokenizer_dir) -> tuple[torch.nn.Module, list[tuple[float, bool]]]:
    """A one-layer MLA model and its reference answers to `multiple_choice_pairs`: one unbatched forward each."""
    model = random_gpt(preset_config("pythia-14m-mla", n_layer=1))
    tokenizer = pythia_tokenizer(tokenizer_dir)
    return model, [log_likelihood(model, tokenizer, context, continuation) for context, continuation in multiple_choice_pairs()]


@pytest.mark.parametrize(
    "batch_size, expected_rows",
    [(1, [1] * 9), (3, [3, 3, 3]), ("auto", [4, 4, 4, 1])],  # auto: a probe of max_batch_size 4 first, on a CPU it fits
)
def test_choices_sharing_a_context_take_one_forward_row_per_document(
    batch_size, expected_rows, tokenizer_dir, mla_and_unbatched_answers, monkeypatch
):
    """8 documents x 3 one-token choices (24 requests) and one request of 6 tokens: the Collator groups requests
    that read the same input, so 9 rows (25 before), and the log-likelihoods of unbatched one-request forwards."""
    pairs, (model, expected), tokenizer = multiple_choice_pairs(), mla_and_unbatched_answers, pythia_tokenizer(tokenizer_dir)
    assert [len(request_tokens(tokenizer, *pair)[1]) for pair in pairs] == [1] * 24 + [6]
    lm = LitgptLM(model, Tokenizer(tokenizer_dir), batch_size=batch_size, max_batch_size=4)
    rows = count_forward_rows(model, monkeypatch)
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    assert rows == expected_rows
    torch.testing.assert_close(torch.tensor([g[0] for g in got]), torch.tensor([e[0] for e in expected]))
    assert [g[1] for g in got] == [e[1] for e in expected]
