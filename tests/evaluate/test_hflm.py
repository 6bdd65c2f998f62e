"""The reference path: an MHA Pythia checkpoint converted by litgpt (`litgpt convert_from_litgpt`) to a
transformers GPT-NeoX model, evaluated by lm-eval's own HFLM, gives request by request the log-likelihoods that
LitgptLM gives on the litgpt checkpoint, and the same task scores."""

import pytest
import torch

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from litgpt.config import Config  # noqa: E402
from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint  # noqa: E402

from litgpt_mka.evaluate.lm import load_lm  # noqa: E402
from tests.evaluate.checkpoints import TASKS_DIR  # noqa: E402

TASKS = ["tiny_story_choice", "tiny_story_perplexity"]


def gpt_neox_config(config: Config) -> "transformers.GPTNeoXConfig":
    """The transformers config of a litgpt Pythia config (GPT-NeoX layout: parallel residual, partial rotary)."""
    return transformers.GPTNeoXConfig(
        vocab_size=config.padded_vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=config.intermediate_size,
        hidden_act="gelu",
        rotary_pct=config.rotary_percentage,
        rotary_emb_base=config.rope_base,
        max_position_embeddings=config.block_size,
        layer_norm_eps=config.norm_eps,
        use_parallel_residual=config.parallel_residual,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


@pytest.fixture(scope="module")
def hf_model(preset_checkpoints, tmp_path_factory):
    checkpoint = preset_checkpoints["pythia-14m-mha"]
    converted = tmp_path_factory.mktemp("hf")
    convert_lit_checkpoint(checkpoint, converted)
    model = transformers.GPTNeoXForCausalLM(gpt_neox_config(Config.from_file(checkpoint / "model_config.yaml")))
    missing, unexpected = model.load_state_dict(torch.load(converted / "model.pth"), strict=False)
    assert not unexpected and all("rotary_emb" in name for name in missing), (missing, unexpected)
    return model.eval()


def evaluate_both(preset_checkpoints, hf_model, tokenizer_dir, batch_size: int):
    """simple_evaluate with per-request records, on LitgptLM and on HFLM."""
    lm = load_lm(preset_checkpoints["pythia-14m-mha"], "cpu", batch_size=batch_size)
    hflm = HFLM(
        pretrained=hf_model, tokenizer=transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir)),
        batch_size=batch_size, max_length=lm.max_length, device="cpu",
    )
    return [
        simple_evaluate(model=model, tasks=TASKS, task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False))
        for model in (lm, hflm)
    ]


def request_log_likelihoods(results: dict, task: str) -> torch.Tensor:
    """Every request's log-likelihood, in document then request order (a response is ``[(ll, is_greedy)]`` for
    loglikelihood requests, ``[ll]`` for rolling ones)."""
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    answers = [response[0] for sample in samples for response in sample["resps"]]
    return torch.tensor([a[0] if isinstance(a, (list, tuple)) else a for a in answers], dtype=torch.float64)


def test_log_likelihoods_and_scores_equal_hflm_on_the_converted_model(
    preset_checkpoints, hf_model, tokenizer_dir, in_project_root
):
    ours, reference = evaluate_both(preset_checkpoints, hf_model, tokenizer_dir, batch_size=3)
    for task in TASKS:
        got, expected = request_log_likelihoods(ours, task), request_log_likelihoods(reference, task)
        assert len(got) == len(expected) > 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # float32 forwards of two implementations
    assert ours["results"]["tiny_story_choice"] == reference["results"]["tiny_story_choice"]
    perplexity, expected = ours["results"]["tiny_story_perplexity"], reference["results"]["tiny_story_perplexity"]
    assert perplexity.keys() == expected.keys()
    numbers = [key for key, value in expected.items() if isinstance(value, float)]
    assert len(numbers) == 3
    assert {key: perplexity[key] for key in numbers} == pytest.approx({key: expected[key] for key in numbers}, rel=1e-5)
