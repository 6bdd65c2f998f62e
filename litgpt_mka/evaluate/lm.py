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

Both log-likelihood request types are batched by lm-eval's own ``Collator`` (``lm_eval.models.utils``), as
``HFLM`` batches them: longest ``context + continuation`` first (the first batch is the largest, so running out of
memory shows at once, and the ETA errs long), and grouped by ``context + continuation[:-1]``. Requests of a group
read the same input (``(context + continuation)[:-1]``, left-truncated alike), so one row of one forward scores
them all, each from the logits at its own last ``n`` positions: a multiple-choice document whose choices are one
token each costs one row, not one per choice::

    context "...gave it some warm"   choices " milk" | " rocks" | " shoes"    ->  one row, three scores
    requests: documents x choices            rows: documents (+ one per choice of several tokens)

lm-eval knows the class as the model ``litgpt-mka`` (:mod:`litgpt_mka.evaluate.registration`), built from
``--model_args checkpoint_dir=DIR[,precision=bf16-true]`` and lm-eval's ``--batch_size`` (a number, or ``auto``:
the largest batch, halving from ``--max_batch_size``, whose forward over the longest input fits in memory, found
once per longest input: the Collator's ``batch_fn``),
``--max_batch_size`` and ``--device`` (:meth:`LitgptLM.create_from_arg_obj`). Progress is one tqdm bar per request
type (requests done, rate, ETA) on stderr, off when lm-eval passes ``disable_tqdm``.

Written against lm-eval's ``TemplateLM`` and ``Collator`` as they are from 0.4.9 (the newest that ``litgpt[extra]``
accepts) to 0.4.13 (the same ``Collator(arr, sort_fn, group_fn, group_by)``, ``get_batched(n, batch_fn)``,
``get_cache``, ``get_original``): nothing here uses a helper that only one end has. (0.4.8's Collator picks a
group's first request to run rather than its longest continuation; the scores here do not depend on which.)
"""

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from litgpt_mka.precision import EVALUATION_PRECISIONS as PRECISIONS
from litgpt_mka.evaluate.scoring import continuation_score, largest_batch_that_fits, padded_forward, scored_window

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's max_gen_toks, for tasks that set none
DEFAULT_MAX_BATCH_SIZE = 64  # HFLM's, the ceiling of --batch_size auto
AUTO_BATCH_SIZE = "auto"
# the names a task's generation_kwargs may give the number of new tokens, first wins (lm-eval 0.4.13's order)
MAX_NEW_TOKENS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


class LitgptLM(TemplateLM):
    """A litgpt ``GPT`` (eval mode, on its device) and its litgpt ``Tokenizer`` as an lm-eval model.

    Args:
        model: the ``GPT``; its ``config.block_size`` is the context window.
        tokenizer: ``litgpt.tokenizer.Tokenizer`` of the checkpoint.
        batch_size: rows per forward pass (one row per group of requests that read the same input: a
            multiple-choice document whose choices are one token each is one row), or ``"auto"``.
        max_batch_size: the largest batch ``"auto"`` tries.
        info: what ``results.json`` records under ``config`` about the model (checkpoint, precision, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int | str = 1,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.litgpt_tokenizer = tokenizer
        self._batch_size = parse_batch_size(batch_size)
        self.max_batch_size = parse_batch_size(max_batch_size, allow_auto=False, name="max_batch_size")
        self.batch_sizes: dict[int, int] = {}  # longest window -> the batch size auto chose (results.json lists them)
        self.info = dict(info or {})

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None) -> "LitgptLM":
        """lm-eval's constructor for ``--model litgpt-mka``: `arg_dict` are ``--model_args`` (``checkpoint_dir``,
        optionally ``precision``, ``batch_size``, ``max_batch_size``, ``device``), `additional_config` lm-eval's
        own ``--batch_size``, ``--max_batch_size`` and ``--device`` (``None`` where not given).

        Raises:
            ValueError: no ``checkpoint_dir``, an argument this model does not take, or a value out of range.
            FileNotFoundError: not a litgpt checkpoint folder.
        """
        given = {key: value for key, value in (additional_config or {}).items() if value is not None}
        arguments = {**dict(arg_dict), **given}
        unknown = sorted(set(arguments) - set(MODEL_ARGS))
        if unknown:
            raise ValueError(f"model_args {unknown}: litgpt-mka takes {list(MODEL_ARGS)}")
        if not arguments.get("checkpoint_dir"):
            raise ValueError("model_args has no checkpoint_dir: pass --model_args checkpoint_dir=DIR (a litgpt checkpoint)")
        return load_lm(**arguments)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> "LitgptLM":
        """``--model_args checkpoint_dir=DIR,precision=bf16-true`` (see :meth:`create_from_arg_obj`)."""
        return cls.create_from_arg_obj(lm_eval_utils.simple_parse_args_string(arg_string), additional_config)

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
        """``(log p(continuation | context), is_greedy)`` per ``(request_args, context_ids, continuation_ids)``.

        Batched by lm-eval's ``Collator`` as ``HFLM`` batches (the module docstring): longest input first, one
        row per group of requests that read the same input.

        Raises:
            ValueError: a request that cannot be scored (:func:`scored_window`), before any forward.
        """
        from lm_eval.models.utils import Collator  # not at the top: in lm-eval 0.4.9 it imports the registering hook

        requests = [(request_args, list(context), list(continuation)) for request_args, context, continuation in requests]
        for _, context, continuation in requests:
            scored_window(context, continuation, self.max_length)
        collator = Collator(requests, sort_fn=longest_first, group_fn=shared_input, group_by="contexts")
        auto = self._batch_size == AUTO_BATCH_SIZE
        batches = collator.get_batched(n=0 if auto else self._batch_size, batch_fn=self.auto_batch_size if auto else None)
        answers: list[tuple[float, bool]] = []
        unit = "window" if kind == "loglikelihood_rolling" else "request"
        with tqdm(total=len(requests), desc=kind, unit=unit, disable=disable_tqdm) as bar:
            for batch in batches:
                scored = self.score_groups(batch, collator)
                answers.extend(scored)
                bar.update(len(scored))
        answers = collator.get_original(answers)
        for (request_args, _, _), answer in zip(requests, answers):
            if request_args is not None:
                self.cache_hook.add_partial("loglikelihood", request_args, answer)
        return answers

    def score_groups(self, batch: list[tuple[Any, list[int], list[int]]], collator: Any) -> list[tuple[float, bool]]:
        """One forward over the inputs of `batch` (a request per group); every request of each group scored from
        its row, in the order the `collator`'s ``get_cache`` gives them (``get_original`` restores the requests')."""
        windows = [scored_window(context, continuation, self.max_length) for _, context, continuation in batch]
        logits = padded_forward(self.model, [window.input_ids for window in windows])  # (B, T, V)
        answers = []
        for (request_args, context, continuation), window, row in zip(batch, windows, logits):
            group = collator.get_cache(req_str=request_args, cxt_toks=context, cont_toks=continuation, logits=row[None])
            for _, member_continuation, _ in group:
                score = continuation_score(row, len(window.input_ids), member_continuation)
                answers.append((score.log_likelihood, score.is_greedy))
        return answers

    def auto_batch_size(self, position: int, ordered: Sequence[tuple[Any, list[int], list[int]]]) -> int:
        """``--batch_size auto`` (the Collator's ``batch_fn``): the largest batch whose forward over the longest
        input of `ordered` (its first: longest first) fits, found once per longest input."""
        _, context, continuation = ordered[0]
        longest = min(len(context) + len(continuation) - 1, self.max_length)
        if longest not in self.batch_sizes:
            self.batch_sizes[longest] = largest_batch_that_fits(self.model, longest, self.max_batch_size)
        return self.batch_sizes[longest]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, in disjoint windows of the context window (module docstring)."""
        texts = [request.args[0] for request in requests]
        windows_per_text = [self.rolling_windows(text) for text in texts]
        flat = [(None, context, continuation) for windows in windows_per_text for context, continuation in windows]
        scores = self._loglikelihood_tokens(flat, disable_tqdm=disable_tqdm, kind="loglikelihood_rolling")
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
        answers = []
        try:
            for request in tqdm(requests, desc="generate_until", unit="request", disable=disable_tqdm):
                context, gen_kwargs = request.args
                answer = self.greedy_until(context, gen_kwargs)
                answers.append(answer)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
        finally:
            self.model.clear_kv_cache()
        return answers

    def greedy_until(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The greedy continuation of `context` under a task's `gen_kwargs` (needs ``set_kv_cache`` first).

        Raises:
            ValueError: the task asks for sampling, or for more new tokens than the context window holds.
        """
        from litgpt.generate.base import generate_fn

        until, max_new_tokens = greedy_settings(
            gen_kwargs, special_token_text(self.litgpt_tokenizer, self.eot_token_id), self.max_gen_toks
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
        return cut_at_stop_strings(self.tok_decode(generated), until)


def longest_first(request: tuple[Any, list[int], list[int]]) -> tuple[int, tuple[int, ...]]:
    """The Collator's sort key (``HFLM``'s): the longest ``context + continuation`` first, ties by their tokens."""
    tokens = request[1] + request[2]
    return -len(tokens), tuple(tokens)


def shared_input(request: tuple[Any, list[int], list[int]]) -> list[int]:
    """The Collator's group key (``HFLM``'s): ``context + continuation[:-1]``, the tokens the model reads (before
    left truncation); requests that share it share their input, and one forward row scores them all."""
    return request[1] + request[2][:-1]


def parse_batch_size(value: int | str, allow_auto: bool = True, name: str = "batch_size") -> int | str:
    """A positive int, or ``"auto"`` (also lm-eval's ``auto:N``, which re-detects N times; here once per longest
    input); lm-eval's CLI passes numbers as strings.

    Raises:
        ValueError: anything else, naming `name` and what is allowed.
    """
    text = str(value).strip()
    if allow_auto and (text == AUTO_BATCH_SIZE or text.startswith(f"{AUTO_BATCH_SIZE}:")):
        return AUTO_BATCH_SIZE
    if not isinstance(value, bool) and text.isdigit() and int(text) > 0:
        return int(text)
    allowed = "a positive integer" + (" or 'auto'" if allow_auto else "")
    raise ValueError(f"{name}={value!r} must be {allowed}")


def greedy_settings(gen_kwargs: dict[str, Any], eos_text: str, default_max_new_tokens: int) -> tuple[list[str], int]:
    """The stop strings (the task's ``until`` and the EOS text) and the number of new tokens of a greedy request.

    Raises:
        ValueError: ``until`` is neither a string nor a list, or the task asks for sampling.
    """
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list):
        raise ValueError(f"generation_kwargs until={until!r} must be a string or a list of strings")
    if gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0.0) > 0.0:
        raise ValueError(
            f"generation_kwargs={gen_kwargs!r}: only greedy decoding is supported (do_sample false, temperature 0)"
        )
    given = [gen_kwargs[key] for key in MAX_NEW_TOKENS_KEYS if gen_kwargs.get(key) is not None]
    max_new_tokens = int(given[0]) if given else default_max_new_tokens
    return [*until, *([eos_text] if eos_text not in until else [])], max_new_tokens


def cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    """`text` up to its first stop string (an empty stop string stops nothing), as ``HFLM`` post-processes it."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


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
    checkpoint_dir: Path | str,
    device: torch.device | str | None = None,
    precision: str = "32-true",
    batch_size: int | str = 1,
    max_batch_size: int | str = DEFAULT_MAX_BATCH_SIZE,
) -> LitgptLM:
    """The :class:`LitgptLM` of a litgpt checkpoint folder (``lit_model.pth``, ``model_config.yaml``, tokenizer).

    Args:
        checkpoint_dir: the folder.
        device: torch device; default: cuda when available, else cpu.
        precision: weights and KV cache: ``32-true`` (float32), ``bf16-true`` or ``16-true``.
        batch_size: rows per forward pass (one per group of requests that read the same input), or ``auto``.
        max_batch_size: the largest batch ``auto`` tries.

    Raises:
        ValueError: a precision, batch size or max batch size out of range.
        FileNotFoundError: a file of the folder is missing (named).
    """
    from litgpt.tokenizer import Tokenizer

    from litgpt_mka.checkpoint import load_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
    checkpoint_dir = Path(checkpoint_dir)
    for name in ("lit_model.pth", "model_config.yaml"):
        if not (checkpoint_dir / name).is_file():
            raise FileNotFoundError(f"checkpoint_dir={str(checkpoint_dir)!r} has no {name}: not a litgpt checkpoint folder")
    if not any((checkpoint_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise FileNotFoundError(
            f"checkpoint_dir={str(checkpoint_dir)!r} has no tokenizer.json or tokenizer.model: copy the tokenizer "
            "files into it (litgpt pretrain --tokenizer_dir does so for its checkpoints)"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, PRECISIONS[precision])
    model = load_model(checkpoint_dir, device, dtype=dtype)
    info = {
        "checkpoint_dir": str(checkpoint_dir),
        "attention_class_name": getattr(model.config, "attention_class_name", "CausalSelfAttention"),
        "precision": precision,
        "dtype": str(dtype).removeprefix("torch."),
        "block_size": model.config.block_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    tokenizer = Tokenizer(checkpoint_dir)
    return LitgptLM(model, tokenizer, batch_size=batch_size, max_batch_size=max_batch_size, info=info)


MODEL_ARGS = tuple(inspect.signature(load_lm).parameters)  # what --model_args (and lm-eval's options) may set
