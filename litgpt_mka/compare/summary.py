"""What the runs of a comparison add up to: per-variant rows, differences to a reference, the Pareto frontier.

Aggregation over seeds: per variant (config file stem), mean and sample standard deviation (n - 1) of each
value over the runs that finished (:class:`~litgpt_mka.compare.records.Stat`).

Difference to the reference, for the primary validation loss (nats/token; lower is better), decided by a stated
test (:mod:`litgpt_mka.compare.statistics` has the formulas), the ``t-test`` rule (:data:`T_TEST`):

* **paired** (``compare --paired``, the default: seed s of every variant starts from the same initial values of the
  parameters the variants share, and every run reads the same training windows in the same order): the paired
  t-test on the per-seed differences v_s - r_s over the seeds both finished, ``d = mean(v_s - r_s)``,
  ``SE = s_d / sqrt(k)``, ``df = k - 1``;
* **unpaired** (``--paired false``, and every comparison written before pairing existed): Welch's t-test,
  ``d = mean(variant) - mean(reference)``, ``SE = sqrt(s_v^2 / n_v + s_r^2 / n_r)``, Welch-Satterthwaite df.

Every difference is shown with its 95% interval ``d ± t_{0.975, df} SE``, df and two-sided p. The verdict is
"better" or "worse" only when the difference is significant at 5% after Holm's adjustment over the comparisons
with the reference (one per variant; the interval then excludes 0), else "cannot tell (smallest detectable
difference ±X at n seeds[, up to ±Y after Holm's adjustment for m comparisons])", X being the interval's
half-width: an observed difference had to exceed it to be told from 0 at these seeds (a true difference of size X
would be told only about half the time: X is the bar a result must clear, not a guarantee). In a family of m > 1
the adjustment asks more: Y = t_{1 - 0.025/m, df} SE is what Holm's first step asks, so a difference beyond Y is
told whatever the other comparisons give, one between X and Y depending on them. With fewer than two finished
seeds (pairs) no SE exists and no claim is made.

The same rule decides lm-eval task metrics (``--lm_eval_tasks``), with lm-eval's standard errors added to the
variance (:func:`task_difference`), one Holm family per metric, the better sign from lm-eval's ``higher_is_better``.

Old comparisons were decided by a screening rule, kept so that their reports render as they were written
(results.json without ``verdict_rule``; :data:`SCREENING`): Welch's SE; "better" when d <= -2 SE, "worse" when
d >= 2 SE, "tied within noise" when |d| < 2 SE. With 2 or 3 seeds a side (1 to 4 degrees of freedom) that rule
calls 12-30% of null differences better or worse, not 5%: it is not a test at a stated level.
"""

import math
from collections.abc import Callable

from litgpt_mka.compare import statistics
from litgpt_mka.compare.records import Difference, QuantizedCacheSummary, RunResult, Stat, TaskScore, VariantSummary
from litgpt_mka.compare.statistics import LEVEL, TTest

T_TEST = "t-test"  # paired or Welch t-test, 95% intervals, Holm over the comparisons with the reference
SCREENING = "2-SE screening"  # |d| >= 2 Welch SEs; how comparisons written before the t-test were decided
VERDICT_RULES = (T_TEST, SCREENING)
SE_FACTOR = 2.0  # the screening rule: |difference| below SE_FACTOR standard errors is tied within noise

Seeds = tuple[list[int], list[int]]  # the seeds of a variant's values and of the reference's, in the same order
Holm = tuple[float, int]  # (Holm-adjusted p, comparisons in the family)


# ------------------------------------------------------------------------------------------- reference
def difference(variant: str, values: list[float], reference: str, reference_values: list[float], *,
               seeds: Seeds | None = None, rule: str = T_TEST, holm: Holm | None = None) -> Difference:
    """The primary-validation-loss difference of `variant` to `reference` (see the module docstring).

    `seeds`: the seeds of `values` and `reference_values` when the runs are paired by seed (None: unpaired, Welch);
    `holm`: the Holm-adjusted p of this difference and the size of its family (None: a family of one).
    """
    return _difference(variant, "validation loss", " nats/token", values, reference, reference_values, False,
                       seeds=seeds, rule=rule, holm=holm)


def task_difference(
    variant: str, label: str, values: list[float], stderrs: list[float | None],
    reference: str, reference_values: list[float], reference_stderrs: list[float | None], higher_is_better: bool | None,
    *, seeds: Seeds | None = None, rule: str = T_TEST, holm: Holm | None = None,
) -> Difference:
    """An lm-eval metric of `variant` minus that of `reference`, with the verdict rule of the loss.

        SE^2 = (the loss's seed part: s_v^2 / n_v + s_r^2 / n_r, or s_d^2 / k paired) + e_v^2 + e_r^2

    s: sample std over seeds; e: the mean over seeds of lm-eval's standard error of the metric (its sampling
    error over the task's examples: every run answers the same examples, so it does not shrink with more seeds;
    both sides' are added, as for independent test sets, which usually overstates the SE of a difference on the
    same examples (when both models tend to get the same examples right, as models of one data and budget do) rather
    than understating it; in the Welch-Satterthwaite df it counts as known, infinitely many df).
    A standard error lm-eval does not give counts as 0. Which sign is better follows lm-eval's
    ``higher_is_better``; without it, no verdict.
    """
    errors = (_mean_stderr(stderrs), _mean_stderr(reference_stderrs))
    return _difference(variant, label, "", values, reference, reference_values, higher_is_better, errors,
                       seeds=seeds, rule=rule, holm=holm)


def _pairs(values: list[float], reference_values: list[float], seeds: Seeds) -> dict[int, float]:
    """seed -> value - reference value, over the seeds both sides finished (in the variant's order)."""
    theirs = dict(zip(seeds[1], reference_values))
    return {seed: value - theirs[seed] for seed, value in zip(seeds[0], values) if seed in theirs}


def t_test(values: list[float], reference_values: list[float], seeds: Seeds | None = None,
           known_variance: float = 0.0) -> TTest | None:
    """The paired (`seeds` given) or Welch t-test of the difference; None with fewer than two seeds (pairs)."""
    if seeds is not None:
        pairs = list(_pairs(values, reference_values, seeds).values())
        return statistics.paired(pairs, known_variance) if len(pairs) >= 2 else None
    if len(values) < 2 or len(reference_values) < 2:
        return None
    return statistics.welch(values, reference_values, known_variance)


def _difference(
    variant: str, label: str, unit: str, values: list[float], reference: str, reference_values: list[float],
    higher_is_better: bool | None, lm_eval_errors: tuple[float, float] | None = None, *,
    seeds: Seeds | None = None, rule: str = T_TEST, holm: Holm | None = None,
) -> Difference:
    """d = mean(values) - mean(reference_values) (paired: the mean per-seed difference) with its verdict."""
    if rule not in VERDICT_RULES:
        raise ValueError(f"rule={rule!r} is not one of {VERDICT_RULES}")
    n, n_ref = len(values), len(reference_values)
    if not values or not reference_values:
        missing = variant if not values else reference
        return Difference(reference, None, None, n, n_ref, "no runs",
                          f"{variant}: {missing} has no finished run, so nothing is compared.")
    if rule == SCREENING:
        return _screened(variant, label, unit, values, reference, reference_values, higher_is_better, lm_eval_errors)
    if not all(math.isfinite(value) for value in (*values, *reference_values)):
        return Difference(reference, None, None, n, n_ref, "not finite",
                          f"{variant}: a {label} of {variant} or {reference} is not finite (a run diverged), so"
                          " nothing is compared.")
    e_v, e_r = lm_eval_errors or (0.0, 0.0)
    test = t_test(values, reference_values, seeds, e_v ** 2 + e_r ** 2)
    matched = list(_pairs(values, reference_values, seeds).values()) if seeds is not None else []
    if test is not None:
        d = test.difference
    else:  # a single pair's difference, else the difference of the means
        d = matched[0] if matched else math.fsum(values) / n - math.fsum(reference_values) / n_ref
    head = f"{variant}: {label} {d:+.4f}{unit} against {reference}"
    if test is None:
        return Difference(reference, d, None, n, n_ref, "SE unknown",
                          f"{head}; {_too_few(variant, values, reference, reference_values, seeds)}, so the SE is"
                          " unknown and no claim is made.")
    p_holm, comparisons = holm if holm is not None else (test.p, 1)
    pairs = None if seeds is None else len(matched)
    record = dict(t_test=test.design, t_df=test.df, ci95_low=test.low, ci95_high=test.high, p_value=test.p,
                  p_holm=p_holm, holm_comparisons=comparisons, pairs=pairs)
    lm_eval_part = f", lm-eval's part of the SE {math.hypot(e_v, e_r):.4f}" if lm_eval_errors else ""
    seeds_text = _seeds_text(n, n_ref, pairs)
    detail = f"{_test_text(test, p_holm, comparisons)}{lm_eval_part}; {seeds_text}"
    if higher_is_better is None:
        return Difference(reference, d, test.se, n, n_ref, "no direction",
                          f"{head} ({detail}): lm-eval declares no better direction for it, so no claim is made.",
                          **record)
    verdict, why = _decided(test, p_holm, comparisons, higher_is_better, seeds_text)
    return Difference(reference, d, test.se, n, n_ref, verdict, f"{head} ({detail}): {why}.", **record)


def _too_few(variant: str, values: list[float], reference: str, reference_values: list[float],
             seeds: Seeds | None) -> str:
    if seeds is not None:
        pairs = len(_pairs(values, reference_values, seeds))
        return f"only {pairs} seed{'' if pairs == 1 else 's'} finished on both sides, fewer than two pairs"
    return f"{variant if len(values) < 2 else reference} has one finished seed"


def _seeds_text(n: int, n_ref: int, pairs: int | None) -> str:
    return f"{n} and {n_ref} seeds" if pairs is None else f"{pairs} paired seeds"


def p_text(p: float) -> str:
    """A p-value as the report writes it: three decimals, "< 0.001" below."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _test_text(test: TTest, p_holm: float, comparisons: int) -> str:
    """"paired t-test: 95% interval [lo, hi], df 2.0, p 0.071[, Holm-adjusted over 3 comparisons 0.213]"."""
    if test.df is None:
        return f"{test.design} t-test: SE 0, no spread over seeds"
    holm = f", Holm-adjusted over {comparisons} comparisons {p_text(p_holm)}" if comparisons > 1 else ""
    return (f"{test.design} t-test: {LEVEL:.0%} interval [{test.low:+.4f}, {test.high:+.4f}], df {test.df:.1f},"
            f" p {p_text(test.p)}{holm}")


def _decided(test: TTest, p_holm: float, comparisons: int, higher_is_better: bool, seeds_text: str) -> tuple[str, str]:
    """("better" | "worse" | "cannot tell", the verdict as the sentence ends with it)."""
    if p_holm < 1.0 - LEVEL:
        verdict = "better" if (test.difference > 0) == higher_is_better else "worse"
        return verdict, verdict
    detectable = f"smallest detectable difference ±{test.half_width:.4f} at {seeds_text}"
    if comparisons > 1:
        detectable += (f", up to ±{test.holm_half_width(comparisons):.4f} after Holm's adjustment for {comparisons}"
                       " comparisons")
    if test.excludes_zero:
        return "cannot tell", (f"cannot tell (its interval excludes 0, but not after Holm's adjustment for"
                               f" {comparisons} comparisons; {detectable})")
    return "cannot tell", f"cannot tell ({detectable})"


def _screened(variant: str, label: str, unit: str, values: list[float], reference: str, reference_values: list[float],
              higher_is_better: bool | None, lm_eval_errors: tuple[float, float] | None) -> Difference:
    """The screening rule of comparisons written before the t-test (:data:`SCREENING`), as it was."""
    n, n_ref = len(values), len(reference_values)
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
    verdict, why = _screening_verdict(d, se, higher_is_better)
    return Difference(reference, d, se, n, n_ref, verdict, f"{head} ({detail}): {verdict} ({why}).")


def _screening_verdict(d: float, se: float, higher_is_better: bool) -> tuple[str, str]:
    """("better" | "worse" | "tied within noise", why) for a difference `d` with standard error `se`."""
    if abs(d) < SE_FACTOR * se or d == 0:
        return "tied within noise", f"|difference| < {SE_FACTOR:g} SE"
    verdict = "better" if (d > 0) == higher_is_better else "worse"
    why = f"{'lower' if d < 0 else 'higher'} by {abs(d) / se:.1f} SE" if se > 0 else "no spread over seeds"
    return verdict, why


def _mean_stderr(stderrs: list[float | None]) -> float:
    return math.fsum(e or 0.0 for e in stderrs) / len(stderrs) if stderrs else 0.0


def holm_family(tests: dict[str, TTest | None]) -> dict[str, Holm]:
    """Key -> (Holm-adjusted p, family size) over the keys that have a test with a finite p (the comparisons with the
    reference; a diverged variant's NaN test leaves the family, which the sentences' "over m comparisons" shows)."""
    tested = {key: test.p for key, test in tests.items() if test is not None and math.isfinite(test.p)}
    adjusted = statistics.holm(list(tested.values()))
    return {key: (p, len(tested)) for key, p in zip(tested, adjusted)}


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


def _task_scores(runs: list[RunResult]) -> dict[str, list[tuple[int, TaskScore]]]:
    """Task metric -> (seed, its score) of each run that has lm-eval scores, in run order."""
    found: dict[str, list[tuple[int, TaskScore]]] = {}
    for run in runs:
        for score in run.lm_eval.scores if run.lm_eval is not None else []:
            found.setdefault(task_key(score), []).append((run.seed, score))
    return found


def _against_reference(
    samples: dict[str, tuple[list[float], list[int]]], reference: str, paired: bool, rule: str,
    known_variance: Callable[[str], float], decide: Callable[..., Difference],
) -> dict[str, Difference]:
    """Every variant of `samples` (values, seeds) but `reference` against it, as one Holm family.

    ``decide(variant, seeds=..., rule=..., holm=...)`` makes the variant's :class:`Difference`; `known_variance`:
    the variance term with known size of the variant's difference (lm-eval's standard errors; 0 for the loss).
    """
    reference_values, reference_seeds = samples[reference]
    compared = [variant for variant in samples if variant != reference]
    seeds = {variant: (samples[variant][1], reference_seeds) if paired else None for variant in compared}
    tests = {variant: t_test(samples[variant][0], reference_values, seeds[variant], known_variance(variant))
             for variant in compared}
    family = holm_family(tests) if rule == T_TEST else {}
    return {variant: decide(variant, seeds=seeds[variant], rule=rule, holm=family.get(variant)) for variant in compared}


def loss_differences(losses: dict[str, tuple[list[float], list[int]]], reference: str, paired: bool,
                     rule: str) -> dict[str, Difference]:
    """Every variant of `losses` (its values, their seeds) but `reference` against it, by `rule`; under t-tests one
    Holm family (the variants with a test)."""
    reference_losses = losses[reference][0]
    return _against_reference(
        losses, reference, paired, rule, lambda _: 0.0,
        lambda variant, **how: difference(variant, losses[variant][0], reference, reference_losses, **how),
    )


def _task_differences(scores: dict[str, dict[str, list[tuple[int, TaskScore]]]], reference: str, paired: bool,
                      rule: str) -> dict[str, dict[str, Difference]]:
    """Variant -> task metric -> its difference to the reference; one Holm family per metric."""
    found: dict[str, dict[str, Difference]] = {variant: {} for variant in scores if variant != reference}
    for key, reference_scores in scores[reference].items():
        by_variant = {variant: metrics[key] for variant, metrics in scores.items() if key in metrics}
        stderr = {variant: _mean_stderr([s.stderr for _, s in pairs]) for variant, pairs in by_variant.items()}

        def decide(variant: str, **how) -> Difference:
            pairs = by_variant[variant]
            return task_difference(
                variant, key, [s.value for _, s in pairs], [s.stderr for _, s in pairs], reference,
                [s.value for _, s in reference_scores], [s.stderr for _, s in reference_scores],
                pairs[0][1].higher_is_better, **how,
            )

        samples = {variant: ([s.value for _, s in pairs], [seed for seed, _ in pairs])
                   for variant, pairs in by_variant.items()}
        decided = _against_reference(samples, reference, paired, rule,
                                     lambda variant: stderr[variant] ** 2 + stderr[reference] ** 2, decide)
        for variant, d in decided.items():
            found[variant][key] = d
    return found


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


def summarize(results: list[RunResult], reference: str | None, paired: bool = False,
              rule: str = T_TEST) -> list[VariantSummary]:
    """One row per variant, in first-seen order; differences to `reference` (None: no differences).

    `paired`: the runs were paired-initialised (``compare --paired``), so the differences pair them by seed; `rule`:
    :data:`T_TEST`, or :data:`SCREENING` for comparisons written before it (see the module docstring).
    """
    by_variant: dict[str, list[RunResult]] = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result)
    finished = {variant: [r for r in runs if r.ok] for variant, runs in by_variant.items()}
    task_scores = {variant: _task_scores(ok) for variant, ok in finished.items()}
    compared = reference is not None and reference in by_variant
    losses = {variant: ([r.evaluation.primary.loss for r in ok], [r.seed for r in ok])
              for variant, ok in finished.items()}
    differences = loss_differences(losses, reference, paired, rule) if compared else {}
    task_differences = _task_differences(task_scores, reference, paired, rule) if compared else {}
    rows = []
    for variant, runs in by_variant.items():
        ok = finished[variant]
        texts: dict[str, list] = {}
        for run in ok:
            for validation in run.evaluation.validation:
                texts.setdefault(validation.name, []).append(validation)
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
            difference=differences.get(variant),
            task_scores={key: Stat.of([s.value for _, s in found]) for key, found in task_scores[variant].items()},
            task_stderrs={key: Stat.of([s.stderr for _, s in found]) for key, found in task_scores[variant].items()},
            task_differences=task_differences.get(variant, {}),
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
