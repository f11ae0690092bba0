"""Review sentiment: the VADER lexicon as a prior, refined online from star ratings."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from river import feature_extraction, linear_model, optim

from models.river_internals import set_weight

LEXICON_FEATURE = "__lexicon__"


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    # Built once per process and kept out of the model's state: the lexicon is
    # fixed data, not something learnt, so it does not belong in checkpoints.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lexicon_compound(text: str) -> float:
    """VADER's compound polarity in [-1, 1], averaged over the sentences of ``text``.

    VADER's authors recommend sentence-level scoring for paragraphs; it is also
    much faster (VADER's negation check is quadratic in the length of what it
    is given).

    >>> lexicon_compound("I love this dress") > 0.5, lexicon_compound("awful, cheap fabric") < 0
    (True, True)
    >>> round(lexicon_compound("Great. Terrible."), 3) == round(
    ...     (lexicon_compound("Great.") + lexicon_compound("Terrible.")) / 2, 3)
    True
    """
    analyzer = _analyzer()
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()] or [text]
    return sum(analyzer.polarity_scores(s)["compound"] for s in sentences) / len(sentences)


def lexicon_compound_whole(text: str) -> float:
    """Stock VADER: the compound polarity of ``text`` scored in one piece (the baseline)."""
    return float(_analyzer().polarity_scores(text)["compound"])


def label_of(rating: float | None) -> bool | None:
    """Self-training label from stars: >= 4 positive, <= 2 negative, else none.

    >>> label_of(5), label_of(2), label_of(3), label_of(None)
    (True, False, None, None)
    """
    if rating is None:
        return None
    if rating >= 4:
        return True
    if rating <= 2:
        return False
    return None


class SentimentModel:
    """Online logistic regression over words and bigrams that starts as the lexicon.

    The classifier's input is the review's bag of words and bigrams plus VADER's
    compound score as one more feature, whose weight starts at ``prior_weight``:
    before it has seen a label the model *is* the lexicon
    (``P(positive) = sigmoid(prior_weight * compound)``), and every review with a
    star rating teaches it (>= 4 positive, <= 2 negative, 3 ignored). Classes are
    weighted by the inverse of their running frequency so that the rarer
    negative class is not drowned (the target is macro-F1, not accuracy).

    Memory is one weight per distinct word or bigram seen, which grows with
    the vocabulary (sub-linearly in the number of reviews).

    Parameters
    ----------
    prior_weight
        Initial weight of the lexicon feature.
    learning_rate
        SGD step size of the logistic regression.
    l2
        L2 penalty.
    ngram_max
        Longest n-gram used as a feature.

    Examples
    --------
    >>> model = SentimentModel()
    >>> model.predict_proba_one("I love it") > 0.5
    True
    >>> for _ in range(20):
    ...     model.learn_one("runs small, sadly returned", 1)
    ...     model.learn_one("runs small but love it", 5)
    >>> model.predict_proba_one("runs small, returned") < 0.5
    True
    """

    def __init__(
        self,
        prior_weight: float = 3.0,
        learning_rate: float = 0.8,
        l2: float = 1e-5,
        ngram_max: int = 2,
    ) -> None:
        self.prior_weight = prior_weight
        self.learning_rate = learning_rate
        self.l2 = l2
        self.ngram_max = ngram_max
        self.vectorizer = feature_extraction.BagOfWords(
            lowercase=True, ngram_range=(1, ngram_max)
        )
        self.classifier = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=l2
        )
        set_weight(self.classifier, LEXICON_FEATURE, prior_weight)
        self.n_positive = 0
        self.n_negative = 0

    def features(self, text: str, compound: float | None = None) -> dict[str, float]:
        """The classifier's input: normalised word and bigram counts plus the lexicon score."""
        x = self.vectorizer.transform_one(text)
        norm = math.sqrt(sum(v * v for v in x.values())) or 1.0
        features = {k: v / norm for k, v in x.items()}
        features[LEXICON_FEATURE] = lexicon_compound(text) if compound is None else compound
        return features

    def predict_proba_one(self, text: str | dict[str, float]) -> float:
        """P(positive) of a text (or of its :meth:`features`, to reuse them for learning)."""
        x = self.features(text) if isinstance(text, str) else text
        return float(self.classifier.predict_proba_one(x)[True])

    def learn_one(self, text: str | dict[str, float], rating: float | None) -> None:
        """Learn from a rated review (text or features); unrated or 3-star ones are ignored."""
        label = label_of(rating)
        if label is None:
            return
        if label:
            self.n_positive += 1
        else:
            self.n_negative += 1
        total = self.n_positive + self.n_negative
        seen = self.n_positive if label else self.n_negative
        weight = min(5.0, 0.5 * total / seen)  # inverse class frequency, capped
        x = self.features(text) if isinstance(text, str) else text
        self.classifier.learn_one(x, label, w=weight)


class ItemSentiment:
    """Per-item sentiment over time: a fast and a slow moving average.

    For each item keeps the number of reviews, the time of the last one, a fast
    exponential average of the negative rate (about the last ``1 / fast``
    reviews) and a slow one (its baseline). Four numbers per item.

    Parameters
    ----------
    fast, slow
        Smoothing factors of the recent and baseline negative rates.

    Examples
    --------
    >>> track = ItemSentiment(fast=0.5, slow=0.1)
    >>> for p in [0.9, 0.8, 0.1, 0.05]:
    ...     _ = track.learn_one("dress", p, t=0.0)
    >>> s = track.summary("dress")
    >>> s["reviews"], s["recent_negative_rate"] > s["baseline_negative_rate"]
    (4, True)
    """

    def __init__(self, fast: float = 0.15, slow: float = 0.02) -> None:
        self.fast = fast
        self.slow = slow
        self.state: dict[str, list[float]] = {}

    def learn_one(self, item_id: str, p_positive: float, t: float) -> tuple[float, float, int]:
        """Learn one review; returns ``(recent, baseline_before, count)`` negative rates."""
        st = self.state.get(item_id)
        if st is None:
            st = self.state[item_id] = self.start(p_positive, t)
        baseline = st[2]
        self.step(st, p_positive, t)
        return st[1], baseline, int(st[0])

    @staticmethod
    def start(p_positive: float, t: float) -> list[float]:
        """The state before an item's first review: count, fast, slow, last time, mean P(pos)."""
        negative = 1.0 if p_positive < 0.5 else 0.0
        return [0.0, negative, negative, t, 0.0]

    def step(self, st: list[float], p_positive: float, t: float) -> None:
        """Learn one review into one item's state ``st`` (see :meth:`start`)."""
        negative = 1.0 if p_positive < 0.5 else 0.0
        st[0] += 1
        st[1] += self.fast * (negative - st[1])
        st[2] += self.slow * (negative - st[2])
        st[3] = max(st[3], t)
        st[4] += (p_positive - st[4]) / st[0]

    def summary(self, item_id: str) -> dict[str, float] | None:
        """JSON-able sentiment figures of one item, or ``None`` if never reviewed."""
        st = self.state.get(item_id)
        if st is None:
            return None
        return {
            "reviews": int(st[0]),
            "recent_negative_rate": st[1],
            "baseline_negative_rate": st[2],
            "last_review_time": st[3],
            "mean_p_positive": st[4],
        }
