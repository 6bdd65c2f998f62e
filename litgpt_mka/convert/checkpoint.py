"""Reading an MHA litgpt checkpoint folder, calibration activations, and writing the converted folder atomically.

A litgpt checkpoint folder holds ``lit_model.pth`` (a state dict, or ``litgpt pretrain``'s ``{"model": ...}``
training state), ``model_config.yaml`` and the tokenizer files. The converted folder holds a plain state
dict (as ``litgpt download`` writes), the new ``model_config.yaml``, the source's tokenizer and generation
files, ``conversion.json`` (settings and per-layer errors) and ``pretrain_model.yaml``: the architecture as
``litgpt pretrain`` arguments, because its ``--model_config`` takes no file name; a second ``--config``
merges it over the training settings::

    litgpt pretrain --config TRAINING.yaml --config DIR/pretrain_model.yaml --initial_checkpoint_dir DIR \
        --tokenizer_dir DIR --out_dir OUT
 ``prompt_style.yaml`` (a fine-tuned source's) is copied
too. Not copied: ``hyperparameters.yaml`` (the source's training run) and ``config.json`` (the Hugging Face config
of the source architecture).
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from litgpt_mka.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, load_config, load_model, load_state, model_weights
from litgpt_mka.data import split_documents

COPIED_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json",
    "special_tokens_map.json", "vocab.json", "merges.txt",
    "prompt_style.yaml",  # litgpt finetune_* writes it; litgpt generate/chat/serve read it before guessing by name
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # litgpt's Tokenizer needs one of them


def load_source(checkpoint_dir: Path) -> tuple[Any, dict[str, torch.Tensor], torch.nn.Module]:
    """The source `Config`, its state dict (canonical names, saved dtype) and a float32 ``GPT`` in eval mode.

    Raises:
        FileNotFoundError: the folder lacks ``lit_model.pth``, ``model_config.yaml`` or a tokenizer file.
    """
    checkpoint_dir = Path(checkpoint_dir)
    for name in (CHECKPOINT_FILE, CONFIG_FILE):
        if not (checkpoint_dir / name).is_file():
            raise FileNotFoundError(f"{checkpoint_dir} is not a litgpt checkpoint folder: {name} is missing")
    if not any((checkpoint_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{checkpoint_dir} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): calibration"
                                " reads text through it, and the converted folder needs it")
    config = load_config(checkpoint_dir)
    check_mha(config)
    state = model_weights(load_state(checkpoint_dir / CHECKPOINT_FILE))
    model = load_model(checkpoint_dir, torch.device("cpu"), state)  # legacy `attn.*` keys are reassembled here
    saved_dtype = next(iter(state.values())).dtype
    canonical = {name: t.detach().to(saved_dtype, copy=True) for name, t in model.state_dict().items()}
    return config, canonical, model


def check_mha(config: Any) -> None:
    """Raises ValueError unless `config` has litgpt's ``CausalSelfAttention`` parameters and outputs (the registry's
    ``litgpt_equivalent``: ``CausalSelfAttention``, ``GroupedQueryAttention``) with one key/value head per query head."""
    from litgpt_mka.attention import registry

    name = getattr(config, "attention_class_name", registry.DEFAULT_ATTENTION_CLASS)
    if not registry.lookup(name).litgpt_equivalent:
        equivalent = [entry.name for entry in registry.VARIANTS.values() if entry.litgpt_equivalent]
        raise ValueError(
            f"attention_class_name={name!r}, latent_attention={config.latent_attention!r}: the source must be"
            f" multi-head attention (attention_class_name one of {equivalent}, latent_attention null)"
        )
    if config.n_query_groups != config.n_head:
        raise ValueError(
            f"n_query_groups={config.n_query_groups} must equal n_head={config.n_head}: the source must be MHA"
            " (it is already grouped)"
        )
    if config.norm_qk:
        raise ValueError(
            "norm_qk=True: a key normalisation after the projection does not commute with pooling or factorising"
            " the key weights; allowed: norm_qk=False"
        )


def new_out_dir(out_dir: Path, checkpoint_dir: Path) -> Path:
    """Raises ValueError when `out_dir` exists (the source included): conversions never overwrite."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        what = "the source checkpoint" if out_dir.resolve() == Path(checkpoint_dir).resolve() else "an existing path"
        raise ValueError(f"out_dir={str(out_dir)!r} is {what}; choose a folder that does not exist yet")
    return out_dir


def calibration_windows(
    checkpoint_dir: Path,
    model: torch.nn.Module,
    data: Path | None,
    num_tokens: int,
    seq_length: int,
    seed: int,
) -> tuple[torch.Tensor, str]:
    """(n, seq_length + 1) token windows and where they come from.

    From `data` (a .txt file, documents separated by ``<|endoftext|>`` lines, each followed by EOS, as in
    :class:`litgpt_mka.data.TextCorpus`): the first ``n = num_tokens // seq_length`` windows. Without it:
    ``n`` sequences sampled from the source model itself (temperature 1, starting from BOS, or EOS when the
    tokenizer has none), so no data is needed.
    """
    from litgpt.tokenizer import Tokenizer

    n = max(1, num_tokens // seq_length)
    tokenizer = Tokenizer(checkpoint_dir)
    if data is not None:
        text = Path(data).read_text(encoding="utf-8")
        ids: list[int] = []
        for document in split_documents(text):
            ids += tokenizer.encode(document, bos=False, eos=True).tolist()
            if len(ids) >= n * seq_length + 1:
                break
        n = min(n, (len(ids) - 1) // seq_length)
        if n < 1:
            raise ValueError(f"calibration_data={str(data)!r} holds {len(ids)} tokens, fewer than one window of {seq_length + 1}")
        stream = torch.tensor(ids[: n * seq_length + 1])
        windows = stream.unfold(0, seq_length + 1, seq_length)  # (n, seq_length + 1)
        return windows, f"{n} windows of {seq_length + 1} tokens from {data}"
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    return sample(model, start, n, seq_length + 1, seed), f"{n} sequences of {seq_length + 1} tokens sampled from the source model (seed {seed})"


@torch.no_grad()
def sample(model: torch.nn.Module, start: int, n: int, length: int, seed: int) -> torch.Tensor:
    """Ancestral sampling (temperature 1) of n sequences of `length` tokens, the first being `start`: (n, length)."""
    generator = torch.Generator().manual_seed(seed)
    model.set_kv_cache(batch_size=n, max_seq_length=length)
    idx = torch.full((n, length), start, dtype=torch.long)
    for t in range(1, length):
        logits = model(idx[:, t - 1 : t], torch.tensor([t - 1]), input_pos_maxp1=t)  # (n, 1, V)
        probs = logits[:, -1, : model.config.vocab_size].float().softmax(dim=-1)  # (n, vocab)
        idx[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    model.clear_kv_cache()
    return idx


@torch.no_grad()
def attention_inputs_and_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> tuple[list[torch.Tensor], float]:
    """Inputs of every layer's attention, each (n T, C) float32, and the mean next-token loss on `windows` (n, T+1)."""
    inputs: list[list[torch.Tensor]] = [[] for _ in model.transformer.h]
    hooks = [
        block.attn.register_forward_pre_hook(lambda _m, args, i=i: inputs[i].append(args[0].flatten(0, 1).float()))
        for i, block in enumerate(model.transformer.h)
    ]
    total, count = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]  # (b, T+1)
            logits = model(batch[:, :-1])  # (b, T, V)
            nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            total, count = total + float(nll), count + batch[:, 1:].numel()
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(chunks) for chunks in inputs], total / count


@torch.no_grad()
def loss_on(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    return attention_inputs_and_loss(model, windows, batch_size)[1]


def write_checkpoint(
    out_dir: Path, checkpoint_dir: Path, config: Any, state: dict[str, torch.Tensor], report: dict[str, Any]
) -> None:
    """Writes the converted folder under a temporary name beside `out_dir`, then renames it into place."""
    from litgpt.utils import save_config

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        torch.save(state, tmp / "lit_model.pth")
        save_config(config, tmp)
        header = (
            "# The converted architecture for `litgpt pretrain` (uptraining); merge it over your training settings:\n"
            "#   litgpt pretrain --config TRAINING.yaml --config THIS_DIR/pretrain_model.yaml"
            " --initial_checkpoint_dir THIS_DIR --tokenizer_dir THIS_DIR --out_dir OUT\n"
        )
        saved = yaml.safe_load((tmp / "model_config.yaml").read_text(encoding="utf-8"))  # as litgpt (and we) save it
        body = yaml.safe_dump({"model_name": config.name, "model_config": saved}, sort_keys=False)
        (tmp / "pretrain_model.yaml").write_text(header + body, encoding="utf-8")
        for name in COPIED_FILES:
            if (Path(checkpoint_dir) / name).is_file():
                shutil.copy2(Path(checkpoint_dir) / name, tmp / name)
        (tmp / "conversion.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():  # appeared while converting (rename would replace an empty folder)
            raise ValueError(f"out_dir={str(out_dir)!r} appeared while converting; nothing was written there")
        os.rename(tmp, out_dir)  # atomic on one file system
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
