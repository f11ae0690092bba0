"""Recommendations on request, without a broker: answers, exposures and their attribution."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.engine import FeedbackEngine
from stream.dp import FALLBACK_REASON
from stream.metrics import Metrics
from stream.processor import DictStore, InputMessage, Processor
from stream.pull import MAX_K, BadRequest, Pulls, parse_id, parse_k
from stream.settings import Settings

NOW = 1_800_000_000.0


def make(**overrides: object) -> tuple[Processor, Settings, CollectorRegistry, Pulls]:
    # Six visitors: a pair reason needs the DP support, so these functional tests
    # release at a large epsilon (the noise is tested in test_published.py).
    overrides = {"dp_epsilon": 1e4, "dp_min_pair_support": 3, **overrides}
    settings = Settings.from_env({}, experiment_variants="blend", **overrides)
    registry = CollectorRegistry()
    proc = Processor(settings, FeedbackEngine(), DictStore(), Metrics(registry), clock=lambda: NOW)
    return proc, settings, registry, Pulls(proc, clock=lambda: NOW)


def click(eid: str, user: str, item: str, second: int, session: str | None = None,
          rec: str | None = None) -> dict[str, object]:  # fmt: skip
    event: dict[str, object] = {
        "type": "click", "event_id": eid, "user_id": user, "item_id": item,
        "timestamp": f"2024-01-01T10:00:{second:02d}Z",
    }  # fmt: skip
    if session:
        event["session_id"] = session
    if rec:
        event["recommendation_id"] = rec
    return event


def feed(proc: Processor, settings: Settings, events: list[dict[str, object]]) -> None:
    proc.handle([
        InputMessage(settings.topic_of("click"), 0, n, str(e["user_id"]).encode(), orjson.dumps(e))
        for n, e in enumerate(events)
    ])  # fmt: skip


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def browsing(proc: Processor, settings: Settings) -> None:
    events = []
    for n in range(6):  # many sessions go a -> b -> c
        events += [click(f"v{n}{i}", f"v{n}", item, n * 3 + i, f"s{n}")
                   for i, item in enumerate("abc")]  # fmt: skip
    feed(proc, settings, events)


def test_a_pull_answers_in_the_topic_format_from_the_live_session() -> None:
    proc, s, reg, pulls = make()
    browsing(proc, s)
    feed(proc, s, [click("me1", "me", "a", 40, "mine")])
    published = value(reg, "feedback_recommendation_exposures_total",
                      variant="blend", strategy="blend")  # fmt: skip
    body = pulls.recommend("me", 3)
    assert set(body) == {
        "recommendation_id", "user_id", "items", "strategy", "variant", "trigger_event_id",
        "trigger_event_type", "event_time", "generated_at",
    }  # fmt: skip
    assert body["strategy"] == body["variant"] == "blend"
    assert body["trigger_event_type"] == "request" and body["trigger_event_id"] is None
    assert [i["item_id"] for i in body["items"]][:2] == ["a", "b"]
    assert [i["rank"] for i in body["items"]] == [1, 2, 3]
    assert body["items"][1]["reason"] == "often viewed next after a"
    assert body["event_time"] == "2024-01-01T10:00:40.000Z"  # the stream's event time
    # the item being viewed, named by the request, leads
    assert pulls.recommend("me", 1, item_id="b")["items"][0]["item_id"] == "b"
    assert pulls.recommend("me", 1)["recommendation_id"] != body["recommendation_id"]
    assert value(reg, "feedback_recommendation_exposures_total",
                 variant="blend", strategy="blend") == published + 3  # fmt: skip


def test_an_unknown_user_gets_popular_items_and_its_click_is_attributed() -> None:
    proc, s, reg, pulls = make()
    browsing(proc, s)
    body = pulls.recommend("newcomer", 3)
    assert len(body["items"]) == 3
    # the DP popularity list (docs/privacy.md), not the blend's exact popularity
    assert all(i["reason"] == "popular with everyone" for i in body["items"])
    assert proc.profiles.get("newcomer") is None  # nothing stored before an event comes
    picked = body["items"][1]["item_id"]
    feed(proc, s, [click("n1", "newcomer", picked, 50, rec=body["recommendation_id"])])
    assert value(reg, "feedback_attributed_clicks_total",
                 variant="blend", strategy="blend", matched_by="id") == 1  # fmt: skip
    assert value(reg, "feedback_recommendations_clicked_total",
                 variant="blend", strategy="blend") == 1  # fmt: skip
    stored = proc.profiles.get("newcomer")
    assert stored is not None
    # the pulled list, then the one the click triggered on the topic
    assert stored["exposures"][0][0] == body["recommendation_id"]


def test_a_click_on_a_pulled_item_without_id_is_attributed_by_window() -> None:
    proc, s, reg, pulls = make()
    browsing(proc, s)
    feed(proc, s, [click("me1", "me", "a", 40, "mine")])
    body = pulls.recommend("me", 3)
    feed(proc, s, [click("me2", "me", body["items"][1]["item_id"], 45, "mine")])
    assert value(reg, "feedback_attributed_clicks_total",
                 variant="blend", strategy="blend", matched_by="window") == 1  # fmt: skip
    # an unrelated event of the user also persists a pending pull, unattributed
    other = pulls.recommend("me", 2)
    feed(proc, s, [click("me3", "me", "zzz", 46, "mine")])
    stored = proc.profiles.get("me")
    assert stored is not None and other["recommendation_id"] in [e[0] for e in stored["exposures"]]


def test_evicting_a_user_drops_their_pending_pulls() -> None:
    proc, s, _, pulls = make()
    browsing(proc, s)
    pulls.recommend("v1", 2)
    assert "v1" in proc.pulled.pending
    proc.eviction._evicted(["v1"], "inactive")
    assert "v1" not in proc.pulled.pending


def test_similar_items_and_an_unknown_item() -> None:
    proc, s, _, pulls = make()
    browsing(proc, s)
    body = pulls.similar("a", 2)
    assert body["item_id"] == "a"
    # Six visitors went a -> b (then b -> c): b's noisy customer count, no c.
    assert [(i["item_id"], i["score"]) for i in body["items"]] == [("b", 6.0)]
    assert body["items"][0]["reason"] == "viewed or bought together with a"
    assert pulls.similar("nope", 2) == {"item_id": "nope", "items": []}


def test_a_pulled_pair_reason_needs_the_dp_support() -> None:
    proc, s, _, pulls = make(dp_epsilon=1.0, dp_min_pair_support=1_000)
    browsing(proc, s)
    feed(proc, s, [click("me1", "me", "a", 40, "mine")])
    reasons = [i["reason"] for i in pulls.recommend("me", 3)["items"]]
    assert "often viewed next after a" not in reasons and FALLBACK_REASON in reasons


def test_parameters_are_checked() -> None:
    assert parse_k(None, 10) == 10 and parse_k("5", 10) == 5
    for bad in ("0", str(MAX_K + 1), "ten", "-3"):
        with pytest.raises(BadRequest, match="k must be"):
            parse_k(bad, 10)
    assert parse_id("item", None) is None and parse_id("item", "sku-1") == "sku-1"
    for bad in ("", "x" * 257, "a\nb"):
        with pytest.raises(BadRequest, match="item must be 1 to 256 printable characters"):
            parse_id("item", bad)


def test_erasing_a_user_drops_their_pending_pulls() -> None:
    proc, s, _, pulls = make()
    browsing(proc, s)
    pulls.recommend("v1", 2)
    pulls.recommend("v1", 2)
    _, erased = proc.erase("v1")
    assert "v1" not in proc.pulled.pending
    assert erased["exposures"] >= 2  # the two pulled, besides any stored ones
