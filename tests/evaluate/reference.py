"""Reference answers to lm-eval's requests, written from their definitions: one unbatched, unpadded full forward
per request (or window), float32, tokenized with the `tokenizers` library directly (not through LitgptLM)."""

import math
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer

PYTHIA_EOS = 0  # "<|endoftext|>", Pythia's BOS and EOS


def pythia_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def request_tokens(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split for a causal model: the whole text encoded, the context's tokens first; an empty context
    is the EOS token; trailing spaces of the context belong to the continuation."""
    if not context:
        return [PYTHIA_EOS], encode(tokenizer, continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(tokenizer, context)
    return context_ids, encode(tokenizer, context + continuation)[len(context_ids) :]


@torch.no_grad()
def continuation_log_probs(model: torch.nn.Module, tokens: list[int], n: int) -> tuple[torch.Tensor, bool]:
    """log p of each of the last `n` of `tokens` given all before it (at most block_size of them), shape (n,),
    and whether each of them is the argmax of its prediction."""
    window = tokens[-(model.config.block_size + 1) :]
    logits = model(torch.tensor([window[:-1]]))[0, -n:].float()  # (n, V)
    targets = torch.tensor(window[-n:])  # (n,)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return log_probs, bool((logits.argmax(-1) == targets).all())


def log_likelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    context_ids, continuation_ids = request_tokens(tokenizer, context, continuation)
    log_probs, greedy = continuation_log_probs(model, context_ids + continuation_ids, len(continuation_ids))
    return float(log_probs.double().sum()), greedy


def rolling_log_likelihood(model, tokenizer, text: str) -> float:
    """Every token of `text` predicted once, in windows of L = block_size predictions: the first from
    ``[EOS] + tokens[:L-1]``, each later one from the L tokens before its last prediction (so the last, shorter
    window still reads a full window of context)."""
    tokens, L = encode(tokenizer, text), model.config.block_size
    windows = [([PYTHIA_EOS] + tokens[:L], min(L, len(tokens)))]
    windows += [(tokens[: min(start + L, len(tokens))], min(L, len(tokens) - start)) for start in range(L, len(tokens), L)]
    return sum(float(continuation_log_probs(model, window, n)[0].double().sum()) for window, n in windows)


def perplexity_metrics(log_likelihoods: list[float], texts: list[str]) -> dict[str, float]:
    """lm-eval's corpus-level word_perplexity, byte_perplexity and bits_per_byte."""
    total = sum(log_likelihoods)
    words = sum(len(re.split(r"\s+", text)) for text in texts)
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return {
        "word_perplexity": math.exp(-total / words),
        "byte_perplexity": math.exp(-total / num_bytes),
        "bits_per_byte": -total / num_bytes / math.log(2),
    }


def greedy_litgpt_generate(checkpoint_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """`litgpt generate`'s path at temperature 0: a fresh model, set_kv_cache, generate(), decode the new tokens."""
    from litgpt.generate.base import generate
    from litgpt.tokenizer import Tokenizer as LitgptTokenizer

    from litgpt_mka.checkpoint import load_model

    model, tokenizer = load_model(checkpoint_dir, torch.device("cpu")), LitgptTokenizer(checkpoint_dir)
    encoded = tokenizer.encode(prompt)
    model.max_seq_length = len(encoded) + max_new_tokens
    model.set_kv_cache(batch_size=1)
    out = generate(model, encoded, len(encoded) + max_new_tokens, temperature=0.0, top_k=None,
                   eos_id=tokenizer.eos_id, include_prompt=False)
    return tokenizer.decode(out)
