"""Lexicon prior + self-taught classifier, and per-item sentiment."""

from __future__ import annotations

from models.sentiment import ItemSentiment, SentimentModel, label_of, lexicon_compound


def test_before_any_label_the_model_is_the_lexicon() -> None:
    model = SentimentModel()
    for text in ["I love this, it is wonderful", "Terrible, awful, broke at once"]:
        assert (model.predict_proba_one(text) > 0.5) == (lexicon_compound(text) > 0)


def test_it_learns_domain_words_the_lexicon_does_not_know() -> None:
    model = SentimentModel()
    text = "the seams unravelled after one wash and it pilled"
    assert model.predict_proba_one(text) >= 0.5  # VADER sees nothing negative here
    for _ in range(30):
        model.learn_one("seams unravelled, pilled after a wash", 1)
        model.learn_one("soft, fits true to size", 5)
    assert model.predict_proba_one(text) < 0.5
    assert model.predict_proba_one("soft and fits true to size") > 0.5


def test_three_stars_and_missing_ratings_teach_nothing() -> None:
    model = SentimentModel()
    p = model.predict_proba_one("meh fabric")
    model.learn_one("meh fabric", 3)
    model.learn_one("meh fabric", None)
    assert model.predict_proba_one("meh fabric") == p
    assert (model.n_positive, model.n_negative) == (0, 0)


def test_labels_from_stars() -> None:
    assert [label_of(r) for r in (1, 2, 2.5, 3, 4, 5)] == [False, False, None, None, True, True]


def test_item_sentiment_tracks_recent_and_baseline() -> None:
    track = ItemSentiment(fast=0.3, slow=0.02)
    for _ in range(50):
        track.learn_one("dress", 0.9, t=1.0)
    recent, baseline, n = track.learn_one("dress", 0.1, t=2.0)
    assert n == 51 and baseline == 0.0 and recent > 0.25
    summary = track.summary("dress")
    assert summary is not None
    assert summary["last_review_time"] == 2.0
    assert track.summary("unknown") is None
