"""The runs of a comparison: which configs and seeds, with which ``litgpt pretrain`` arguments.

Fairness rule: every setting other than the model must be the same for all configs, so that the
variants see the same data in the same order, the same token budget, optimizer and schedule.
:func:`check_identical_training_settings` compares the YAMLs after the shared overrides and raises
``ValueError`` naming every key that differs. Ignored in that check: ``model_config`` and
``model_name`` (what is compared), and the keys that ``compare`` itself sets for every run:
``out_dir``, ``seed``, ``resume``, ``logger_name``, ``eval.*``, ``train.log_interval`` (and the
keys given as shared overrides).

Arguments that ``compare`` adds to every run, after the YAML and the shared overrides::

    --train.log_interval 1                  every iteration's iter_time is logged (throughput)
    --eval.interval 1000000000 --eval.initial_validation false --eval.final_validation false
                                            litgpt's own validation off: the exact evaluation replaces it
    --logger_name csv  --seed SEED  --resume auto
    --out_dir RUN_DIR/checkpoints           added by the worker, so that the spec does not depend on where OUT is
    --data.train_path/--data.val_path/--data.seed/--tokenizer_dir  resolved to absolute paths

The model-initialisation seed is the run's seed (litgpt ``--seed``); the data seed (``--data.seed``,
the order of training windows) is the same for every run.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litgpt_mka.presets import load_pretrain_yaml

TEXT_CORPUS = "litgpt_mka.data.TextCorpus"
NEVER = 1_000_000_000  # eval.interval that no run reaches
PRECISIONS = ("bf16-true", "bf16-mixed", "32-true")  # what `litgpt pretrain --precision` accepts
DECODE_DTYPES = ("float32", "bfloat16", "float16")
DECODE_WARMUP_TOKENS = 2  # the default `warmup_tokens` of litgpt_mka.measure.decode_speed.measure_decode_tokens_per_second

# top-level YAML keys that may differ between configs (the model) or that compare sets for every run
_NOT_SHARED = ("model_config", "model_name", "out_dir", "seed", "resume", "logger_name", "eval")


@dataclass(frozen=True)
class CompareOptions:
    """The options of `litgpt-mka compare` (documented in :func:`litgpt_mka.cli.compare`)."""

    configs: list[Path]
    out_dir: Path = Path("out/compare")
    seeds: list[int] = field(default_factory=lambda: [42])
    train_path: Path | None = None
    val_path: Path | None = None
    tokenizer_dir: Path | None = None
    max_tokens: int | None = None
    max_seq_length: int | None = None
    precision: str | None = None
    devices: int | str | None = None
    data_seed: int | None = None
    eval_interval: int | None = None
    pretrain_args: list[str] = field(default_factory=list)
    throughput_skip_iters: int = 5
    context_length: int = 256
    decode_batch_size: int = 1
    decode_new_tokens: int = 32
    decode_dtype: str | None = None
    eval_batch_size: int = 4
    keep_step_checkpoints: bool = False
    plots: bool = True


@dataclass(frozen=True)
class SharedSettings:
    """Settings that every run of the comparison shares, resolved (absolute paths)."""

    train_path: Path
    val_path: Path
    tokenizer_dir: Path
    cache_dir: Path | None
    data_seed: int
    data_class_given: bool  # the YAMLs already use TextCorpus (else `--data TextCorpus` is passed)


@dataclass(frozen=True)
class RunPlan:
    """One config x seed."""

    index: int  # 1-based position in the comparison
    name: str  # "<config stem>-seed<seed>", the run's folder name
    variant: str  # the config's file stem
    config_path: Path
    config_sha256: str
    seed: int
    run_dir: Path
    pretrain_args: list[str]
    measure: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """What defines the run; stored as ``spec.json`` and compared on reruns."""
        return {
            "name": self.name,
            "variant": self.variant,
            "config_path": str(self.config_path),
            "config_sha256": self.config_sha256,
            "seed": self.seed,
            "pretrain_args": self.pretrain_args,
            "measure": self.measure,
        }

    def spec_sha256(self) -> str:
        return spec_sha256(self.spec())


def spec_sha256(spec: dict[str, Any]) -> str:
    """The sha256 of a run's spec, as canonical JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- validation
def _require_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name}={value!r} must be a positive integer")


def validate_options(options: CompareOptions) -> None:
    """Raises ValueError (or FileNotFoundError) naming the first invalid option."""
    if not options.configs:
        raise ValueError("configs=[] is empty; give one or more `litgpt pretrain` YAML files (--configs a.yaml b.yaml)")
    for path in options.configs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"configs: {str(path)!r} is not a file")
    stems = [Path(p).stem for p in options.configs]
    if len(set(stems)) != len(stems):
        raise ValueError(f"configs={[str(p) for p in options.configs]} repeat a file name; run folders are named by it")
    if not options.seeds:
        raise ValueError("seeds=[] is empty; give one or more integers (--seeds 1 2 3)")
    if len(set(options.seeds)) != len(options.seeds):
        raise ValueError(f"seeds={options.seeds} repeat a seed")
    for name in ("max_tokens", "max_seq_length", "eval_interval", "context_length", "decode_batch_size",
                 "decode_new_tokens", "eval_batch_size"):
        _require_positive(name, getattr(options, name))
    if options.throughput_skip_iters < 0:
        raise ValueError(f"throughput_skip_iters={options.throughput_skip_iters} must be >= 0")
    if options.precision is not None and options.precision not in PRECISIONS:
        raise ValueError(f"precision={options.precision!r} is not one of {PRECISIONS} (or null for litgpt's default)")
    if options.decode_dtype is not None and options.decode_dtype not in DECODE_DTYPES:
        raise ValueError(f"decode_dtype={options.decode_dtype!r} is not one of {DECODE_DTYPES} (or null)")
    for name in ("train_path", "val_path", "tokenizer_dir"):
        value = getattr(options, name)
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{name}={str(value)!r} does not exist")


# --------------------------------------------------------------------------------------- shared settings
def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _data_init_args(yaml_config: dict) -> dict:
    data = yaml_config.get("data")
    if not isinstance(data, dict):
        return {}
    return data.get("init_args") or {}


def _uses_text_corpus(yaml_config: dict) -> bool:
    data = yaml_config.get("data")
    return isinstance(data, dict) and data.get("class_path") in (TEXT_CORPUS, "TextCorpus")


def shared_settings(options: CompareOptions, first_yaml: dict, first_path: Path) -> SharedSettings:
    """Data, tokenizer and data seed for every run: the overrides, else the (first) YAML's values.

    Raises:
        ValueError: the data is not a TextCorpus and no --train_path/--val_path replace it, or no tokenizer.
    """
    init_args = _data_init_args(first_yaml) if _uses_text_corpus(first_yaml) else {}
    paths = {}
    for name in ("train_path", "val_path"):
        value = getattr(options, name) or init_args.get(name)
        if value is None:
            raise ValueError(
                f"{name} is not set: {first_path} does not read a {TEXT_CORPUS} with data.{name}; compare evaluates"
                f" on that validation text, so pass --train_path and --val_path"
            )
        paths[name] = _absolute(value)
    tokenizer_dir = options.tokenizer_dir or first_yaml.get("tokenizer_dir")
    if tokenizer_dir is None:
        raise ValueError(f"tokenizer_dir is not set in {first_path}; pass --tokenizer_dir")
    data_seed = options.data_seed if options.data_seed is not None else init_args.get("seed", 42)
    cache_dir = init_args.get("cache_dir")
    return SharedSettings(
        train_path=paths["train_path"],
        val_path=paths["val_path"],
        tokenizer_dir=_absolute(tokenizer_dir),
        cache_dir=None if cache_dir is None else _absolute(cache_dir),
        data_seed=int(data_seed),
        data_class_given=_uses_text_corpus(first_yaml),
    )


# --------------------------------------------------------------------------------------------- fairness
def _flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {prefix: mapping}
    flat = {}
    for key, value in mapping.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _overridden_keys(options: CompareOptions) -> set[str]:
    keys = {"train.log_interval", "tokenizer_dir", "data.class_path"}
    keys |= {f"data.init_args.{k}" for k in ("train_path", "val_path", "seed", "cache_dir")}
    for option, key in (("max_tokens", "train.max_tokens"), ("max_seq_length", "train.max_seq_length"),
                        ("precision", "precision"), ("devices", "devices"), ("eval_interval", "train.save_interval")):
        if getattr(options, option) is not None:
            keys.add(key)
    return keys


def training_settings(yaml_config: dict, options: CompareOptions) -> dict[str, Any]:
    """The flattened YAML without the model and without what compare sets for every run."""
    flat = _flatten({k: v for k, v in yaml_config.items() if k not in _NOT_SHARED})
    overridden = _overridden_keys(options)
    return {k: v for k, v in flat.items() if k not in overridden}


def check_identical_training_settings(yamls: dict[Path, dict], options: CompareOptions) -> None:
    """Raises ValueError listing every training setting that differs between the configs."""
    settings = {path: training_settings(config, options) for path, config in yamls.items()}
    (first_path, first), *others = settings.items()
    differences = []
    for path, other in others:
        for key in sorted(set(first) | set(other)):
            mine, theirs = first.get(key, "<unset>"), other.get(key, "<unset>")
            if mine != theirs:
                differences.append(f"{key} ({first_path.name}: {mine!r}, {path.name}: {theirs!r})")
    if differences:
        raise ValueError(
            "the configs must share every setting except the model, so that the variants train on the same data,"
            " budget, optimizer and schedule; these differ: " + "; ".join(differences)
            + ". Make the YAMLs agree, or pass the setting as a shared option (e.g. --max_tokens)."
        )


# ------------------------------------------------------------------------------------------------ runs
def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pretrain_arguments(config_path: Path, seed: int, options: CompareOptions, shared: SharedSettings) -> list[str]:
    """The `litgpt pretrain` arguments of one run but ``--out_dir`` (see the module docstring)."""
    args = ["--config", str(config_path)]
    if not shared.data_class_given:
        args += ["--data", TEXT_CORPUS]
    args += ["--data.train_path", str(shared.train_path), "--data.val_path", str(shared.val_path)]
    args += ["--data.seed", str(shared.data_seed), "--tokenizer_dir", str(shared.tokenizer_dir)]
    for option, flag in (("max_tokens", "--train.max_tokens"), ("max_seq_length", "--train.max_seq_length"),
                         ("precision", "--precision"), ("devices", "--devices"), ("eval_interval", "--train.save_interval")):
        value = getattr(options, option)
        if value is not None:
            args += [flag, str(value)]
    args += list(options.pretrain_args)
    args += ["--train.log_interval", "1", "--eval.interval", str(NEVER)]
    args += ["--eval.initial_validation", "false", "--eval.final_validation", "false", "--logger_name", "csv"]
    args += ["--seed", str(seed), "--resume", "auto"]
    return args


def measure_settings(options: CompareOptions, decode_dtype: str) -> dict[str, Any]:
    return {
        "throughput_skip_iters": options.throughput_skip_iters,
        "context_length": options.context_length,
        "decode_batch_size": options.decode_batch_size,
        "decode_new_tokens": options.decode_new_tokens,
        "decode_dtype": decode_dtype,
        "eval_batch_size": options.eval_batch_size,
    }


def check_decode_fits_block_size(yamls: dict[Path, dict], options: CompareOptions) -> None:
    """Refuses, before any training, a decode measurement longer than a model's block_size.

    The measurement prefills `context_length` tokens and decodes `decode_new_tokens` after
    `DECODE_WARMUP_TOKENS` untimed ones (litgpt_mka.measure.decode_speed.measure_decode_tokens_per_second).
    """
    needed = options.context_length + options.decode_new_tokens + DECODE_WARMUP_TOKENS
    for path, yaml in yamls.items():
        block_size = (yaml.get("model_config") or {}).get("block_size")
        if block_size is not None and needed > block_size:
            raise ValueError(
                f"context_length={options.context_length} + decode_new_tokens={options.decode_new_tokens}"
                f" + {DECODE_WARMUP_TOKENS} warm-up tokens = {needed} exceeds block_size={block_size} of {path.name};"
                f" use at most context_length={block_size - options.decode_new_tokens - DECODE_WARMUP_TOKENS}"
            )


def plan_runs(options: CompareOptions, decode_dtype: str) -> tuple[SharedSettings, list[RunPlan]]:
    """Validates the options and the configs; every config x seed as a RunPlan, configs outermost."""
    validate_options(options)
    config_paths = [_absolute(p) for p in options.configs]
    yamls = {path: load_pretrain_yaml(path) for path in config_paths}
    check_identical_training_settings(yamls, options)
    check_decode_fits_block_size(yamls, options)
    shared = shared_settings(options, yamls[config_paths[0]], config_paths[0])
    measure = measure_settings(options, decode_dtype)
    runs_dir = _absolute(options.out_dir) / "runs"
    runs = []
    for path in config_paths:
        sha = file_sha256(path)
        for seed in options.seeds:
            name = f"{path.stem}-seed{seed}"
            run_dir = runs_dir / name
            runs.append(RunPlan(
                index=len(runs) + 1, name=name, variant=path.stem, config_path=path, config_sha256=sha, seed=seed,
                run_dir=run_dir, pretrain_args=pretrain_arguments(path, seed, options, shared), measure=measure,
            ))
    return shared, runs
