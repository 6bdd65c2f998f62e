"""The ``litgpt-mka`` command (jsonargparse, like litgpt's): ``litgpt-mka compare ...``.

List options take several values after one flag, as shells expand globs
(``--configs config_hub/pretrain/pythia-14m-*.yaml --seeds 1 2 3``); the JSON form
(``--seeds '[1, 2, 3]'``) works too.
"""

import json
import sys
from pathlib import Path

# list options -> type of their values (for the "several values after one flag" form)
_LIST_OPTIONS = {"--configs": str, "--seeds": int}


def compare(
    configs: list[Path] | None = None,
    out_dir: Path = Path("out/compare"),
    seeds: list[int] | None = None,
    train_path: Path | None = None,
    val_path: Path | None = None,
    tokenizer_dir: Path | None = None,
    max_tokens: int | None = None,
    max_seq_length: int | None = None,
    precision: str | None = None,
    devices: int | str | None = None,
    data_seed: int | None = None,
    eval_interval: int | None = None,
    pretrain_args: list[str] | None = None,
    throughput_skip_iters: int = 5,
    context_length: int = 256,
    decode_batch_size: int = 1,
    decode_new_tokens: int = 32,
    decode_dtype: str | None = None,
    eval_batch_size: int = 4,
    keep_step_checkpoints: bool = False,
    plots: bool = True,
) -> int:
    """Train every config x seed with `litgpt pretrain`, evaluate on the whole validation text, measure, report.

    Writes OUT_DIR/results.json, results.csv, report.md and PNG plots; rerunning the same command skips
    finished runs and resumes interrupted ones (see litgpt_mka/compare/__init__.py). Exit status: 0 when
    every run finished, 1 when any failed (the others still run), 130 on Ctrl-C.

    Args:
        configs: `litgpt pretrain` YAML files, one per variant; every setting but the model must agree.
        out_dir: Output folder (runs/ and the report).
        seeds: Model-initialisation seeds (litgpt --seed); each config runs once per seed. Default: [42].
        train_path: Training text for every run (TextCorpus data.train_path); default: the YAMLs'.
        val_path: Validation text for every run (TextCorpus data.val_path); default: the YAMLs'.
        tokenizer_dir: Tokenizer folder for every run; default: the YAMLs'.
        max_tokens: Token budget per run (train.max_tokens); default: the YAMLs'.
        max_seq_length: Tokens per training window (train.max_seq_length); default: the YAMLs'.
        precision: litgpt precision (bf16-mixed, bf16-true, 32-true); default: the YAMLs' (null: litgpt's choice).
        devices: litgpt devices; default: the YAMLs'.
        data_seed: Seed of the training-window order, the same for every run; default: the YAMLs' data.seed.
        eval_interval: Optimizer steps between checkpoints, each a point of the validation curve and a resume
            point (sets train.save_interval); default: the YAMLs' train.save_interval.
        pretrain_args: More `litgpt pretrain` arguments for every run, e.g. '["--train.lr_warmup_steps=5"]'.
        throughput_skip_iters: Iterations at the start of every training process left out of tokens/s.
        context_length: Prompt tokens before decoding is timed, and the context of the KV-cache size.
        decode_batch_size: Sequences decoded together (and the batch of the KV-cache size).
        decode_new_tokens: Timed decode steps.
        decode_dtype: float32, bfloat16 or float16 for decoding and the KV cache; default: the dtype of
            `litgpt generate`'s default precision on this machine.
        eval_batch_size: Validation windows per forward pass.
        keep_step_checkpoints: Keep the step-* checkpoints of finished runs (default: only final/ stays).
        plots: Write the PNG plots (needs matplotlib).
    """
    from litgpt_mka.compare.plan import CompareOptions
    from litgpt_mka.compare.runner import prepare, run_comparison

    options = CompareOptions(
        configs=list(configs or []), out_dir=out_dir, seeds=list(seeds) if seeds is not None else [42],
        train_path=train_path, val_path=val_path, tokenizer_dir=tokenizer_dir, max_tokens=max_tokens,
        max_seq_length=max_seq_length, precision=precision, devices=devices, data_seed=data_seed,
        eval_interval=eval_interval, pretrain_args=list(pretrain_args or []), throughput_skip_iters=throughput_skip_iters,
        context_length=context_length, decode_batch_size=decode_batch_size, decode_new_tokens=decode_new_tokens,
        decode_dtype=decode_dtype, eval_batch_size=eval_batch_size, keep_step_checkpoints=keep_step_checkpoints,
        plots=plots,
    )
    try:
        comparison = prepare(options)
    except (ValueError, FileNotFoundError) as error:
        print(f"litgpt-mka compare: error: {error}", file=sys.stderr)
        return 2
    return run_comparison(comparison)


def join_list_options(argv: list[str]) -> list[str]:
    """``--configs a b c`` -> ``--configs=["a", "b", "c"]`` (values up to the next ``--`` option)."""
    joined, i = [], 0
    while i < len(argv):
        flag = argv[i]
        if flag not in _LIST_OPTIONS:
            joined.append(flag)
            i += 1
            continue
        values, i = [], i + 1
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        if len(values) == 1 and values[0].lstrip().startswith("["):
            joined += [flag, values[0]]  # already a JSON/YAML list
        else:
            joined.append(f"{flag}={json.dumps([_LIST_OPTIONS[flag](v) for v in values])}")
    return joined


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    from litgpt_mka.convert import convert

    argv = sys.argv[1:] if argv is None else argv
    sys.exit(CLI({"compare": compare, "convert": convert}, args=join_list_options(argv)))


if __name__ == "__main__":
    main()
