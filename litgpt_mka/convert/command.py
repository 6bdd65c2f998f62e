"""``litgpt-mka convert``: the command (:func:`convert`, its options) and the conversion it runs
(:func:`convert_checkpoint`).

Reads the source (:mod:`litgpt_mka.convert.checkpoint`), converts every layer's attention
(:mod:`litgpt_mka.convert.gqa` or :mod:`litgpt_mka.convert.mla`), copies the rest, and writes the new folder with
its report.
"""

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from litgpt_mka.validation import positive_int

TARGETS = ("gqa", "mqa", "mla")


def check_options_apply(to: str, n_query_groups: int | None, kv_lora_rank: int | None, rope_fit: str, kv_norm: str,
                        svd: str) -> None:
    """Raises ValueError for an option the target does not read (it would be silently ignored)."""
    import litgpt_mka.convert.mla as mla  # the module, not the package (whose __init__ imports this one)

    if to == "mla" and n_query_groups is not None:
        raise ValueError(f"n_query_groups={n_query_groups} does not apply to --to mla (MLA keeps every head; its cache"
                         " is the latent, --kv_lora_rank)")
    if to != "mla":
        defaults = {"rope_fit": mla.ROPE_FITS[0], "kv_norm": mla.KV_NORMS[0], "svd": mla.SVDS[0]}
        given = {"kv_lora_rank": kv_lora_rank, "rope_fit": rope_fit, "kv_norm": kv_norm, "svd": svd}
        for name, value in given.items():
            if value is not None and value != defaults.get(name):
                raise ValueError(f"{name}={value!r} applies to --to mla only, not --to {to}")


def convert_checkpoint(
    checkpoint_dir: Path,
    to: str,
    out_dir: Path,
    n_query_groups: int | None = None,
    kv_lora_rank: int | None = None,
    rope_fit: str = "complex",
    kv_norm: str = "calibrated",
    svd: str = "exact",
    calibration_data: Path | None = None,
    calibration_tokens: int = 8192,
    calibration_seq_length: int = 256,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Converts the MHA checkpoint in `checkpoint_dir` and writes it to `out_dir` (which must not exist).

    Returns the report also written to ``out_dir/conversion.json``: settings, per-layer errors, the mean
    next-token loss of source and converted model on the calibration windows, KV bytes per token (fp32).

    Raises:
        ValueError: a source that is not MHA, an unknown attention layout, a target size out of range,
            an existing out_dir.
        FileNotFoundError: not a litgpt checkpoint folder.
    """
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT

    import litgpt_mka.convert.gqa as gqa  # the modules, not the package (whose __init__ imports this one)
    import litgpt_mka.convert.mla as mla
    from litgpt_mka.convert.checkpoint import attention_inputs_and_loss, calibration_windows, load_source, loss_on
    from litgpt_mka.convert.checkpoint import new_out_dir, write_checkpoint
    from litgpt_mka.measure.kv_cache_size import kv_cache_bytes_per_token

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if to not in TARGETS:
        raise ValueError(f"to={to!r} must be one of {list(TARGETS)}")
    _check_choice("rope_fit", rope_fit, mla.ROPE_FITS)
    _check_choice("kv_norm", kv_norm, mla.KV_NORMS)
    _check_choice("svd", svd, mla.SVDS)
    for name, value in (("calibration_tokens", calibration_tokens), ("calibration_seq_length", calibration_seq_length)):
        positive_int(name, value)
    check_options_apply(to, n_query_groups, kv_lora_rank, rope_fit, kv_norm, svd)
    out_dir = new_out_dir(out_dir, checkpoint_dir)
    started = time.perf_counter()
    config, state, model = load_source(checkpoint_dir)
    if to == "mla":
        if kv_lora_rank is None:
            raise ValueError(f"--to mla needs --kv_lora_rank, an integer in [1, {mla.max_kv_lora_rank(config)}]")
        overrides = mla.mla_config_overrides(config, kv_lora_rank)
    else:
        groups = 1 if to == "mqa" else n_query_groups
        if to == "mqa" and n_query_groups not in (None, 1):
            raise ValueError(f"n_query_groups={n_query_groups} contradicts --to mqa (1 key/value head); use --to gqa")
        if groups is None:
            raise ValueError(f"--to gqa needs --n_query_groups, a divisor of n_head={config.n_head}")
        overrides = gqa.gqa_config_overrides(config, groups)
    target_config = Config(**{**asdict(config), **overrides})
    log(f"convert: {checkpoint_dir} ({config.name}, {config.n_layer} layers) -> {to} {_describe(overrides)}")

    seq_length = min(calibration_seq_length, config.block_size - 1)
    windows, origin = calibration_windows(checkpoint_dir, model, calibration_data, calibration_tokens, seq_length, seed)
    log(f"calibration: {origin}")
    inputs, source_loss = attention_inputs_and_loss(model, windows)

    new_state = {name: t for name, t in state.items() if ".attn." not in name}
    layers = []
    for i in range(config.n_layer):
        prefix = f"transformer.h.{i}.attn."
        attn_state = {name[len(prefix):]: t for name, t in state.items() if name.startswith(prefix)}
        if to == "mla":
            converted, errors = mla.convert_layer(
                attn_state, config, kv_lora_rank, inputs[i], rope_fit=rope_fit, kv_norm=kv_norm, svd=svd, seed=seed
            )
        else:
            converted, errors = gqa.convert_layer(attn_state, config, overrides["n_query_groups"])
        new_state.update({prefix + name: t for name, t in converted.items()})
        layers.append(errors)
        log(f"[layer {i + 1}/{config.n_layer}] " + ", ".join(f"{k} {v:.4f}" for k, v in errors.items()))

    converted_model = GPT(target_config)
    converted_model.load_state_dict(new_state, strict=True)  # every parameter of the target, nothing else
    converted_loss = loss_on(converted_model.float().eval(), windows)
    log(f"calibration loss (nats/token): source {source_loss:.4f}, converted {converted_loss:.4f}")
    report = {
        "source": str(checkpoint_dir),
        "to": to,
        "config_overrides": overrides,
        "settings": {
            "rope_fit": rope_fit, "kv_norm": kv_norm, "svd": svd, "seed": seed,
            "calibration_data": None if calibration_data is None else str(calibration_data),
            "calibration_tokens": calibration_tokens, "calibration_seq_length": seq_length,
        } if to == "mla" else {"seed": seed, "calibration_data": None if calibration_data is None else str(calibration_data)},
        "calibration": origin,
        "calibration_loss": {"source": source_loss, "converted": converted_loss},
        "kv_cache_bytes_per_token_fp32": {
            "source": kv_cache_bytes_per_token(config, torch.float32),
            "converted": kv_cache_bytes_per_token(target_config, torch.float32),
        },
        "layers": layers,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_checkpoint(out_dir, checkpoint_dir, target_config, new_state, report)
    log(f"wrote {out_dir}")
    return report


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {list(allowed)}")


def _describe(overrides: dict[str, Any]) -> str:
    latent = overrides.get("latent_attention")
    if latent:
        return ", ".join(f"{k}={v}" for k, v in latent.items())
    return f"n_query_groups={overrides['n_query_groups']}"


def convert(
    checkpoint_dir: Path,
    *,
    to: Literal["gqa", "mqa", "mla"],
    out_dir: Path,
    n_query_groups: int | None = None,
    kv_lora_rank: int | None = None,
    rope_fit: Literal["complex", "mean"] = "complex",
    kv_norm: Literal["calibrated", "ones"] = "calibrated",
    svd: Literal["exact", "randomized"] = "exact",
    calibration_data: Path | None = None,
    calibration_tokens: int = 8192,
    calibration_seq_length: int = 256,
    seed: int = 0,
) -> int:
    """Convert a trained MHA litgpt checkpoint into GQA, MQA or MLA (see litgpt_mka/convert/).

    Args:
        checkpoint_dir: The source litgpt checkpoint folder (lit_model.pth, model_config.yaml, tokenizer files).
        to: Target attention: gqa (needs --n_query_groups), mqa, mla (needs --kv_lora_rank).
        out_dir: The new checkpoint folder; must not exist (written under a temporary name, then renamed).
        n_query_groups: GQA key/value heads, a divisor of n_head.
        kv_lora_rank: MLA latent width L, in [1, min(n_embd, n_head x (head_size - rope_n_elem + head_size))].
        rope_fit: How one shared RoPE key replaces the per-head ones: complex (best rank-1 fit per frequency,
            per-head gains folded into the queries) or mean.
        kv_norm: kv_a_norm weight: calibrated (fitted on calibration activations) or ones.
        svd: exact (torch.linalg.svd) or randomized (torch.svd_lowrank, for large models).
        calibration_data: A .txt file for calibration (documents separated by <|endoftext|> lines); default:
            sequences sampled from the source model.
        calibration_tokens: Calibration tokens (MLA norm fit and the reported calibration loss).
        calibration_seq_length: Tokens per calibration window (capped at block_size - 1).
        seed: Seed of the sampled calibration sequences and of the randomized SVD.
    """
    try:
        convert_checkpoint(
            checkpoint_dir, to, out_dir, n_query_groups=n_query_groups, kv_lora_rank=kv_lora_rank,
            rope_fit=rope_fit, kv_norm=kv_norm, svd=svd, calibration_data=calibration_data,
            calibration_tokens=calibration_tokens, calibration_seq_length=calibration_seq_length, seed=seed,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka convert: error: {error}", file=sys.stderr)
        return 2
    return 0
