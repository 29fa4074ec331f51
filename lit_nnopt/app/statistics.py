"""The statistics of a comparison over seeds: mean, standard deviation, Student-t intervals, Welch's t-test.

Pure functions of plain floats. Student's t distribution is computed here rather than taken
from SciPy, to keep the application's dependencies as they are for about sixty lines: its
distribution function is the regularized incomplete beta function (a continued fraction,
as in Numerical Recipes, section 6.4), and its quantile is found by bisection. The tests pin
both against SciPy's ``scipy.stats.t`` and ``ttest_ind(equal_var=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
_TINY = 1e-300
_EPSILON = 1e-15
_MAX_TERMS = 500


@dataclass(frozen=True)
class Description:
    """A sample's size, mean, standard deviation (n - 1) and confidence interval of the mean.

    ``sd`` and the interval are None for fewer than two values.
    """

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class WelchTest:
    """Welch's t-test of mean(a) - mean(b): the difference, its confidence interval, t, df and the p-value.

    The interval, t, df and p are None where the difference has no spread to judge it by
    (both samples constant).
    """

    difference: float
    low: float | None
    high: float | None
    t: float | None
    df: float | None
    p_value: float | None


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_TERMS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = c * d
            result *= step
        if abs(step - 1.0) < _EPSILON:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast on this side of the mean; the other side follows from symmetry.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(probability: float, df: float) -> float:
    """The t with ``t_cdf(t, df) == probability``, for 0 < probability < 1."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"a quantile needs a probability strictly between 0 and 1, got {probability}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < probability:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * max(1.0, high):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2.0


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> Description:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean of ``values``.

    Raises:
        ValueError: if ``values`` is empty.
    """
    n = len(values)
    if n == 0:
        raise ValueError("describe needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return Description(n, mean, None, None, None)
    sd = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half_width = t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n)
    return Description(n, mean, sd, mean - half_width, mean + half_width)


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> WelchTest:
    """Welch's unequal-variances t-test of mean(a) - mean(b), two-sided, with its confidence interval.

    The degrees of freedom are Welch-Satterthwaite's, as in R's ``t.test(a, b)`` and SciPy's
    ``ttest_ind(a, b, equal_var=False)``.

    Raises:
        ValueError: if either sample has fewer than two values.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs two values or more in each sample, got {len(a)} and {len(b)}")
    first, second = describe(a), describe(b)
    difference = first.mean - second.mean
    share_a, share_b = first.sd**2 / first.n, second.sd**2 / second.n
    standard_error = math.sqrt(share_a + share_b)
    if standard_error == 0.0:
        return WelchTest(difference, None, None, None, None, None)
    df = (share_a + share_b) ** 2 / (share_a**2 / (first.n - 1) + share_b**2 / (second.n - 1))
    t = difference / standard_error
    half_width = t_quantile((1.0 + confidence) / 2.0, df) * standard_error
    p_value = min(1.0, 2.0 * t_cdf(-abs(t), df))
    return WelchTest(difference, difference - half_width, difference + half_width, t, df, p_value)
