"""Every online model speaks the shared verbs of models.base, and none of the old ones."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import models
from models.alerts import BehaviourAnomaly, QualityDrift
from models.base import AnomalyScorer, Classifier, Learner, Predictor
from models.churn import ChurnModel
from models.cooccurrence import ItemCooccurrence
from models.factorization import ImplicitFactorization, RatingFactorization
from models.popularity import DecayedPopularity
from models.profiles import UserProfile
from models.recommender import BlendedRecommender
from models.segmentation import OnlineSegmentation
from models.sentiment import ItemSentiment, SentimentModel

# Verbs the models used before they shared one vocabulary.
DRIFTED = {"learn", "observe", "observe_order", "update", "predict", "predict_proba",
           "score_and_learn", "remember"}


@pytest.mark.parametrize(
    ("cls", "protocol"),
    [
        (DecayedPopularity, Learner),
        (ItemCooccurrence, Learner),
        (ImplicitFactorization, Learner),
        (RatingFactorization, Predictor),
        (SentimentModel, Classifier),
        (ItemSentiment, Learner),
        (BlendedRecommender, Learner),
        (ChurnModel, Learner),
        (UserProfile, Learner),
        (OnlineSegmentation, Learner),
        (QualityDrift, Learner),
        (BehaviourAnomaly, AnomalyScorer),
    ],
)
def test_models_speak_the_shared_verbs(cls: type, protocol: type) -> None:
    assert issubclass(cls, protocol)


def test_no_model_defines_a_drifted_verb() -> None:
    found = []
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"models.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                found += [f"{module.__name__}.{name}.{v}" for v in DRIFTED if v in vars(cls)]
    assert found == []
