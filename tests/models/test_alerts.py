"""Alerts: negative-review spikes, anomalies, drift and churn, each with a cooldown."""

from __future__ import annotations

import pickle

import numpy as np
from river import anomaly

from models.alerts import BehaviourAnomaly, Cooldown, QualityDrift
from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.river_internals import score_then_learn

T0 = 1_700_000_000.0
DAY = 86_400.0
GOOD = "Love it, beautiful and comfortable, great quality"
BAD = "Awful, cheap and broken, terrible quality, very disappointed"


def kinds(alerts: list) -> list[str]:
    return [a.kind for a in alerts]


def test_negative_review_spike_needs_volume_and_a_real_rise() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    alerts = []
    t = T0
    for i in range(40):  # a well-liked item with an occasional bad review
        t += 3600
        text = BAD if i % 10 == 9 else GOOD
        alerts += engine.process(Event("review", f"g{i}", f"u{i}", "dress", t, text=text)).alerts
    assert "negative_review_spike" not in kinds(alerts)
    spike = []
    for i in range(12):
        t += 3600
        out = engine.process(Event("review", f"b{i}", f"v{i}", "dress", t, text=BAD))
        spike += [a for a in out.alerts if a.kind == "negative_review_spike"]
    assert len(spike) == 1  # one incident, one alert (cooldown)
    alert = spike[0]
    assert alert.subject == "dress" and alert.value > alert.threshold
    assert alert.severity in {"warning", "critical"}


def test_few_bad_reviews_of_a_new_item_do_not_alert() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    alerts = []
    for i in range(5):
        ev = Event("review", f"b{i}", f"u{i}", "new", T0 + i, text=BAD)
        alerts += engine.process(ev).alerts
    assert alerts == []


def test_cooldown_per_kind_and_subject() -> None:
    cd = Cooldown(100.0)
    assert cd.allow("a", "x", 0.0)
    assert cd.allow("a", "y", 1.0) and cd.allow("b", "x", 1.0)
    assert not cd.allow("a", "x", 99.0)
    cd.prune(150.0)
    assert ("a", "x") not in cd.last and cd.allow("a", "x", 150.0)


def test_anomalous_purchase_scores_high_and_alerts() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0, anomaly_warmup=300))
    rng = np.random.default_rng(0)
    t = T0
    normal_alerts = 0
    for i in range(1500):
        t += 60
        qty = int(rng.integers(1, 4))
        ev = Event("purchase", f"p{i}", f"u{i % 50}", f"i{i % 30}", t, quantity=qty, price=2.5)
        out = engine.process(ev)
        normal_alerts += "anomalous_behaviour" in kinds(out.alerts)
    assert normal_alerts <= 5  # a quantile threshold: rare by construction
    odd = Event("purchase", "odd", "u1", "i1", t + 60, quantity=4000, price=900.0)
    out = engine.process(odd)
    assert out.anomaly_score is not None and out.anomaly_score > 0.9
    assert "anomalous_behaviour" in kinds(out.alerts)


def test_anomaly_detector_warms_up_before_scoring() -> None:
    det = BehaviourAnomaly(warmup=10, window_size=5, seed=0)
    scores = [det.score_learn_one([1.0, 2.0]) for _ in range(12)]
    assert scores[:10] == [None] * 10
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores[10:])


def purchase_features(n: int, seed: int = 0) -> list[list[float]]:
    """Purchase-like features (quantity, price, revenue, price ratio, hours), some odd."""
    rng = np.random.default_rng(seed)
    qty = rng.integers(1, 13, n).astype(float)
    price = rng.lognormal(1.0, 0.8, n)
    qty[::211] = 4000.0
    price[::307] *= 300.0
    ratio = rng.normal(0.0, 0.1, n)
    hours = rng.exponential(30.0, n)
    return np.column_stack([qty, price, qty * price, ratio, hours]).tolist()


class RiverAnomaly:
    """The detector's scaling on River's HalfSpaceTrees, through River's public calls.

    (The scaling against the numpy one the detector had on River's trees:
    tests/tools/test_anomaly_probe.py.)
    """

    def __init__(self, warmup: int) -> None:
        self.trees = anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=250, seed=0)
        self.scaler = BehaviourAnomaly()
        self.warmup = warmup
        self.n = 0

    def score_learn_one(self, features: list[float]) -> float | None:
        x = dict(enumerate(self.scaler.scale_learn_one(features)))
        score = float(self.trees.score_one(x)) if self.n >= self.warmup else None
        self.trees.learn_one(x)
        self.n += 1
        return score


def test_anomaly_scores_equal_those_on_rivers_trees() -> None:
    features = purchase_features(3000)
    river = RiverAnomaly(warmup=300)
    ours = BehaviourAnomaly(warmup=300)
    expected = [river.score_learn_one(f) for f in features]
    assert [ours.score_learn_one(f) for f in features] == expected


def test_detector_pickled_with_rivers_trees_goes_on_with_them() -> None:
    # A checkpoint written before the array forest holds River's HalfSpaceTrees in
    # ``trees`` and numpy bounds: it loads, keeps the learnt masses, scores as River.
    features = purchase_features(2000, seed=1)
    river = RiverAnomaly(warmup=300)
    for f in features[:1130]:
        river.score_learn_one(f)
    old = BehaviourAnomaly(warmup=300)
    state = {k: v for k, v in old.__dict__.items() if k != "forest"}
    bounds = np.array(river.scaler.low), np.array(river.scaler.high)  # numpy, as then
    state.update(trees=river.trees, low=bounds[0], high=bounds[1], n=river.n)
    state = pickle.loads(pickle.dumps(state))
    loaded = BehaviourAnomaly.__new__(BehaviourAnomaly)
    loaded.__setstate__(state)
    assert loaded.forest is not None and loaded.forest.counter == 1130 % 250
    expected = [river.score_learn_one(f) for f in features[1130:]]
    assert [loaded.score_learn_one(f) for f in features[1130:]] == expected


def test_detector_pickled_before_its_first_event() -> None:
    state = {k: v for k, v in BehaviourAnomaly().__dict__.items() if k != "forest"}
    state["trees"] = anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=250, seed=0)
    loaded = BehaviourAnomaly.__new__(BehaviourAnomaly)
    loaded.__setstate__(state)
    assert loaded.forest is None
    assert loaded.score_learn_one([1.0, 2.0]) is None and loaded.forest is not None


def test_fused_walk_matches_rivers_score_then_learn() -> None:
    # The one-walk score-and-learn must give River's scores and leave River's masses.
    ours = anomaly.HalfSpaceTrees(n_trees=5, height=6, window_size=40, seed=3)
    river = anomaly.HalfSpaceTrees(n_trees=5, height=6, window_size=40, seed=3)
    rng = np.random.default_rng(0)
    for i in range(300):
        x = dict(enumerate(np.clip(rng.normal(0.5, 0.2, 5), 0.0, 1.0).tolist()))
        if i % 97 == 0:
            x[2] = 0.999  # now and then an outlier
        expected = float(river.score_one(x)) if i >= 60 else None
        river.learn_one(x)
        assert score_then_learn(ours, x, score=i >= 60) == expected
    masses = [[(n.l_mass, n.r_mass) for n in nodes] for nodes in ours._tree_nodes]
    assert masses == [[(n.l_mass, n.r_mass) for n in nodes] for nodes in river._tree_nodes]
    assert ours.counter == river.counter


def test_drift_only_on_worse_quality() -> None:
    better = QualityDrift(higher_is_better=True)
    flags = [better.learn_one(0.0 if i < 1000 else 1.0) for i in range(2000)]
    assert all(f is None for f in flags)  # hits went up: no alert
    worse = QualityDrift(higher_is_better=False)  # errors went up
    flags = [worse.learn_one(0.1 if i < 1000 else 2.0) for i in range(2000)]
    hits = [f for f in flags if f is not None]
    assert hits and hits[0][0] > hits[0][1]


def test_churn_alert_for_overdue_regular_customer_only() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    n = 0
    for week in range(8):  # "weekly" orders every 7 days; "monthly" every 30
        n += 1
        engine.process(Event("purchase", f"w{n}", "weekly", "tea", T0 + week * 7 * DAY, quantity=1))
    for month in range(3):
        n += 1
        t = T0 + month * 30 * DAY
        engine.process(Event("purchase", f"m{n}", "monthly", "tea", t, quantity=1))
    last = T0 + 7 * 7 * DAY
    assert engine.tick(last + 5 * DAY) == []  # nobody overdue yet
    alerts = engine.tick(last + 40 * DAY)
    assert [a.subject for a in alerts] == ["weekly"]
    assert alerts[0].kind == "churn_risk" and alerts[0].value >= alerts[0].threshold
    assert engine.tick(last + 41 * DAY) == []  # popped once: no repeat
    risk_weekly = engine.churn_risk("weekly", last + 40 * DAY)
    risk_monthly = engine.churn_risk("monthly", last + 40 * DAY)
    # Six weeks late against a week's rhythm, on time against a month's.
    assert risk_weekly is not None and risk_monthly is not None
    assert risk_weekly > risk_monthly
    assert risk_monthly < alerts[0].threshold <= alerts[0].value


def test_an_order_cancels_the_pending_churn_alert() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    for week in range(5):
        engine.process(Event("purchase", f"w{week}", "c", "tea", T0 + week * 7 * DAY, quantity=1))
    # buys again before falling overdue: the earlier due date is stale
    engine.process(Event("purchase", "late", "c", "tea", T0 + 40 * DAY, quantity=1))
    alerts = engine.tick(T0 + 55 * DAY)
    assert alerts == []
