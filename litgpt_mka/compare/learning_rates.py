"""The learning-rate axis of a comparison (``compare --learning_rates``) and the held-apart choice of each variant's
rate (``--selection_val``).

Runs. Every config x rate x seed is a run named ``<config stem>-lr<rate>-seed<seed>``, the rate spelled by
:func:`rate_label` (Python's shortest round-trip form: ``0.008``, ``0.0005``, ``1e-05``). The rate reaches ``litgpt
pretrain`` as its optimizer's peak ``lr``: an inline ``--config`` holding the YAML's own optimizer with only
``init_args.lr`` replaced (:func:`optimizer_with_rate`; litgpt 0.5.13 ignores ``--optimizer.lr`` on the command line
for a ``class_path`` optimizer), after the YAML and ``--pretrain_args``. Warm-up, the cosine decay to
``train.min_lr`` and everything else stay the YAML's. The run's spec holds the rate (``RunSpec.learning_rate``), so a
folder is never resumed at another rate; adding a rate on a rerun adds runs and leaves the others as they are.

Selection (:func:`select_rate`), per variant, on the selection text S (a ``--val_path`` other than the first, the
verdicts' text V)::

    chosen rate = argmin over the rates r with a finished run of  mean over seeds of  loss_S(variant, r, seed)

flagged ``at_edge`` when it is the smallest or the largest of those rates (the optimum may lie outside the grid).
The verdicts then compare each variant's runs at its chosen rate with the reference's at its own, seed by seed
(:func:`~litgpt_mka.compare.summary.summarize`, paired when the runs are). The chosen rate's own loss on S is the
minimum of several noisy estimates, so it is optimistic (biased low: the winner's curse). Choosing on S rather than V
keeps the text's share of that luck out of the verdicts (how well one rate's runs happen to fit S's stories), not the
runs' share: a choosing run at the chosen rate won the choice, and its initialisation's luck shows on V as on S. That
share shrinks as the rates' losses lie further apart against the spread of the seeds, and only runs that took no part
in the choice are free of it (``--selection_seeds``, below).

Grids per config (``--config_learning_rates``): a config named there trains its own rates instead of
``--learning_rates`` (:func:`rate_grids`); a one-rate grid there is given rather than chosen, so it is never flagged.

Tune, then confirm (``--selection_seeds``): only the selection seeds train at every rate of their variant's grid, and
only their runs choose the rate; every other seed trains at the chosen rate alone, once all of the variant's
selection runs have finished (:func:`chosen_rates`, read from the finished runs, so a rerun plans the same runs). The
verdicts use every seed at the chosen rate; the report checks them on the other seeds' runs alone, which carry none of
the choice's luck (:func:`litgpt_mka.compare.report.unchosen_seed_lines`).
"""

import copy
import dataclasses
import math
from collections.abc import Sequence

from litgpt_mka.compare.records import RateSelection, RateSummary, RunResult, Stat, VariantSummary
from litgpt_mka.compare.summary import summarize

LITGPT_DEFAULT_OPTIMIZER = "AdamW"  # litgpt.pretrain.setup's default `optimizer` (tested equal)


def rate_label(rate: float) -> str:
    """The rate as run names and the report spell it: ``repr(float(rate))`` (``0.008``, ``0.0005``, ``1e-05``)."""
    return repr(float(rate))


def run_name(stem: str, seed: int, rate: float | None) -> str:
    """``<stem>-seed<seed>``, or ``<stem>-lr<rate>-seed<seed>`` with a rate."""
    return f"{stem}-seed{seed}" if rate is None else f"{stem}-lr{rate_label(rate)}-seed{seed}"


def optimizer_with_rate(yaml_config: dict, rate: float) -> dict:
    """The YAML's optimizer (``class_path`` + ``init_args``) with ``init_args.lr`` = `rate`, nothing else changed.

    A name (``optimizer: AdamW``), or no optimizer (litgpt's default, AdamW), becomes ``torch.optim.<name>`` with
    only the rate given, the rest torch's defaults as before.

    Raises:
        ValueError: the optimizer is neither a name nor a mapping with ``class_path``.
    """
    optimizer = yaml_config.get("optimizer", LITGPT_DEFAULT_OPTIMIZER)
    if isinstance(optimizer, str):
        class_path = optimizer if "." in optimizer else f"torch.optim.{optimizer}"
        return {"class_path": class_path, "init_args": {"lr": float(rate)}}
    if not isinstance(optimizer, dict) or "class_path" not in optimizer:
        raise ValueError(f"optimizer={optimizer!r}: --learning_rates replaces the lr of an optimizer given by name or"
                         " by class_path and init_args")
    optimizer = copy.deepcopy(optimizer)
    optimizer["init_args"] = {**(optimizer.get("init_args") or {}), "lr": float(rate)}
    return optimizer


# --------------------------------------------------------------------------------------------- selection
def _selection_loss(run: RunResult, selection_val: str) -> float | None:
    return next((v.loss for v in run.evaluation.validation if v.name == selection_val), None)


def rate_grids(stems: Sequence[str], learning_rates: Sequence[float] | None,
               config_learning_rates: dict[str, list[float]] | None) -> dict[str, list[float | None]]:
    """Each config's rates: its own (``--config_learning_rates``), else ``--learning_rates``, else ``[None]`` (the
    YAML's own rate)."""
    shared = [None] if learning_rates is None else [float(rate) for rate in learning_rates]
    own = config_learning_rates or {}
    return {stem: [float(rate) for rate in own[stem]] if stem in own else list(shared) for stem in stems}


def all_rates(grids: dict[str, list[float | None]]) -> list[float] | None:
    """Every rate of the grids, in order of first appearance (None: no config has a rate of its own)."""
    rates = list(dict.fromkeys(rate for grid in grids.values() for rate in grid if rate is not None))
    return rates or None


def select_rate(variant: str, runs: list[RunResult], selection_val: str, seeds: Sequence[int] | None = None,
                grid_size: int | None = None) -> RateSelection:
    """The variant's rate of lowest mean selection loss over its finished seeds (see the module docstring).

    `seeds`: only these seeds' runs choose (``--selection_seeds``; None: every seed's); `grid_size`: the number of
    rates the variant was given (a one-rate grid is given, not chosen, and never flagged at the edge).
    """
    losses: dict[float, list[float]] = {}
    for run in runs:
        if seeds is not None and run.seed not in seeds:
            continue
        if run.ok and run.variant == variant and run.learning_rate is not None:
            loss = _selection_loss(run, selection_val)
            if loss is not None:
                losses.setdefault(run.learning_rate, []).append(loss)
    rates = sorted(losses)
    stats = [Stat.of(losses[rate]) for rate in rates]
    if not rates:
        return RateSelection(variant, [], [], None, False)
    chosen = min(zip(rates, stats), key=lambda pair: (math.isnan(pair[1].mean), pair[1].mean))[0]  # NaN: last
    return RateSelection(variant, rates, stats, chosen, chosen in (rates[0], rates[-1]) and grid_size != 1)


def _at(runs: list[RunResult], rate: float) -> list[RunResult]:
    return [run for run in runs if run.learning_rate is not None and math.isclose(run.learning_rate, rate)]


def summarize_rates(
    runs: list[RunResult], reference: str | None, rates: list[float], selection_val: str | None, paired: bool, rule: str,
    selection_seeds: Sequence[int] | None = None, grids: dict[str, list[float]] | None = None,
) -> tuple[list[VariantSummary], list[RateSummary], list[RateSelection]]:
    """(the summary of the verdicts, one summary per rate, each variant's selection).

    With `selection_val`: each variant's runs at its chosen rate, every seed, compared with the reference's at its own;
    without: no summary of the verdicts (no rate is chosen), only each rate's. With `selection_seeds`, the rates are
    chosen on those seeds' runs and each rate's own summary holds only theirs (the other seeds ran at one rate);
    `grids`: each variant's rates where ``--config_learning_rates`` was given (a one-rate grid there is given, not
    chosen; a single ``--learning_rates`` rate is still flagged: the grid is to be widened).
    """
    graded = runs if selection_seeds is None else [run for run in runs if run.seed in selection_seeds]
    by_rate = [RateSummary(rate, summarize(_at(graded, rate), reference, paired, rule)) for rate in sorted(rates)]
    if selection_val is None:
        return [], by_rate, []
    variants = list(dict.fromkeys(run.variant for run in runs))
    grids = grids or {}
    selection = [select_rate(variant, runs, selection_val, selection_seeds,
                             len(grids[variant]) if variant in grids else None) for variant in variants]
    if selection_seeds is not None:  # a rate is chosen once every selection run finished, as the runner decides
        complete = chosen_rates(runs, {v: grids.get(v, rates) for v in variants}, selection_val, selection_seeds)
        selection = [choice if choice.variant in complete else dataclasses.replace(choice, chosen=None, at_edge=False)
                     for choice in selection]
    chosen_runs = []
    for choice in selection:  # a variant without a chosen rate keeps only its unfinished runs: none finished shows
        mine = [run for run in runs if run.variant == choice.variant]
        chosen_runs += [run for run in mine if not run.ok] if choice.chosen is None else _at(mine, choice.chosen)
    return summarize(chosen_runs, reference, paired, rule), by_rate, selection


def chosen_rates(runs: list[RunResult], grids: dict[str, list[float]], selection_val: str,
                 selection_seeds: Sequence[int]) -> dict[str, float]:
    """variant -> its chosen rate, for each variant whose every selection run (grid rate x selection seed) has
    finished; a variant still training or with a failed run has none yet, so its other seeds wait."""
    chosen = {}
    for variant, grid in grids.items():
        finished = {(run.learning_rate, run.seed) for run in runs
                    if run.ok and run.variant == variant and run.learning_rate is not None}
        if all((rate, seed) in finished for rate in grid for seed in selection_seeds):
            choice = select_rate(variant, runs, selection_val, selection_seeds, len(grid)).chosen
            if choice is not None:  # None: no run holds a loss on the selection text, so nothing can be chosen
                chosen[variant] = choice
    return chosen
