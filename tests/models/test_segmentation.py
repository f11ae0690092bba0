"""Online segmentation: stable, readable, close to offline k-means."""

from __future__ import annotations

import numpy as np

from models.profiles import SEGMENT_FEATURES
from models.segmentation import OnlineSegmentation

D = len(SEGMENT_FEATURES)


def blobs(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    out = []
    for i in range(n):
        v = np.zeros(D)
        v[:2] = centres[i % 3] + rng.normal(0, 0.3, 2)
        out.append(v)
    return out


def test_finds_well_separated_groups() -> None:
    seg = OnlineSegmentation(k=3, warmup=30, seed=0)
    vectors = blobs(0, 600)
    labels = [seg.learn_one(f"u{i}", v, 0.0) for i, v in enumerate(vectors)]
    # every true group maps to one segment
    for g in range(3):
        assert len({labels[i] for i in range(60 + g, 600, 3)}) == 1
    assert sorted(seg.sizes().values()) == [200, 200, 200]


def test_none_before_warmup() -> None:
    seg = OnlineSegmentation(k=3, warmup=10, seed=0)
    assert seg.learn_one("a", np.zeros(D), 0.0) is None
    assert seg.segment_of("a") is None and seg.segment_of("zz") is None


def test_hysteresis_keeps_a_border_user_in_place() -> None:
    seg = OnlineSegmentation(k=2, warmup=20, margin=0.2, seed=0)
    for i in range(40):
        v = np.zeros(D)
        v[0] = 0.0 if i % 2 else 10.0
        seg.learn_one(f"u{i}", v, 0.0)
    left = np.zeros(D)
    left[0] = 4.8
    s0 = seg.learn_one("border", left, 0.0)
    nudged = left.copy()
    nudged[0] = 5.2  # slightly closer to the other side: not enough to move
    assert seg.learn_one("border", nudged, 0.0) == s0
    far = left.copy()
    far[0] = 9.5 if s0 == seg.segment_of("u1") else 0.5
    assert seg.learn_one("border", far, 0.0) != s0


def test_profiles_are_in_real_units() -> None:
    seg = OnlineSegmentation(k=2, warmup=10, seed=0)
    for i in range(20):
        v = np.zeros(D)
        v[0] = np.log1p(10.0 if i % 2 else 1.0)  # log_orders
        v[SEGMENT_FEATURES.index("rating_mean")] = 4.5 if i % 2 else 2.0
        seg.learn_one(f"u{i}", v, last_seen=86_400.0 * i)
    profiles = seg.profiles(now=86_400.0 * 30)
    orders = sorted(round(p["orders"], 3) for p in profiles.values())
    assert orders == [1.0, 10.0]
    heavy = max(profiles.values(), key=lambda p: p["orders"])
    assert heavy["rating_mean"] == 4.5 and heavy["users"] == 10
    assert 10 < heavy["recency_days"] < 21


def _line_groups(rng: np.random.Generator, centre: float, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        v = np.zeros(D)
        v[0] = centre + rng.normal(0, 0.5)
        out.append(v)
    return out


def test_refit_escapes_a_bad_start() -> None:
    # Groups at 0, 10 and 20 arrive one after the other: online k-means alone
    # splits the first group in two and merges the last two.
    rng = np.random.default_rng(0)
    stream = [*_line_groups(rng, 0, 200), *_line_groups(rng, 10, 200), *_line_groups(rng, 20, 200)]

    def run(refit_every: int) -> list[set[int | None]]:
        seg = OnlineSegmentation(k=3, warmup=30, refit_every=refit_every, seed=0)
        for i, v in enumerate(stream):
            seg.learn_one(f"u{i}", v, 0.0)
            if i % 50 == 49:
                seg.refresh(100)
        return [{seg.segment_of(f"u{i}") for i in range(g * 200, g * 200 + 200)} for g in range(3)]

    stuck = run(refit_every=10**9)
    assert stuck[1] == stuck[2]  # the failure the re-fit exists for
    fixed = run(refit_every=100)
    assert all(len(g) == 1 for g in fixed)
    assert len(set.union(*fixed)) == 3


def test_snapshot_matches_segments() -> None:
    seg = OnlineSegmentation(k=3, warmup=30, seed=0)
    for i, v in enumerate(blobs(2, 90)):
        seg.learn_one(f"u{i}", v, 0.0)
    users, x, labels = seg.snapshot()
    assert len(users) == 90 and x.shape == (90, D)
    assert [seg.segment_of(u) for u in users] == labels.tolist()


def test_a_follower_labels_users_as_the_owner_does() -> None:
    """Two workers' segmentations fitted apart number their segments differently;
    after the follower adopts the owner's centres, the same vector gets the same id."""
    owner = OnlineSegmentation(k=3, warmup=30, seed=0)
    follower = OnlineSegmentation(k=3, warmup=30, seed=7)
    vectors = blobs(1, 600)
    for i, v in enumerate(vectors):
        (owner if i % 2 else follower).learn_one(f"u{i}", v, 0.0)
    probes = blobs(2, 30)
    centres = owner.centres_state()
    assert centres is not None
    follower.adopt(centres)
    for i, v in enumerate(probes):
        assert follower.learn_one(f"p{i}", v, 0.0) == owner.learn_one(f"p{i}", v, 0.0)
    # adopted users were relabelled at once, and the adopted centres do not move
    assert sum(follower.sizes().values()) == follower.n_users
    assert np.array_equal(follower.centres, np.array(centres))
    follower.refresh(1000)
    assert np.array_equal(follower.centres, np.array(centres))
