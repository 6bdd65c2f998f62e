"""lm-eval's model interface over a litgpt ``GPT`` of any variant: :class:`LitgptLM`.

lm-eval asks three things of a model (``lm_eval.api.model.LM``); each is answered here with the litgpt model
itself, never a Hugging Face copy:

* ``loglikelihood(context, continuation)``: lm-eval's ``TemplateLM`` tokenizes the pair as ``HFLM`` does
  (trailing spaces of the context move to the continuation; an empty context becomes the prefix token, BOS or
  else EOS, unless the continuation starts with it); :mod:`litgpt_mka.evaluate.scoring` scores the
  continuation in batches of full forwards, left-truncated to the context window ``L = block_size``.
* ``loglikelihood_rolling(text)``: the text's tokens in disjoint windows of ``L`` predictions (lm-eval's
  ``get_rolling_token_windows`` with ``context_len=1`` and ``make_disjoint_window``, the first window
  conditioned on the prefix token), the windows of all requests scored together; a request's result is the
  sum over its windows.
* ``generate_until(context, gen_kwargs)``: greedy decoding through the variant's own KV cache with litgpt's
  ``generate_fn`` (what ``litgpt generate`` runs; ``set_kv_cache`` once, the cache reset between requests as
  ``litgpt generate`` resets it between samples), at most ``max_gen_toks`` new tokens after a context
  left-truncated to ``L - max_gen_toks`` tokens; it stops at EOS or once the text holds a stop string, and
  the text is cut at the first stop string (as ``HFLM`` post-processes it).

Tokenization follows ``HFLM`` for a Hugging Face tokenizer: the tokenizer's own ids, a BOS added only when the
checkpoint's ``tokenizer_config.json`` sets ``add_bos_token`` (GPT-NeoX/Pythia: never) and the text does not
already start with it, special tokens skipped when decoding.
"""

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from litgpt_mka.evaluate.scoring import scored_window, score_windows

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's max_gen_toks, for tasks that set none


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LitgptLM(TemplateLM):
    """A litgpt ``GPT`` (eval mode, on its device) and its litgpt ``Tokenizer`` as an lm-eval model.

    Args:
        model: the ``GPT``; its ``config.block_size`` is the context window.
        tokenizer: ``litgpt.tokenizer.Tokenizer`` of the checkpoint.
        batch_size: requests (or rolling windows) per forward pass.
        info: what ``results.json`` records under ``config`` about the model (checkpoint, precision, ...).
        log: receives one progress line per batch of requests.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 1,
        info: dict[str, Any] | None = None,
        log: Callable[[str], None] = print_progress,
    ) -> None:
        super().__init__()
        self.model = model
        self.litgpt_tokenizer = tokenizer
        self._batch_size = batch_size
        self.info = dict(info or {})
        self.log = log

    # --- what lm-eval reads -------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.litgpt_tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context (and the first rolling window) is conditioned on: BOS, else EOS (HFLM's)."""
        bos = self.litgpt_tokenizer.bos_id
        return self.litgpt_tokenizer.eos_id if bos is None else bos

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def get_model_info(self) -> dict[str, Any]:
        return self.info

    # --- tokenization -------------------------------------------------------------------------------------

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`; BOS first when the tokenizer adds one (HFLM's ``tok_encode``).

        ``add_special_tokens=None`` means the tokenizer's default, except for a text that already starts with
        the prefix token's text; ``False`` never adds BOS.
        """
        ids = raw_token_ids(self.litgpt_tokenizer, string)
        bos = self.litgpt_tokenizer.bos_id
        adds_bos = self.litgpt_tokenizer.use_bos if add_special_tokens is None else add_special_tokens
        if add_special_tokens is None and string.startswith(special_token_text(self.litgpt_tokenizer, self.prefix_token_id)):
            adds_bos = False
        if adds_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        """The text of `tokens`, special tokens skipped."""
        return self.litgpt_tokenizer.decode(torch.tensor(list(tokens), dtype=torch.long))

    # --- the three request types --------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, kind: str = "loglikelihood"
    ) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per ``(request_args, context_ids, continuation_ids)``."""
        windows = [scored_window(context, continuation, self.max_length) for _, context, continuation in requests]
        unit = "windows" if kind == "loglikelihood_rolling" else "requests"
        scores = score_windows(self.model, windows, self.batch_size, self._progress(kind, len(requests), unit))
        answers = [(score.log_likelihood, score.is_greedy) for score in scores]
        for (request_args, _, _), answer in zip(requests, answers):
            if request_args is not None:
                self.cache_hook.add_partial("loglikelihood", request_args, answer)
        return answers

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, in disjoint windows of the context window (module docstring)."""
        texts = [request.args[0] for request in requests]
        windows_per_text = [self.rolling_windows(text) for text in texts]
        flat = [(None, context, continuation) for windows in windows_per_text for context, continuation in windows]
        scores = self._loglikelihood_tokens(flat, kind="loglikelihood_rolling")
        totals, start = [], 0
        for text, windows in zip(texts, windows_per_text):
            total = sum(log_likelihood for log_likelihood, _ in scores[start : start + len(windows)])
            start += len(windows)
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """``(context, continuation)`` token windows that predict every token of `text` exactly once."""
        windows = lm_eval_utils.get_rolling_token_windows(
            token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
        )
        return [lm_eval_utils.make_disjoint_window(window) for window in windows]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations through the model's KV cache, one request at a time (module docstring)."""
        dtype = next(self.model.parameters()).dtype
        self.model.set_kv_cache(batch_size=1, device=self.device, dtype=dtype)
        progress = self._progress("generate_until", len(requests))
        batches = -(-len(requests) // self.batch_size)
        answers = []
        try:
            for number, request in enumerate(requests, start=1):
                context, gen_kwargs = request.args
                answer = self.greedy_until(context, gen_kwargs)
                answers.append(answer)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
                if number % self.batch_size == 0 or number == len(requests):
                    progress(-(-number // self.batch_size), batches, number)
        finally:
            self.model.clear_kv_cache()
        return answers

    def greedy_until(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The greedy continuation of `context` under a task's `gen_kwargs` (needs ``set_kv_cache`` first).

        Raises:
            ValueError: the task asks for sampling, or for more new tokens than the context window holds.
        """
        from litgpt.generate.base import generate_fn

        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=special_token_text(self.litgpt_tokenizer, self.eot_token_id))
        max_new_tokens = kwargs.pop("max_gen_toks")
        if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0.0:
            raise ValueError(
                f"generation_kwargs={gen_kwargs!r}: only greedy decoding is supported (do_sample false, temperature 0)"
            )
        if not 0 < max_new_tokens < self.max_length:
            raise ValueError(
                f"max_gen_toks={max_new_tokens} must be in [1, {self.max_length - 1}]: the context window "
                f"(block_size={self.max_length}) holds the context and the new tokens"
            )
        prompt = self.tok_encode(context)[-(self.max_length - max_new_tokens) :] or [self.prefix_token_id]
        stream = generate_fn(
            self.model,
            torch.tensor(prompt, dtype=torch.long, device=self.device),
            len(prompt) + max_new_tokens,
            temperature=0.0,
            top_k=None,
            stop_tokens=([self.eot_token_id],),
            include_prompt=False,
            include_eos=False,
        )
        generated: list[int] = []
        for token in stream:
            generated.append(int(token))
            if any(stop and stop in self.tok_decode(generated) for stop in until):
                break
        stream.close()
        for block in self.model.transformer.h:
            block.attn.kv_cache.reset_parameters()
        return postprocess_generated_text(self.tok_decode(generated), stop=until, think_end_token=None)

    def _progress(self, kind: str, total: int, unit: str = "requests") -> Callable[[int, int, int], None]:
        def report(number: int, batches: int, done: int) -> None:
            self.log(f"{kind}: batch {number}/{batches}, {done}/{total} {unit}")

        return report


def raw_token_ids(tokenizer: Any, string: str) -> list[int]:
    """The tokenizer's ids of `string` with no special token added or removed (litgpt's ``encode`` strips a
    trailing EOS and a leading BOS, which a text may legitimately contain)."""
    if tokenizer.backend == "huggingface":
        return tokenizer.processor.encode(string, add_special_tokens=False).ids
    return list(tokenizer.processor.encode(string))


def special_token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one special token (``<|endoftext|>``), which ``decode`` would skip."""
    if tokenizer.backend == "huggingface":
        return tokenizer.processor.decode([token_id], skip_special_tokens=False)
    return tokenizer.processor.id_to_piece(token_id)


def load_lm(
    checkpoint_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    log: Callable[[str], None] = print_progress,
) -> LitgptLM:
    """The :class:`LitgptLM` of a litgpt checkpoint folder (``lit_model.pth``, ``model_config.yaml``, tokenizer).

    Raises:
        FileNotFoundError: a file of the folder is missing (named).
    """
    from litgpt.tokenizer import Tokenizer

    from litgpt_mka.compare.evaluate import load_model

    checkpoint_dir = Path(checkpoint_dir)
    for name in ("lit_model.pth", "model_config.yaml"):
        if not (checkpoint_dir / name).is_file():
            raise FileNotFoundError(f"checkpoint_dir={str(checkpoint_dir)!r} has no {name}: not a litgpt checkpoint folder")
    if not any((checkpoint_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise FileNotFoundError(
            f"checkpoint_dir={str(checkpoint_dir)!r} has no tokenizer.json or tokenizer.model: copy the tokenizer "
            "files into it (litgpt pretrain --tokenizer_dir does so for its checkpoints)"
        )
    model = load_model(checkpoint_dir, device, dtype=dtype)
    info = {
        "checkpoint_dir": str(checkpoint_dir),
        "attention_class_name": getattr(model.config, "attention_class_name", "CausalSelfAttention"),
        "dtype": str(dtype).removeprefix("torch."),
        "block_size": model.config.block_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return LitgptLM(model, Tokenizer(checkpoint_dir), batch_size=batch_size, info=info, log=log)
