"""The typed records of a comparison, and their one JSON form.

Every file that ``compare`` writes and reads back is one of these dataclasses, written by :func:`to_json`
and read by :func:`from_json` (nested dataclasses, lists, dicts and optionals rebuilt from the type hints):

* ``runs/<run>/train.json``: :class:`TrainResult` (the training worker).
* ``runs/<run>/result.json``: :class:`RunResult` with ``status`` ``"ok"`` (:class:`EvalResult` and
  :class:`MeasureResult` from the evaluation worker) or ``"failed"`` (:class:`Failure`, from the runner).
* ``runs/<run>/spec.json``: :class:`RunSpec` (the runner, before the run starts).
* ``runs/<run>/lm_eval.json``: :class:`LmEvalResult` (the lm_eval worker, with ``--lm_eval_tasks``), beside
  the run's result: adding or changing tasks later trains nothing.
* ``runs/<run>/kv_quantization.json``: :class:`KVQuantizationResult` (the kv_quantization worker, with
  ``--kv_cache_quantizations``), beside it the same way.
* ``results.json``: :class:`Results` (the report), whose ``summary`` rows are :class:`VariantSummary`
  (computed by :mod:`litgpt_mka.compare.summary`).

Schema ``litgpt-mka.compare.run/v2`` (``results.json``: ``litgpt-mka.compare/v2``); files of another schema are
refused with a ``ValueError`` naming it (version 1, with one validation file and one load sample per phase, was
only ever written before the study and is no longer read). Where each file lives: :mod:`litgpt_mka.compare.layout`.
"""

import dataclasses
import math
import statistics
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from litgpt_mka.evaluate.results import TaskScore  # lm_eval.json's scores, as litgpt-mka evaluate reads them
from litgpt_mka.measure.load import busy_threshold, is_busy

RUN_SCHEMA = "litgpt-mka.compare.run/v2"
RESULTS_SCHEMA = "litgpt-mka.compare/v2"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- pieces
@dataclass(frozen=True)
class PeakMemory:
    kind: str  # "cuda_max_allocated" or "cpu_peak_rss"
    bytes: int


@dataclass(frozen=True)
class PhaseLoad:
    """The machine's load around one timed phase (training, decode measurement) of a run.

    The phase is **busy** by :mod:`litgpt_mka.measure.load`'s rule: the 1-minute load average, sampled right
    before or right after it, exceeds ``threads + BUSY_LOAD_MARGIN``, with ``threads`` the run's own CPUs
    (torch's thread count, at most the CPU count). ``cpu_s / wall_s`` (the process's CPU time over the
    phase's wall time) is kept as raw evidence; it is not part of the rule.
    """

    load_1min_before: float | None  # None where the OS has no load average
    load_1min_after: float | None
    threads: int
    cpu_count: int
    wall_s: float | None = None
    cpu_s: float | None = None

    @property
    def threshold(self) -> float:
        return busy_threshold(self.threads)

    @property
    def busy(self) -> bool | None:
        """True when another process competed for the CPUs; None when no load was recorded."""
        return is_busy((self.load_1min_before, self.load_1min_after), self.threads)


@dataclass(frozen=True)
class Environment:
    """Versions and machine of a process."""

    python: str
    torch: str
    litgpt: str | None
    litgpt_mka: str | None
    lightning: str | None
    platform: str
    cpu: str
    cpu_count: int | None
    torch_threads: int
    gpus: list[str]
    cuda: str | None

    def hardware(self) -> str:
        """What the timings depend on: CPU model, CPU count, torch threads, GPUs."""
        gpus = ", ".join(self.gpus) if self.gpus else "no GPU"
        return f"{self.cpu} ({self.cpu_count} CPUs, {self.torch_threads} torch threads), {gpus}"

    def summary(self) -> str:
        """One line: CPU (count), GPUs, OS, versions."""
        return (
            f"{self.hardware()}; {self.platform};"
            f" Python {self.python}, torch {self.torch}, litgpt {self.litgpt}, litgpt-mka {self.litgpt_mka}"
        )


# ------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainResult:
    """``train.json``: what the training worker measured around the ``litgpt pretrain`` call."""

    spec_sha256: str
    precision: str  # as litgpt trained (its default resolved)
    started: str
    finished: str
    wall_time_s: float
    resumed_from_step: int | None
    peak_memory: PeakMemory
    load: PhaseLoad


@dataclass(frozen=True)
class Throughput:
    """Steady-state training tokens/s from litgpt's ``iter_time`` (:func:`litgpt_mka.compare.measurements.training_throughput`)."""

    tokens_per_iteration: int
    timed_iterations: int
    skipped_iterations_per_process: int  # at the start of the timed (last) process; name kept for schema v2
    tokens_per_s: float | None  # None when no iteration is left to time (see note)
    note: str | None = None


@dataclass(frozen=True)
class TrainLossPoint:
    iter: int
    tokens: int
    loss: float


# ----------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class CurvePoint:
    """The exact validation loss (primary validation text) of one checkpoint."""

    iter: int
    tokens: int
    val_loss: float
    val_tokens: int
    checkpoint: str


@dataclass(frozen=True)
class Validation:
    """The exact validation loss of the final checkpoint on one validation text."""

    name: str  # the text's file stem: the report's column
    path: str
    loss: float  # nats per target token
    perplexity: float  # exp(loss)
    tokens: int  # targets scored
    windows: int
    max_seq_length: int
    dtype: str = "float32"


@dataclass(frozen=True)
class Routing:
    """MKA/FMKA routing weights of the final checkpoint on the primary validation text.

    ``per_layer[l][i]``: mean lambda of memory ``sources[i]`` in layer ``l`` over ``tokens`` input positions
    (:func:`litgpt_mka.attention.mka.routing_weights`); each row sums to 1.
    """

    sources: list[str]
    per_layer: list[list[float]]
    tokens: int


@dataclass(frozen=True)
class EvalResult:
    validation: list[Validation]  # one per validation text, the primary first
    curve: list[CurvePoint]  # every checkpoint, by iteration, on the primary text
    routing: Routing | None  # MKA/FMKA only
    device: str
    wall_time_s: float
    peak_memory: PeakMemory
    started: str

    @property
    def primary(self) -> Validation:
        return self.validation[0]


# ------------------------------------------------------------------------------------------ measuring
@dataclass(frozen=True)
class Parameters:
    total: int
    attention: int  # the block.attn modules of every block


@dataclass(frozen=True)
class KVCacheSize:
    """Bytes ``set_kv_cache`` allocates for batch x context (all layers), and the accounting's figures."""

    dtype: str
    bytes_per_token: float
    batch_size: int
    context_length: int
    bytes_at_context: int
    bytes_per_token_formula: float
    bytes_at_context_formula: int
    formula_matches: bool


@dataclass(frozen=True)
class Decode:
    dtype: str
    device: str
    batch_size: int
    context_length: int
    new_tokens: int
    tokens_per_s: float
    load: PhaseLoad


@dataclass(frozen=True)
class MeasureResult:
    parameters: Parameters
    kv_cache: KVCacheSize
    decode: Decode
    throughput: Throughput
    train_loss_curve: list[TrainLossPoint]


# -------------------------------------------------------------------------------------------- lm-eval
@dataclass(frozen=True)
class LmEvalResult:
    """``runs/<run>/lm_eval.json``: lm-eval task scores of the run's final checkpoint (``litgpt-mka evaluate``'s path)."""

    tasks: list[str]  # as requested (--lm_eval_tasks)
    include_path: str | None
    scores: list[TaskScore]
    lm_eval_version: str
    wall_time_s: float


# ------------------------------------------------------------------------------------ quantized caches
@dataclass(frozen=True)
class CachedLoss:
    """Held-out loss of cached decoding through one cache (:func:`litgpt_mka.compare.heldout.cached_heldout_loss`)."""

    quantization: str  # "none", or a kv_cache_quantization name (int8, int4, float8_e4m3fn)
    attention_class_name: str  # the class that decoded (ours where the run's is litgpt's and quantized)
    kv_bytes_per_token: float  # allocated by set_kv_cache for the decode batch x context, in the decode dtype
    loss: float
    tokens: int


@dataclass(frozen=True)
class KVQuantizationResult:
    """``runs/<run>/kv_quantization.json``: the final checkpoint decoded through an unquantized and quantized caches."""

    quantizations: list[str]  # as requested (--kv_cache_quantizations)
    val_path: str  # the primary validation text
    prefill_tokens: int  # each window's first inputs in one chunk, the rest one at a time
    unquantized: CachedLoss
    quantized: list[CachedLoss]  # in the order requested
    full_forward_loss: float  # the run's primary validation loss: unquantized cached decoding agrees with it
    wall_time_s: float


# ----------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Failure:
    phase: str  # "train" or "evaluate"
    returncode: int
    reason: str
    error: str  # the last exception line and the reasons after it
    log: str
    log_tail: list[str]


@dataclass(frozen=True)
class RunResult:
    """``result.json`` of one run (config x seed); ``status`` says which parts are set.

    ``"ok"``: train, evaluation, measure, environment. ``"failed"``: failure (and train if training finished).
    ``"pending"``: nothing yet (never written to disk; the report's placeholder).
    """

    status: str
    name: str
    variant: str
    seed: int
    config_path: str | None = None
    config_sha256: str | None = None
    spec_sha256: str | None = None
    train: TrainResult | None = None
    evaluation: EvalResult | None = None
    measure: MeasureResult | None = None
    failure: Failure | None = None
    environment: Environment | None = None
    finished: str | None = None
    schema: str = RUN_SCHEMA
    lm_eval: LmEvalResult | None = None  # from lm_eval.json beside result.json, when it matches the requested tasks
    kv_quantization: KVQuantizationResult | None = None  # from kv_quantization.json, when it holds the requested ones
    learning_rate: float | None = None  # the spec's (compare --learning_rates); None: the YAML's own rate

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; None below two values) of `n` values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> "Stat":
        """The Stat of the values that are not None; a NaN or infinite value (a diverged run) makes mean and std
        NaN (``statistics.stdev`` cannot take one)."""
        values = [v for v in values if v is not None]
        if not values:
            return cls(None, None, 0)
        if not all(math.isfinite(v) for v in values):
            return cls(math.nan, math.nan if len(values) > 1 else None, len(values))
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass(frozen=True)
class Difference:
    """A variant's value minus the reference's, with its standard error: the primary validation loss, or one
    lm-eval task metric.

    See :func:`litgpt_mka.compare.summary.difference` and :func:`~litgpt_mka.compare.summary.task_difference`
    for the definitions and the verdict rule.
    """

    reference: str
    difference: float | None  # variant mean - reference mean (nats/token); None when either has no run
    se: float | None  # None when either side has fewer than two finished seeds
    n: int
    n_reference: int
    verdict: str  # "better", "worse", "cannot tell" ("tied within noise": the screening rule), "SE unknown", "no runs",
    # "not finite" (a run diverged), "no direction"
    sentence: str
    # the t-test (rule "t-test"; None under the screening rule, and where no SE exists)
    t_test: str | None = None  # "paired" or "Welch"
    t_df: float | None = None  # degrees of freedom (None: SE 0)
    ci95_low: float | None = None  # the 95% interval of the difference
    ci95_high: float | None = None
    p_value: float | None = None  # two-sided
    p_holm: float | None = None  # Holm-adjusted over the comparisons with the reference (p_value when alone)
    holm_comparisons: int | None = None
    pairs: int | None = None  # paired: the seeds both sides finished


@dataclass(frozen=True)
class QuantizedCacheSummary:
    """A variant decoded through one quantized cache, over its seeds: cache bytes, loss, and the loss it costs
    (per seed: quantized minus unquantized cached loss of the same checkpoint, then mean ± std)."""

    quantization: str
    kv_bytes_per_token: Stat
    loss: Stat
    cost: Stat


@dataclass(frozen=True)
class VariantSummary:
    """One row of the report: a variant's runs aggregated over seeds (mean ± std of the finished runs).

    A run whose value is missing (e.g. too few iterations to time) is left out of that value's Stat. The
    timing Stats keep every finished run; ``train_busy`` / ``decode_busy`` say whether any of them was timed
    while another process competed for the CPUs (:class:`PhaseLoad`), and the report then prints "busy".
    """

    variant: str
    runs: int
    runs_ok: int
    val_loss: dict[str, Stat]  # by validation text name, the primary first
    val_ppl: dict[str, Stat]
    params_total: Stat
    params_attention: Stat
    train_tokens: Stat
    train_tokens_per_s: Stat
    train_wall_time_s: Stat
    train_peak_memory_bytes: Stat
    kv_bytes_per_token: Stat
    kv_bytes_at_context: Stat
    decode_tokens_per_s: Stat
    train_busy: bool
    decode_busy: bool
    curve_points: list[int]  # validation-curve points of each finished run
    routing: list[list[Stat]] | None  # (layer, source) mean ± std over seeds; MKA/FMKA only
    difference: Difference | None  # None for the reference itself, or without a reference
    # lm-eval scores by "task metric" (--lm_eval_tasks): the value's and lm-eval's standard error's Stat over seeds
    task_scores: dict[str, Stat] = dataclasses.field(default_factory=dict)
    task_stderrs: dict[str, Stat] = dataclasses.field(default_factory=dict)
    task_differences: dict[str, Difference] = dataclasses.field(default_factory=dict)
    # cached decoding through quantized caches (--kv_cache_quantizations), in the order requested
    quantized_caches: list[QuantizedCacheSummary] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class MeasureSettings:
    """How every run is measured (part of its spec)."""

    throughput_skip_iters: int
    context_length: int
    decode_batch_size: int
    decode_new_tokens: int
    decode_dtype: str
    eval_batch_size: int


@dataclass(frozen=True)
class RunSpec:
    """``runs/<run>/spec.json``: what defines a run; a rerun with another spec into the same folder is refused."""

    name: str  # "<config stem>-seed<seed>" ("<config stem>-lr<rate>-seed<seed>" with a rate), the run's folder name
    variant: str  # the config's file stem
    config_path: str
    config_sha256: str
    seed: int
    pretrain_args: list[str]  # `litgpt pretrain` arguments but --out_dir
    val_paths: list[str]  # every validation text, the primary (litgpt's data.val_path) first
    measure: MeasureSettings
    paired_init: bool | None = None  # True: compare --paired (the worker sets LITGPT_MKA_PAIRED_INIT=1); None: not
    learning_rate: float | None = None  # compare --learning_rates: the optimizer's peak rate; None: the YAML's own


@dataclass(frozen=True)
class Settings:
    """What every run of a comparison shares; paths relative to the directory compare ran in."""

    configs: list[str]
    seeds: list[int]
    train_path: str
    val_paths: list[str]
    tokenizer_dir: str
    data_seed: int
    measure: MeasureSettings
    # added with paired runs and t-test verdicts; None in comparisons written before (unpaired, the screening rule)
    paired_init: bool | None = None  # compare --paired: shared parameters start equal for a seed
    verdict_rule: str | None = None  # litgpt_mka.compare.summary.VERDICT_RULES; None: "2-SE screening"
    learning_rates: list[float] | None = None  # compare --learning_rates (None: every run at its YAML's own rate)
    selection_val: str | None = None  # compare --selection_val: the validation text (stem) that picks each variant's rate
    rate_grids: dict[str, list[float]] | None = None  # with --config_learning_rates: each variant's rates
    selection_seeds: list[int] | None = None  # compare --selection_seeds: the seeds whose runs pick the rates


@dataclass(frozen=True)
class RateSummary:
    """The runs at one learning rate (``compare --learning_rates``), summarised as a comparison of their own."""

    learning_rate: float
    summary: list[VariantSummary]


@dataclass(frozen=True)
class RateSelection:
    """A variant's best learning rate, picked on the selection text (``compare --selection_val``).

    ``losses[i]``: the selection loss (mean ± std over the finished seeds) at ``rates[i]``, the learning rates with a
    finished run, ascending; ``chosen``: the rate of the lowest mean (None: no finished run); ``at_edge``: the chosen
    rate is the smallest or the largest of those rates (the optimum may lie outside the grid).
    """

    variant: str
    rates: list[float]
    losses: list[Stat]
    chosen: float | None
    at_edge: bool


@dataclass(frozen=True)
class Results:
    """``results.json``: the command, the settings, every run and the summary per variant.

    Paths are relative to the directory compare ran in; the command is as typed. With ``--learning_rates``,
    ``by_learning_rate`` summarises each rate's runs; with ``--selection_val`` also, ``rate_selection`` holds each
    variant's chosen rate and ``summary`` compares the variants at their chosen rates; without it, ``summary`` is
    empty (no rate was selected).
    """

    command: str
    written: str
    environment: Environment
    settings: Settings
    reference: str | None
    summary: list[VariantSummary]
    runs: list[RunResult]
    schema: str = RESULTS_SCHEMA
    by_learning_rate: list[RateSummary] = dataclasses.field(default_factory=list)
    rate_selection: list[RateSelection] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------------------------- JSON
# fields added for lm-eval task scores, quantized caches, paired runs, t-tests and learning rates; left out of the JSON
# while empty, so results (and run specs, whose sha256 decides resuming) without them stay as before
_OMITTED_WHEN_EMPTY = frozenset(
    {"lm_eval", "task_scores", "task_stderrs", "task_differences", "kv_quantization", "quantized_caches",
     "t_test", "t_df", "ci95_low", "ci95_high", "p_value", "p_holm", "holm_comparisons", "pairs", "paired_init",
     "verdict_rule", "learning_rate", "learning_rates", "selection_val", "by_learning_rate", "rate_selection",
     "rate_grids", "selection_seeds"}
)


def _without_empty_extensions(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_empty_extensions(item) for key, item in value.items()
                if not (key in _OMITTED_WHEN_EMPTY and item in (None, {}, []))}
    if isinstance(value, list):
        return [_without_empty_extensions(item) for item in value]
    return value


def to_json(record: Any) -> Any:
    """A record (dataclass, possibly nested) as plain JSON values, fields in declaration order (empty task fields
    left out)."""
    return _without_empty_extensions(dataclasses.asdict(record)) if dataclasses.is_dataclass(record) else record


def from_json(cls: type[T], data: Any) -> T:
    """The inverse of :func:`to_json`: builds `cls` (a dataclass, or a typing form of them) from JSON values.

    Raises:
        ValueError: a field the type requires is missing, or a value does not fit its type.
    """
    return _build(cls, data, cls.__name__ if isinstance(cls, type) else str(cls))


def _build(kind: Any, data: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}=None does not fit {kind}")
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _build(option, data, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(f"{where}={data!r} fits none of {options}: {'; '.join(errors)}")
    if origin is list:
        if not isinstance(data, list):
            raise ValueError(f"{where}={data!r} is not a list")
        return [_build(args[0] if args else Any, item, f"{where}[{i}]") for i, item in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{where}={data!r} is not a mapping")
        return {k: _build(args[1] if args else Any, v, f"{where}[{k!r}]") for k, v in data.items()}
    if dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise ValueError(f"{where}={data!r} is not a mapping for {kind.__name__}")
        hints = typing.get_type_hints(kind)
        values = {}
        for f in dataclasses.fields(kind):
            if f.name in data:
                values[f.name] = _build(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}.{f.name} is missing ({kind.__name__} requires it)")
        return kind(**values)
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"{where}={data!r} is not a number")
        return float(data)
    if kind in (int, str, bool):
        if not isinstance(data, kind) or (kind is int and isinstance(data, bool)):
            raise ValueError(f"{where}={data!r} is not a {kind.__name__}")
        return data
    return data  # Any


# ------------------------------------------------------------------------------------------- reading
def read_run(data: dict[str, Any]) -> RunResult:
    """A run record (``result.json``, or a run of ``results.json``) of the schema this version writes.

    Raises:
        ValueError: another schema (schema v1 is no longer read), or a field that does not fit.
    """
    schema = data.get("schema")
    if schema != RUN_SCHEMA:
        raise ValueError(
            f"run {data.get('name')!r} has schema {schema!r}; this version of litgpt-mka reads {RUN_SCHEMA!r} only"
            " (schema v1 is no longer read): rerun the comparison to write it again"
        )
    return from_json(RunResult, data)
