"""The click-stream converters: small generated files, then the real shared files."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.contract import decode_event, parse_timestamp
from tools import clickstreams, datasets

DATA = datasets.default_data_dir()


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


@pytest.fixture
def yoochoose_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clickstreams"
    folder.mkdir()
    write_gz(
        folder / "yoochoose-clicks-100k_train_tr.txt.gz",
        "SessionId\tItemId\tTime\n"
        "7\t101\t1396413545.854\n"
        "7\t100\t1396413533.104\n"
        "3\t100\t1396437466.94\n"
        "oops\n",
    )
    write_gz(
        folder / "yoochoose-clicks-100k_train_valid.txt.gz",
        "SessionId\tItemId\tTime\n8\t102\t1396766998.728\n8\t102\t1396767132.647\n",
    )
    return tmp_path


def test_yoochoose_all_is_both_parts_in_time_order_with_session_as_user(
    yoochoose_dir: Path,
) -> None:
    skipped: Counter[str] = Counter()
    events = list(datasets.events("yoochoose", yoochoose_dir, skipped=skipped))
    assert [e["event_id"] for e in events] == [
        "yc-train_tr-2", "yc-train_tr-1", "yc-train_tr-3",
        "yc-train_valid-1", "yc-train_valid-2",
    ]  # fmt: skip
    assert events[0] == {
        "type": "click", "event_id": "yc-train_tr-2", "user_id": "yc-s7", "item_id": "yc-100",
        "timestamp": "2014-04-02T04:38:53.104000Z", "session_id": "yc-s7",
    }  # fmt: skip
    assert all(e["user_id"] == e["session_id"] for e in events)
    assert skipped == {"malformed_line": 1}
    for e in events:
        assert decode_event(orjson.dumps(e)).session_id == e["session_id"]


def test_yoochoose_split_selects_one_part(yoochoose_dir: Path) -> None:
    valid = list(datasets.events("yoochoose", yoochoose_dir, split="train_valid"))
    assert [e["item_id"] for e in valid] == ["yc-102", "yc-102"]
    train = list(datasets.events("yoochoose", yoochoose_dir, split="train_tr"))
    assert {e["user_id"] for e in train} == {"yc-s7", "yc-s3"}


def test_convert_yoochoose_reports_where_train_valid_starts(
    yoochoose_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "yc.jsonl"
    counts = datasets.convert("yoochoose", out, limit=None, data_dir=yoochoose_dir, seed=0)
    assert counts["written"] == 5
    assert parse_timestamp(counts["warmup_until"]) == pytest.approx(1396766998.728)
    assert len(out.read_bytes().splitlines()) == 5


def test_convert_cli_names_a_missing_click_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = datasets.main(
        ["convert", "diginetica", "--out", str(tmp_path / "x.jsonl"), "--data-dir", str(tmp_path)]
    )
    assert code == 2
    assert "diginetica_sample_train-item-views.csv.gz not found" in capsys.readouterr().err


def test_diginetica_time_is_day_plus_timeframe_and_user_falls_back_to_session(
    tmp_path: Path,
) -> None:
    path = write_gz(
        tmp_path / "views.csv.gz",
        "session_id;user_id;item_id;timeframe;eventdate\n"
        "1;NA;81766;526309;2016-05-09\n"
        "1;NA;31331;75848;2016-05-09\n"
        "2;55;9654;0;2016-05-08\n"
        "3;NA;1;x;2016-05-08\n",
    )
    skipped: Counter[str] = Counter()
    events = list(clickstreams.diginetica_views(path, skipped=skipped))
    assert [e["event_id"] for e in events] == ["dg-3", "dg-2", "dg-1"]
    assert events[0]["user_id"] == "dg-u55" and events[0]["session_id"] == "dg-s2"
    assert events[1]["user_id"] == "dg-s1" and events[1]["item_id"] == "dg-31331"
    assert events[1]["timestamp"] == "2016-05-09T00:01:15.848000Z"
    assert skipped == {"malformed_line": 1}


# --- the real files ------------------------------------------------------------------


def real(relative: Path) -> Path:
    path = DATA / relative
    if not path.is_file():
        pytest.fail(f"dataset file {path} missing: set FEEDBACK_DATA_DIR to the shared data")
    return path


def test_real_yoochoose_files_convert_completely() -> None:
    paths = {part: real(rel) for part, rel in clickstreams.YOOCHOOSE_FILES.items()}
    skipped: Counter[str] = Counter()
    events = list(clickstreams.yoochoose_clicks(paths, skipped=skipped))
    assert not skipped
    parts = Counter(e["event_id"].rsplit("-", 1)[0] for e in events)
    assert parts == {"yc-train_tr": 53_254, "yc-train_valid": 16_539}  # the README's counts
    stamps = [parse_timestamp(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps)
    assert len({e["session_id"] for e in events}) == 13_629 + 4_084
    for e in events[:2000]:
        decode_event(orjson.dumps(e))


def test_real_diginetica_views_convert_completely() -> None:
    skipped: Counter[str] = Counter()
    events = list(clickstreams.diginetica_views(real(clickstreams.DIGINETICA_CSV), skipped=skipped))
    assert not skipped
    assert len(events) == 12_391  # every data row of the file
    assert len({e["session_id"] for e in events}) == 2_986
    assert len({e["item_id"] for e in events}) == 7_139
    stamps = [parse_timestamp(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps)
    for e in events:
        decode_event(orjson.dumps(e))
