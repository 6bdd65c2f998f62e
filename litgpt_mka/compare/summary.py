"""What the runs of a comparison add up to: per-variant rows, differences to a reference, the Pareto frontier.

Aggregation over seeds: per variant (config file stem), mean and sample standard deviation (n - 1) of each
value over the runs that finished (:class:`~litgpt_mka.compare.records.Stat`).

Difference to the reference, for the primary validation loss (nats/token; lower is better)::

    d  = mean(variant) - mean(reference)
    SE = sqrt(s_v^2 / n_v + s_r^2 / n_r)        (Welch: s = sample std over seeds, n = finished seeds)

The same rule decides lm-eval task metrics (``--lm_eval_tasks``), with lm-eval's standard errors added to the
SE and the better sign taken from lm-eval's ``higher_is_better`` (:func:`task_difference`).

Verdict: "better" when d <= -2 SE, "worse" when d >= 2 SE, "tied within noise" when |d| < 2 SE (or d = 0);
with fewer than two finished seeds on either side the SE is unknown and no claim is made.

Why unpaired (Welch) rather than paired by seed: every run of a comparison reads the same training windows in
the same order (one data seed for all), so the seed changes only the initialisation; and the same seed does not
give two architectures the same initial weights (their parameters differ in shape and number, so the random
stream is consumed differently). Runs with equal seeds are therefore not matched pairs, and pairing them would
claim a correlation the design does not create. The unpaired SE also serves variants whose seeds finished
unevenly. With 2 or 3 seeds per side the SE is itself rough (1 to 4 degrees of freedom); "2 SE" is a plain
screening rule, not a significance test at a stated level.
"""

import math

from litgpt_mka.compare.records import Difference, QuantizedCacheSummary, RunResult, Stat, TaskScore, VariantSummary

SE_FACTOR = 2.0  # |difference| below SE_FACTOR standard errors: tied within noise


# ------------------------------------------------------------------------------------------- reference
def difference(variant: str, values: list[float], reference: str, reference_values: list[float]) -> Difference:
    """The primary-validation-loss difference of `variant` to `reference` (see the module docstring)."""
    return _difference(variant, "validation loss", " nats/token", values, reference, reference_values, False)


def task_difference(
    variant: str, label: str, values: list[float], stderrs: list[float | None],
    reference: str, reference_values: list[float], reference_stderrs: list[float | None], higher_is_better: bool | None,
) -> Difference:
    """An lm-eval metric of `variant` minus that of `reference`, with the verdict rule of the loss.

        SE = sqrt(s_v^2 / n_v + s_r^2 / n_r + e_v^2 + e_r^2)

    s: sample std over seeds (Welch, as for the loss); e: the mean over seeds of lm-eval's standard error of the
    metric (its sampling error over the task's examples: every run answers the same examples, so it does not
    shrink with more seeds; both sides' are added, as for independent test sets, which overstates the SE of
    a difference on the same examples rather than understating it). A standard error lm-eval does not give
    counts as 0. Which sign is better follows lm-eval's ``higher_is_better``; without it, no verdict.
    """
    errors = (_mean_stderr(stderrs), _mean_stderr(reference_stderrs))
    return _difference(variant, label, "", values, reference, reference_values, higher_is_better, errors)


def _difference(
    variant: str, label: str, unit: str, values: list[float], reference: str, reference_values: list[float],
    higher_is_better: bool | None, lm_eval_errors: tuple[float, float] | None = None,
) -> Difference:
    """d = mean(values) - mean(reference_values), its SE (Welch over seeds, plus lm-eval's errors) and verdict."""
    n, n_ref = len(values), len(reference_values)
    if not values or not reference_values:
        missing = variant if not values else reference
        return Difference(reference, None, None, n, n_ref, "no runs",
                          f"{variant}: {missing} has no finished run, so nothing is compared.")
    d = math.fsum(values) / n - math.fsum(reference_values) / n_ref
    head = f"{variant}: {label} {d:+.4f}{unit} against {reference}"
    if n < 2 or n_ref < 2:
        fewest = variant if n < 2 else reference
        return Difference(reference, d, None, n, n_ref, "SE unknown",
                          f"{head}; {fewest} has one finished seed, so the SE is unknown and no claim is made.")
    e_v, e_r = lm_eval_errors or (0.0, 0.0)
    se = math.sqrt(Stat.of(values).std ** 2 / n + Stat.of(reference_values).std ** 2 / n_ref + e_v ** 2 + e_r ** 2)
    lm_eval_part = f", lm-eval's part {math.hypot(e_v, e_r):.4f}" if lm_eval_errors else ""
    detail = f"SE {se:.4f}{lm_eval_part}; {n} and {n_ref} seeds"
    if higher_is_better is None:
        return Difference(reference, d, se, n, n_ref, "no direction",
                          f"{head} ({detail}): lm-eval declares no better direction for it, so no claim is made.")
    verdict, why = _verdict(d, se, higher_is_better)
    return Difference(reference, d, se, n, n_ref, verdict, f"{head} ({detail}): {verdict} ({why}).")


def _verdict(d: float, se: float, higher_is_better: bool) -> tuple[str, str]:
    """("better" | "worse" | "tied within noise", why) for a difference `d` with standard error `se`."""
    if abs(d) < SE_FACTOR * se or d == 0:
        return "tied within noise", f"|difference| < {SE_FACTOR:g} SE"
    verdict = "better" if (d > 0) == higher_is_better else "worse"
    why = f"{'lower' if d < 0 else 'higher'} by {abs(d) / se:.1f} SE" if se > 0 else "no spread over seeds"
    return verdict, why


def _mean_stderr(stderrs: list[float | None]) -> float:
    return math.fsum(e or 0.0 for e in stderrs) / len(stderrs) if stderrs else 0.0


# ----------------------------------------------------------------------------------------- aggregation
def _routing(runs: list[RunResult]) -> list[list[Stat]] | None:
    tables = [r.evaluation.routing.per_layer for r in runs if r.evaluation.routing is not None]
    if not tables:
        return None
    layers, sources = len(tables[0]), len(tables[0][0])
    return [[Stat.of([t[layer][i] for t in tables]) for i in range(sources)] for layer in range(layers)]


def task_key(score: TaskScore) -> str:
    """The report's name of a task metric: ``task metric`` (lm-eval's filter shown only when not "none")."""
    name, _, metric_filter = score.metric.partition(",")
    return f"{score.task} {name}" + (f" ({metric_filter})" if metric_filter and metric_filter != "none" else "")


def _task_scores(runs: list[RunResult]) -> dict[str, list[TaskScore]]:
    """Task metric -> its score in each run that has lm-eval scores, in run order."""
    found: dict[str, list[TaskScore]] = {}
    for run in runs:
        for score in run.lm_eval.scores if run.lm_eval is not None else []:
            found.setdefault(task_key(score), []).append(score)
    return found


def _task_differences(variant: str, scores: dict[str, list[TaskScore]], reference: str,
                      reference_scores: dict[str, list[TaskScore]]) -> dict[str, Difference]:
    return {
        key: task_difference(
            variant, key, [s.value for s in found], [s.stderr for s in found], reference,
            [s.value for s in reference_scores[key]], [s.stderr for s in reference_scores[key]],
            found[0].higher_is_better,
        )
        for key, found in scores.items() if key in reference_scores
    }


def _quantized_caches(runs: list[RunResult]) -> list[QuantizedCacheSummary]:
    """Each quantized cache over the runs that measured it: bytes, loss, and its cost paired within a checkpoint
    (quantized minus unquantized cached loss of the same run: one model, so this difference is paired)."""
    measured = [r.kv_quantization for r in runs if r.kv_quantization is not None]
    rows = []
    for name in measured[0].quantizations if measured else []:
        pairs = [(m.unquantized, q) for m in measured for q in m.quantized if q.quantization == name]
        rows.append(QuantizedCacheSummary(
            quantization=name,
            kv_bytes_per_token=Stat.of([q.kv_bytes_per_token for _, q in pairs]),
            loss=Stat.of([q.loss for _, q in pairs]),
            cost=Stat.of([q.loss - u.loss for u, q in pairs]),
        ))
    return rows


def summarize(results: list[RunResult], reference: str | None) -> list[VariantSummary]:
    """One row per variant, in first-seen order; differences to `reference` (None: no differences)."""
    by_variant: dict[str, list[RunResult]] = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result)
    primary_losses = {v: [r.evaluation.primary.loss for r in runs if r.ok] for v, runs in by_variant.items()}
    task_scores = {v: _task_scores([r for r in runs if r.ok]) for v, runs in by_variant.items()}
    rows = []
    for variant, runs in by_variant.items():
        ok = [r for r in runs if r.ok]
        texts: dict[str, list] = {}
        for run in ok:
            for validation in run.evaluation.validation:
                texts.setdefault(validation.name, []).append(validation)
        compared = reference is not None and variant != reference and reference in primary_losses
        rows.append(VariantSummary(
            variant=variant,
            runs=len(runs),
            runs_ok=len(ok),
            val_loss={name: Stat.of([v.loss for v in found]) for name, found in texts.items()},
            val_ppl={name: Stat.of([v.perplexity for v in found]) for name, found in texts.items()},
            params_total=Stat.of([r.measure.parameters.total for r in ok]),
            params_attention=Stat.of([r.measure.parameters.attention for r in ok]),
            train_tokens=Stat.of([r.evaluation.curve[-1].tokens for r in ok]),
            train_tokens_per_s=Stat.of([r.measure.throughput.tokens_per_s for r in ok]),
            train_wall_time_s=Stat.of([r.train.wall_time_s for r in ok]),
            train_peak_memory_bytes=Stat.of([r.train.peak_memory.bytes for r in ok]),
            kv_bytes_per_token=Stat.of([r.measure.kv_cache.bytes_per_token for r in ok]),
            kv_bytes_at_context=Stat.of([r.measure.kv_cache.bytes_at_context for r in ok]),
            decode_tokens_per_s=Stat.of([r.measure.decode.tokens_per_s for r in ok]),
            train_busy=any(r.train.load.busy for r in ok),
            decode_busy=any(r.measure.decode.load.busy for r in ok),
            curve_points=[len(r.evaluation.curve) for r in ok],
            routing=_routing(ok),
            difference=(difference(variant, primary_losses[variant], reference, primary_losses[reference])
                        if compared else None),
            task_scores={key: Stat.of([s.value for s in found]) for key, found in task_scores[variant].items()},
            task_stderrs={key: Stat.of([s.stderr for s in found]) for key, found in task_scores[variant].items()},
            task_differences=(_task_differences(variant, task_scores[variant], reference, task_scores[reference])
                              if compared else {}),
            quantized_caches=_quantized_caches(ok),
        ))
    return rows


# ---------------------------------------------------------------------------------------------- Pareto
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, by increasing x (smaller x and y are better).

    A point is dominated when another has x <= and y <= with at least one strictly smaller. Equal points
    are all kept.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))
