"""A study's numbers computed again from its results.json as saved, with numpy and scipy only (nothing of
``litgpt_mka.compare``: not its summary, statistics or report code), and the markdown tables they are checked
against, read cell by cell.

    losses     each variant's final validation loss on a text, one per finished run (status "ok")
    mean, std  numpy's mean and sample standard deviation (ddof 1) over those runs
    Welch      d = mean_v - mean_r,  SE^2 = s_v^2/n_v + s_r^2/n_r,  df = SE^4 / ((s_v^2/n_v)^2/(n_v-1) + (s_r^2/n_r)^2/(n_r-1)),
               95% interval d ± t_{0.975, df} SE (scipy.stats.t), p from scipy.stats.ttest_ind(equal_var=False)
    paired     per seed s both finished: d_s = v_s - r_s;  d = mean(d_s),  SE = std(d_s) / sqrt(n),  df = n - 1,
               95% interval d ± t_{0.975, df} SE, p from scipy.stats.ttest_rel
    Holm       the m p-values sorted, p_holm_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))

With a learning-rate axis and a selection (results.json's ``rate_selection``), each variant's runs at its chosen
rate only (:func:`losses_by_seed`).

A printed number agrees with a computed one when they differ by at most half a unit of the last printed digit.
"""

import math
import re
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def final_losses(saved: dict, text: str) -> dict[str, list[float]]:
    """Variant -> its runs' final validation loss on `text` (finished runs only, in the order saved)."""
    losses: dict[str, list[float]] = {}
    for run in saved["runs"]:
        if run["status"] == "ok":
            (entry,) = [value for value in run["evaluation"]["validation"] if value["name"] == text]
            losses.setdefault(run["variant"], []).append(entry["loss"])
    return losses


def losses_by_seed(saved: dict, text: str) -> dict[str, dict[int, float]]:
    """Variant -> seed -> final validation loss on `text` (finished runs; at the variant's chosen rate where the
    results hold a rate selection)."""
    chosen = {entry["variant"]: entry["chosen"] for entry in saved.get("rate_selection", [])}
    losses: dict[str, dict[int, float]] = {}
    for run in saved["runs"]:
        if run["status"] != "ok" or (run["variant"] in chosen and run.get("learning_rate") != chosen[run["variant"]]):
            continue
        (entry,) = [value for value in run["evaluation"]["validation"] if value["name"] == text]
        losses.setdefault(run["variant"], {})[run["seed"]] = entry["loss"]
    return losses


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


@dataclass(frozen=True)
class TTest:
    """A difference with its t-test (Welch's or the paired one) and 95% interval."""

    difference: float
    se: float
    df: float
    p: float
    half_width: float  # t_{0.975, df} SE
    low: float  # the 95% interval
    high: float

    @classmethod
    def of(cls, difference: float, se: float, df: float, p: float) -> "TTest":
        """The interval ``difference ± t_{0.975, df} SE``."""
        from scipy import stats

        half_width = float(stats.t.ppf((1 + LEVEL) / 2, df)) * se
        return cls(difference, se, df, p, half_width, difference - half_width, difference + half_width)


def welch(values: list[float], reference: list[float]) -> TTest:
    """mean(values) - mean(reference) and Welch's t-test of it (scipy)."""
    from scipy import stats

    v, r = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    a, b = v.var(ddof=1) / len(v), r.var(ddof=1) / len(r)
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (len(v) - 1) + b * b / (len(r) - 1))
    return TTest.of(float(v.mean() - r.mean()), se, df, float(stats.ttest_ind(v, r, equal_var=False).pvalue))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values, keyed as given."""
    adjusted, running = {}, 0.0
    ordered = sorted(p_values, key=p_values.get)
    for rank, key in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted


def markdown_table(text: str, header_start: str) -> dict[str, dict[str, str]]:
    """The first markdown table of `text` whose header row starts with `header_start`: its first cell -> {column: cell}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    columns = cells(lines[start])
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        values = cells(line)
        rows[values[0]] = dict(zip(columns, values))
    return rows


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def printed_numbers(cell: str) -> list[str]:
    """The numbers of a cell as printed ("4.1929 ± 0.0090" -> ["4.1929", "0.0090"]; thousands separators dropped)."""
    return NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", cell))


def agrees(printed: str, value: float) -> bool:
    """`printed` is `value` rounded to its digits: at most half a unit of its last digit away."""
    digits = len(printed.partition(".")[2])
    return abs(float(printed) - value) <= 0.5 * 10.0**-digits * (1 + 1e-9)


def disagreements(where: str, cell: str, values: list[float]) -> list[str]:
    """Empty when `cell` prints exactly the numbers `values` (rounded); otherwise what differs, for the message."""
    printed = printed_numbers(cell)
    if len(printed) == len(values) and all(agrees(p, v) for p, v in zip(printed, values)):
        return []
    return [f"{where}: printed {cell!r}, computed {[round(v, 6) for v in values]}"]


def paired(values: dict[int, float], reference: dict[int, float]) -> TTest:
    """The paired t-test (scipy) of the per-seed differences over the seeds both sides finished."""
    from scipy import stats

    seeds = sorted(set(values) & set(reference))
    v = np.asarray([values[s] for s in seeds], dtype=np.float64)
    r = np.asarray([reference[s] for s in seeds], dtype=np.float64)
    differences = v - r
    se = float(differences.std(ddof=1)) / math.sqrt(len(seeds))
    return TTest.of(float(differences.mean()), se, len(seeds) - 1, float(stats.ttest_rel(v, r).pvalue))


def variance_removed_by_pairing(values: dict[int, float], reference: dict[int, float]) -> float:
    """1 - s_d^2 / (s_v^2 + s_r^2) over the seeds both sides finished: the share of an unpaired difference's variance
    that pairing removed (the correlation of paired runs only where s_v = s_r)."""
    seeds = sorted(set(values) & set(reference))
    v = np.asarray([values[s] for s in seeds])
    r = np.asarray([reference[s] for s in seeds])
    return float(1 - (v - r).var(ddof=1) / (v.var(ddof=1) + r.var(ddof=1)))
