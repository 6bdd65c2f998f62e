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
(:func:`~litgpt_mka.compare.summary.summarize`, paired when the runs are). Choosing on S rather than V keeps the
winner's curse out of the verdicts: the chosen rate's loss on V is not the minimum of several noisy estimates on V.
The chosen rate's own loss on S is that minimum, so it is optimistic (biased low); so is, to a lesser degree, V's
where S and V are alike (the same rate suits both), which is why S must be a text of its own.
"""

import copy
import math

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


def select_rate(variant: str, runs: list[RunResult], selection_val: str) -> RateSelection:
    """The variant's rate of lowest mean selection loss over its finished seeds (see the module docstring)."""
    losses: dict[float, list[float]] = {}
    for run in runs:
        if run.ok and run.variant == variant and run.learning_rate is not None:
            loss = _selection_loss(run, selection_val)
            if loss is not None:
                losses.setdefault(run.learning_rate, []).append(loss)
    rates = sorted(losses)
    stats = [Stat.of(losses[rate]) for rate in rates]
    if not rates:
        return RateSelection(variant, [], [], None, False)
    chosen = min(zip(rates, stats), key=lambda pair: pair[1].mean)[0]
    return RateSelection(variant, rates, stats, chosen, chosen in (rates[0], rates[-1]))


def _at(runs: list[RunResult], rate: float) -> list[RunResult]:
    return [run for run in runs if run.learning_rate is not None and math.isclose(run.learning_rate, rate)]


def summarize_rates(
    runs: list[RunResult], reference: str | None, rates: list[float], selection_val: str | None, paired: bool, rule: str,
) -> tuple[list[VariantSummary], list[RateSummary], list[RateSelection]]:
    """(the summary of the verdicts, one summary per rate, each variant's selection).

    With `selection_val`: each variant's runs at its chosen rate, compared with the reference's at its own; without:
    no summary of the verdicts (no rate is chosen), only each rate's.
    """
    by_rate = [RateSummary(rate, summarize(_at(runs, rate), reference, paired, rule)) for rate in sorted(rates)]
    if selection_val is None:
        return [], by_rate, []
    variants = list(dict.fromkeys(run.variant for run in runs))
    selection = [select_rate(variant, runs, selection_val) for variant in variants]
    chosen_runs = []
    for choice in selection:  # a variant without a finished run keeps all its runs: its row shows none finished
        mine = [run for run in runs if run.variant == choice.variant]
        chosen_runs += mine if choice.chosen is None else _at(mine, choice.chosen)
    return summarize(chosen_runs, reference, paired, rule), by_rate, selection
