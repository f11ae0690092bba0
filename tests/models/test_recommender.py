"""The blended recommender on small, fixed, seeded streams."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from models.cooccurrence import ItemCooccurrence, Neighbours
from models.engine import EngineConfig, FeedbackEngine
from models.events import Event
from models.popularity import DecayedPopularity
from models.profiles import UserProfile
from models.recommender import FEATURES, BlendedRecommender

T0 = 1_700_000_000.0


def purchase(i: int, user: str, item: str, qty: int = 1) -> Event:
    return Event("purchase", f"p{i}", user, item, T0 + i, quantity=qty, price=2.0)


def test_cooccurrence_recommends_what_was_bought_together() -> None:
    engine = FeedbackEngine(EngineConfig(seed=3))
    i = 0
    for u in range(30):  # everyone who buys A then buys B; C is bought alone, more often
        for item in ("A", "B"):
            engine.process(purchase(i, f"u{u}", item))
            i += 1
        for _ in range(3):
            engine.process(purchase(i, f"c{u}", "C"))
            i += 1
    engine.process(purchase(i, "new", "A"))
    recs = engine.recommend("new", k=2)
    assert recs[0].item_id == "B"
    assert recs[0].reason.startswith(("bought together with A (", "often chosen right after A"))
    assert "A" not in [r.item_id for r in recs]  # already bought


def test_cooccurrence_scores_follow_the_formula() -> None:
    """``sum_h r_h C[h, j] / ((m_h + 1) ** 0.5 (m_j + 1) ** alpha)`` against a dense
    matrix built from the same pair increments, for one source and for several."""
    rng = np.random.default_rng(4)
    co = ItemCooccurrence(max_neighbours=1000, alpha=0.5)
    n = 30
    dense = np.zeros((n, n))
    for i in range(n):  # a history names items learnt before
        co.learn_one([], i, 1.0)
    for _ in range(400):
        items, strengths = rng.integers(0, n, 6).tolist(), rng.uniform(0.1, 1, 6).tolist()
        history = list(zip(items, strengths, strict=True))
        item, weight = int(rng.integers(0, n)), float(rng.uniform(0.1, 1.0))
        for h, w in co.pairs(history, item, weight):
            dense[h, item] += w
            dense[item, h] += w
        co.learn_one(history, item, weight)
    mass = dense.sum(axis=1)
    for history in ([(3, 1.0)], [(3, 1.0), (7, 0.9), (3, 0.5), (12, 0.2), (29, 0.0)]):
        expected = sum(
            r * dense[h] / np.sqrt(mass[h] + 1.0) for h, r in history if r > 0
        ) / (mass + 1.0) ** 0.5
        assert co.scores(history, n) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_pmi_measures_association_beyond_popularity() -> None:
    co = ItemCooccurrence(pmi=True)
    for item in range(5):
        co.learn_one([], item, 1.0)
    for _ in range(20):  # A and B always together; C, a best seller, with everything
        co.learn_one([], 0, 1.0)
        co.learn_one([(0, 1.0)], 1, 1.0)
        for other in (0, 3, 4):
            co.learn_one([(other, 1.0)], 2, 1.0)
    assert co.pmi_of(0, 1) > co.pmi_of(0, 2) > 0  # type: ignore[operator]
    scores = co.scores([(0, 1.0)], 5)
    assert int(scores.argmax()) == 1
    engine = FeedbackEngine(EngineConfig(seed=3))
    for u in range(30):
        for i, item in enumerate(("A", "B", "D") if u % 2 else ("A", "B")):
            engine.process(purchase(10 * u + i, f"u{u}", item))
    engine.process(purchase(1000, "new", "A"))
    reasons = [r.reason for r in engine.recommend("new", k=3)]
    assert any(r.startswith("bought together with A (") and r.endswith("x chance)")
               for r in reasons), reasons  # fmt: skip


def test_cold_user_gets_popular_items() -> None:
    engine = FeedbackEngine(EngineConfig(seed=1))
    for i in range(40):
        engine.process(purchase(i, f"u{i}", "hit" if i % 4 else f"rare{i}"))
    recs = engine.recommend("stranger", k=3)
    assert recs[0].item_id == "hit"
    assert recs[0].reason in {"popular right now", "a best seller"}


def test_recommend_excludes_bought_and_reviewed_but_not_clicked() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    for i, item in enumerate("abcdef"):
        engine.process(purchase(i, f"x{i}", item))
    engine.process(purchase(10, "me", "a"))
    engine.process(Event("review", "r", "me", "b", T0 + 11, rating=5.0))
    engine.process(Event("click", "c", "me", "c", T0 + 12))
    ids = [r.item_id for r in engine.recommend("me", k=10)]
    assert "a" not in ids and "b" not in ids
    assert "c" in ids


def test_hit_is_measured_before_learning() -> None:
    engine = FeedbackEngine(EngineConfig(seed=0))
    first = engine.process(purchase(0, "u", "brand-new"))
    assert first.hit is False  # nobody could have recommended an unseen item
    for i in range(1, 5):
        engine.process(purchase(i, f"v{i}", "best"))
    assert engine.process(purchase(9, "w", "best")).hit is True
    again = engine.process(purchase(10, "w", "best"))  # already interacted: excluded
    assert again.hit is False
    assert engine.process(Event("click", "c", "w", "x", T0 + 11)).hit is None


def test_return_lowers_popularity() -> None:
    pop = DecayedPopularity(half_life=100.0)
    pop.learn_one(0, 1.0, 0.0)
    pop.learn_one(1, 1.0, 0.0)
    pop.learn_one(1, -1.0, 1.0)
    assert pop.all_time(2).tolist() == [1.0, 0.0]
    assert pop.recent(2)[1] < pop.recent(2)[0]


def test_popularity_decays_with_half_life() -> None:
    pop = DecayedPopularity(half_life=60.0)
    pop.learn_one(0, 4.0, 0.0)
    pop.learn_one(1, 1.0, 120.0)
    np.testing.assert_allclose(pop.recent(2), [1.0, 1.0])
    pop.learn_one(1, 0.0, 10_000_000.0)  # far future: rescaling must not overflow
    assert np.isfinite(pop.recent(2)).all()


def test_neighbour_lists_are_bounded() -> None:
    co = ItemCooccurrence(max_neighbours=5)
    for item in range(1, 200):
        co.learn_one([(0, 1.0)], item, 1.0 + item / 1000)
    assert len(co.neighbours[0]) <= 10
    kept = co.neighbours[0]
    # the heaviest pairs survive pruning
    assert max(kept.keys[: kept.n].tolist()) == 199


def test_neighbours_prune_keeps_heaviest() -> None:
    nb = Neighbours()
    for item, w in [(1, 0.1), (2, 5.0), (3, 0.2), (4, 3.0)]:
        nb.add(item, w)
    nb.add(1, 0.05)
    nb.prune(2)
    assert sorted(nb.keys[: nb.n].tolist()) == [2, 4]
    assert nb.get(4) == 3.0 and nb.get(1) == 0.0


def test_blend_learns_to_trust_the_signal_that_works() -> None:
    rec = BlendedRecommender(seed=0, blend_lr=0.1)
    rng = np.random.default_rng(0)
    n_items = 60
    before = rec.weights.copy()
    profiles: dict[str, UserProfile] = {}
    for step in range(400):
        user = f"u{step % 40}"
        prof = profiles.setdefault(user, UserProfile(user, 0.0, 0.0, deque(maxlen=20)))
        # items come in fixed pairs (2k, 2k+1): the partner is what a user buys next
        first = int(rng.integers(n_items // 2)) * 2
        for item in (first, first + 1):
            scored = rec.score(prof, n_items)
            rec.learn_blend(scored, item)
            rec.learn_one(prof, item, 1.0, 1.0, float(step), n_items)
            prof.seen.clear()
    gain = rec.weights - before
    # the partner always follows immediately: co-occurrence with the last item wins
    assert gain[FEATURES.index("sequence")] == max(gain)
    assert gain[FEATURES.index("taste")] < gain[FEATURES.index("sequence")] / 2


def test_rank_of_breaks_ties_by_index() -> None:
    from models.recommender import Scored

    s = Scored(
        np.array([1.0, 2.0, 2.0, -np.inf]),
        np.zeros((len(FEATURES), 4)),
        np.zeros(len(FEATURES), dtype=bool),
    )
    assert BlendedRecommender.rank_of(s, 1) == 0
    assert BlendedRecommender.rank_of(s, 2) == 1
    assert BlendedRecommender.rank_of(s, 3) is None
    assert BlendedRecommender(seed=0).top(s, 5) == [1, 2, 0]


def test_strongest_sources_of_many_candidates_match_one_by_one() -> None:
    co = ItemCooccurrence()
    rng = np.random.default_rng(5)
    history: deque[tuple[int, float]] = deque(maxlen=6)
    for _ in range(400):
        item = int(rng.integers(0, 30))
        co.learn_one(history, item, float(rng.choice([0.3, 1.0])))
        history.append((item, 1.0))
    recent = [(h, 0.9**k) for k, (h, _) in enumerate(reversed(history))]
    candidates = list(range(30))

    def brute(c: int) -> int | None:  # the definition: largest C[h, c] * r_h / sqrt(m_h + 1)
        weights = [co.neighbours[h].get(c) * r / np.sqrt(co._mass[h] + 1.0) for h, r in recent]
        top = max(range(len(recent)), key=lambda k: (weights[k], -k))
        return recent[top][0] if weights[top] > 0 else None

    assert co.strongest_sources(recent, candidates) == {c: brute(c) for c in candidates}
