"""The next-click protocol: which lists are scored, on what, and the baselines."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from models.events import Event
from tools import evaluate
from tools.next_click import Baselines, NextClick

T0 = 1_700_000_000.0


def click(n: int, user: str, item: str, t: float, session: str | None = None) -> Event:
    return Event("click", f"e{n}", user, item, t, session_id=session)


def replay(nc: NextClick, events: list[Event]) -> None:
    for e in events:
        nc.before(e)
        nc.after(e)


def test_each_list_is_scored_on_the_next_click_of_its_session_only() -> None:
    made: list[str] = []

    def ranker(e: Event) -> list[str]:
        made.append(e.event_id)
        return ["b", "x", "c"]

    out = io.BytesIO()
    nc = NextClick(ranker, predictions=out)
    replay(nc, [
        click(0, "u", "a", T0, "s1"),
        click(1, "v", "z", T0 + 1, "s2"),  # another session in between: not a next click of s1
        click(2, "u", "c", T0 + 2, "s1"),  # rank 3 in the list made after e0
        click(3, "u", "q", T0 + 3, "s1"),  # a miss
    ])  # fmt: skip
    report = nc.report()
    assert report["next_click_predictions"] == 2  # e1 and e3 are their sessions' last clicks
    assert report["next_click_hr_at_20"] == 0.5
    assert report["next_click_mrr_at_20"] == pytest.approx((1 / 3 + 0) / 2)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [
        {"event_id": "e0", "user_id": "u", "session_id": "s1", "items": ["b", "x", "c"]},
        {"event_id": "e2", "user_id": "u", "session_id": "s1", "items": ["b", "x", "c"]},
    ]
    assert made == ["e0", "e1", "e2", "e3"]


def test_without_session_id_a_gap_ends_the_session_and_warmup_skips_early_lists() -> None:
    nc = NextClick(lambda e: ["b"], warmup_until=T0 + 10, session_gap_s=100.0)
    replay(nc, [
        click(0, "u", "a", T0),
        click(1, "u", "b", T0 + 5),  # lists after e0 and e1 are made before the warm-up ends
        click(2, "u", "a", T0 + 20),
        click(3, "u", "b", T0 + 500),  # after the gap: a new session, e2's list never scored
        click(4, "u", "a", T0 + 510),
        click(5, "u", "b", T0 + 520),
    ])  # fmt: skip
    report = nc.report()
    assert report["next_click_predictions"] == 2  # after e3 (a miss) and e4 (a hit)
    assert report["next_click_hr_at_20"] == 0.5


def test_sequential_rules_put_the_current_item_first_then_one_over_the_gap() -> None:
    b = Baselines()
    session: list[str] = []
    for item in ["a", "b", "c"]:
        b.learn(item, session)
        session.append(item)
    assert b.rules["a"] == {"b": 1.0, "c": 0.5}
    lists = b.lists("a")
    assert lists["sequential_rules"][:3] == ["a", "b", "c"]
    assert lists["cooccurrence"] == ["b", "c", "a"]  # then the popular fill
    assert lists["popularity"] == ["a", "b", "c"]  # equal counts: first seen first


def test_evaluate_reports_the_engine_beside_the_baselines(tmp_path: Path) -> None:
    events = []
    t = T0
    for s in range(60):
        for item in ["a", "b", "c", "a"]:
            events.append(click(len(events), f"u{s}", item, t, f"s{s}"))
            t += 1
    result = evaluate.evaluate(events, variants=None, warmup_until=T0 + 120)
    assert result["next_click_predictions"] == 90  # 30 sessions x 3 next clicks
    for name in ("", "_popularity", "_cooccurrence", "_sequential_rules"):
        assert 0.0 <= result[f"next_click_mrr_at_20{name}"] <= result[f"next_click_hr_at_20{name}"]
    # The viewed item takes rank 1 (never re-clicked here), the learnt next item rank 2.
    assert result["next_click_hr_at_20"] == 1.0
    assert result["next_click_mrr_at_20"] == 0.5
    assert result["next_click_mrr_at_20_sequential_rules"] == 0.5


def test_cli_rejects_a_bad_warmup_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        b'{"type":"click","event_id":"e","user_id":"u","item_id":"i",'
        b'"timestamp":"2024-01-01T00:00:00Z"}\n'
    )
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(path), "--warmup-until", "yesterday"])
    assert exc.value.code == 2
    assert "--warmup-until must be an RFC 3339 time" in capsys.readouterr().err


def test_cli_writes_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.jsonl"
    lines = [
        orjson.dumps({"type": "click", "event_id": f"e{i}", "user_id": "u", "item_id": item,
                      "timestamp": f"2024-01-01T00:00:0{i}Z", "session_id": "s"})
        for i, item in enumerate(["a", "b", "a"])
    ]  # fmt: skip
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "p.jsonl"
    assert evaluate.main([str(path), "--json", "--variants", "", "--predictions", str(out)]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["next_click_predictions"] == 2
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [w["event_id"] for w in written] == ["e0", "e1"]
    assert written[1]["items"][0] == "b"  # the item just viewed comes first
