"""The shared datasets as contract events: real rows in, valid, deterministic events out."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.contract import decode_event, parse_timestamp
from tests.shared_data import data_dir
from tools import datasets

DATA = datasets.default_data_dir()


# The two tests of the missing-folder error itself need no datasets.
NEEDS_NO_DATA = {
    "test_missing_data_dir_is_a_clear_error",
    "test_data_dir_comes_from_the_environment",
}


@pytest.fixture(autouse=True)
def _datasets_present(request: pytest.FixtureRequest) -> None:
    if request.node.name not in NEEDS_NO_DATA:
        data_dir("online_retail", "movielens_latest_small", "womens_clothing_reviews", "cdnow")


def take(events: Iterable[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return list(itertools.islice(events, n))


def assert_valid(events: Iterable[dict[str, Any]]) -> None:
    for event in events:
        decoded = decode_event(orjson.dumps(event))  # files carry "type": no expected_type
        assert decoded.event_id == event["event_id"]


def times(events: Iterable[dict[str, Any]]) -> list[float]:
    return [parse_timestamp(e["timestamp"]) for e in events]


# --- Online Retail ---------------------------------------------------------------------------


def test_online_retail_first_rows_match_the_file() -> None:
    skipped: Counter[str] = Counter()
    events = take(datasets.online_retail_purchases(DATA, skipped=skipped), 2000)
    assert events[0] == {
        "type": "purchase", "event_id": "or-536365-1", "user_id": "or-c17850",
        "item_id": "85123A", "timestamp": "2010-12-01T08:26:00Z", "quantity": 6,
        "price": 2.55, "currency": "GBP", "order_id": "536365",
    }
    assert_valid(events)
    assert len({e["event_id"] for e in events}) == len(events)
    assert times(events) == sorted(times(events))
    # Guest checkouts (no CustomerID) are common in the first rows too; all are counted.
    assert skipped["no_customer"] > 0


def test_online_retail_cancellations_have_negative_quantities() -> None:
    events = take(datasets.online_retail_purchases(DATA), 20_000)
    cancellations = [e for e in events if e["order_id"].startswith("C")]
    assert cancellations, "the first 20,000 lines hold cancellations"
    assert all(e["quantity"] < 0 for e in cancellations)
    assert all(e["quantity"] > 0 for e in events if not e["order_id"].startswith("C"))
    assert all(e["item_id"] not in datasets.NON_PRODUCT_CODES for e in events)


# --- MovieLens -------------------------------------------------------------------------------


def test_movielens_reviews_are_time_ordered_and_in_contract_range() -> None:
    events = list(datasets.movielens_reviews(DATA))
    assert len(events) == 100_836  # every rating of ml-latest-small
    stamps = times(events)
    assert stamps == sorted(stamps)
    ratings = Counter(e["rating"] for e in events)
    assert min(ratings) == 1.0 and max(ratings) == 5.0 and 0.5 not in ratings
    assert_valid(events[:3000])
    first = events[0]
    assert first["event_id"] == f"ml-{first['user_id'][4:]}-{first['item_id'][4:]}-" + str(
        int(stamps[0])
    )


# --- Clothing reviews ------------------------------------------------------------------------


def test_clothing_reviews_carry_real_text_and_synthetic_users_and_times() -> None:
    events = take(datasets.clothing_reviews(DATA), 3000)
    assert_valid(events)
    assert events[0]["item_id"] == "cl-767"
    assert events[0]["text"] == "Absolutely wonderful - silky and sexy and comfortable"
    assert events[0]["rating"] == 4.0 and "title" not in events[0]
    assert events[2]["title"] == "Some major design flaws"
    users = Counter(e["user_id"] for e in events)
    assert len(users) > 1000 and max(users.values()) < 15  # spread over the synthetic pool
    stamps = times(events)
    assert stamps == sorted(stamps)
    assert datasets.RETAIL_START <= stamps[0] < stamps[-1] < datasets.RETAIL_END
    assert sum("text" not in e for e in events) > 0  # rating-only rows are kept


def test_clothing_seed_changes_users_but_not_content() -> None:
    a = take(datasets.clothing_reviews(DATA, seed=1), 200)
    b = take(datasets.clothing_reviews(DATA, seed=2), 200)
    assert [e["user_id"] for e in a] != [e["user_id"] for e in b]
    assert [e.get("text") for e in a] == [e.get("text") for e in b]


# --- CDNOW -----------------------------------------------------------------------------------


def test_cdnow_purchases_unit_price_and_order() -> None:
    events = list(datasets.cdnow_purchases(DATA))
    assert len(events) == 69_659
    stamps = times(events)
    assert stamps == sorted(stamps)
    assert events[0]["timestamp"] == "1997-01-01T00:00:00Z"
    assert {e["item_id"] for e in events} == {"cd-cds"}
    # Customer 2 bought 5 CDs for $77.00 on 1997-01-12 (line 3 of the file).
    line3 = next(e for e in events if e["event_id"] == "cd-3")
    assert (line3["user_id"], line3["quantity"], line3["price"]) == ("cd-c2", 5, 15.4)
    assert_valid(events[:2000])


# --- Derived clicks and the demo stream ------------------------------------------------------


def test_derived_clicks_precede_their_purchases_in_the_same_session() -> None:
    purchases = take(datasets.online_retail_purchases(DATA), 3000)
    clicks = list(datasets.derived_clicks(purchases, seed=7))
    assert_valid(clicks)
    stamps = times(clicks)
    assert stamps == sorted(stamps)
    by_id = {p["event_id"]: p for p in purchases}
    direct = [c for c in clicks if not c["event_id"].endswith("-b")]
    assert len(direct) == sum(p["quantity"] > 0 for p in purchases)
    for click in direct:
        purchase = by_id[click["event_id"].removeprefix("clk-")]
        assert click["item_id"] == purchase["item_id"]
        assert click["user_id"] == purchase["user_id"]
        lead = parse_timestamp(purchase["timestamp"]) - parse_timestamp(click["timestamp"])
        assert 60 <= lead < 30 * 60
        assert click["session_id"] == f"s-{purchase['user_id']}-{purchase['order_id']}"
    browsing = len(clicks) - len(direct)
    assert 0.25 * len(direct) < browsing < 0.5 * len(direct)


def test_derived_clicks_depend_on_the_seed_only() -> None:
    purchases = take(datasets.online_retail_purchases(DATA), 500)
    same = list(datasets.derived_clicks(purchases, seed=3))
    assert same == list(datasets.derived_clicks(purchases, seed=3))
    assert same != list(datasets.derived_clicks(purchases, seed=4))


def test_demo_stream_is_time_ordered_mixed_valid_and_deterministic() -> None:
    first = list(datasets.demo_stream(DATA, limit=20_000))
    assert len(first) == 20_000
    stamps = times(first)
    assert stamps == sorted(stamps)
    kinds = Counter(e["type"] for e in first)
    assert set(kinds) == {"click", "purchase", "review"}
    assert kinds["purchase"] > 5000 and kinds["click"] > 5000
    assert len({e["event_id"] for e in first}) == len(first)
    assert_valid(first[:5000])
    assert list(datasets.demo_stream(DATA, limit=20_000)) == first


def _lazy(n: int) -> Iterator[dict[str, Any]]:
    return datasets.demo_stream(DATA, limit=n)


def test_demo_stream_starts_fast() -> None:
    import time

    started = time.perf_counter()
    assert len(list(_lazy(100))) == 100
    assert time.perf_counter() - started < 3.0


# --- CLI and configuration -------------------------------------------------------------------


def test_convert_cli_writes_jsonl_and_reports_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retail.jsonl"
    code = datasets.main(
        ["convert", "online-retail", "--out", str(out), "--limit", "3000", "--data-dir", str(DATA)]
    )
    assert code == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 3000
    assert_valid(orjson.loads(line) for line in lines)
    report = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert report["written"] == 3000 and report["skipped"]["no_customer"] > 0


def test_convert_cli_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        args = ["convert", "demo", "--out", str(tmp_path / name), "--limit", "2000"]
        assert datasets.main([*args, "--data-dir", str(DATA)]) == 0
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_missing_data_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = datasets.main(
        ["convert", "cdnow", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]
    )
    assert code == 2
    assert "FEEDBACK_DATA_DIR" in capsys.readouterr().err


def test_data_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDBACK_DATA_DIR", "/somewhere/else")
    assert datasets.default_data_dir() == Path("/somewhere/else")
    monkeypatch.delenv("FEEDBACK_DATA_DIR")
    assert datasets.default_data_dir() == datasets.REPO_ROOT.parent / "shared" / "data"


@pytest.mark.parametrize(
    ("name", "relative", "text", "where"),
    [
        ("online-retail", datasets.ONLINE_RETAIL_CSV,
         "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
         "536365,85123A,X,6,2010-12-01 08:26:00,2.55,17850.0,UK\n"
         "536365,71053,Y,six,2010-12-01 08:26:00,3.39,17850.0,UK\n",
         "row 2: Quantity 'six' is not a valid int"),
        ("movielens", datasets.MOVIELENS_CSV,
         "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,four,964981247\n",
         "row 2: rating 'four' is not a valid float"),
    ],
)
def test_a_malformed_value_is_one_line_naming_file_row_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, relative: Path, text: str,
    where: str,
) -> None:
    target = tmp_path / relative
    target.parent.mkdir(parents=True)
    if target.suffix == ".gz":
        target.write_bytes(gzip.compress(text.encode()))
    else:
        target.write_text(text)
    code = datasets.main(
        ["convert", name, "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"convert: {target} {where}"
