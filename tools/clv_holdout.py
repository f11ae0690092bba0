"""``evaluate --holdout-from DATE``: customer value frozen at DATE, checked against what followed.

At the first event at or after DATE the replay asks the engine (after the tick
the worker would have run) for every customer's expected purchase-days,
expected spend, P(alive) and P(a purchase-day) over the holdout, DATE to the
end of the file's last UTC day. The replay then goes on (the engine keeps
learning; the frozen predictions do not change), and each customer's actual
purchase-days (UTC days with a purchase line of positive quantity) and spend
(those lines' total) after DATE are counted. Customers are those with a
purchase before DATE.

Baselines in the same run:

* ``naive``: each customer repeats their past rate: repeat purchase-days per
  day since their first purchase, times the horizon; spend is that times their
  mean purchase-day spend;
* ``lifetimes`` (if installed): ``BetaGeoFitter`` + ``GammaGammaFitter`` fitted
  offline on the calibration period, twice: on this module's statistics (the
  same ``x, t_x, T`` as the engine: ages in days to DATE), and on the
  statistics of lifetimes' own ``calibration_and_holdout_data`` (daily
  periods, calibration ending the day before DATE), which is how lifetimes is
  usually run and what the published CDNOW figures use.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
from scipy.stats import rankdata

from models.clv import DAY
from models.engine import EngineConfig, FeedbackEngine
from models.events import Event

TICK_EVERY = 500  # events between ticks, as in tools.evaluate


def _mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth)))


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def top_decile_share(pred: np.ndarray, truth: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the holdout's total that the ``fraction`` of customers ranked highest
    by ``pred`` made (ties kept in customer order): how well a forecast finds the
    most valuable customers, whatever its scale.

    >>> top_decile_share(np.array([5.0, 1.0, 0.0, 2.0]), np.array([1.0, 6.0, 0.0, 3.0]), 0.5)
    0.4
    """
    total = float(truth.sum())
    if len(truth) == 0 or total <= 0:
        return float("nan")
    top = np.argsort(-pred, kind="stable")[: max(round(fraction * len(truth)), 1)]
    return float(truth[top].sum() / total)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); ``None`` with one class.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _brier(prob: np.ndarray, outcome: np.ndarray) -> float:
    return float(np.mean((prob - outcome.astype(float)) ** 2))


class HoldoutReplay:
    """Freezes the engine's customer values at ``cutoff`` and tallies the holdout.

    Call :meth:`before` with every event before the engine processes it, and
    :meth:`report` at the end.
    """

    def __init__(self, cutoff: float, end: float) -> None:
        self.cutoff = cutoff
        # the holdout runs to the end of the file's last UTC day
        self.end = math.floor(end / DAY) * DAY + DAY
        self.horizon_days = (self.end - cutoff) / DAY
        self.frozen: dict[str, Any] | None = None
        # per customer and UTC day: spend of positive purchase lines (both periods)
        self.days: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))

    def before(self, engine: FeedbackEngine, event: Event) -> None:
        """Freeze at the first event at or after the cutoff; record purchase lines."""
        if self.frozen is None and event.timestamp >= self.cutoff:
            self.freeze(engine)
        if event.type == "purchase" and event.quantity > 0:
            self.days[event.user_id][int(event.timestamp // DAY)] += event.revenue

    def freeze(self, engine: FeedbackEngine) -> None:
        """Snapshot every customer's prediction at the cutoff, after a worker-like tick."""
        engine.tick(self.cutoff)
        cv = engine.customer_value
        n = len(cv.users)
        x, t_x, T, days, mean = cv.stats(self.cutoff)
        pred = cv.predict_rows(self.cutoff, self.horizon_days)
        self.frozen = {
            "users": list(cv.users[:n]),
            "x": x, "t_x": t_x, "T": T, "days": days, "mean": mean,
            "recency": T - t_x,
            **pred,
            "params": cv.params(),
        }  # fmt: skip

    def report(self, engine: FeedbackEngine) -> dict[str, Any]:
        """The holdout metrics (``clv_*``, churn) and the baselines."""
        if self.frozen is None:  # DATE after the last event: nothing to compare against
            return {"clv_customers": 0, "error": "no event at or after the holdout date"}
        f = self.frozen
        users = f["users"]
        cut_day = int(self.cutoff // DAY)
        actual_n = np.zeros(len(users))
        actual_s = np.zeros(len(users))
        for i, u in enumerate(users):
            for day, spend in self.days[u].items():
                if day >= cut_day:
                    actual_n[i] += 1
                    actual_s[i] += spend
        churned = actual_n == 0
        naive_rate = np.where(f["T"] > 0, f["x"] / np.maximum(f["T"], 1e-9), 0.0)
        naive_n = naive_rate * self.horizon_days
        naive_s = naive_n * f["mean"]
        out: dict[str, Any] = {
            "clv_customers": len(users),
            "clv_horizon_days": self.horizon_days,
            "clv_actual_purchases_mean": float(actual_n.mean()),
            "clv_actual_spend_mean": float(actual_s.mean()),
            "clv_purchases_mae": _mae(f["expected_purchases"], actual_n),
            "clv_spend_mae": _mae(f["expected_spend"], actual_s),
            "clv_purchases_mae_naive": _mae(naive_n, actual_n),
            "clv_spend_mae_naive": _mae(naive_s, actual_s),
            # MAE rewards the median; these reward the mean and the ranking
            **{
                f"clv_{what}_{measure}{suffix}": fn(pred, actual)
                for what, actual, model, naive in (
                    ("purchases", actual_n, f["expected_purchases"], naive_n),
                    ("spend", actual_s, f["expected_spend"], naive_s),
                )
                for measure, fn in (("rmse", _rmse), ("top_decile_share", top_decile_share))
                for suffix, pred in (("", model), ("_naive", naive))
            },
            "clv_purchases_total_ratio": float(
                f["expected_purchases"].sum() / max(actual_n.sum(), 1.0)
            ),
            # > 1: the customers bought more often in the holdout than in their past
            "clv_actual_to_past_rate": float(actual_n.sum() / max(naive_n.sum(), 1e-9)),
            **_group_bounds(f["x"], naive_n, actual_n, actual_s),
            "clv_churn_rate": float(churned.mean()),
            "churn_auc": roc_auc(1.0 - f["p_purchase"], churned),
            "churn_auc_recency": roc_auc(f["recency"], churned),
            "churn_brier": _brier(1.0 - f["p_purchase"], churned),
            "p_alive_brier": _brier(f["p_alive"], ~churned),
            "churn_calibration": _calibration(1.0 - f["p_purchase"], churned),
            "clv_params": f["params"],
        }
        out["lifetimes"] = _lifetimes(f, actual_n, actual_s, self.horizon_days, self.days, cut_day)
        return out


# Groups of the oracle bounds: repeat purchase-days and the naive forecast.
_REPEAT_EDGES = (1, 3, 6, 11, 21)
_NAIVE_EDGES = (0.01, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 20)


def _group_bounds(
    x: np.ndarray, naive_n: np.ndarray, actual_n: np.ndarray, actual_s: np.ndarray
) -> dict[str, float]:
    """MAEs of forecasts that know each group's actual holdout mean (or median).

    Customers are grouped by repeat purchase-days and by their naive forecast
    (at most 6 x 12 groups). No forecast from these two features can be
    calibrated better than the group mean; where its MAE is above the naive
    baseline's, a mean forecast cannot beat the naive one on MAE, however good
    (the MAE rewards the median instead).
    """
    key = np.digitize(x, _REPEAT_EDGES) * 100 + np.digitize(naive_n, _NAIVE_EDGES)
    _, group = np.unique(key, return_inverse=True)
    out = {}
    for name, stat in (("mean", np.mean), ("median", np.median)):
        for what, actual in (("purchases", actual_n), ("spend", actual_s)):
            pred = np.zeros_like(actual)
            for g in range(group.max() + 1 if len(group) else 0):
                members = group == g
                pred[members] = stat(actual[members])
            out[f"clv_{what}_mae_oracle_group_{name}"] = _mae(pred, actual)
    return out


def _calibration(prob: np.ndarray, outcome: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Predicted against observed churn in equal-count bins of the prediction."""
    order = np.argsort(prob, kind="mergesort")
    rows = []
    for part in np.array_split(order, bins):
        if len(part):
            rows.append({
                "customers": len(part),
                "predicted": float(prob[part].mean()),
                "observed": float(outcome[part].mean()),
            })  # fmt: skip
    return rows


def _lifetimes(
    f: dict[str, Any],
    actual_n: np.ndarray,
    actual_s: np.ndarray,
    horizon: float,
    days: dict[str, dict[int, float]],
    cut_day: int,
) -> dict[str, Any] | None:
    """lifetimes' BG/NBD + Gamma-Gamma on the same split; ``None`` when not installed."""
    try:
        from lifetimes import BetaGeoFitter, GammaGammaFitter
    except ImportError:
        return None
    out: dict[str, Any] = {}
    x, t_x, T = f["x"], f["t_x"], f["T"]
    # Repeat-day mean spend, as lifetimes' Gamma-Gamma expects.
    first_spend = np.array(
        [days[u][int(min(days[u]))] if days[u] else 0.0 for u in f["users"]]
    )
    repeat_mean = np.where(x > 0, (f["mean"] * f["days"] - first_spend) / np.maximum(x, 1), 0.0)
    out["same_statistics"] = _fit_lifetimes(
        BetaGeoFitter, GammaGammaFitter, x, t_x, T, repeat_mean, actual_n, actual_s, horizon
    )
    # lifetimes' own convention: calibration ends the day before DATE, ages in whole days.
    lt = np.array(
        [
            (len(c) - 1, max(c) - min(c), cut_day - 1 - min(c),
             float(np.mean([days[u][d] for d in sorted(c)[1:]])) if len(c) > 1 else 0.0)
            for u in f["users"]
            for c in [[d for d in days[u] if d < cut_day]]
        ]
    )  # fmt: skip
    out["own_convention"] = _fit_lifetimes(
        BetaGeoFitter, GammaGammaFitter, lt[:, 0], lt[:, 1], lt[:, 2], lt[:, 3],
        actual_n, actual_s, horizon,
    )  # fmt: skip
    return out


def _fit_lifetimes(
    bg_cls: Any, gg_cls: Any, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
    repeat_mean: np.ndarray, actual_n: np.ndarray, actual_s: np.ndarray, horizon: float,
) -> dict[str, Any]:  # fmt: skip
    """Fit with the smallest penalizer that converges (lifetimes' own advice)."""
    for penalizer in (0.0, 0.001, 0.01, 0.1):
        try:
            # lifetimes prints the optimiser's report when a fit fails: keep stdout JSON
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                bg = bg_cls(penalizer_coef=penalizer).fit(x, t_x, T)
                keep = (x > 0) & (repeat_mean > 0)
                gg = gg_cls(penalizer_coef=penalizer).fit(x[keep], repeat_mean[keep])
                n = np.asarray(bg.conditional_expected_number_of_purchases_up_to_time(
                    horizon, x, t_x, T))  # fmt: skip
                m = np.asarray(gg.conditional_expected_average_profit(x, repeat_mean))
        except Exception as exc:  # lifetimes raises ConvergenceError and numeric errors
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
            continue
        return {
            "penalizer": penalizer,
            "purchases_mae": _mae(n, actual_n),
            "spend_mae": _mae(n * m, actual_s),
            "params": {k: float(v) for k, v in {**bg.params_, **gg.params_}.items()},
        }
    return {"error": error}


def customer_value_only(
    events: list[Event], cutoff: float, config: EngineConfig | None = None
) -> dict[str, Any]:
    """The holdout report from the engine's customer-value model alone.

    The model learns nothing from the engine's other models (only purchase
    lines of positive quantity and the tick), so feeding it directly, with the
    replay's tick every ``TICK_EVERY`` events, gives the figures a full replay
    gives, in seconds instead of the whole engine's time.
    """
    engine = FeedbackEngine(config)
    holdout = HoldoutReplay(cutoff, max((e.timestamp for e in events), default=0.0))
    cv = engine.customer_value
    for n, event in enumerate(events):
        holdout.before(engine, event)
        if event.type == "purchase" and event.quantity > 0:
            cv.learn_one(event.user_id, event.timestamp, event.revenue)
        if n % TICK_EVERY == TICK_EVERY - 1:
            cv.maybe_refit(event.timestamp)
    return {"events": len(events), **holdout.report(engine)}
