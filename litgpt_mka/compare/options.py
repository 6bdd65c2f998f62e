"""The options of ``litgpt-mka compare``, declared once: :class:`CompareOptions`.

jsonargparse reads the dataclass directly (``litgpt_mka/cli.py``): every field is a command-line option,
its docstring the option's help. The dataclass has no methods (jsonargparse would make them subcommands):
:func:`validate` checks it. Nothing here imports torch or litgpt, so ``litgpt-mka compare --help``
stays fast.
"""

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from litgpt_mka.compare.launch import check_launcher
from litgpt_mka.evaluate import lm_eval_missing_message
from litgpt_mka.validation import DTYPE_NAMES, DtypeName, positive_int

# the choices are Literal types, so that --help lists them and jsonargparse refuses others
# what `litgpt pretrain --precision` accepts (litgpt.pretrain.setup's annotation)
Precision = Literal["bf16-true", "bf16-mixed", "32-true"]
PRECISIONS = get_args(Precision)
# kv_cache_quantization names (litgpt_mka.attention.quantization.DTYPES; tested equal, kept here so that --help
# imports no torch)
KvCacheQuantization = Literal["int8", "int4", "float8_e4m3fn"]
KV_CACHE_QUANTIZATIONS = get_args(KvCacheQuantization)
# the fewest validation-curve points per run that compare accepts without a warning
MIN_CURVE_POINTS = 8


@dataclass(frozen=True)
class CompareOptions:
    """Train every config x seed with `litgpt pretrain`, evaluate on whole validation texts, measure, report.

    Writes OUT_DIR/results.json, results.csv, report.md and PNG plots; rerunning the same command skips
    finished runs and resumes interrupted ones (see litgpt_mka/compare/__init__.py). Exit status: 0 when
    every run finished, 1 when any failed (the others still run), 2 for invalid options, 130 on Ctrl-C.
    """

    configs: list[Path] = field(default_factory=list)
    """`litgpt pretrain` YAML files, one per variant; every setting but the model must agree."""
    out_dir: Path = Path("out/compare")
    """Output folder (runs/ and the report)."""
    dry_run: bool = False
    """Print the plan and exit without training: every run with its state (finished, to resume from a checkpoint,
    failed before, to start, or waiting for its variant's chosen rate) and the reference; nothing is written."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """Model-initialisation seeds (litgpt --seed); each config runs once per seed."""
    paired: bool = True
    """Paired initialisation: for a seed, every parameter that two configs share by name and shape starts from the
    same values (the variants' own parameters from their own draws), so seed s of every variant is paired with
    seed s of the others and the report decides by paired t-tests; false: litgpt's own initialisation and Welch t-tests
    (docs/comparing.md: Paired runs)."""
    learning_rates: list[float] | None = None
    """Peak learning rates (the YAML optimizer's lr, replaced; nothing else of it changes), e.g. --learning_rates 0.004
    0.008 0.016: every config x rate x seed is a run, named <config stem>-lr<rate>-seed<seed>. Adding a rate on a rerun
    trains only its runs. Default: the YAMLs' own rate (runs named <config stem>-seed<seed>)."""
    selection_val: str | None = None
    """With --learning_rates: the validation text (a --val_path file stem, not the first one) on which each variant's
    best rate is picked (lowest mean loss over its seeds); the verdicts compare the variants at their picked rates on
    the first --val_path text. Default: no rate is picked; the report shows each rate's table (docs/comparing.md)."""
    config_learning_rates: dict[str, list[float]] | None = None
    """Rate grids of their own for the configs named by file stem, replacing --learning_rates for them, e.g.
    '{"pythia-14m-mha": [0.008]}' for a variant whose rate was chosen before (a one-rate grid is given, not chosen).
    --learning_rates may be left out when every config is named."""
    selection_seeds: list[int] | None = None
    """With --selection_val: the seeds (some of --seeds) whose runs at every rate choose each variant's rate; every
    other seed trains only at its variant's chosen rate, once all of the variant's selection runs have finished, and
    those runs go seed by seed across the configs. Tune on a few seeds, confirm on more, in one command that resumes.
    Default: every seed at every rate."""
    train_path: Path | None = None
    """Training text for every run (TextCorpus data.train_path); default: the YAMLs'."""
    val_path: list[Path] | None = None
    """Validation texts (one or more files or folders), each evaluated whole and reported in its own column named
    by its file stem. The first is the primary one: litgpt's data.val_path, the curves, the Pareto plot, the
    differences to the reference and the routing weights. Default: the YAMLs' data.val_path."""
    tokenizer_dir: Path | None = None
    """Tokenizer folder for every run; default: the YAMLs'."""
    max_tokens: int | None = None
    """Token budget per run (train.max_tokens); default: the YAMLs'."""
    max_seq_length: int | None = None
    """Tokens per training window (train.max_seq_length); default: the YAMLs'."""
    precision: Precision | None = None
    """litgpt precision (bf16-mixed, bf16-true, 32-true); default: the YAMLs' (null: the machine's default, litgpt_mka/precision.py)."""
    devices: int | str | None = None
    """litgpt devices; default: the YAMLs'."""
    data_seed: int | None = None
    """Seed of the training-window order, the same for every run; default: the YAMLs' data.seed."""
    eval_interval: int | None = None
    """Optimizer steps between checkpoints, each a point of the validation curve and a resume point (sets
    train.save_interval); default: the YAMLs' train.save_interval. For at least 8 points per curve, use at most
    (optimizer steps per run) / 8, where steps = max_tokens // (global_batch_size x max_seq_length); compare
    warns before training when a curve would have fewer."""
    pretrain_args: list[str] = field(default_factory=list)
    """More `litgpt pretrain` arguments for every run, e.g. '["--train.lr_warmup_steps=5"]'."""
    reference: str | None = None
    """The variant (config file stem) that every other is compared with in report.md; default: the first config
    whose model is MHA (litgpt's CausalSelfAttention with n_query_groups == n_head). Changing it retrains nothing."""
    throughput_skip_iters: int = 5
    """Iterations at the start of the (last) training process left out of tokens/s."""
    context_length: int = 256
    """Prompt tokens before decoding is timed, and the context of the KV-cache size."""
    decode_batch_size: int = 1
    """Sequences decoded together (and the batch of the KV-cache size)."""
    decode_new_tokens: int = 32
    """Timed decode steps."""
    decode_dtype: DtypeName | None = None
    """float32, bfloat16 or float16 for decoding and the KV cache; default: the dtype of `litgpt generate`'s
    default precision on this machine."""
    eval_batch_size: int = 4
    """Validation windows per forward pass."""
    keep_step_checkpoints: bool = False
    """Keep the step-* checkpoints of finished runs (default: only final/ stays)."""
    plots: bool = True
    """Write the PNG plots (needs matplotlib)."""
    lm_eval_tasks: list[str] | None = None
    """lm-eval tasks scored on each run's final checkpoint (`litgpt-mka evaluate`'s path; the [eval] extra), e.g.
    --lm_eval_tasks tinystories_cloze piqa; report.md adds their mean ± std over seeds and the differences to the
    reference. Adding or changing them on a rerun trains nothing."""
    include_path: Path | None = None
    """A folder of extra lm-eval task YAML files for --lm_eval_tasks (e.g. tasks on a local JSON file)."""
    kv_cache_quantizations: list[KvCacheQuantization] | None = None
    """Quantized KV caches (int8, int4, float8_e4m3fn) to decode each run's final checkpoint through: the held-out
    loss of cached decoding (teacher-forced, as `litgpt generate` feeds tokens) with and without each, and the
    cache bytes; report.md adds their table and the Pareto plot their points. Adding them on a rerun trains
    nothing (litgpt_mka/compare/kv_quantization.py)."""
    launcher: str = "sequential"
    """Who starts the runs (litgpt_mka/compare/launch.py): sequential (one after another, here), parallel
    (parallel_runs at once here, one GPU each) or slurm (one SLURM job per run, one job array, through submitit).
    The run folders, resume and report are the same with each."""
    parallel_runs: int = 2
    """Runs at once with --launcher parallel; each sees one GPU (CUDA_VISIBLE_DEVICES), so give at most the GPUs."""
    slurm: dict | None = None
    """submitit's parameters for --launcher slurm, e.g. '{"slurm_partition": "gpu", "timeout_min": 240,
    "gpus_per_node": 1, "cpus_per_task": 8}'; '{"cluster": "local"}' runs the jobs on this machine."""


def val_paths(options: CompareOptions) -> list[Path]:
    """The validation texts given (empty: the YAMLs' one)."""
    return list(options.val_path or [])


def resolved_stem(path: Path) -> str:
    """The name of a validation text in the report and results: the stem of the file it resolves to (a link's
    target), as the runs record it."""
    return Path(path).expanduser().resolve().stem


def validate(options: CompareOptions) -> None:
    """Raises ValueError (or FileNotFoundError) naming the first invalid option, its value and what is allowed."""
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
                 "decode_new_tokens", "eval_batch_size", "parallel_runs"):
        if getattr(options, name) is not None:
            positive_int(name, getattr(options, name))
    check_launcher(options.launcher, options.slurm)
    if options.throughput_skip_iters < 0:
        raise ValueError(f"throughput_skip_iters={options.throughput_skip_iters} must be >= 0")
    if options.precision is not None and options.precision not in PRECISIONS:
        raise ValueError(f"precision={options.precision!r} is not one of {PRECISIONS} (or null for litgpt's default)")
    if options.decode_dtype is not None and options.decode_dtype not in DTYPE_NAMES:
        raise ValueError(f"decode_dtype={options.decode_dtype!r} is not one of {DTYPE_NAMES} (or null)")
    if options.reference is not None and options.reference not in stems:
        raise ValueError(f"reference={options.reference!r} is not one of the configs' file stems {stems}")
    if options.val_path is not None and not val_paths(options):
        raise ValueError("val_path=[] is empty; give one or more files, or leave it out for the YAMLs' data.val_path")
    val_stems = [resolved_stem(p) for p in val_paths(options)]
    if len(set(val_stems)) != len(val_stems):
        raise ValueError(
            f"val_path={[str(p) for p in val_paths(options)]} repeat a file stem; the report names each column by it"
        )
    check_learning_rates(options)
    if options.lm_eval_tasks is not None and not options.lm_eval_tasks:
        raise ValueError("lm_eval_tasks=[] is empty; give one or more lm-eval task names, or leave it out")
    if options.include_path is not None and not options.lm_eval_tasks:
        raise ValueError(f"include_path={str(options.include_path)!r} is given without --lm_eval_tasks to run from it")
    if options.lm_eval_tasks and importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"lm_eval_tasks={options.lm_eval_tasks}: {lm_eval_missing_message('compare --lm_eval_tasks')}")
    if options.kv_cache_quantizations is not None:
        if not options.kv_cache_quantizations:
            raise ValueError("kv_cache_quantizations=[] is empty; give one or more of"
                             f" {list(KV_CACHE_QUANTIZATIONS)}, or leave it out")
        for name in options.kv_cache_quantizations:
            if name not in KV_CACHE_QUANTIZATIONS:
                raise ValueError(f"kv_cache_quantizations: {name!r} is not one of {list(KV_CACHE_QUANTIZATIONS)}")
        if len(set(options.kv_cache_quantizations)) != len(options.kv_cache_quantizations):
            raise ValueError(f"kv_cache_quantizations={options.kv_cache_quantizations} repeat a name")
    if options.include_path is not None and not Path(options.include_path).is_dir():
        raise FileNotFoundError(f"include_path={str(options.include_path)!r} is not a folder of lm-eval task YAML files")
    for name, paths in (("train_path", [options.train_path]), ("val_path", val_paths(options)),
                        ("tokenizer_dir", [options.tokenizer_dir])):
        for path in paths:
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{name}={str(path)!r} does not exist")


def _check_rate_grid(name: str, rates: list[float]) -> None:
    if not rates:
        raise ValueError(f"{name}=[] is empty; give one or more positive rates, or leave it out for the YAMLs' own rate")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"{name}: {rate!r} is not a positive number")
    if len({float(rate) for rate in rates}) != len(rates):
        raise ValueError(f"{name}={rates} repeat a rate")


def check_config_learning_rates(options: CompareOptions) -> None:
    """Raises ValueError for a grid of a config that is not compared, a bad grid, or a config left without one."""
    grids = options.config_learning_rates
    if grids is None:
        return
    stems = [Path(p).stem for p in options.configs]
    if not grids:
        raise ValueError("config_learning_rates={} is empty; name one or more configs by file stem, or leave it out")
    for stem, rates in grids.items():
        if stem not in stems:
            raise ValueError(f"config_learning_rates: {stem!r} is not one of the configs' file stems {stems}")
        _check_rate_grid(f"config_learning_rates[{stem!r}]", rates)
    unnamed = [stem for stem in stems if stem not in grids]
    if options.learning_rates is None and unnamed:
        raise ValueError(f"config_learning_rates names no grid for {unnamed}; give --learning_rates for them, or name"
                         " every config")


def check_selection_seeds(options: CompareOptions) -> None:
    """Raises ValueError for selection seeds without a selection, empty, repeated or not among --seeds."""
    seeds = options.selection_seeds
    if seeds is None:
        return
    if options.selection_val is None:
        raise ValueError(f"selection_seeds={seeds} choose each variant's rate on --selection_val, which is not given")
    if not seeds:
        raise ValueError("selection_seeds=[] is empty; give some of --seeds, or leave it out for every seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"selection_seeds={seeds} repeat a seed")
    outside = [seed for seed in seeds if seed not in options.seeds]
    if outside:
        raise ValueError(f"selection_seeds: {outside} are not among seeds={options.seeds}")


def check_learning_rates(options: CompareOptions) -> None:
    """Raises ValueError for an empty, repeated or non-positive rate, a per-config grid or selection seed that does
    not fit the comparison, or a --selection_val that cannot pick a rate.

    The selection text must be a --val_path other than the first: the verdicts are read from the first, and a rate
    picked on the same text would carry its selection's luck into them.
    """
    rates = options.learning_rates
    if rates is not None:
        _check_rate_grid("learning_rates", rates)
    check_config_learning_rates(options)
    check_selection_seeds(options)
    if options.selection_val is None:
        return
    if rates is None and options.config_learning_rates is None:
        raise ValueError(f"selection_val={options.selection_val!r} picks a learning rate, but no --learning_rates are"
                         " given to pick from")
    stems = [resolved_stem(p) for p in val_paths(options)]
    allowed = stems[1:]
    if options.selection_val not in allowed:
        verdicts = (f"{stems[0]!r}, the first --val_path, is the verdicts' text" if stems
                    else "no --val_path is given: the first is the verdicts' text")
        raise ValueError(
            f"selection_val={options.selection_val!r} is not one of {allowed}: {verdicts}; the selection text must be"
            " another --val_path, named by its file stem"
        )

