"""The shared click streams (``../shared/data/clickstreams``) as contract click events.

Both datasets are anonymous browsing sessions, clicks only:

* :func:`yoochoose_clicks`: the YOOCHOOSE (RecSys Challenge 2015) 100k-click
  subset prepared by session-rec, tab-separated ``SessionId, ItemId, Time``
  (Unix seconds). ``train_tr`` is the earlier part, ``train_valid`` the next
  day's sessions. Every session is one anonymous visitor, so the user id *is*
  the session id (``yc-s<SessionId>``, also the event's ``session_id``); items
  are ``yc-<ItemId>``, events ``yc-<split>-<row>``.
* :func:`diginetica_views`: the DIGINETICA (CIKM Cup 2016) product-view sample
  of SR-GNN, ``;``-separated ``session_id, user_id, item_id, timeframe,
  eventdate``. The file only has the day of a session and each view's offset
  from the session's first view (``timeframe``, ms), so an event's time is
  ``eventdate`` 00:00Z plus ``timeframe`` (session-rec does the same): views keep
  their order inside a session, sessions of one day interleave in that
  pseudo-time. The user is ``dg-u<user_id>`` when known, else the session
  (``dg-s<session_id>``, mostly); items ``dg-<item_id>``, events ``dg-<row>``.

Both are sorted by (time, session, row) so that a replay sees them in time order.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream.contract import format_timestamp

Event = dict[str, Any]

YOOCHOOSE_FILES = {
    "train_tr": Path("clickstreams/yoochoose-clicks-100k_train_tr.txt.gz"),
    "train_valid": Path("clickstreams/yoochoose-clicks-100k_train_valid.txt.gz"),
}
#: ``--split`` values of ``convert yoochoose``: one part, or both in time order.
YOOCHOOSE_SPLITS = ("all", "train_tr", "train_valid")
DIGINETICA_CSV = Path("clickstreams/diginetica_sample_train-item-views.csv.gz")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(data row number, line)`` after the header line of a gzip text file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        next(f, None)
        for row, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line:
                yield row, line


def _click(event_id: str, user: str, item: str, stamp: float, session: str) -> Event:
    return {
        "type": "click",
        "event_id": event_id,
        "user_id": user,
        "item_id": item,
        "timestamp": format_timestamp(stamp),
        "session_id": session,
    }


def yoochoose_clicks(
    paths: dict[str, Path], split: str = "all", *, skipped: Counter[str] | None = None
) -> Iterator[Event]:
    """YOOCHOOSE clicks of ``split`` (``train_tr``, ``train_valid`` or ``all``) in time order.

    ``paths`` maps each part to its file. Lines that do not have three fields,
    an integer session, an item and a numeric time are skipped (``malformed_line``).
    """
    if split not in YOOCHOOSE_SPLITS:
        raise ValueError(f"unknown YOOCHOOSE split {split!r}: one of {', '.join(YOOCHOOSE_SPLITS)}")
    parts = list(YOOCHOOSE_FILES) if split == "all" else [split]
    rows: list[tuple[float, int, int, str, str]] = []
    for order, part in enumerate(parts):
        for row, line in _lines(paths[part]):
            fields = line.split("\t")
            try:
                session, item, stamp = int(fields[0]), fields[1].strip(), float(fields[2])
            except (IndexError, ValueError):
                session, item, stamp = -1, "", 0.0
            if len(fields) != 3 or not item or stamp <= 0:
                if skipped is not None:
                    skipped["malformed_line"] += 1
                continue
            rows.append((stamp, session, order * 10_000_000 + row, item, part))
    rows.sort()
    for stamp, session, key, item, part in rows:
        user = f"yc-s{session}"
        yield _click(f"yc-{part}-{key % 10_000_000}", user, f"yc-{item}", stamp, user)


def yoochoose_first_time(path: Path) -> float:
    """The earliest click time of one YOOCHOOSE part (e.g. where ``train_valid`` starts)."""
    return min(float(line.split("\t")[2]) for _, line in _lines(path))


def diginetica_views(path: Path, *, skipped: Counter[str] | None = None) -> Iterator[Event]:
    """DIGINETICA product views in (pseudo-)time order; see the module docstring.

    Lines without five fields, an integer session and timeframe, an item and a
    ``YYYY-MM-DD`` date are skipped (``malformed_line``).
    """
    rows: list[tuple[float, int, int, str, str]] = []
    day_start: dict[str, float] = {}
    for row, line in _lines(path):
        fields = line.split(";")
        try:
            session, user, item = int(fields[0]), fields[1].strip(), fields[2].strip()
            offset = int(fields[3]) / 1000.0
            day = fields[4].strip()
            start = day_start.get(day)
            if start is None:
                start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
                day_start[day] = start
        except (IndexError, ValueError):
            if skipped is not None:
                skipped["malformed_line"] += 1
            continue
        if len(fields) != 5 or not item or offset < 0:
            if skipped is not None:
                skipped["malformed_line"] += 1
            continue
        rows.append((start + offset, session, row, item, user))
    rows.sort()
    for stamp, session, row, item, user in rows:
        owner = f"dg-u{user}" if user and user != "NA" else f"dg-s{session}"
        yield _click(f"dg-{row}", owner, f"dg-{item}", stamp, f"dg-s{session}")
