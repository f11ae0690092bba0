"""What each customer is worth: purchase-days, spend and P(alive) over a horizon.

Two population models whose parameters are fitted by maximum likelihood from
per-customer sufficient statistics that the stream keeps up to date:

* **MBG/NBD** (Batislam, Denizel & Filiztekin 2007), the modified BG/NBD of
  Fader, Hardie & Lee (2005): while alive a customer buys at a Poisson rate
  ``lambda ~ Gamma(r, alpha)`` (purchase-days per day); at time zero and after
  every purchase they drop out with probability ``p ~ Beta(a, b)``. Unlike the
  BG/NBD, a one-off buyer can be dead too, which fits CDNOW and Online Retail
  better (``modified=False`` gives the BG/NBD; both are here and tested against
  ``lifetimes``).
* **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV"): the spend of each
  purchase-day is Gamma(``p``, ``nu``) with ``nu ~ Gamma(q, gamma)`` per
  customer, independent of the purchase process. Fitted on every purchase-day
  of each customer, the first one included (the textbook uses repeat purchases
  only; including the first halves the shrinkage of one-off buyers and measured
  better on CDNOW).

The unit of purchase is a **purchase-day** (a customer's UTC day with at least
one purchase line of positive quantity); its spend is the day's total. Per
customer the sufficient statistics are ``x`` (repeat purchase-days), ``t_x``
(age in days at the last purchase-day's first line), ``T`` (age now) and the
total spend; :class:`CustomerValue` keeps them in numpy arrays, refits the four
plus three population parameters now and then (warm-started L-BFGS-B on log
parameters, on a seeded sample of at most ``max_fit_customers``), and predicts
from the latest fit. Functions of this module are pure and vectorised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln, hyp2f1, logsumexp

DAY = 86_400.0
# Shortest gap between purchase-days counted in the regularity statistic (days):
# two UTC days' first lines can be minutes apart across midnight.
MIN_GAP_DAYS = 1.0 / 24.0
MAX_REGULARITY = 8

__all__ = [
    "CustomerValue",
    "Fit",
    "FitJob",
    "Prediction",
    "SpendParams",
    "TransactionParams",
    "expected_purchases",
    "expected_spend_per_purchase",
    "fit_spend",
    "fit_transactions",
    "p_alive",
    "p_no_purchase",
    "run_fit",
    "select_regularity",
    "spend_log_likelihood",
    "transaction_log_likelihood",
]


@dataclass(frozen=True, slots=True)
class TransactionParams:
    """Population parameters of the (M)BG/NBD: rates ~ Gamma(r, alpha), dropout ~ Beta(a, b)."""

    r: float = 0.25
    alpha: float = 10.0
    a: float = 0.8
    b: float = 2.5
    modified: bool = True
    # Regularity: gaps between purchase-days are Erlang-k (k = 1: Poisson purchases).
    k: int = 1


@dataclass(frozen=True, slots=True)
class SpendParams:
    """Population parameters of the Gamma-Gamma spend model."""

    p: float = 6.0
    q: float = 4.0
    v: float = 15.0


def _as(*arrays: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=float) for a in arrays)


def _alive_log_terms(params: TransactionParams, x: Any, t_x: Any, T: Any) -> Any:
    """``log`` of the open interval's likelihood (no purchase-day since ``t_x``, alive),
    relative to the completed ones', under Erlang-k gaps: a sum of ``k`` terms."""
    k, rk = params.k, params.r + params.k * x
    if k == 1:
        return -rk * np.log(params.alpha + T)
    j = np.arange(k, dtype=float).reshape((k,) + (1,) * np.ndim(x))
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log(0) is taken as 0
        gap = np.log(np.maximum(T - t_x, 0.0))
        terms = (
            np.where(j > 0, j * gap, 0.0) - gammaln(j + 1) + gammaln(rk + j) - gammaln(rk)
            - (rk + j) * np.log(params.alpha + T)
        )  # fmt: skip
    # max-shifted sum instead of scipy's logsumexp, whose overhead dominates on
    # the one-row predictions made on every purchase; the j = 0 term is finite
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def _regular_log_likelihood(
    params: TransactionParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, litt: Any
) -> np.ndarray:
    """MBG/CNBD-k log-likelihood (Platzer & Reutterer 2016), ``litt`` = sum of log gaps."""
    r, alpha, a, b, k = params.r, params.alpha, params.a, params.b, params.k
    rk = r + k * x
    head = (k - 1) * np.asarray(litt, dtype=float) - x * gammaln(k)
    head = head + gammaln(rk) - gammaln(r) + r * math.log(alpha)
    beta = gammaln(a + b) + gammaln(b + x + 1) - gammaln(b) - gammaln(a + b + x + 1)
    dead = math.log(a) - np.log(b + x) - rk * np.log(alpha + t_x)
    return head + beta + np.logaddexp(_alive_log_terms(params, x, t_x, T), dead)


def transaction_log_likelihood(
    params: TransactionParams, x: Any, t_x: Any, T: Any, litt: Any = 0.0
) -> np.ndarray:
    """Per-customer log-likelihood of ``(x, t_x, T)`` (days) under the (M)BG/NBD.

    With ``params.k > 1`` (MBG/CNBD-k: Erlang-k gaps between purchase-days),
    ``litt`` is each customer's sum of the logs of their gaps in days; it only
    shifts the likelihood by a constant at a given ``k``.

    >>> ll = transaction_log_likelihood(TransactionParams(), [0, 3], [0.0, 20.0], [30.0, 30.0])
    >>> bool(np.all(np.isfinite(ll)))
    True
    """
    x, t_x, T = _as(x, t_x, T)
    if params.k > 1:
        return _regular_log_likelihood(params, x, t_x, T, litt)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    head = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    if params.modified:
        beta = gammaln(a + b) + gammaln(b + x + 1) - gammaln(b) - gammaln(a + b + x + 1)
        alive = -(r + x) * np.log(alpha + T)
        dead = math.log(a) - np.log(b + x) - (r + x) * np.log(alpha + t_x)
        return head + beta + np.logaddexp(alive, dead)
    beta = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    alive = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore"):
        dead = np.where(
            x > 0,
            math.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return head + beta + np.logaddexp(alive, dead)


def _death_odds(params: TransactionParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> Any:
    """P(dead) / P(alive) given the history (0 for BG/NBD customers without repeats)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if params.k > 1:  # MBG only
        rk = r + params.k * x
        log_ratio = -rk * np.log(alpha + t_x) - _alive_log_terms(params, x, t_x, T)
        return a / (b + x) * np.exp(np.minimum(log_ratio, 700.0))
    log_ratio = np.minimum((r + x) * (np.log(alpha + T) - np.log(alpha + t_x)), 700.0)
    if params.modified:
        return a / (b + x) * np.exp(log_ratio)
    return np.where(x > 0, a / np.maximum(b + x - 1, 1e-300) * np.exp(log_ratio), 0.0)


def _expected_spend_scalar(
    transactions: TransactionParams, spend: SpendParams, t: float,
    x: float, t_x: float, T: float, mean: float,
) -> float:
    """``expected_purchases(...) * expected_spend_per_purchase(...)`` of one customer
    in plain floats: the same formulas, for the one-row call made on most events,
    where numpy's per-call overhead on one-element arrays was the whole cost.
    ``math``'s exp, log and lgamma may differ from numpy's by an ulp."""
    tp = transactions
    a, b, k = tp.a, tp.b, tp.k
    rk, span = tp.r + k * x, k * (tp.alpha + T)
    z = t / (span + t)
    decay = math.exp(rk * (math.log(span) - math.log(span + t)))
    if tp.modified:
        scale = (a + b + x) / (a - 1.0)
        upper, lower = b + x + 1, a + b + x
    else:
        scale = (a + b + x - 1.0) / (a - 1.0)
        upper, lower = b + x, a + b + x - 1.0
    silent = decay * float(hyp2f1(rk, upper, lower, z))
    if not math.isfinite(silent):
        silent = float(_silent_by_series(np.array(silent), rk, upper, lower, z))
    # _death_odds, one customer
    r, alpha = tp.r, tp.alpha
    if k > 1:
        log_alpha_T = math.log(alpha + T)
        gap = T - t_x
        log_gap = math.log(gap) if gap > 0.0 else -math.inf
        lg_rk = math.lgamma(rk)
        terms = [
            (j * log_gap if j > 0 else 0.0) - math.lgamma(j + 1) + math.lgamma(rk + j) - lg_rk
            - (rk + j) * log_alpha_T
            for j in range(k)
        ]  # fmt: skip
        top = max(terms)
        alive = top + math.log(sum(math.exp(u - top) for u in terms))
        log_ratio = -rk * math.log(alpha + t_x) - alive
        odds = a / (b + x) * math.exp(min(log_ratio, 700.0))
    else:
        log_ratio = min((r + x) * (math.log(alpha + T) - math.log(alpha + t_x)), 700.0)
        if tp.modified:
            odds = a / (b + x) * math.exp(log_ratio)
        else:
            odds = a / max(b + x - 1, 1e-300) * math.exp(log_ratio) if x > 0 else 0.0
    purchases = scale * (1.0 - silent) / (1.0 + odds)
    n = x + 1.0
    return purchases * (spend.p * (spend.v + n * mean) / (spend.p * n + spend.q - 1.0))


def p_alive(params: TransactionParams, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """P(the customer has not dropped out) at age ``T``.

    >>> p = p_alive(TransactionParams(), [4, 4], [50.0, 50.0], [60.0, 300.0])
    >>> bool(p[0] > p[1])
    True
    """
    x, t_x, T = _as(x, t_x, T)
    return 1.0 / (1.0 + _death_odds(params, x, t_x, T))


def _rate_posterior(params: TransactionParams, x: Any, T: Any) -> tuple[Any, Any]:
    """Shape and rate (days) of the Gamma posterior of the purchase-day rate if alive.

    Exact for ``k = 1``; for Erlang-k gaps the stage rate's posterior given the
    ``k x`` completed stages, ignoring the open interval's partial stages (the
    approximation BTYDplus makes for the MBG/CNBD-k), divided by ``k``.
    """
    k = params.k
    return params.r + k * x, k * (params.alpha + T)


def expected_purchases(params: TransactionParams, t: float, x: Any, t_x: Any, T: Any) -> Any:
    """Expected purchase-days in the next ``t`` days given ``(x, t_x, T)``.

    >>> e = expected_purchases(TransactionParams(), 90.0, [0, 10], [0.0, 80.0], [90.0, 90.0])
    >>> bool(0 < e[0] < e[1])
    True
    """
    x, t_x, T = _as(x, t_x, T)
    a, b = params.a, params.b
    rk, span = _rate_posterior(params, x, T)
    z = t / (span + t)
    decay = np.exp(rk * (np.log(span) - np.log(span + t)))
    if params.modified:
        scale = (a + b + x) / (a - 1.0)
        upper, lower = b + x + 1, a + b + x
    else:
        scale = (a + b + x - 1.0) / (a - 1.0)
        upper, lower = b + x, a + b + x - 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        silent = decay * hyp2f1(rk, upper, lower, z)
    if not np.all(np.isfinite(silent)):
        silent = _silent_by_series(silent, rk, upper, lower, z)
    return scale * (1.0 - silent) / (1.0 + _death_odds(params, x, t_x, T))


def _silent_by_series(direct: Any, rk: Any, upper: Any, lower: Any, z: Any) -> np.ndarray:
    """``(1 - z)^rk * 2F1(rk, upper; lower; z)`` where the closed form is not finite.

    With a large ``rk`` (a fit at its rate bound, e.g. customers seen for hours
    only) the power underflows to 0 and the 2F1 overflows, and their product is
    NaN. The product is the mean of ``(upper)_N / (lower)_N`` over
    ``N ~ NegBin(rk, 1 - z)``, summed here in logs over the bulk of ``N``.

    >>> rk, upper, lower, z = 3.0, 2.5, 4.0, 0.6
    >>> exact = (1 - z) ** rk * float(hyp2f1(rk, upper, lower, z))
    >>> got = float(_silent_by_series(np.array(np.nan), rk, upper, lower, z))
    >>> abs(got - exact) < 1e-9
    True
    """
    out, rk, upper, lower, z = np.broadcast_arrays(
        np.array(direct, dtype=float), *_as(rk, upper, lower, z)
    )
    out = out.copy()
    for i in np.ndindex(out.shape):
        if math.isfinite(out[i]):
            continue
        r, u, low, q = float(rk[i]), float(upper[i]), float(lower[i]), float(z[i])
        mean, sd = r * q / (1.0 - q), math.sqrt(r * q) / (1.0 - q)
        n = np.arange(max(0.0, math.floor(mean - 12 * sd)), math.ceil(mean + 12 * sd) + 64)
        log_pmf = (gammaln(r + n) - gammaln(r) - gammaln(n + 1)
                   + n * math.log(q) + r * math.log1p(-q))  # fmt: skip
        log_ratio = gammaln(u + n) - gammaln(u) - gammaln(low + n) + gammaln(low)
        out[i] = math.exp(float(logsumexp(log_pmf + log_ratio)))
    return out


def p_no_purchase(params: TransactionParams, t: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """P(no purchase-day in the next ``t`` days): dead, or alive and silent.

    >>> p = p_no_purchase(TransactionParams(), 90.0, [5, 5], [60.0, 60.0], [61.0, 200.0])
    >>> bool(p[0] < p[1])
    True
    """
    x, t_x, T = _as(x, t_x, T)
    alive = p_alive(params, x, t_x, T)
    rk, span = _rate_posterior(params, x, T)
    silent = np.exp(rk * (np.log(span) - np.log(span + t)))
    return 1.0 - alive * (1.0 - silent)


def _transaction_gradient(
    params: TransactionParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer log-likelihood and its gradient in ``(log r, log alpha, log a, log b)``."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    head = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    alive = -(r + x) * np.log(alpha + T)
    shift = 0.0 if params.modified else -1.0  # BG/NBD: b + x - 1 where MBG/NBD has b + x
    c = 1.0 if params.modified else 0.0  # ... and gammaln(b + x + c)
    beta = gammaln(a + b) + gammaln(b + x + c) - gammaln(b) - gammaln(a + b + x + c)
    with np.errstate(divide="ignore"):
        dead = math.log(a) - np.log(np.maximum(b + x + shift, 1e-300)) - (
            r + x
        ) * np.log(alpha + t_x)
    if not params.modified:
        dead = np.where(x > 0, dead, -np.inf)
    ll = head + beta + np.logaddexp(alive, dead)
    w = np.exp(dead - np.logaddexp(alive, dead))  # posterior weight of "dropped out"
    d_r = digamma(r + x) - digamma(r) + math.log(alpha) - (1 - w) * np.log(alpha + T) - w * np.log(
        alpha + t_x
    )
    d_alpha = r / alpha - (1 - w) * (r + x) / (alpha + T) - w * (r + x) / (alpha + t_x)
    d_a = digamma(a + b) - digamma(a + b + x + c) + w / a
    d_b = (
        digamma(a + b) + digamma(b + x + c) - digamma(b) - digamma(a + b + x + c)
        - w / np.maximum(b + x + shift, 1e-300)
    )  # fmt: skip
    grad = np.stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    return ll, grad


def _fit(
    loss: Any, start: np.ndarray, bounds: list[tuple[float, float]], max_iter: int
) -> np.ndarray:
    result = minimize(
        loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter}
    )
    return np.asarray(result.x if np.all(np.isfinite(result.x)) else start)


_LOG_BOUNDS = [(-9.0, 9.0)] * 4


def fit_transactions(
    x: Any,
    t_x: Any,
    T: Any,
    start: TransactionParams | None = None,
    modified: bool = True,
    max_iter: int = 200,
    k: int = 1,
) -> TransactionParams:
    """Maximum-likelihood (M)BG/NBD parameters (log-parameters kept within e^+-9).

    L-BFGS-B with the analytic gradient (for ``k > 1``, the MBG/CNBD-k at that
    regularity, with a numerical one). The bounds keep a degenerate optimum
    (no dropout seen: ``a -> 0``, ``b -> inf``) finite instead of failing.

    >>> rng = np.random.default_rng(0)
    >>> T = rng.uniform(50, 300, 2000); lam = rng.gamma(0.5, 1 / 20, 2000)
    >>> x = rng.poisson(lam * T); t_x = np.where(x > 0, T * rng.uniform(0.5, 1, 2000), 0)
    >>> fit = fit_transactions(x, t_x, T)
    >>> 0.3 < fit.r / fit.alpha / 0.025 < 3
    True
    """
    x, t_x, T = _as(x, t_x, T)
    s = start or TransactionParams(modified=modified)
    n = max(len(x), 1)
    if k > 1:
        if not modified:
            raise ValueError("Erlang-k regularity is implemented for the MBG/NBD only")
        return _fit_regular(x, t_x, T, s, k, max_iter)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        r, alpha, a, b = np.exp(theta)
        ll, grad = _transaction_gradient(TransactionParams(r, alpha, a, b, modified), x, t_x, T)
        value = -float(ll.sum()) / n
        if not math.isfinite(value):
            return 1e12, np.zeros(4)
        return value, -grad.sum(axis=1) / n

    theta0 = np.log([s.r, s.alpha, s.a, s.b])
    r, alpha, a, b = np.exp(_fit(loss, theta0, _LOG_BOUNDS, max_iter))
    return TransactionParams(float(r), float(alpha), float(a), float(b), modified)


def _fit_regular(
    x: np.ndarray, t_x: np.ndarray, T: np.ndarray, s: TransactionParams, k: int, max_iter: int
) -> TransactionParams:
    def loss(theta: np.ndarray) -> float:
        r, alpha, a, b = np.exp(theta)
        value = -float(_regular_log_likelihood(
            TransactionParams(r, alpha, a, b, True, k), x, t_x, T, 0.0).mean())  # fmt: skip
        return value if math.isfinite(value) else 1e12

    theta0 = np.log([s.r, s.alpha, max(s.a, 1e-3), s.b])
    result = minimize(
        loss, theta0, method="L-BFGS-B", bounds=_LOG_BOUNDS, options={"maxiter": max_iter}
    )
    theta = result.x if np.all(np.isfinite(result.x)) else theta0
    r, alpha, a, b = np.exp(theta)
    return TransactionParams(float(r), float(alpha), float(a), float(b), True, k)


def select_regularity(
    x: Any,
    t_x: Any,
    T: Any,
    litt: Any,
    candidates: Any,
    start: TransactionParams | None = None,
) -> TransactionParams:
    """The MBG/CNBD-k fit of highest likelihood over the regularities ``candidates``.

    ``litt``: each customer's sum of log gaps between purchase-days (days),
    which is what tells regular buyers (wholesale re-orders) from Poisson ones.

    >>> rng = np.random.default_rng(2)
    >>> gaps = rng.gamma(4.0, 30.0 / 4.0, size=(1500, 8))  # Erlang-4 gaps, mean 30 days
    >>> ends = np.cumsum(gaps, axis=1); T = np.full(1500, 200.0)
    >>> x = (ends < T[:, None]).sum(axis=1)
    >>> t_x = np.where(x > 0, ends[np.arange(1500), np.maximum(x - 1, 0)], 0.0)
    >>> litt = (np.log(gaps) * (np.arange(8) < x[:, None])).sum(axis=1)
    >>> select_regularity(x, t_x, T, litt, range(1, 7)).k
    4
    """
    x, t_x, T, litt = _as(x, t_x, T, litt)
    best, best_ll = None, -math.inf
    for k in sorted(set(int(c) for c in candidates)):
        fit = fit_transactions(x, t_x, T, start=start, k=k)
        ll = float(transaction_log_likelihood(fit, x, t_x, T, litt).sum())
        if ll > best_ll:
            best, best_ll = fit, ll
    assert best is not None, "no candidate regularity"
    return best


def spend_log_likelihood(params: SpendParams, n: Any, mean: Any) -> np.ndarray:
    """Per-customer log-density of the mean spend ``mean`` of ``n`` purchase-days.

    >>> bool(np.isfinite(spend_log_likelihood(SpendParams(), [1, 5], [20.0, 35.0])).all())
    True
    """
    n, m = _as(n, mean)
    p, q, v = params.p, params.q, params.v
    return (
        gammaln(p * n + q) - gammaln(p * n) - gammaln(q) + q * math.log(v)
        + (p * n - 1) * np.log(m) + p * n * np.log(n) - (p * n + q) * np.log(v + n * m)
    )  # fmt: skip


def fit_spend(
    n: Any, mean: Any, start: SpendParams | None = None, max_iter: int = 200
) -> SpendParams:
    """Maximum-likelihood Gamma-Gamma parameters from customers with a positive mean spend.

    >>> rng = np.random.default_rng(1)
    >>> nu = rng.gamma(4.0, 1 / 15.0, 3000); n = rng.integers(1, 8, 3000)
    >>> mean = rng.gamma(6.0 * n, 1 / (nu * n))
    >>> fit = fit_spend(n, mean)
    >>> 0.7 < fit.p * fit.v / (fit.q - 1) / float(mean.mean()) < 1.3
    True
    """
    n, m = _as(n, mean)
    keep = (m > 0) & (n > 0)
    n, m = n[keep], m[keep]
    s = start or SpendParams()
    if len(n) == 0:
        return s
    scale = float(np.median(m))  # fit in units of the median spend: well conditioned
    m = m / scale

    log_n, log_m = np.log(n), np.log(m)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        p, q, v = np.exp(theta)
        value = -float(spend_log_likelihood(SpendParams(p, q, v), n, m).sum()) / len(n)
        if not math.isfinite(value):
            return 1e12, np.zeros(3)
        pn, log_vm = p * n, np.log(v + n * m)
        d_p = n * (digamma(pn + q) - digamma(pn) + log_m + log_n - log_vm)
        d_q = digamma(pn + q) - digamma(q) + math.log(v) - log_vm
        d_v = q / v - (pn + q) / (v + n * m)
        grad = np.array([d_p.sum() * p, d_q.sum() * q, d_v.sum() * v])
        return value, -grad / len(n)

    theta0 = np.log([s.p, s.q, s.v / scale])
    # q > 1 keeps the population mean spend p * v / (q - 1) finite
    bounds = [(-9.0, 9.0), (math.log(1.0 + 1e-6), 9.0), (-15.0, 15.0)]
    p, q, v = np.exp(_fit(loss, theta0, bounds, max_iter))
    return SpendParams(float(p), float(q), float(v) * scale)


def expected_spend_per_purchase(params: SpendParams, n: Any, mean: Any) -> np.ndarray:
    """E[spend of a purchase-day | n days with mean spend ``mean``] (n = 0: population mean).

    >>> e = expected_spend_per_purchase(SpendParams(6.0, 4.0, 15.0), [0, 1, 20], [0.0, 90.0, 90.0])
    >>> [round(float(v), 1) for v in e]
    [30.0, 70.0, 88.5]
    """
    n, m = _as(n, mean)
    p, q, v = params.p, params.q, params.v
    return p * (v + n * m) / (p * n + q - 1.0)


@dataclass(frozen=True, slots=True)
class FitJob:
    """What a refit needs, copied out of :class:`CustomerValue` at event time ``now``.

    The arrays are the sample's own copies, so :func:`run_fit` can run in
    another thread while the stream goes on learning.
    """

    now: float
    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    days: np.ndarray
    mean: np.ndarray
    transactions: TransactionParams | None  # warm start (None: from the defaults)
    spend: SpendParams | None
    modified: bool
    new: int  # purchase-days learnt since the previous fit when the job was made
    litt: np.ndarray | None = None  # sums of log gaps, when the regularity is fitted
    regularities: tuple[int, ...] = (1,)  # Erlang-k candidates


@dataclass(frozen=True, slots=True)
class Fit:
    """A refit's result, for :meth:`CustomerValue.apply_fit`."""

    now: float
    transactions: TransactionParams
    spend: SpendParams
    new: int


def run_fit(job: FitJob) -> Fit:
    """Maximum-likelihood fit of both population models to ``job``'s statistics (pure).

    >>> cv = CustomerValue()
    >>> for day, spend in [(0, 20.0), (10, 30.0), (25, 25.0)]:
    ...     cv.learn_one("c1", day * DAY, spend)
    >>> cv.learn_one("c2", 5 * DAY, 40.0)
    >>> fit = run_fit(cv.fit_job(40 * DAY))
    >>> cv.apply_fit(fit); cv.fits, cv.new_since_fit
    (1, 0)
    """
    if job.litt is not None and job.modified and len(job.regularities) > 1:
        transactions = select_regularity(
            job.x, job.t_x, job.T, job.litt, job.regularities, start=job.transactions
        )
    else:
        transactions = fit_transactions(
            job.x, job.t_x, job.T, start=job.transactions, modified=job.modified,
            k=job.regularities[0],
        )  # fmt: skip
    spend = fit_spend(job.days, job.mean, start=job.spend)
    return Fit(job.now, transactions, spend, job.new)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One customer's value over ``horizon_days`` from event time ``now``."""

    horizon_days: float
    expected_purchases: float
    expected_spend: float
    expected_spend_per_purchase: float
    p_alive: float
    p_purchase: float  # P(at least one purchase-day within the horizon)

    def as_dict(self) -> dict[str, float]:
        """JSON-able fields."""
        return asdict(self)


_ARRAYS = ("first", "last", "last_day", "repeats", "spend_sum", "litt")


class CustomerValue:
    """Per-customer purchase-day statistics and periodically refitted population models.

    ``learn_one`` takes every purchase line of positive quantity in O(1);
    ``maybe_refit(now)`` refits the MBG/NBD and the Gamma-Gamma when the
    purchase-days learnt since the last fit reach ``refit_fraction`` of all of
    them (at least ``refit_min_new``), or when ``refit_days`` of event time have
    passed with any new purchase-day: a replay of a year refits a few dozen
    times, a live stream about daily. Each fit starts from the previous
    parameters, on a seeded sample of at most ``max_fit_customers``.

    Parameters
    ----------
    horizon_days
        Default horizon of :meth:`predict_one`.
    modified
        MBG/NBD (True) or the original BG/NBD.
    regularity
        Fit the regularity ``k`` of the MBG/CNBD-k too (MBG/NBD only): a
        refit tries the current ``k`` and its neighbours and keeps the most
        likely, so regular buyers' own rates are shrunk less. Gaps are what
        tell ``k``: until ``regularity_min_repeats`` repeat purchase-days are
        known ``k`` stays 1; the first refit after that tries every ``k`` up
        to ``MAX_REGULARITY`` (a fit each), later ones the neighbours of ``k``
        whenever the repeat purchase-days have doubled since they last did, and ``k``
        alone otherwise: it describes the population and moves slowly.

    Examples
    --------
    >>> cv = CustomerValue(refit_min_new=1)
    >>> for day, spend in [(0, 20.0), (10, 30.0), (25, 25.0)]:
    ...     cv.learn_one("c1", day * DAY, spend)
    >>> cv.learn_one("c2", 5 * DAY, 40.0)
    >>> cv.maybe_refit(40 * DAY)
    True
    >>> value = cv.predict_one("c1", 40 * DAY)
    >>> value.horizon_days, value.expected_purchases > 0, 0 < value.p_alive <= 1
    (90.0, True, True)
    """

    def __init__(
        self,
        horizon_days: float = 90.0,
        modified: bool = True,
        refit_fraction: float = 0.1,
        refit_min_new: int = 200,
        refit_days: float = 7.0,
        max_fit_customers: int = 50_000,
        seed: int = 42,
        regularity: bool = False,
        regularity_min_repeats: int = 1000,
    ) -> None:
        self.horizon_days = horizon_days
        self.refit_fraction = refit_fraction
        self.refit_min_new = refit_min_new
        self.refit_days = refit_days
        self.max_fit_customers = max_fit_customers
        self.regularity = regularity and modified
        self.regularity_min_repeats = regularity_min_repeats
        self.regularity_checked_at = 0  # repeat purchase-days when k's candidates were last tried
        self.transactions = TransactionParams(modified=modified)
        self.spend = SpendParams()
        self.fitted_at: float | None = None
        self.fits = 0
        self.rng = np.random.default_rng(seed)
        self.index: dict[str, int] = {}
        self.users: list[str] = []
        size = 1024
        self.first = np.zeros(size)  # event time of the first purchase
        self.last = np.zeros(size)  # event time of the last purchase-day's first line
        self.last_day = np.zeros(size, dtype=np.int64)  # UTC day index of the last purchase-day
        self.repeats = np.zeros(size, dtype=np.int64)  # purchase-days after the first
        self.spend_sum = np.zeros(size)  # over every purchase-day
        self.litt = np.zeros(size)  # sum of log gaps (days) between purchase-days
        self.purchase_days = 0
        self.new_since_fit = 0

    def __len__(self) -> int:
        return len(self.users)

    def _grow(self) -> None:
        for name in _ARRAYS:
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.zeros_like(old)]))

    def learn_one(self, user_id: str, timestamp: float, spend: float) -> None:
        """Learn a purchase line of positive quantity worth ``spend``.

        A line on a later UTC day than the customer's last purchase-day starts a
        new purchase-day; a line on the same day (or, out of order, an earlier
        one) adds to the spend only.
        """
        day = int(timestamp // DAY)
        i = self.index.get(user_id)
        if i is None:
            i = len(self.users)
            if i >= len(self.first):
                self._grow()
            self.index[user_id] = i
            self.users.append(user_id)
            self.first[i] = self.last[i] = timestamp
            self.last_day[i] = day
            self.repeats[i] = 0
            self.spend_sum[i] = 0.0
            self.litt[i] = 0.0
            self.purchase_days += 1
            self.new_since_fit += 1
        elif day > self.last_day[i]:
            self.litt[i] += math.log(max((timestamp - self.last[i]) / DAY, MIN_GAP_DAYS))
            self.repeats[i] += 1
            self.last[i] = timestamp
            self.last_day[i] = day
            self.purchase_days += 1
            self.new_since_fit += 1
        elif timestamp < self.first[i]:
            self.first[i] = timestamp
        self.spend_sum[i] += max(spend, 0.0)

    def forget(self, user_id: str) -> bool:
        """Drop a customer (the last row moves into its place)."""
        i = self.index.pop(user_id, None)
        if i is None:
            return False
        last = len(self.users) - 1
        self.purchase_days -= int(self.repeats[i]) + 1
        if i != last:
            moved = self.users[last]
            self.users[i] = moved
            self.index[moved] = i
            for name in _ARRAYS:
                arr = getattr(self, name)
                arr[i] = arr[last]
        self.users.pop()
        return True

    def stats(self, now: float, rows: Any = None) -> tuple[np.ndarray, ...]:
        """``(x, t_x, T, purchase_days, mean_spend)`` in days at event time ``now``."""
        n = len(self.users)
        idx = slice(0, n) if rows is None else rows
        x = self.repeats[idx].astype(float)
        first = self.first[idx]
        t_x = np.maximum(self.last[idx] - first, 0.0) / DAY
        T = np.maximum(np.maximum(now - first, 0.0) / DAY, t_x)
        days = x + 1.0
        return x, t_x, T, days, self.spend_sum[idx] / days

    def due_for_refit(self, now: float) -> bool:
        """Whether :meth:`maybe_refit` would refit at ``now``."""
        if self.new_since_fit == 0 or len(self.users) < 2:
            return False
        if self.new_since_fit >= max(self.refit_min_new, self.refit_fraction * self.purchase_days):
            return True
        return self.fitted_at is not None and now - self.fitted_at >= self.refit_days * DAY

    def maybe_refit(self, now: float) -> bool:
        """Refit the population parameters if due; True when it did."""
        if not self.due_for_refit(now):
            return False
        self.refit(now)
        return True

    def refit(self, now: float) -> None:
        """Maximum-likelihood refit of both models from the statistics at ``now``."""
        self.apply_fit(run_fit(self.fit_job(now)))

    def fit_job(self, now: float) -> FitJob:
        """Copy the statistics a refit at ``now`` needs (O(customers), no fitting).

        The expensive part, :func:`run_fit`, can then run off the event loop;
        :meth:`apply_fit` swaps its parameters in.
        """
        n = len(self.users)
        rows = None
        if n > self.max_fit_customers:
            rows = np.sort(self.rng.choice(n, size=self.max_fit_customers, replace=False))
        x, t_x, T, days, mean = self.stats(now, rows)  # fresh arrays, not views
        warm = self.fits > 0
        k = self.transactions.k
        repeats = self.purchase_days - n
        first = self.regularity_checked_at == 0
        # Repeat purchase-days, not customers, say how much the gaps tell about k: a
        # cohort bought in one quarter (CDNOW) stops growing in customers early.
        check = self.regularity and repeats >= max(
            self.regularity_min_repeats, 2 * self.regularity_checked_at
        )
        if check:
            self.regularity_checked_at = repeats
        return FitJob(
            now, x, t_x, T, days, mean,
            self.transactions if warm else None, self.spend if warm else None,
            self.transactions.modified, self.new_since_fit,
            self.litt[slice(0, n) if rows is None else rows].copy() if self.regularity else None,
            (tuple(range(1, MAX_REGULARITY + 1)) if first
             else tuple(range(max(k - 1, 1), min(k + 1, MAX_REGULARITY) + 1))) if check
            else (k,),
        )  # fmt: skip

    def apply_fit(self, fit: Fit) -> None:
        """Swap in a fit's parameters (purchase-days learnt while it ran stay new)."""
        self.transactions = fit.transactions
        self.spend = fit.spend
        self.fitted_at = fit.now
        self.fits += 1
        self.new_since_fit = max(self.new_since_fit - fit.new, 0)

    def predict_rows(self, now: float, horizon_days: float, rows: Any = None) -> dict[str, Any]:
        """Vectorised predictions for ``rows`` (all customers by default)."""
        x, t_x, T, days, mean = self.stats(now, rows)
        tp = self.transactions
        purchases = expected_purchases(tp, horizon_days, x, t_x, T)
        per_purchase = expected_spend_per_purchase(self.spend, days, mean)
        return {
            "expected_purchases": purchases,
            "expected_spend": purchases * per_purchase,
            "expected_spend_per_purchase": per_purchase,
            "p_alive": p_alive(tp, x, t_x, T),
            "p_purchase": 1.0 - p_no_purchase(tp, horizon_days, x, t_x, T),
        }

    def predict_one(
        self, user_id: str, now: float, horizon_days: float | None = None
    ) -> Prediction | None:
        """The customer's value over the horizon; ``None`` for a customer who never bought."""
        i = self.index.get(user_id)
        if i is None:
            return None
        h = self.horizon_days if horizon_days is None else horizon_days
        out = self.predict_rows(now, h, np.array([i]))
        return Prediction(h, *(float(out[k][0]) for k in (
            "expected_purchases", "expected_spend", "expected_spend_per_purchase",
            "p_alive", "p_purchase",
        )))  # fmt: skip

    def expected_spend_one(
        self, user_id: str, now: float, horizon_days: float | None = None
    ) -> float | None:
        """``predict_one(...).expected_spend`` alone, without the P(alive) and
        P(purchase) terms the engine's segmentation does not read (the same
        arithmetic, hence the same value); ``None`` for a customer who never bought.

        >>> cv = CustomerValue()
        >>> cv.learn_one("a", 0.0, 10.0); cv.learn_one("a", 5 * DAY, 30.0)
        >>> math.isclose(cv.expected_spend_one("a", 9 * DAY),
        ...              cv.predict_one("a", 9 * DAY).expected_spend, rel_tol=1e-9)
        True
        """
        i = self.index.get(user_id)
        if i is None:
            return None
        h = self.horizon_days if horizon_days is None else horizon_days
        # stats() of one row, in floats
        x, first = float(self.repeats[i]), self.first.item(i)
        t_x = max(self.last.item(i) - first, 0.0) / DAY
        T = max(max(now - first, 0.0) / DAY, t_x)
        mean = self.spend_sum.item(i) / (x + 1.0)
        return _expected_spend_scalar(self.transactions, self.spend, h, x, t_x, T, mean)

    def alive_due(self, user_id: str, threshold: float) -> float | None:
        """Event time at which P(alive) falls below ``threshold`` if nothing is bought.

        Solves ``odds(T) = 1 / threshold - 1`` for ``T`` in closed form; ``None``
        when it never does (a BG/NBD customer without repeats), the customer's
        last purchase time when it already has.
        """
        i = self.index.get(user_id)
        if i is None:
            return None
        tp = self.transactions
        x = float(self.repeats[i])
        if not tp.modified and x == 0:
            return None
        if tp.k > 1:
            return self._alive_due_regular(i, threshold)
        base = tp.a / (tp.b + x if tp.modified else tp.b + x - 1)
        t_x = max(self.last[i] - self.first[i], 0.0) / DAY
        target = (1.0 / threshold - 1.0) / base
        if target <= 1.0:
            return float(self.last[i])
        age = (tp.alpha + t_x) * target ** (1.0 / (tp.r + x)) - tp.alpha
        return float(self.first[i] + age * DAY)

    def _alive_due_regular(self, i: int, threshold: float) -> float | None:
        """:meth:`alive_due` under Erlang-k gaps: no closed form, so bisection on the age
        (P(alive) falls monotonically with silence). The log-odds are evaluated on
        scalars with :mod:`math` (a few microseconds each): this runs on every order."""
        tp = self.transactions
        x = float(self.repeats[i])
        t_x = max(self.last[i] - self.first[i], 0.0) / DAY
        rk = tp.r + tp.k * x
        # log(a / (b + x)) - rk log(alpha + t_x), and the open interval's k terms' constants
        dead = math.log(tp.a) - math.log(tp.b + x) - rk * math.log(tp.alpha + t_x)
        const = [math.lgamma(rk + j) - math.lgamma(rk) - math.lgamma(j + 1) for j in range(tp.k)]
        log_target = math.log(1.0 / threshold - 1.0)

        def log_odds(age: float) -> float:
            gap, span = age - t_x, math.log(tp.alpha + age)
            terms = [const[0] - rk * span]
            if gap > 0:
                log_gap = math.log(gap)
                terms += [const[j] + j * log_gap - (rk + j) * span for j in range(1, tp.k)]
            top = max(terms)
            return dead - top - math.log(sum(math.exp(v - top) for v in terms))

        if log_odds(t_x) >= log_target:
            return float(self.last[i])
        lo, hi = t_x, t_x + 1.0
        while log_odds(hi) < log_target:
            lo, hi = hi, t_x + 2.0 * (hi - t_x)
            if hi - t_x > 1e6:  # ~3,000 years of silence: never
                return None
        # Illinois (regula falsi) on the bracket: a handful of steps to a second
        f_lo, f_hi, side = log_odds(lo) - log_target, log_odds(hi) - log_target, 0
        for _ in range(100):
            if hi - lo < 1e-5:
                break
            mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
            f_mid = log_odds(mid) - log_target
            if f_mid < 0:
                lo, f_lo = mid, f_mid
                f_hi, side = (f_hi / 2, 0) if side == -1 else (f_hi, -1)
            elif f_mid > 0:
                hi, f_hi = mid, f_mid
                f_lo, side = (f_lo / 2, 0) if side == 1 else (f_lo, 1)
            else:
                lo = hi = mid
        return float(self.first[i] + hi * DAY)

    def params(self) -> dict[str, Any]:
        """The fitted population parameters, JSON-able."""
        return {
            "transactions": asdict(self.transactions),
            "spend": asdict(self.spend),
            "fitted_at": self.fitted_at,
            "fits": self.fits,
            "customers": len(self.users),
        }
