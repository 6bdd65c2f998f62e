"""The statistics of compare's verdicts: Student's t distribution, the t-tests of a difference, Holm's adjustment.

Nothing here knows runs or variants; :mod:`litgpt_mka.compare.summary` applies it. Standard library only (scipy is
not a dependency of litgpt-mka); tested against tabulated quantiles and, where it is installed, against scipy.

Student's t with ``df`` degrees of freedom (df may be fractional: Welch-Satterthwaite; ``math.inf``: the normal)::

    P(|T| >= t) = I_x(df / 2, 1 / 2),   x = df / (df + t^2)

with I the regularised incomplete beta function (its continued fraction, evaluated by the modified Lentz method,
Numerical Recipes 6.4). The two-sided quantile ``t_quantile(level, df)``, the t with P(|T| <= t) = level, inverts
that by bisection (monotone in t) to double precision.

The test of a difference ``d`` with standard error ``SE`` and ``df`` degrees of freedom (:func:`t_test`)::

    95% interval  d ± t_{0.975, df} SE        p = P(|T_df| >= |d| / SE)   (two-sided)

Welch (:func:`welch`), two independent samples of sizes n_v, n_r with sample variances s_v^2, s_r^2, and extra
variance terms ``e^2`` of known size (lm-eval's standard errors, counted as having infinite degrees of freedom)::

    a = s_v^2 / n_v,  b = s_r^2 / n_r,  SE^2 = a + b + e^2,  df = SE^4 / (a^2 / (n_v - 1) + b^2 / (n_r - 1))

Paired (:func:`paired`), the k per-seed differences d_i = v_i - r_i with sample variance s_d^2::

    SE^2 = s_d^2 / k + e^2,   df = SE^4 / ((s_d^2 / k)^2 / (k - 1))     (= k - 1 without e)

Holm's step-down adjustment of m p-values (:func:`holm`), sorted p_(1) <= ... <= p_(m)::

    p_holm_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))

rejecting where p_holm < 1 - level keeps the chance of calling any zero difference among the m "better" or
"worse" at most 1 - level, whatever their dependence, provided each p is valid (a p from a winner of a selection is
not quite: the report checks such verdicts on the seeds that did not choose).
"""

import math
from dataclasses import dataclass

LEVEL = 0.95  # the confidence level of every interval, and 1 - the significance level of every verdict
_CONTINUED_FRACTION_STEPS = 300
_TINY = 1e-300


# ----------------------------------------------------------------------------------------- t distribution
def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf), by the modified Lentz method."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for m in range(1, _CONTINUED_FRACTION_STEPS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (math.inf: the standard normal)."""
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(level: float, df: float) -> float:
    """The t with P(|T| <= t) = `level` (e.g. 0.95: t_{0.975, df}, the half-width of a 95% interval in SEs)."""
    alpha, low, high = 1.0 - level, 0.0, 1.0
    while two_sided_p(high, df) > alpha:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        low, high = (middle, high) if two_sided_p(middle, df) > alpha else (low, middle)
    return (low + high) / 2.0


# -------------------------------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class TTest:
    """A difference with its t-test: ``d ± half_width`` is its `LEVEL` interval, `p` its two-sided p-value."""

    design: str  # "paired" or "Welch"
    difference: float
    se: float
    df: float | None  # None when the SE is 0 (no spread: the t statistic is infinite or undefined)
    p: float
    half_width: float  # t_{(1 + LEVEL) / 2, df} SE; 0 when the SE is 0

    @property
    def low(self) -> float:
        return self.difference - self.half_width

    @property
    def high(self) -> float:
        return self.difference + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return self.p < 1.0 - LEVEL

    def holm_half_width(self, comparisons: int) -> float:
        """The half-width that Holm's first step asks of a difference in a family of `comparisons`:
        ``t_{1 - (1 - LEVEL) / (2 m), df} SE``. A difference larger than this is significant after the adjustment
        whatever the others' p; between `half_width` and this it depends on them."""
        if self.df is None or comparisons == 1:
            return self.half_width
        return t_quantile(1.0 - (1.0 - LEVEL) / comparisons, self.df) * self.se


def t_test(design: str, difference: float, variance_terms: list[tuple[float, int]], known_variance: float) -> TTest:
    """The t-test of `difference` whose variance is the sum of ``(term, its df)`` pairs and `known_variance`.

    The degrees of freedom are Welch-Satterthwaite's, ``(sum of terms)^2 / sum(term^2 / df)``, the known variance
    counting as infinitely many.
    """
    variance = math.fsum(term for term, _ in variance_terms) + known_variance
    se = math.sqrt(variance)
    if se == 0.0:
        return TTest(design, difference, 0.0, None, 1.0 if difference == 0 else 0.0, 0.0)
    spread = math.fsum(term * term / df for term, df in variance_terms)
    df = variance * variance / spread if spread > 0 else math.inf
    return TTest(design, difference, se, df, two_sided_p(difference / se, df), t_quantile(LEVEL, df) * se)


def _variance(values: list[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def welch(values: list[float], reference_values: list[float], known_variance: float = 0.0) -> TTest:
    """mean(values) - mean(reference_values), Welch's unpaired t-test (two or more values on each side)."""
    n, n_ref = len(values), len(reference_values)
    d = math.fsum(values) / n - math.fsum(reference_values) / n_ref
    terms = [(_variance(values) / n, n - 1), (_variance(reference_values) / n_ref, n_ref - 1)]
    return t_test("Welch", d, terms, known_variance)


def paired(differences: list[float], known_variance: float = 0.0) -> TTest:
    """The mean of per-pair `differences` (two or more), the paired t-test."""
    k = len(differences)
    return t_test("paired", math.fsum(differences) / k, [(_variance(differences) / k, k - 1)], known_variance)


def holm(p_values: list[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given (see the module docstring); a NaN p (a test of non-finite
    values) counts as 1, last in the order, but still counts in m: a caller that wants it out of the family leaves
    it out (:func:`litgpt_mka.compare.summary.holm_family` does)."""
    m = len(p_values)
    p_values = [1.0 if math.isnan(p) else p for p in p_values]
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def seeds_for_half_width(spread: float, half_width: float, level: float = LEVEL, most: int = 10_000) -> int | None:
    """The fewest seeds (pairs) k >= 2 whose interval half-width ``t_{(1 + level) / 2, k - 1} spread / sqrt(k)``
    is at most `half_width`, for a per-seed spread `spread` (paired: s_d, the std of the per-seed differences);
    None beyond `most`. Plans a study from a pilot's s_d (itself an estimate: with 2 pilot seeds, a rough one)."""
    for k in range(2, most + 1):
        if t_quantile(level, k - 1) * spread / math.sqrt(k) <= half_width:
            return k
    return None
