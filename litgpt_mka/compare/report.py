"""The report of a comparison: ``results.json``, ``results.csv``, ``report.md`` and the plots.

The runner builds the results from the runs' own ``result.json`` files, never from memory, so a rerun that
trains nothing rewrites the same report. ``report.md`` holds no timestamps and is byte-identical for the
same command and results; ``results.json`` adds the time it was written and the environment of the
invocation (each run also records its own).

No absolute path of the machine appears in report.md, results.json or results.csv: paths are written
relative to the directory compare ran in (``../shared/...`` for files beside it); the command is shown as
typed. The runs' own ``spec.json``/``result.json`` keep absolute paths (they are needed to resume).

Aggregation, differences to the reference and their standard errors: :mod:`litgpt_mka.compare.summary`.
Busy timings: :class:`litgpt_mka.compare.records.PhaseLoad`.

The functions take the typed :class:`~litgpt_mka.compare.records.Results` (the runner builds it from the run
folders, :func:`read_results` from a saved file); this module imports neither the runner nor the plan.
A saved ``results.json`` is rendered again, e.g. with another reference, by::

    python -m litgpt_mka.compare.report OUT/results.json [--reference NAME] [--verdict_rule t-test] [--out_dir DIR]

Which rule decides the differences is saved with the results (``settings.verdict_rule``): comparisons written
before the t-test keep the screening rule they were written with, so their reports render as committed;
``--verdict_rule t-test`` decides them again by Welch t-tests (they were not paired). Without ``--out_dir`` the files
beside results.json are replaced.
"""

import argparse
import csv
import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litgpt_mka.atomic import read_json, write_json, write_text
from litgpt_mka.compare import plots
from litgpt_mka.compare.layout import REPORT_MD, RESULTS_CSV, RESULTS_JSON, RUN_LOG, RUNS_DIR
from litgpt_mka.compare.learning_rates import rate_label, summarize_rates
from litgpt_mka.compare.options import MIN_CURVE_POINTS
from litgpt_mka.compare.records import (
    RESULTS_SCHEMA, Difference, Environment, PhaseLoad, RateSelection, RateSummary, Results, RunResult, Settings, Stat,
    VariantSummary, from_json, read_run, to_json,
)
from litgpt_mka.compare.statistics import LEVEL
from litgpt_mka.compare.summary import (
    SCREENING, SE_FACTOR, T_TEST, VERDICT_RULES, loss_differences, p_text, summarize, task_key,
)
from litgpt_mka.measure.load import BUSY_LOAD_MARGIN

NO_VALUE = "—"
BUSY = "busy"


# ------------------------------------------------------------------------------------------------ paths
def relative(path: str | Path | None, cwd: Path) -> str | None:
    """`path` relative to `cwd` (``../`` where it lies outside); relative paths are kept as they are."""
    if path is None or not os.path.isabs(path):
        return None if path is None else str(path)
    try:
        return os.path.relpath(path, cwd)
    except ValueError:  # another drive (Windows)
        return Path(path).name


def without_cwd(text: str, cwd: Path) -> str:
    """`text` with every occurrence of the absolute `cwd` prefix removed (error messages)."""
    return text.replace(f"{cwd}{os.sep}", "").replace(str(cwd), ".")


def public_run(run: RunResult, cwd: Path) -> RunResult:
    """The run with its paths relative to `cwd` (what results.json and the report show)."""
    replace = dataclasses.replace
    evaluation, failure = run.evaluation, run.failure
    if evaluation is not None:
        evaluation = replace(evaluation, validation=[replace(v, path=relative(v.path, cwd)) for v in evaluation.validation])
    if failure is not None:
        failure = replace(failure, log=relative(failure.log, cwd), error=without_cwd(failure.error, cwd),
                          log_tail=[without_cwd(line, cwd) for line in failure.log_tail])
    lm_eval, quantized = run.lm_eval, run.kv_quantization
    if lm_eval is not None:
        lm_eval = replace(lm_eval, include_path=relative(lm_eval.include_path, cwd))
    if quantized is not None:
        quantized = replace(quantized, val_path=relative(quantized.val_path, cwd))
    return replace(run, config_path=relative(run.config_path, cwd), evaluation=evaluation, failure=failure,
                   lm_eval=lm_eval, kv_quantization=quantized)


# --------------------------------------------------------------------------------------------- results
def results_of(command: str, written: str, environment: Environment, settings: Settings, reference: str | None,
               runs: list[RunResult]) -> Results:
    """The results of `runs` with their summary: over all runs, or, with learning rates, per rate and at each
    variant's chosen rate (:func:`litgpt_mka.compare.learning_rates.summarize_rates`)."""
    paired, rule = bool(settings.paired_init), verdict_rule(settings)
    by_rate, selection = [], []
    if settings.learning_rates is None:
        summary = summarize(runs, reference, paired=paired, rule=rule)
    else:
        summary, by_rate, selection = summarize_rates(runs, reference, settings.learning_rates, settings.selection_val,
                                                      paired, rule, settings.selection_seeds, settings.rate_grids)
    return Results(command=command, written=written, environment=environment, settings=settings, reference=reference,
                   summary=summary, runs=runs, by_learning_rate=by_rate, rate_selection=selection)


def at_rate(results: Results, rate: RateSummary) -> Results:
    """`results` restricted to the runs at one learning rate, with that rate's summary."""
    runs = [run for run in results.runs if run.learning_rate == rate.learning_rate]
    return dataclasses.replace(results, runs=runs, summary=rate.summary, by_learning_rate=[], rate_selection=[])


def at_chosen_rates(results: Results) -> Results:
    """`results` restricted to each variant's runs at its chosen rate (all of a variant's runs where none is chosen)."""
    chosen = {choice.variant: choice.chosen for choice in results.rate_selection}
    runs = [run for run in results.runs if chosen.get(run.variant) in (None, run.learning_rate)]
    return dataclasses.replace(results, runs=runs)


# --------------------------------------------------------------------------------------------- writing
def write_outputs(out_dir: Path, results: Results, with_plots: bool = True) -> None:
    """Writes results.json, results.csv, the plots and report.md of `results` into `out_dir`.

    With learning rates, the plots are of the runs at the chosen rates (``--selection_val``), else one set per rate
    in ``OUT/lr<rate>/``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULTS_JSON, to_json(results))
    write_csv(out_dir / RESULTS_CSV, results)
    figures = []
    if with_plots and results.by_learning_rate and results.settings.selection_val is None:
        for rate in results.by_learning_rate:
            folder = f"lr{rate_label(rate.learning_rate)}"
            figures += [f"{folder}/{name}" for name in plots.write_plots(out_dir / folder, at_rate(results, rate))]
    elif with_plots:
        figures = plots.write_plots(out_dir, at_chosen_rates(results))
    write_text(out_dir / REPORT_MD, markdown(results, figures))


def val_names(settings: Settings) -> list[str]:
    """The validation texts' column names (file stems), the primary first."""
    return [Path(p).stem for p in settings.val_paths]


def csv_row(run: RunResult, names: list[str]) -> dict[str, Any]:
    """One results.csv row: identity, status and every raw value (empty when missing), busy flags, error."""
    row: dict[str, Any] = {"variant": run.variant, "seed": run.seed, "status": run.status, "name": run.name,
                           "config_path": run.config_path, "config_sha256": run.config_sha256}
    ok = run.ok
    losses = {v.name: v for v in run.evaluation.validation} if ok else {}
    primary = losses.get(names[0])
    row["val_loss"] = primary.loss if primary else None
    row["val_ppl"] = primary.perplexity if primary else None
    for name in names[1:]:
        row[f"val_loss_{name}"] = losses[name].loss if name in losses else None
    train, measure = (run.train, run.measure) if ok else (None, None)
    row.update(
        params_total=measure and measure.parameters.total,
        params_attention=measure and measure.parameters.attention,
        train_tokens=run.evaluation.curve[-1].tokens if ok else None,
        train_tokens_per_s=measure and measure.throughput.tokens_per_s,
        train_wall_time_s=train and train.wall_time_s,
        train_peak_memory_bytes=train and train.peak_memory.bytes,
        kv_bytes_per_token=measure and measure.kv_cache.bytes_per_token,
        kv_bytes_at_context=measure and measure.kv_cache.bytes_at_context,
        decode_tokens_per_s=measure and measure.decode.tokens_per_s,
        train_busy=train and train.load.busy,
        train_load_1min_before=train and train.load.load_1min_before,
        train_load_1min_after=train and train.load.load_1min_after,
        decode_busy=measure and measure.decode.load.busy,
        decode_load_1min_before=measure and measure.decode.load.load_1min_before,
        decode_load_1min_after=measure and measure.decode.load.load_1min_after,
        curve_points=len(run.evaluation.curve) if ok else None,
        error=run.failure.error if run.failure else None,
    )
    return row


def quantized_cache_names(runs: list[RunResult]) -> list[str]:
    """The caches that some run decoded through (--kv_cache_quantizations): "none" first, then as requested."""
    names = [q.quantization for run in runs if run.kv_quantization is not None for q in run.kv_quantization.quantized]
    return ["none", *dict.fromkeys(names)] if names else []


def cached_columns(run: RunResult, caches: list[str]) -> dict[str, Any]:
    """results.csv's cached-decoding loss and cache bytes per token of each cache (empty where not measured)."""
    measured = run.kv_quantization
    found = {} if measured is None else {c.quantization: c for c in [measured.unquantized, *measured.quantized]}
    row: dict[str, Any] = {}
    for cache in caches:
        row[f"cached_val_loss_{cache}"] = found[cache].loss if cache in found else None
        row[f"kv_bytes_per_token_{cache}"] = found[cache].kv_bytes_per_token if cache in found else None
    return row


def write_csv(path: Path, results: Results) -> None:
    names = val_names(results.settings)
    caches = quantized_cache_names(results.runs)
    rows = [csv_row(run, names) | cached_columns(run, caches) for run in results.runs]
    if results.settings.learning_rates is not None:  # the rate after the seed
        rows = [{"variant": row["variant"], "seed": row["seed"], "learning_rate": run.learning_rate, **row}
                for row, run in zip(rows, results.runs)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


# -------------------------------------------------------------------------------------------- markdown
def _si(value: float) -> str:
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f}"


def _bytes(value: float) -> str:
    for factor, suffix in ((2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.0f} B"


def _cell(stat: Stat | None, fmt: Callable[[float], str], constant: bool = False, busy: bool = False) -> str:
    """``mean ± std`` (std with two or more values; for `constant` columns only when nonzero); ``—`` when empty;
    ``busy`` for a timing measured while another process competed for the CPUs."""
    if stat is None or stat.mean is None:
        return NO_VALUE
    if busy:
        return BUSY
    text = fmt(stat.mean)
    if stat.std is None or (constant and stat.std == 0):
        return text
    return f"{text} ± {fmt(stat.std)}"


def _loss(v: float) -> str:
    return f"{v:.4f}"


def table(summary: list[VariantSummary], names: list[str]) -> list[str]:
    """The results table: one row per variant, one validation-loss column per validation text."""
    headers = ["variant", "runs ok", *(f"val loss ({name})" for name in names), f"val ppl ({names[0]})",
               "params (attention)", "params (total)", "train tok/s", "train wall time", "peak memory (train)",
               "KV cache / token", "KV cache @ context", "decode tok/s"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary:
        cells = [row.variant, f"{row.runs_ok}/{row.runs}"]
        cells += [_cell(row.val_loss.get(name), _loss) for name in names]
        cells += [
            _cell(row.val_ppl.get(names[0]), lambda v: f"{v:.2f}"),
            _cell(row.params_attention, _si, constant=True),
            _cell(row.params_total, _si, constant=True),
            _cell(row.train_tokens_per_s, lambda v: f"{v:,.0f}", busy=row.train_busy),
            _cell(row.train_wall_time_s, lambda v: f"{v:,.0f} s", busy=row.train_busy),
            _cell(row.train_peak_memory_bytes, _bytes),
            _cell(row.kv_bytes_per_token, lambda v: f"{v:,.0f} B", constant=True),  # exact: allocation / (B x ctx)
            _cell(row.kv_bytes_at_context, _bytes, constant=True),
            _cell(row.decode_tokens_per_s, lambda v: f"{v:,.1f}", busy=row.decode_busy),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _code(text: str) -> str:
    """`text` as inline code inside a table cell."""
    return "`" + text.replace("|", "/").replace("`", "'") + "`"


def _unique(values: list[Any]) -> str:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return ", ".join(str(v) for v in distinct) if distinct else NO_VALUE


def _machine_lines(runs: list[RunResult]) -> list[str]:
    """"- Machine: <summary>", or one sub-item per machine when the runs ran on several (a summary holds commas)."""
    machines = list(dict.fromkeys(run.environment.summary() for run in runs))
    if len(machines) <= 1:
        return [f"- Machine: {machines[0] if machines else NO_VALUE}"]
    return ["- Machines:", *(f"  - {machine}" for machine in machines)]


def _rates(rates: list[float]) -> str:
    return ", ".join(rate_label(r) for r in sorted(rates))


def _rate_setup_lines(settings: Settings) -> list[str]:
    if settings.learning_rates is None:
        return []
    chosen = (f"; each variant's chosen on `{settings.selection_val}`" if settings.selection_val
              else "; none selected")
    runs = "every config x rate x seed is a run"
    if settings.selection_seeds:
        seeds = ", ".join(str(seed) for seed in settings.selection_seeds)
        runs = (f"seeds {seeds} run at every rate of their variant's grid and choose its rate; every other seed runs at"
                " the chosen rate only")
    lines = [f"- Learning rates: {_rates(settings.learning_rates)} (the peak `lr` of the YAMLs' optimizer, nothing"
             f" else of it changed; {runs}){chosen}"]
    if settings.rate_grids:
        given = " (given, not chosen: a rate chosen elsewhere)"
        lines += [f"  - {variant}: {_rates(grid)}" + (given if len(grid) == 1 else "")
                  for variant, grid in settings.rate_grids.items()]
    return lines


def setup_lines(results: Results) -> list[str]:
    ok = [r for r in results.runs if r.ok]
    settings, measure = results.settings, results.settings.measure
    tokens_by_text = {}
    for run in ok:
        for v in run.evaluation.validation:
            tokens_by_text.setdefault(v.path, set()).add(v.tokens)
    texts = [f"`{path}`" + (" (primary)" if i == 0 else "")
             + (f", {_unique(sorted(tokens_by_text[path]))} target tokens" if path in tokens_by_text else "")
             for i, path in enumerate(settings.val_paths)]
    lines = [
        "Paths are relative to the directory the command ran in.",
        "",
        *_machine_lines(ok),
        f"- Data: `{settings.train_path}` for training; validation, each text whole: {'; '.join(texts)};"
        f" tokenizer `{settings.tokenizer_dir}`; data-order seed {settings.data_seed} (the same for every run)",
        f"- Training (litgpt pretrain): {_unique([r.evaluation.curve[-1].tokens for r in ok])} tokens per run"
        f" ({_unique([r.evaluation.curve[-1].iter for r in ok])} iterations), max_seq_length"
        f" {_unique([r.evaluation.primary.max_seq_length for r in ok])},"
        f" precision {_unique([r.train.precision for r in ok])},"
        f" seeds {', '.join(map(str, settings.seeds))} (model initialisation)",
        *_rate_setup_lines(settings),
        f"- Validation curve: {_unique(sorted({len(r.evaluation.curve) for r in ok}))} points per run",
        f"- Decode and KV cache: batch {measure.decode_batch_size}, context {measure.context_length} tokens,"
        f" {measure.decode_new_tokens} timed tokens, {measure.decode_dtype}"
        f" on {_unique([r.measure.decode.device for r in ok])}",
        f"- Throughput: the last training process of each run, its first {measure.throughput_skip_iters} iterations skipped",
    ]
    short = [r.name for r in ok if len(r.evaluation.curve) < MIN_CURVE_POINTS]
    if short:
        lines.append(f"- **Short curves**: fewer than {MIN_CURVE_POINTS} validation points for {', '.join(short)};"
                     " choose --eval_interval as docs/comparing.md says")
    runs_by_hardware = {}
    for run in ok:
        runs_by_hardware.setdefault(run.environment.hardware(), []).append(run.name)
    if len(runs_by_hardware) > 1:
        lines.append("- **Runs on different machines** (an invocation resumed elsewhere): the timing and peak-memory"
                     " columns then compare machines as well as attention; loss, parameter and KV-cache columns are"
                     " unaffected (up to floating-point rounding). " + "; ".join(f"{hardware}: {', '.join(names)}"
                                                             for hardware, names in runs_by_hardware.items()))
    resumed = [r.name for r in ok if r.train.resumed_from_step is not None]
    if resumed:
        lines.append(f"- Resumed after an interruption (wall time covers the last attempt only): {', '.join(resumed)}")
    mismatched = [r.name for r in ok if not r.measure.kv_cache.formula_matches]
    if mismatched:
        lines.append(f"- **KV accounting mismatch**: `litgpt_mka.measure.kv_cache_size` disagrees with the bytes"
                     f" `set_kv_cache` allocates for {', '.join(mismatched)}; the table shows the allocation"
                     " (results.json has both)")
    return lines


def difference_lines(results: Results) -> list[str]:
    """The differences to the reference: a table and one sentence per variant."""
    primary = val_names(results.settings)[0]
    if results.reference is None:
        return ["No reference: no config is MHA (every query head with its own key/value head), and"
                " no `--reference NAME` was given, so no differences are reported."]
    rows = [row for row in results.summary if row.difference is not None]
    if verdict_rule(results.settings) == T_TEST:
        return _tested_difference_lines(results, rows, primary)
    lines = [
        f"Validation loss on `{primary}` of each variant minus that of **{results.reference}** (nats/token; negative"
        f" is better). d = mean_v - mean_r over the finished seeds; SE = sqrt(s_v^2/n_v + s_r^2/n_r) with s the"
        f" sample standard deviation over seeds (Welch, unpaired: every run reads the same data in the same order,"
        f" so a seed changes only the initialisation, which is not a shared draw between architectures). Better or"
        f" worse when |d| >= {SE_FACTOR:g} SE, otherwise tied within noise; with one seed on either side the SE is"
        f" unknown and no claim is made.",
        "",
        "| variant | difference | SE | seeds (variant, reference) | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        d = row.difference
        lines.append(f"| {row.variant} | {NO_VALUE if d.difference is None else f'{d.difference:+.4f}'} |"
                     f" {NO_VALUE if d.se is None else f'{d.se:.4f}'} | {d.n}, {d.n_reference} | {d.verdict} |")
    return lines + [""] + [f"- {row.difference.sentence}" for row in rows]


def verdict_rule(settings: Settings) -> str:
    """The rule that decides the comparison's verdicts: the saved one, else the screening rule of its time."""
    return settings.verdict_rule or SCREENING


def design_text(settings: Settings) -> str:
    """The design and the rule, as the report states them."""
    if settings.paired_init:
        design = ("**Paired design**: for a seed, every parameter the variants share by name and shape started from"
                  " the same values (`compare --paired`), and every run read the same training windows in the same"
                  " order, so seed s of each variant is paired with seed s of the others by design (their own"
                  " parameters start from their own draws, and training takes the two apart from there). Paired"
                  " t-test on the per-seed differences over the seeds both finished: d = mean(v_s - r_s),"
                  " SE = s_d / sqrt(k), df = k - 1; valid whatever the runs' correlation, narrower than Welch's only"
                  " where paired runs move together enough to pay for its fewer degrees of freedom.")
    else:
        design = ("**Unpaired design**: the seed changes the initialisation, which litgpt draws from one stream in"
                  " module order, so the same seed gives two architectures different values even where they share"
                  " parameters. Welch t-test: d = mean_v - mean_r, SE = sqrt(s_v^2/n_v + s_r^2/n_r), df by"
                  " Welch-Satterthwaite.")
    return (f"{design} The {LEVEL:.0%} interval is d ± t(0.975, df) SE, p two-sided. Rule: better or worse only"
            f" where p, adjusted by Holm's method for the several comparisons with the reference (one per variant),"
            f" is below {1 - LEVEL:.2f}, so that the interval excludes 0; otherwise cannot tell (± the smallest"
            " detectable difference: the interval's half-width, the smallest observed difference these seeds could"
            " have told from 0, though a true difference of that size would be told only about half the time; with several"
            " comparisons Holm's adjustment can ask up to t(1 - 0.025/m, df) SE, which each cannot-tell sentence"
            " below gives). With fewer than two seeds (pairs) the SE is unknown and no claim is made. The seeds"
            " sample initialisations only: every run read the same data in the same order, and the verdicts' text"
            " is one sample of texts, so a verdict holds for this data order and this text.")


def _interval(d: Difference) -> str:
    return NO_VALUE if d.ci95_low is None else f"[{d.ci95_low:+.4f}, {d.ci95_high:+.4f}]"


def _tested_cells(d: Difference) -> list[str]:
    """difference, 95% interval, test (df), p, p (Holm), seeds, verdict: the cells of a t-tested difference."""
    test = NO_VALUE if d.t_test is None else d.t_test + ("" if d.t_df is None else f" ({d.t_df:.1f})")
    seeds = f"{d.n}, {d.n_reference}" + ("" if d.pairs is None else f" ({d.pairs} paired)")
    verdict = d.verdict if d.verdict != "cannot tell" else f"cannot tell (±{d.ci95_high - d.difference:.4f})"
    return [NO_VALUE if d.difference is None else f"{d.difference:+.4f}", _interval(d), test,
            NO_VALUE if d.p_value is None else p_text(d.p_value), NO_VALUE if d.p_holm is None else p_text(d.p_holm),
            seeds, verdict]


TESTED_HEADERS = ["difference", "95% interval", "test (df)", "p", "p (Holm)", "seeds (variant, reference)", "verdict"]


def _tested_difference_lines(results: Results, rows: list[VariantSummary], primary: str) -> list[str]:
    lines = [
        f"Validation loss on `{primary}` of each variant minus that of **{results.reference}** (nats/token; negative"
        f" is better). {design_text(results.settings)}",
        "",
        "| variant | " + " | ".join(TESTED_HEADERS) + " |",
        "|---|" + "---|" * len(TESTED_HEADERS),
    ]
    lines += [f"| {row.variant} | " + " | ".join(_tested_cells(row.difference)) + " |" for row in rows]
    return lines + [""] + [f"- {row.difference.sentence}" for row in rows]


def _task_value(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"


def task_directions(results: Results) -> dict[str, bool | None]:
    """Task metric -> lm-eval's higher_is_better, from the runs' scores, in first-seen order."""
    directions: dict[str, bool | None] = {}
    for run in results.runs:
        for score in run.lm_eval.scores if run.lm_eval is not None else []:
            directions.setdefault(task_key(score), score.higher_is_better)
    return directions


def task_lines(results: Results) -> list[str]:
    """The lm-eval task scores (mean ± std over seeds, lm-eval's SE) and their differences to the reference."""
    directions = task_directions(results)
    arrow = {True: " ↑", False: " ↓", None: ""}
    lines = [
        "lm-eval tasks on each run's final checkpoint, scored as `litgpt-mka evaluate` scores them (float32):"
        " mean ± std over seeds, and lm-eval's standard error (its sampling error over the task's examples; the"
        " mean over seeds). ↑: higher is better, ↓: lower is better.",
        "",
        "| variant | " + " | ".join(f"{key}{arrow[up]}" for key, up in directions.items()) + " |",
        "|---|" + "---|" * len(directions),
    ]
    for row in results.summary:
        cells = []
        for key in directions:
            stat, stderr = row.task_scores.get(key), row.task_stderrs.get(key)
            se = f" (SE {_task_value(stderr.mean)})" if stderr is not None and stderr.mean is not None else ""
            cells.append(_cell(stat, _task_value) + (se if stat is not None else ""))
        lines.append(f"| {row.variant} | " + " | ".join(cells) + " |")
    compared = [row for row in results.summary if row.task_differences]
    if not compared:
        return lines
    if verdict_rule(results.settings) == T_TEST:
        return lines + _tested_task_lines(results, compared)
    lines += [
        "",
        f"Differences to **{results.reference}**: d = mean_v - mean_r; SE = sqrt(s_v^2/n_v + s_r^2/n_r + e_v^2 +"
        f" e_r^2), s the sample std over seeds (Welch, as for the loss) and e lm-eval's standard error; better or"
        f" worse when |d| >= {SE_FACTOR:g} SE in the metric's better direction, otherwise tied within noise.",
        "",
        "| variant | metric | difference | SE | seeds (variant, reference) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in compared:
        for key, d in row.task_differences.items():
            lines.append(f"| {row.variant} | {key} | {NO_VALUE if d.difference is None else f'{d.difference:+.4f}'} |"
                         f" {NO_VALUE if d.se is None else f'{d.se:.4f}'} | {d.n}, {d.n_reference} | {d.verdict} |")
    return lines + [""] + [f"- {d.sentence}" for row in compared for d in row.task_differences.values()]


def _tested_task_lines(results: Results, compared: list[VariantSummary]) -> list[str]:
    lines = [
        "",
        f"Differences to **{results.reference}** by the rule of the loss, with lm-eval's standard errors e added:"
        " SE^2 = (the seeds' part) + e_v^2 + e_r^2, e counted as known in the df (its sampling error over the task's"
        " examples, which more seeds do not reduce); one Holm family per metric; better or worse in the metric's"
        f" better direction. {design_text(results.settings)}",
        "",
        "| variant | metric | " + " | ".join(TESTED_HEADERS) + " |",
        "|---|---|" + "---|" * len(TESTED_HEADERS),
    ]
    for row in compared:
        lines += [f"| {row.variant} | {key} | " + " | ".join(_tested_cells(d)) + " |"
                  for key, d in row.task_differences.items()]
    return lines + [""] + [f"- {d.sentence}" for row in compared for d in row.task_differences.values()]


def _signed(stat: Stat) -> str:
    """``+mean ± std`` (a difference: the sign on the mean only)."""
    if stat.mean is None:
        return NO_VALUE
    return f"{stat.mean:+.4f}" + ("" if stat.std is None else f" ± {stat.std:.4f}")


def quantized_cache_lines(results: Results) -> list[str]:
    """Each variant decoded through each quantized cache: bytes, loss, and what the quantization costs."""
    runs = [r for r in results.runs if r.kv_quantization is not None]
    prefill = runs[0].kv_quantization.prefill_tokens
    agreement = max(abs(r.kv_quantization.unquantized.loss - r.kv_quantization.full_forward_loss) for r in runs)
    primary = Path(results.settings.val_paths[0]).stem
    by_variant = {r.variant: r.kv_quantization.unquantized.attention_class_name for r in runs}
    decoders = ", ".join(f"{variant} `{name}`" for variant, name in by_variant.items())
    lines = [
        f"Each run's final checkpoint decodes `{primary}` through its KV cache, teacher-forced as `litgpt generate`"
        f" feeds tokens (each validation window's first {prefill} tokens as one chunk, then one token at a time,"
        " every query reading the keys and values back from the cache), once through the unquantized cache and"
        " once through each `kv_cache_quantization`. cached loss: mean ± std over seeds; cost: the quantized minus"
        " the unquantized cached loss of the same checkpoint (paired), mean ± std over seeds. KV B/token: allocated"
        " by `set_kv_cache` at the decode batch and context, in the decode dtype, scales and offsets included."
        f" Unquantized cached decoding agrees with the full-forward validation loss to {agreement:.1e} nats at most"
        f" (every run). Decoded by: {decoders}; where that is not the run's own class, the run's class keeps"
        " litgpt's own cache and this one, with the same weights and outputs, replaces it"
        " (`litgpt_mka.attention.registry.quantizable_attention_class`).",
        "",
        "| variant | cache | KV B/token | × unquantized | cached val loss | cost (nats/token) |",
        "|---|---|---:|---:|---|---|",
    ]
    for row in (r for r in results.summary if r.quantized_caches):
        base = row.kv_bytes_per_token.mean
        lines.append(f"| {row.variant} | none | {_cell(row.kv_bytes_per_token, lambda v: f'{v:,.0f}', constant=True)} |"
                     f" 1.000 | {_cell(row.val_loss.get(primary), _loss)} | reference |")
        for cache in row.quantized_caches:
            ratio = NO_VALUE if not base else f"{cache.kv_bytes_per_token.mean / base:.3f}"
            lines.append(f"| {row.variant} | {cache.quantization} |"
                         f" {_cell(cache.kv_bytes_per_token, lambda v: f'{v:,.0f}', constant=True)} | {ratio} |"
                         f" {_cell(cache.loss, _loss)} | {_signed(cache.cost)} |")
    return lines + ["", "The unquantized rows' loss is the full-forward validation loss of the Results table. In the"
                        " Pareto plot the quantized caches are hollow markers in their variant's colour, one marker per"
                        " cache (its legend), joined to the variant's own point."]


def _load_text(load: PhaseLoad) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return f"load {fmt(load.load_1min_before)} before, {fmt(load.load_1min_after)} after, threshold {load.threshold:.1f}"


def load_lines(results: Results) -> list[str]:
    """What "busy" means, and which phases of which runs were busy."""
    busy = []
    for run in (r for r in results.runs if r.ok):
        for phase, load in (("training", run.train.load), ("decode", run.measure.decode.load)):
            if load.busy:
                busy.append(f"- {run.name}, {phase}: {_load_text(load)}")
    lines = [
        "A timing cell (train tok/s, train wall time, decode tok/s) reads **busy** when, for any seed of the"
        " variant, the 1-minute load average right before or right after the timed phase (training; the decode"
        f" measurement) exceeded the number of CPUs the run used (its torch threads) + {BUSY_LOAD_MARGIN:g}: another"
        " process was competing for the CPUs, so the number would measure the machine's load rather than the"
        " attention. results.json and results.csv keep the raw numbers and loads. Loss, parameter, memory and"
        " KV-cache columns do not depend on load. For speed, the decode benchmark (benchmarks/decode.py) on an idle"
        " machine is the comparison that matters.",
        "",
    ]
    return lines + (busy if busy else ["No timed phase was busy."])


def routing_lines(results: Results) -> list[str]:
    """Mean routing weights per layer of every MKA/FMKA variant (mean ± std over seeds)."""
    lines = []
    for row in (r for r in results.summary if r.routing is not None):
        sources = next(r.evaluation.routing.sources for r in results.runs
                       if r.ok and r.variant == row.variant and r.evaluation.routing is not None)
        lines += [f"**{row.variant}**", "", "| layer | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
        lines += [f"| {layer} | " + " | ".join(_cell(stat, lambda v: f"{v:.3f}") for stat in stats) + " |"
                  for layer, stats in enumerate(row.routing)]
        lines.append("")
    return lines


DEFINITIONS = [
    "val loss (text): mean cross-entropy (nats/token, float32) of the final checkpoint over every token of that"
    " validation text exactly once (windows of max_seq_length + 1 tokens, stride max_seq_length, the tail scored"
    " once); no padding; val ppl = exp(val loss) per run. The first text is the primary one (curves, Pareto plot,"
    " differences, routing)",
    "train tok/s: timed iterations x tokens per iteration / sum of litgpt's per-iteration `iter_time` (metrics.csv)",
    "train wall time: the `litgpt pretrain` call in the training process (litgpt's imports, data, model,"
    " compilation, training, checkpoint saves)",
    "peak memory (train): of the training process only; CUDA max allocated on GPU, peak RSS on CPU",
    "KV cache @ context: bytes of the buffers that `set_kv_cache` allocates for the stated batch and context,"
    " in the decode dtype, all layers; / token: that divided by batch x context",
    "decode tok/s: greedy cached decoding after a prompt of the stated context, batch / median step time",
    "routing weights: mean lambda (local, session, long-term memory) per layer over every input position of the"
    " primary validation text (`litgpt_mka.attention.mka.routing_weights`); each row sums to 1",
    "mean ± sample std over seeds where there are several; `runs ok` counts finished runs",
]

PLOT_TITLES = {
    "loss_vs_tokens.png": "Validation loss against training tokens",
    "loss_vs_kv_cache.png": "Validation loss against KV-cache bytes per token (Pareto)",
    "differences.png": "Differences to the reference with their 95% intervals",
    "routing.png": "Learned routing weights of MKA/FMKA per layer",
    "throughput.png": "Training and decode throughput (quiet runs only)",
}


def comparison_sections(results: Results, heading: str = "") -> list[str]:
    """The results table, the differences to the reference, lm-eval scores and quantized caches of `results`."""
    names = val_names(results.settings)
    lines = [f"## Results{heading}", ""] + table(results.summary, names) + [""]
    lines += [f"## Differences to the reference{heading}", ""] + difference_lines(results) + [""]
    if any(row.task_scores for row in results.summary):
        lines += [f"## lm-eval task scores{heading}", ""] + task_lines(results) + [""]
    if any(row.quantized_caches for row in results.summary):
        lines += [f"## Quantized KV caches{heading}", ""] + quantized_cache_lines(results) + [""]
    return lines


def rate_sections(results: Results) -> list[str]:
    """With --learning_rates: the selection and the comparison at the chosen rates, else each rate's comparison."""
    if results.settings.selection_val is not None:
        lines = ["## Learning-rate selection", ""] + selection_lines(results) + [""]
        lines += comparison_sections(at_chosen_rates(results), heading=" (each variant at its chosen rate)")
        return lines + unchosen_seed_lines(results)
    lines = ["## Learning rates", "", "No rate was selected (no `--selection_val`): each learning rate's runs are"
             " compared on their own below, and no verdict across rates is made.", ""]
    for rate in results.by_learning_rate:
        lines += comparison_sections(at_rate(results, rate), heading=f" at learning rate {rate_label(rate.learning_rate)}")
    return lines


EDGE_FLAG = "best at the grid's edge: widen the grid"
UNEQUAL_SEEDS = "its rates' means are over unequal seeds: may move as runs finish"


def selection_lines(results: Results) -> list[str]:
    """The selection loss of every variant x rate, each variant's chosen rate, edge flags and the selection's bias."""
    settings = results.settings
    selection_text, primary = settings.selection_val, val_names(settings)[0]
    rates = sorted(settings.learning_rates)
    over = ("over its finished seeds" if not settings.selection_seeds
            else f"over its finished selection seeds ({_seed_list(settings.selection_seeds)})")
    luck = ("the check on the seeds that did not choose, below the verdicts, reads them without it"
            if settings.selection_seeds else "every seed's runs took part in the choice; `--selection_seeds` would"
            " leave the other seeds out of it and check the verdicts on them")
    lines = [
        f"Each variant's learning rate is the one of lowest mean loss on `{selection_text}` {over};"
        f" the verdicts are read on `{primary}`, which the choice did not see. The lowest of several noisy losses is"
        " biased low (the winner's curse): the chosen rate's own loss in this table is that lowest one, so it is"
        " optimistic, and it is not compared. Reading the verdicts on another text keeps the luck of the text out of"
        " them (how well one rate's runs happen to fit these stories), not the luck of the runs: a choosing run at"
        " the chosen rate won the choice, and its luck (its initialisation) shows on every text, so a little of the"
        " curse can reach the verdicts through it, the less the further apart the rates' losses lie against the"
        f" spread of the seeds; {luck}. Cells: loss on `{selection_text}` (nats/token), mean ± std over seeds (seeds).",
        "",
        "| variant | " + " | ".join(f"lr {rate_label(rate)}" for rate in rates) + " | chosen rate |",
        "|---|" + "---|" * (len(rates) + 1),
    ]
    for choice in results.rate_selection:
        found = dict(zip(choice.rates, choice.losses))
        cells = []
        for rate in rates:
            cell = NO_VALUE if rate not in found else f"{_cell(found[rate], _loss)} ({found[rate].n})"
            cells.append(f"**{cell}**" if rate == choice.chosen else cell)
        chosen = NO_VALUE if choice.chosen is None else rate_label(choice.chosen)
        if choice.chosen is None and choice.rates and settings.selection_seeds:
            chosen += " (not yet: a selection run has not finished)"
        if settings.rate_grids and len(settings.rate_grids.get(choice.variant, rates)) == 1:
            chosen += " (given)"
        if choice.chosen is not None and len({loss.n for loss in choice.losses}) > 1:
            chosen += f" ({UNEQUAL_SEEDS})"
        lines.append(f"| {choice.variant} | " + " | ".join(cells) + f" | {chosen}"
                     + (f" ({EDGE_FLAG})" if choice.at_edge else "") + " |")
    edges = [choice for choice in results.rate_selection if choice.at_edge]
    lines += [""] + [f"- **{choice.variant}**: {EDGE_FLAG} ({rate_label(choice.chosen)} is the {_edge(choice)} rate"
                     " with a finished run; the best rate may lie beyond it)." for choice in edges]
    return lines if edges else lines[:-1]


def unchosen_seed_lines(results: Results) -> list[str]:
    """With ``--selection_seeds``: the differences to the reference over the other seeds' runs alone (at the chosen
    rates, by the same test and rule, one Holm family), a check that carries none of the choice's winner's curse;
    empty until one of those seeds has finished for the reference and another variant."""
    settings, reference = results.settings, results.reference
    if not settings.selection_seeds or reference is None:
        return []
    losses: dict[str, tuple[list[float], list[int]]] = {}
    for run in at_chosen_rates(results).runs:
        if run.ok and run.seed not in settings.selection_seeds:
            values, seeds = losses.setdefault(run.variant, ([], []))
            values.append(run.evaluation.primary.loss), seeds.append(run.seed)
    if reference not in losses or len(losses) < 2:
        return []
    differences = loss_differences(losses, reference, bool(settings.paired_init), verdict_rule(settings))
    choosing, checking = _seed_list(settings.selection_seeds), _seed_list(sorted({s for _, seeds in losses.values()
                                                                                   for s in seeds}))
    lines = [
        "## Check: the seeds that did not choose the rates", "",
        f"Seeds {choosing} chose each rate that was not given; seeds {checking} trained at the chosen rates only,"
        f" after the choice, so the differences over their runs alone carry none of its winner's curse (learning-rate selection, above)."
        f" Validation loss on `{val_names(settings)[0]}` minus **{reference}**'s, by the same test and rule as the"
        f" verdicts, with fewer seeds: where the two tables disagree, the choice's luck is one suspect, the fewer"
        f" seeds the other.", "",
        "| variant | " + " | ".join(TESTED_HEADERS) + " |",
        "|---|" + "---|" * len(TESTED_HEADERS),
    ]
    lines += [f"| {variant} | " + " | ".join(_tested_cells(difference)) + " |"
              for variant, difference in differences.items()]
    return lines + [""]


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(str(seed) for seed in seeds)


def _edge(choice: RateSelection) -> str:
    if len(choice.rates) == 1:
        return "only"
    return "smallest" if choice.chosen == choice.rates[0] else "largest"


def markdown(results: Results, figures: list[str]) -> str:
    lines = ["# Attention variants compared", "", "```", results.command, "```", ""]
    lines += setup_lines(results) + [""]
    lines += rate_sections(results) if results.by_learning_rate else comparison_sections(results)
    lines += ["## Timing and load", ""] + load_lines(results) + [""]
    routing = routing_lines(at_chosen_rates(results) if results.rate_selection else results)
    if routing:
        lines += ["## Routing weights (MKA/FMKA)", "", "Which memory did each layer learn to use?", ""] + routing
    failed = [r for r in results.runs if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", "", "| run | phase | reason | error |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {r.failure.phase} | {r.failure.reason} | {_code(r.failure.error)} |" for r in failed]
        lines += ["", f"Full logs: `{RUNS_DIR}/<run>/{RUN_LOG}`.", ""]
    pending = [r.name for r in results.runs if r.status == "pending"]
    if pending:
        lines += ["## Not run yet", "", ", ".join(pending), ""]
    for name in figures:
        folder, _, file_name = name.rpartition("/")  # lr<rate>/ for one rate's plots
        title = PLOT_TITLES[file_name] + (f" (learning rate {folder.removeprefix('lr')})" if folder else "")
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["## Definitions", ""] + [f"- {d}" for d in DEFINITIONS] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ a saved results.json
def read_results(path: Path, reference: str | None = None, rule: str | None = None) -> Results:
    """A saved results.json as :class:`Results`, its summary recomputed (against `reference`, else the saved one;
    by the verdict `rule`, else the saved one, which is the screening rule for results saved before the t-test).

    Raises:
        ValueError: the file is of another schema than this version writes (schema v1 is no longer read),
            `reference` names no variant of the results, or `rule` no verdict rule.
    """
    data = read_json(path)
    if data.get("schema") != RESULTS_SCHEMA:
        raise ValueError(
            f"{path} has schema {data.get('schema')!r}; this version of litgpt-mka reads {RESULTS_SCHEMA!r} only"
            " (schema v1, written before compare took several validation texts, is no longer read): rerun the"
            " comparison to write it again"
        )
    runs = [read_run(run) for run in data["runs"]]
    variants = list(dict.fromkeys(run.variant for run in runs))
    if reference is not None and reference not in variants:
        raise ValueError(f"reference={reference!r} is not one of the variants {variants}")
    if rule is not None and rule not in VERDICT_RULES:
        raise ValueError(f"rule={rule!r} is not one of {VERDICT_RULES}")
    reference = reference if reference is not None else data["reference"]
    settings = from_json(Settings, data["settings"])
    if rule is not None and rule != verdict_rule(settings):
        settings = dataclasses.replace(settings, verdict_rule=rule)
    return results_of(data["command"], data["written"], from_json(Environment, data["environment"]), settings,
                      reference, runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m litgpt_mka.compare.report",
                                     description="Render report.md, results.csv and the plots again from a results.json.")
    parser.add_argument("results_json", type=Path)
    parser.add_argument("--reference", help="the variant the others are compared with (default: the saved one)")
    parser.add_argument("--verdict_rule", choices=VERDICT_RULES,
                        help="decide the differences by this rule (default: the saved one; results saved before the"
                             f" t-test: {SCREENING!r})")
    parser.add_argument("--no_plots", action="store_true")
    parser.add_argument("--out_dir", type=Path,
                        help="write there (default: beside results_json, replacing the files it was rendered with)")
    args = parser.parse_args(argv)
    results = read_results(args.results_json, args.reference, args.verdict_rule)
    write_outputs(args.out_dir if args.out_dir is not None else args.results_json.parent, results, not args.no_plots)


if __name__ == "__main__":
    main()
