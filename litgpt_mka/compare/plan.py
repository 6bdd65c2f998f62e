"""The runs of a comparison: which configs and seeds, with which ``litgpt pretrain`` arguments.

Fairness rule: every setting other than the model must be the same for all configs, so that the
variants see the same data in the same order, the same token budget, optimizer and schedule.
:func:`check_identical_training_settings` compares the YAMLs after the shared overrides and raises
``ValueError`` naming every key that differs. Ignored in that check: ``model_config`` and
``model_name`` (what is compared), the logger (``logger_name``: it records, it does not train), the keys that
``compare`` itself sets for every run: ``out_dir``, ``seed``, ``resume``, ``eval.*``, ``train.log_interval`` (and
the keys given as shared overrides; with ``--learning_rates``, ``optimizer.init_args.lr``).

Arguments that ``compare`` adds to every run, after the YAML and the shared overrides::

    --train.log_interval 1                  every iteration's iter_time is logged (throughput)
    --eval.interval 1000000000 --eval.initial_validation false --eval.final_validation false
                                            litgpt's own validation off: the exact evaluation replaces it
    --logger_name NAME                      the YAML's own logger (litgpt's default, tensorboard, if it names none)
    --seed SEED  --resume auto
    --config '{"optimizer": ...}'           with --learning_rates: the YAML's optimizer, its lr the run's rate
                                            (litgpt_mka.compare.learning_rates.optimizer_with_rate)
    --out_dir RUN_DIR/checkpoints           added by the worker, so that the spec does not depend on where OUT is
    --data.train_path/--data.val_path/--data.seed/--tokenizer_dir  resolved to absolute paths

The logger is the user's (TensorBoard, W&B, ...); compare reads litgpt's per-iteration metrics from a CSV file,
``RUN_DIR/checkpoints/logs/csv/version_*/metrics.csv``, which the worker asks for beside that logger (the plugin adds a
``CSVLogger`` to the training's Fabric: ``litgpt_mka.plugin.litgpt_internals.pretrain``), unless the logger is CSV.

The model-initialisation seed is the run's seed (litgpt ``--seed``); the data seed (``--data.seed``,
the order of training windows) is the same for every run. ``--data.val_path`` is the primary validation
text; the others are evaluated by the evaluation worker from the spec's ``val_paths``.

Before any training: the reference variant is chosen (:func:`reference_variant`), a decode measurement
that does not fit a model's block_size is refused, and curves of fewer than 8 points are warned about
(:func:`warn_short_curves`).
"""

import hashlib
import inspect
import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litgpt_mka.compare.layout import RunPlan
from litgpt_mka.compare.learning_rates import optimizer_with_rate, rate_grids, run_name
from litgpt_mka.compare.options import MIN_CURVE_POINTS, CompareOptions, val_paths, validate
from litgpt_mka.compare.records import MeasureSettings, RunSpec
from litgpt_mka.measure.decode_speed import measure_decode_tokens_per_second
from litgpt_mka.presets import load_pretrain_yaml

TEXT_CORPUS = "litgpt_mka.data.TextCorpus"
NEVER = 1_000_000_000  # eval.interval that no run reaches
LITGPT_DEFAULT_LOGGER = "tensorboard"  # litgpt.pretrain.setup's default `logger_name` (tested equal)
# untimed decode steps before the timed ones: the decode measurement's own default, read from its signature
DECODE_WARMUP_TOKENS: int = inspect.signature(measure_decode_tokens_per_second).parameters["warmup_tokens"].default

# top-level YAML keys that may differ between configs (the model) or that compare sets for every run
_NOT_SHARED = ("model_config", "model_name", "out_dir", "seed", "resume", "logger_name", "eval")


@dataclass(frozen=True)
class SharedSettings:
    """Settings that every run of the comparison shares, resolved (absolute paths)."""

    train_path: Path
    val_paths: list[Path]  # the primary (litgpt's data.val_path) first
    tokenizer_dir: Path
    cache_dir: Path | None
    data_seed: int
    data_class_given: bool  # the YAMLs already use TextCorpus (else `--data TextCorpus` is passed)


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
    for name, given in (("train_path", [options.train_path] if options.train_path else []),
                        ("val_path", val_paths(options))):
        values = given or ([init_args[name]] if init_args.get(name) is not None else [])
        if not values:
            raise ValueError(
                f"{name} is not set: {first_path} does not read a {TEXT_CORPUS} with data.{name}; compare evaluates"
                f" on that validation text, so pass --train_path and --val_path"
            )
        paths[name] = [_absolute(value) for value in values]
    tokenizer_dir = options.tokenizer_dir or first_yaml.get("tokenizer_dir")
    if tokenizer_dir is None:
        raise ValueError(f"tokenizer_dir is not set in {first_path}; pass --tokenizer_dir")
    data_seed = options.data_seed if options.data_seed is not None else init_args.get("seed", 42)
    cache_dir = init_args.get("cache_dir")
    return SharedSettings(
        train_path=paths["train_path"][0],
        val_paths=paths["val_path"],
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
    if options.learning_rates is not None or options.config_learning_rates is not None:
        keys.add("optimizer.init_args.lr")
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


def pretrain_arguments(config_path: Path, seed: int, options: CompareOptions, shared: SharedSettings,
                       yaml_config: dict, learning_rate: float | None = None) -> list[str]:
    """The `litgpt pretrain` arguments of one run but ``--out_dir`` (see the module docstring); `yaml_config` is the
    config's YAML, read for its logger and optimizer."""
    args = ["--config", str(config_path)]
    if not shared.data_class_given:
        args += ["--data", TEXT_CORPUS]
    args += ["--data.train_path", str(shared.train_path), "--data.val_path", str(shared.val_paths[0])]
    args += ["--data.seed", str(shared.data_seed), "--tokenizer_dir", str(shared.tokenizer_dir)]
    for option, flag in (("max_tokens", "--train.max_tokens"), ("max_seq_length", "--train.max_seq_length"),
                         ("precision", "--precision"), ("devices", "--devices"), ("eval_interval", "--train.save_interval")):
        value = getattr(options, option)
        if value is not None:
            args += [flag, str(value)]
    args += list(options.pretrain_args)
    args += ["--train.log_interval", "1", "--eval.interval", str(NEVER)]
    args += ["--eval.initial_validation", "false", "--eval.final_validation", "false"]
    args += ["--logger_name", str(yaml_config.get("logger_name", LITGPT_DEFAULT_LOGGER))]
    args += ["--seed", str(seed), "--resume", "auto"]
    if learning_rate is not None:  # an inline config (jsonargparse reads a YAML/JSON string as --config's value)
        args += ["--config", json.dumps({"optimizer": optimizer_with_rate(yaml_config, learning_rate)})]
    return args


def measure_settings(options: CompareOptions, decode_dtype: str) -> MeasureSettings:
    return MeasureSettings(
        throughput_skip_iters=options.throughput_skip_iters,
        context_length=options.context_length,
        decode_batch_size=options.decode_batch_size,
        decode_new_tokens=options.decode_new_tokens,
        decode_dtype=decode_dtype,
        eval_batch_size=options.eval_batch_size,
    )


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


# ------------------------------------------------------------------------------------ reference, curve
def is_mha(yaml_config: dict) -> bool:
    """Whether a pretrain YAML's model is MHA, every query head with its own key/value head (the registry's
    :meth:`~litgpt_mka.attention.registry.Variant.is_mha`).

    Built as `litgpt pretrain` builds it (``Config(**model_config)``, else ``Config.from_name(model_name)``);
    a config that litgpt refuses is not MHA (its run will fail and say why).
    """
    from litgpt.config import Config

    import litgpt_mka  # noqa: F401  (the plugin's Config fields, also without the .pth hook)
    from litgpt_mka.attention import registry

    try:
        model_config = yaml_config.get("model_config")
        config = Config(**model_config) if model_config else Config.from_name(yaml_config["model_name"])
    except (ValueError, AssertionError, TypeError, KeyError):
        return False
    return registry.entry_of(config).is_mha(config)


def reference_variant(yamls: dict[Path, dict], options: CompareOptions) -> str | None:
    """`options.reference`, else the first config whose model is MHA (:func:`is_mha`), else None."""
    if options.reference is not None:
        return options.reference
    return next((path.stem for path, config in yamls.items() if is_mha(config)), None)


def world_size(yaml_config: dict, options: CompareOptions) -> int:
    """The processes litgpt pretrain will train in: devices x num_nodes (``devices: auto``: the visible GPUs, 1
    without)."""
    devices = options.devices if options.devices is not None else yaml_config.get("devices", "auto")
    try:
        return int(devices) * int(yaml_config.get("num_nodes", 1))
    except (TypeError, ValueError):
        import torch

        return max(torch.cuda.device_count(), 1)


def expected_curve_points(yaml_config: dict, options: CompareOptions) -> tuple[int, int] | None:
    """(validation-curve points, optimizer steps) of a run, as litgpt pretrain will schedule it; None if unknown.

    litgpt: ``max_iters = (max_tokens // devices) // (micro_batch_size * max_seq_length)``, one optimizer step
    every ``(global_batch_size // devices) // micro_batch_size`` iterations, a ``step-*`` checkpoint every
    ``save_interval`` steps, and ``final`` (a point of its own unless it holds the last step checkpoint's
    iteration). ``devices: auto`` counts the visible GPUs (1 without). ``--pretrain_args`` are not read.
    """
    train = yaml_config.get("train") or {}
    max_tokens = options.max_tokens or train.get("max_tokens")
    seq = options.max_seq_length or train.get("max_seq_length") or (yaml_config.get("model_config") or {}).get("block_size")
    interval = options.eval_interval or train.get("save_interval")
    micro, global_batch = train.get("micro_batch_size", 4), train.get("global_batch_size", 64)
    if not (max_tokens and seq and interval):
        return None
    world = world_size(yaml_config, options)
    iterations = (max_tokens // world) // (micro * seq)
    accumulation = max((global_batch // world) // micro, 1)
    steps = iterations // accumulation
    saved = steps // interval
    return saved + (iterations != saved * interval * accumulation), steps


def warn_accumulated_throughput(yaml_config: dict, path: Path, options: CompareOptions) -> str | None:
    """Warns (and returns the message) when the runs accumulate gradients: litgpt then logs only the last iteration
    of each optimizer step (``log_interval`` counts steps), whose time holds the optimizer step, so the report's
    training tokens/s (read from the logged iterations) is not the mean over all iterations."""
    train = yaml_config.get("train") or {}
    micro, global_batch = train.get("micro_batch_size", 4), train.get("global_batch_size", 64)
    world = world_size(yaml_config, options)
    accumulation = (global_batch // world) // micro
    if accumulation <= 1:
        return None
    message = (f"{path.name} accumulates gradients over {accumulation} iterations per optimizer step"
               f" (global_batch_size {global_batch}, micro_batch_size {micro}, {world} device(s)): litgpt logs only"
               " each step's last iteration, whose time includes the optimizer step, so the report's training"
               " tokens/s reads those iterations only; compare the variants' ratios, not the absolute numbers")
    warnings.warn(message, stacklevel=2)
    return message


def warn_short_curves(yaml_config: dict, path: Path, options: CompareOptions) -> str | None:
    """Warns (and returns the message) when the runs' validation curves would have fewer than MIN_CURVE_POINTS points."""
    expected = expected_curve_points(yaml_config, options)
    if expected is None or expected[0] >= MIN_CURVE_POINTS:
        return None
    points, steps = expected
    advice = (f"use --eval_interval {steps // MIN_CURVE_POINTS} or less" if steps >= MIN_CURVE_POINTS
              else f"even --eval_interval 1 gives {steps}: raise --max_tokens")
    message = (f"each run's validation curve will have {points} points, fewer than {MIN_CURVE_POINTS}: {path.name}"
               f" trains {steps} optimizer steps with a checkpoint every eval_interval (train.save_interval) steps;"
               f" {advice}")
    warnings.warn(message, stacklevel=2)
    return message


def grids_of(options: CompareOptions) -> dict[str, list[float | None]]:
    """Each config's learning rates (its file stem -> rates; ``[None]``: the YAML's own rate)."""
    return rate_grids([Path(p).stem for p in options.configs], options.learning_rates, options.config_learning_rates)


def plan_runs(options: CompareOptions, decode_dtype: str, chosen: dict[str, float] | None = None,
              ) -> tuple[SharedSettings, list[RunPlan], str | None]:
    """Validates the options and the configs; every run as a RunPlan; the reference.

    The runs: per config (in the order given), every rate of its grid x seed (rates outer, seeds inner). With
    ``--selection_seeds`` only those seeds run over the grid; then every other seed, seed by seed across the configs,
    at its config's rate in `chosen` (variant -> rate: :func:`~litgpt_mka.compare.learning_rates.chosen_rates`); a
    config not in `chosen` has no such runs yet (:func:`waiting_runs`).
    """
    validate(options)
    config_paths = [_absolute(p) for p in options.configs]
    yamls = {path: load_pretrain_yaml(path) for path in config_paths}
    check_identical_training_settings(yamls, options)
    check_decode_fits_block_size(yamls, options)
    shared = shared_settings(options, yamls[config_paths[0]], config_paths[0])
    warn_short_curves(yamls[config_paths[0]], config_paths[0], options)
    warn_accumulated_throughput(yamls[config_paths[0]], config_paths[0], options)
    measure = measure_settings(options, decode_dtype)
    out_dir = _absolute(options.out_dir)
    grids, chosen = grids_of(options), chosen or {}
    selection_seeds = options.selection_seeds or options.seeds
    later_seeds = [seed for seed in options.seeds if seed not in selection_seeds]
    shas = {path: file_sha256(path) for path in config_paths}

    def spec(path: Path, rate: float | None, seed: int) -> RunSpec:
        return RunSpec(
            name=run_name(path.stem, seed, rate), variant=path.stem, config_path=str(path), config_sha256=shas[path],
            seed=seed, pretrain_args=pretrain_arguments(path, seed, options, shared, yamls[path], rate),
            val_paths=[str(p) for p in shared.val_paths], measure=measure,
            paired_init=True if options.paired else None,  # None: specs written before pairing resume unpaired
            learning_rate=rate,  # None: the YAML's rate, and the spec (its sha256) as before rates existed
        )

    specs = [spec(path, rate, seed) for path in config_paths
             for rate, seed in itertools.product(grids[path.stem], selection_seeds)]
    specs += [spec(path, chosen[path.stem], seed) for seed in later_seeds for path in config_paths
              if path.stem in chosen]
    runs = [RunPlan.in_comparison(out_dir, index, run_spec) for index, run_spec in enumerate(specs, start=1)]
    return shared, runs, reference_variant(yamls, options)


def waiting_runs(options: CompareOptions, chosen: dict[str, float]) -> list[tuple[str, int]]:
    """(variant, seed) of each run that waits for its variant's rate to be chosen (``--selection_seeds``)."""
    if not options.selection_seeds:
        return []
    later_seeds = [seed for seed in options.seeds if seed not in options.selection_seeds]
    return [(Path(p).stem, seed) for seed in later_seeds for p in options.configs if Path(p).stem not in chosen]
