"""Rating and implicit matrix factorisation."""

from __future__ import annotations

import copy
import math
import tracemalloc
from collections.abc import Callable

import numpy as np

from models.factorization import ImplicitFactorization, RatingFactorization


def _stream(seed: int, n: int = 3000) -> list[tuple[str, int, float]]:
    """Ratings = 3 + user bias + item bias + noise, clipped to 1..5."""
    rng = np.random.default_rng(seed)
    ub = rng.normal(0, 0.7, 50)
    ib = rng.normal(0, 0.7, 40)
    out = []
    for _ in range(n):
        u, i = int(rng.integers(50)), int(rng.integers(40))
        r = float(np.clip(np.round(3 + ub[u] + ib[i] + rng.normal(0, 0.3)), 1, 5))
        out.append((f"u{u}", i, r))
    return out


def test_rating_model_beats_the_global_mean_prequentially() -> None:
    mf = RatingFactorization(seed=0)
    err, base = [], []
    mean = 0.0
    for n, (user, item, r) in enumerate(_stream(7), start=1):
        err.append(mf.predict_one(user, item) - r)
        base.append(mean - r)
        mf.learn_one(user, item, r)
        mean += (r - mean) / n
    rmse = float(np.sqrt(np.mean(np.square(err[500:]))))
    rmse_mean = float(np.sqrt(np.mean(np.square(base[500:]))))
    assert rmse < 0.75 * rmse_mean


def test_rating_predictions_are_clipped_to_the_seen_range() -> None:
    mf = RatingFactorization(seed=0)
    for _ in range(200):
        mf.learn_one("a", 0, 5.0)
        mf.learn_one("b", 1, 2.0)
    assert 2.0 <= mf.predict_one("a", 0) <= 5.0
    assert mf.predict_one("a", 0) > 4.5
    assert mf.predict_one("b", 1) < 2.5
    # unknown user and item: the running mean plus the calibration's cold-start offset
    w = mf.weights
    assert abs(mf.predict_one("nobody", 99) - (mf.mean + w[0] + w[6] + w[7])) < 1e-9


def test_calibration_learns_that_new_items_are_rated_lower() -> None:
    """Each item's first ratings are 2, later ones 4: a new item is predicted below the mean."""
    mf = RatingFactorization(seed=0)
    for item in range(300):
        for n in range(10):
            mf.learn_one(f"u{n}", item, 2.0 if n < 3 else 4.0)
    assert mf.predict_one("u1", 10_000) < mf.mean - 0.5
    plain = mf.mean + mf.user_bias["u1"]  # what the uncalibrated sum would say
    assert abs(mf.predict_one("u1", 10_000) - 2.0) < abs(plain - 2.0)


def test_calibration_starts_as_the_plain_sum() -> None:
    mf = RatingFactorization(seed=0)
    mf.learn_one("a", 0, 4.0)  # the first rating: nothing to calibrate on yet
    assert mf.weights.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    vec = mf.user_vector("a")
    assert vec is not None
    expected = mf.mean + mf.user_bias["a"] + mf.item_bias[0] + vec @ mf.item_vec[0]
    assert abs(mf.predict_all("a", 1)[0] - expected) < 1e-9


def test_predict_all_matches_predict_before_clipping() -> None:
    mf = RatingFactorization(seed=2)
    for user, item, r in _stream(3, 500):
        mf.learn_one(user, item, r)
    all_items = mf.predict_all("u1", 40)
    for i in (0, 5, 39):
        assert abs(np.clip(all_items[i], mf.low, mf.high) - mf.predict_one("u1", i)) < 1e-9


def test_bpr_separates_tastes_and_learns_negatives() -> None:
    bpr = ImplicitFactorization(seed=1)
    for step in range(400):
        bpr.learn_one("ann", step % 3, 1.0, n_items=12)  # ann: items 0-2
        bpr.learn_one("bob", 6 + step % 3, 1.0, n_items=12)  # bob: items 6-8
    s = bpr.scores("ann", 12)
    assert min(s[:3]) > max(s[6:9])
    before = bpr.scores("ann", 12)[0]
    for _ in range(50):
        bpr.learn_one("ann", 0, -1.0, n_items=12)  # ann returns item 0 again and again
    assert bpr.scores("ann", 12)[0] < before


def test_factorisations_are_deterministic_given_a_seed() -> None:
    a, b = ImplicitFactorization(seed=5), ImplicitFactorization(seed=5)
    for m in (a, b):
        for step in range(50):
            m.learn_one("u", step % 7, 1.0, n_items=10)
    np.testing.assert_array_equal(a.scores("u", 10), b.scores("u", 10))


def _bytes_per_new_user(learn: Callable[[str], None], n: int = 3000) -> float:
    users = [f"user-{i}" for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for user in users:
            learn(user)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def test_bpr_user_vectors_are_rows_not_an_array_each() -> None:
    # 16 floats are 128 bytes; an ndarray of them 240 with its header (294 per
    # user with the dict entry), a row of a shared block 128 plus its row number.
    bpr = ImplicitFactorization(seed=0)
    for i in range(50):
        bpr.learn_one("warm", i, 1.0, 50)
    per_user = _bytes_per_new_user(lambda user: bpr.learn_one(user, 3, 1.0, 50))
    assert per_user < 220


def test_bpr_reuses_an_evicted_users_row_for_a_new_user() -> None:
    bpr = ImplicitFactorization(seed=0)
    for step in range(40):
        bpr.learn_one("ann", step % 4, 1.0, n_items=8)
    kept = bpr.user_vec.get("ann")
    assert kept is not None
    old = kept.copy()
    bpr.forget("ann")
    assert bpr.scores("ann", 8).tolist() == bpr.item_bias[:8].tolist()  # unknown again
    bpr.learn_one("bob", 5, 1.0, n_items=8)
    assert bpr.user_vec.used == 1  # bob took ann's row: no growth
    bob = bpr.user_vec.get("bob")
    assert bob is not None and not np.allclose(bob, old)  # and none of her vector


def test_bpr_pickled_with_one_array_per_user_loads_as_rows() -> None:
    bpr = ImplicitFactorization(seed=3)
    for step in range(60):
        bpr.learn_one(f"u{step % 3}", step % 5, 1.0, n_items=6)
    state = copy.deepcopy(bpr.__dict__)
    state["user_vec"] = {u: bpr.user_vec.get(u).copy() for u in ("u0", "u1", "u2")}  # type: ignore[union-attr]
    old = ImplicitFactorization.__new__(ImplicitFactorization)
    old.__setstate__(state)
    for user in ("u0", "u1", "u2"):
        assert old.scores(user, 6).tolist() == bpr.scores(user, 6).tolist()
    old.learn_one("u3", 1, 1.0, n_items=6)  # new users still get rows
    bpr.learn_one("u3", 1, 1.0, n_items=6)
    assert old.scores("u3", 6).tolist() == bpr.scores("u3", 6).tolist()


def test_rating_user_vectors_and_gradients_share_one_row() -> None:
    # Two arrays of 10 floats per rater were 2 x 192 bytes plus two dict entries;
    # one row of 20 floats is 160 plus its row number.
    mf = RatingFactorization(seed=0)
    for i in range(20):
        mf.learn_one("warm", i, 4.0)
    per_user = _bytes_per_new_user(lambda user: mf.learn_one(user, 3, 5.0))
    # What remains: the row (160 + 32), the bias float, three dict entries.
    assert per_user < 400


def test_rating_model_pickled_with_arrays_per_user_loads_as_rows() -> None:
    mf = RatingFactorization(seed=3)
    for user, item, r in _stream(5, 400):
        mf.learn_one(user, item, r)
    state = copy.deepcopy(mf.__dict__)
    rows = state.pop("user_rows")
    n = mf.n_factors
    state["user_vec"] = {u: rows.get(u)[:n].copy() for u in rows.rows}
    state["user_grad"] = {u: rows.get(u)[n:].copy() for u in rows.rows}
    old = RatingFactorization.__new__(RatingFactorization)
    old.__setstate__(state)
    assert old.predict_all("u1", 40).tolist() == mf.predict_all("u1", 40).tolist()
    for model in (old, mf):
        model.learn_one("u1", 2, 1.0)
        model.learn_one("new", 2, 5.0)
    for user in ("u1", "new"):
        assert old.predict_all(user, 40).tolist() == mf.predict_all(user, 40).tolist()


def test_bpr_step_is_the_written_out_pair_update_bit_for_bit() -> None:
    # One purchase (two pairs: a uniform negative, then a recent-positive one):
    # every row it moves equals the BPR step computed from the rows before it.
    bpr = ImplicitFactorization(n_factors=4, lr=0.05, l2=0.01, seed=7)
    for item in range(6):
        bpr.learn_one("seed", item, 1.0, n_items=6)
    draws = copy.deepcopy(bpr)  # the same random draws, to know each negative
    bpr.learn_one("ann", 2, 1.0, n_items=6)  # a new user: the first step starts the row
    draws.learn_one("ann", 2, 1.0, n_items=6)
    before = copy.deepcopy(bpr)
    draws_before = copy.deepcopy(draws)
    bpr.learn_one("ann", 3, 1.5, n_items=6)
    start = before.user_vec.get("ann")
    assert start is not None
    p = start.copy()
    q, b = before.item_vec.copy(), before.item_bias.copy()
    lr = 0.05 * 1.5
    shrink = 1.0 - lr * 0.01
    recent = list(draws_before._recent)
    for k in range(2):
        u = draws_before._uniform()
        other = recent[int(u * len(recent))] if k % 2 == 1 else int(u * 6)
        if other == 3:
            continue
        diff = q[3] - q[other]
        x = float(p @ diff) + b[3] - b[other]
        g = lr / (1.0 + math.exp(min(x, 30.0)))
        step = g * p
        p = p * shrink + g * diff
        q[3] = q[3] * shrink + step
        q[other] = q[other] * shrink - step
        b[3], b[other] = b[3] * shrink + g, b[other] * shrink - g
    after = bpr.user_vec.get("ann")
    assert after is not None and np.array_equal(after, p)
    assert np.array_equal(bpr.item_vec[:6], q[:6])
    assert np.array_equal(bpr.item_bias[:6], b[:6])
