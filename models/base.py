"""The verbs the online models share, in River's vocabulary.

Every model learns from one observation at a time, and whatever it predicts
for an event is asked *before* it learns that event (prequential order), so a
figure never profits from the answer:

* ``predict_one(...)`` (``predict_proba_one`` for a probability): the model's
  guess for one input, no state changed;
* ``learn_one(...)``: update the state with one observation (it may return what
  changed, e.g. a segment or a drift, since the caller acts on it at once);
* ``score_learn_one(...)``: an anomaly score, then learn, in one step where
  scoring and learning walk the same structure.

The arguments differ from model to model (an item and a weight, a user, an
item and a rating, a text and a rating...), so the protocols fix the verbs, not
the signatures; they are ``runtime_checkable`` so a test can hold every model to
them.

>>> from models.popularity import DecayedPopularity
>>> isinstance(DecayedPopularity(half_life=3600.0), Learner)
True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Learner(Protocol):
    """Learns from one observation at a time."""

    def learn_one(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Predictor(Learner, Protocol):
    """Predicts for one input (before learning it), and learns."""

    def predict_one(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Classifier(Learner, Protocol):
    """Gives the probability of the positive class for one input, and learns."""

    def predict_proba_one(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class AnomalyScorer(Protocol):
    """Scores one observation against what came before, then learns it."""

    def score_learn_one(self, *args: Any, **kwargs: Any) -> Any: ...
