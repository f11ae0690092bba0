"""The shared real datasets as contract events, and a ``convert`` CLI.

Each generator reads one dataset of ``../shared/data`` (see its README; nothing
is copied into this repository) and yields contract dicts, ready for
``orjson.dumps``, that :func:`stream.contract.decode_event` accepts. Output is
deterministic: the same files and seed give the same events in the same order.

What is real and what is synthesised:

* :func:`online_retail_purchases`: real purchases and cancellations (negative
  quantity), one event per invoice line with a CustomerID, in file (time) order.
  InvoiceDate is taken as UTC (the file has no zone; the shop is in the UK).
  Non-product lines (postage, discounts, fees) and lines with a negative price
  or zero quantity are skipped and counted.
* :func:`movielens_reviews`: real ratings as rating-only reviews, time-ordered.
  MovieLens rates 0.5..5 in half stars, the contract 1..5: 0.5 becomes 1, every
  other value is kept, so the "rated 4 or more" positive threshold is unchanged.
* :func:`clothing_reviews`: real review texts, titles and ratings; the dataset
  has no user and no time, so both are SYNTHETIC: the user is drawn from a pool
  of :data:`CLOTHING_USERS` ids by a seeded BLAKE2b hash of the row number, and
  the timestamps are spread evenly over the Online Retail period in file order.
* :func:`cdnow_purchases`: real CDNOW purchases, time-ordered; the dataset has
  no product ids, so every line is item ``cd-cds`` with unit price = dollar value
  / number of CDs, at 00:00Z of its day.
* :func:`derived_clicks`: SIMULATED clicks derived from purchases (see there).
* :func:`demo_stream`: what ``make run`` replays: Online Retail purchases, their
  derived clicks and the clothing reviews, merged in time order.
* YOOCHOOSE and DIGINETICA: real anonymous click sessions, see
  :mod:`tools.clickstreams`.

CLI: ``python -m tools.datasets convert {movielens,online-retail,clothing,cdnow,demo,
yoochoose,diginetica} --out FILE.jsonl [--limit N] [--data-dir DIR] [--seed S]
[--split all|train_tr|train_valid]`` (``feedback-stream convert``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import heapq
import itertools
import os
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from hashlib import blake2b
from pathlib import Path
from typing import Any, TypeVar

import orjson

from stream.contract import format_timestamp, parse_timestamp
from tools import clickstreams

Event = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("movielens", "online-retail", "clothing", "cdnow", "demo", "yoochoose", "diginetica")

ONLINE_RETAIL_CSV = Path("online_retail/online_retail.csv.gz")
MOVIELENS_CSV = Path("movielens_latest_small/ratings.csv")
CLOTHING_CSV = Path("womens_clothing_reviews/womens_clothing_reviews.csv.gz")
CDNOW_TXT = Path("cdnow/CDNOW_master.txt.gz")

# Online Retail lines that are not products a customer chose: postage, manual
# adjustments, carriage, discounts, Dotcom postage, charity, bank charges, pads.
NON_PRODUCT_CODES = frozenset({"POST", "M", "C2", "D", "DOT", "CRUK", "BANK CHARGES", "PADS"})
# The Online Retail period; the synthetic clothing review times are spread over it.
RETAIL_START = parse_timestamp("2010-12-01T08:26:00Z")
RETAIL_END = parse_timestamp("2011-12-09T12:50:00Z")
CLOTHING_USERS = 3000  # pool of synthetic reviewers: about 8 reviews each
DEFAULT_SEED = 42


def default_data_dir() -> Path:
    """``$FEEDBACK_DATA_DIR`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("FEEDBACK_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _path(data_dir: Path | str | None, relative: Path) -> Path:
    path = Path(data_dir if data_dir is not None else default_data_dir()) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset file {path} not found: set FEEDBACK_DATA_DIR or pass --data-dir"
        )
    return path


_N = TypeVar("_N", int, float)


class DatasetError(FileNotFoundError):
    """A dataset is unknown, its folder or files are missing, or a row holds a value that
    is not of its column's type; the message says which (and where)."""


def _parse(convert: type[_N], text: str, path: Path, row: int, column: str) -> _N:
    """``convert(text)``, or a :class:`DatasetError` naming the file, row and column.

    >>> _parse(int, "abc", Path("retail.csv"), 7, "Quantity")
    Traceback (most recent call last):
    ...
    tools.datasets.DatasetError: retail.csv row 7: Quantity 'abc' is not a valid int
    """
    try:
        return convert(text)
    except ValueError:
        raise DatasetError(
            f"{path} row {row}: {column} {text!r} is not a valid {convert.__name__}"
        ) from None


# The files each dataset reads, relative to the datasets folder.
DATASET_FILES: dict[str, tuple[Path, ...]] = {
    "movielens": (MOVIELENS_CSV,),
    "online-retail": (ONLINE_RETAIL_CSV,),
    "clothing": (CLOTHING_CSV,),
    "cdnow": (CDNOW_TXT,),
    "demo": (ONLINE_RETAIL_CSV, CLOTHING_CSV),
}


def check_available(name: str, data_dir: Path | str | None = None) -> Path:
    """The datasets folder, once ``name`` is known and its files are there.

    Called before a replay starts anything, so that a wrong ``--data-dir`` is
    one line instead of a failure half-way through a generator.

    >>> check_available("imdb")
    Traceback (most recent call last):
    ...
    tools.datasets.DatasetError: unknown dataset 'imdb' (one of movielens, online-retail, \
clothing, cdnow, demo)
    """
    if name not in DATASET_FILES:
        raise DatasetError(f"unknown dataset {name!r} (one of {', '.join(DATASET_FILES)})")
    root = Path(data_dir if data_dir is not None else default_data_dir())
    if not root.is_dir():
        raise DatasetError(
            f"datasets folder {root} not found: pass --data-dir or set FEEDBACK_DATA_DIR"
        )
    for relative in DATASET_FILES[name]:
        if not (root / relative).is_file():
            raise DatasetError(f"dataset {name!r} needs {root / relative}, which is missing")
    return root


def _rows(path: Path) -> Iterator[list[str]]:
    """CSV rows after the header, streamed (gzip or plain)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader, None)
            yield from reader
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        # A truncated download or a wrong file under the right name: one line.
        raise DatasetError(f"dataset file {path} cannot be read: {exc}") from None


def _hash_int(*parts: object, seed: int) -> int:
    """A stable 64-bit integer from ``parts``: unlike hash(), the same in every process."""
    text = ":".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(blake2b(text, digest_size=8).digest(), "big")


def _skip(skipped: Counter[str] | None, reason: str) -> None:
    if skipped is not None:
        skipped[reason] += 1


# ---------------------------------------------------------------------------
# Online Retail


def online_retail_purchases(
    data_dir: Path | str | None = None, *, skipped: Counter[str] | None = None
) -> Iterator[Event]:
    """Online Retail invoice lines -> purchase events, streamed in file (time) order.

    user ``or-c<CustomerID>``, item = StockCode, ``order_id`` = InvoiceNo,
    ``event_id`` = ``or-<InvoiceNo>-<data row number>`` (unique per line),
    currency GBP. Cancellations (InvoiceNo ``C...``) keep their negative quantity.
    Skipped, counted in ``skipped``: ``no_customer``, ``non_product``,
    ``negative_price``, ``zero_quantity``.
    """
    path = _path(data_dir, ONLINE_RETAIL_CSV)
    for row_no, row in enumerate(_rows(path), start=1):
        invoice, code, _description, quantity, when, price, customer = row[:7]
        if not customer:
            _skip(skipped, "no_customer")
            continue
        code = code.strip()
        if code in NON_PRODUCT_CODES:
            _skip(skipped, "non_product")
            continue
        unit_price = _parse(float, price, path, row_no, "UnitPrice")
        qty = _parse(int, quantity, path, row_no, "Quantity")
        if unit_price < 0:
            _skip(skipped, "negative_price")
            continue
        if qty == 0:
            _skip(skipped, "zero_quantity")
            continue
        yield {
            "type": "purchase",
            "event_id": f"or-{invoice}-{row_no}",
            "user_id": f"or-c{int(_parse(float, customer, path, row_no, 'CustomerID'))}",
            "item_id": code,
            "timestamp": when.replace(" ", "T") + "Z",  # "2010-12-01 08:26:00", taken as UTC
            "quantity": qty,
            "price": unit_price,
            "currency": "GBP",
            "order_id": invoice,
        }


# ---------------------------------------------------------------------------
# MovieLens


def movielens_reviews(
    data_dir: Path | str | None = None, *, skipped: Counter[str] | None = None
) -> Iterator[Event]:
    """MovieLens ratings -> rating-only reviews, ordered by (time, user, movie).

    user ``ml-u<userId>``, item ``ml-m<movieId>``, event ``ml-<user>-<movie>-<ts>``;
    a 0.5 rating becomes 1.0 (the contract's minimum), other ratings are kept.
    The 100,836 rows (2.4 MB) are loaded to be sorted by time.
    """
    rows: list[tuple[int, int, int, float]] = []
    path = _path(data_dir, MOVIELENS_CSV)
    for row_no, (user_text, movie_text, rating, stamp_text) in enumerate(_rows(path), start=1):
        value = _parse(float, rating, path, row_no, "rating")
        if not 0.5 <= value <= 5:
            _skip(skipped, "rating_out_of_range")
            continue
        rows.append((
            _parse(int, stamp_text, path, row_no, "timestamp"),
            _parse(int, user_text, path, row_no, "userId"),
            _parse(int, movie_text, path, row_no, "movieId"),
            max(value, 1.0),
        ))
    rows.sort()
    for stamp, user, movie, value in rows:
        yield {
            "type": "review",
            "event_id": f"ml-{user}-{movie}-{stamp}",
            "user_id": f"ml-u{user}",
            "item_id": f"ml-m{movie}",
            "timestamp": format_timestamp(stamp),
            "rating": value,
        }


# ---------------------------------------------------------------------------
# Women's clothing reviews


@lru_cache(maxsize=4)
def _count_rows(path: Path) -> int:
    return sum(1 for _ in _rows(path))


def clothing_reviews(
    data_dir: Path | str | None = None,
    *,
    seed: int = DEFAULT_SEED,
    skipped: Counter[str] | None = None,
) -> Iterator[Event]:
    """Women's clothing reviews -> reviews with text (when present), title and rating.

    item ``cl-<Clothing ID>``, event ``cl-r<row>``. SYNTHETIC, deterministic:
    user ``cl-u<k>`` with ``k = BLAKE2b(seed, row) mod CLOTHING_USERS``; the
    timestamp of row ``i`` of ``n`` is ``RETAIL_START + (i + 0.5) * span / n``
    rounded to the second, so reviews flow through the whole Online Retail
    period in file order. Rows without a 1..5 rating are skipped (``bad_rating``).
    """
    path = _path(data_dir, CLOTHING_CSV)
    total = _count_rows(path)
    step = (RETAIL_END - RETAIL_START) / max(total, 1)
    for i, row in enumerate(_rows(path)):
        _index, clothing_id, _age, title, text, rating = row[:6]
        if rating not in {"1", "2", "3", "4", "5"}:
            _skip(skipped, "bad_rating")
            continue
        event: Event = {
            "type": "review",
            "event_id": f"cl-r{i}",
            "user_id": f"cl-u{_hash_int('clothing', i, seed=seed) % CLOTHING_USERS}",
            "item_id": f"cl-{clothing_id}",
            "timestamp": format_timestamp(round(RETAIL_START + (i + 0.5) * step)),
            "rating": float(rating),
        }
        if text.strip():
            event["text"] = text
        if title.strip():
            event["title"] = title
        yield event


# ---------------------------------------------------------------------------
# CDNOW


def cdnow_purchases(
    data_dir: Path | str | None = None, *, skipped: Counter[str] | None = None
) -> Iterator[Event]:
    """CDNOW purchases -> purchase events ordered by (day, customer, line).

    user ``cd-c<id>``, item ``cd-cds`` (no product ids in the data), quantity =
    number_of_cds, unit price = dollar_value / number_of_cds (4 decimals), USD,
    time 00:00Z of the day, event ``cd-<line>``. Zero-CD lines are skipped
    (``zero_cds``). The 69,659 lines are loaded to be sorted by day.
    """
    path = _path(data_dir, CDNOW_TXT)
    rows: list[tuple[str, int, int, int, float]] = []
    with gzip.open(path, "rt", encoding="ascii") as f:
        next(f, None)
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) != 4:
                _skip(skipped, "malformed_line")
                continue
            customer_text, day_text, cds_text, dollars_text = fields
            cds = _parse(int, cds_text, path, line_no, "number_of_cds")
            if cds == 0:
                _skip(skipped, "zero_cds")
                continue
            rows.append((
                day_text, _parse(int, customer_text, path, line_no, "customer_id"), line_no,
                cds, _parse(float, dollars_text, path, line_no, "dollar_value"),
            ))
    rows.sort()
    for day, customer, line_no, cds, dollars in rows:
        yield {
            "type": "purchase",
            "event_id": f"cd-{line_no}",
            "user_id": f"cd-c{customer}",
            "item_id": "cd-cds",
            "timestamp": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z",
            "quantity": cds,
            "price": round(dollars / cds, 4),
            "currency": "USD",
        }


# ---------------------------------------------------------------------------
# Simulated clicks and the demo stream

CLICK_LEAD_SECONDS = (60, 30 * 60)  # a purchase follows its click by 1..30 minutes
BROWSE_PERCENT = 40  # share of purchase lines with an extra click on an item not bought
RECENT_ITEMS = 500  # browsing clicks pick among the items of the last 500 purchase lines


def derived_clicks(purchases: Iterable[Event], seed: int = DEFAULT_SEED) -> Iterator[Event]:
    """SIMULATED clicks derived from time-ordered purchases, yielded in time order.

    Every purchase line with a positive quantity gets a click on the same item
    by the same user 1..30 minutes earlier (a seeded BLAKE2b hash of its
    ``event_id`` picks the lead), in session ``s-<user>-<order>``; 40 % of them
    also get a "browsing" click, shortly before, on an item someone bought in
    the last 500 purchase lines (viewed, not necessarily bought). Returns and
    cancellations get no click. Event ids: ``clk-<purchase id>`` and
    ``clk-<purchase id>-b``. Pending clicks wait in a heap until no later
    purchase can precede them, so memory stays bounded (about 30 minutes of data).
    """
    lead_min, lead_max = CLICK_LEAD_SECONDS
    pending: list[tuple[float, int, Event]] = []  # (time, sequence, click): a min-heap
    recent: deque[str] = deque(maxlen=RECENT_ITEMS)
    sequence = itertools.count()
    for purchase in purchases:
        now = parse_timestamp(purchase["timestamp"])
        while pending and pending[0][0] <= now - lead_max - 60:
            yield heapq.heappop(pending)[2]
        if purchase.get("quantity", 0) <= 0:
            continue
        h = _hash_int("click", purchase["event_id"], seed=seed)
        lead = lead_min + h % (lead_max - lead_min)
        user, item = purchase["user_id"], purchase["item_id"]
        session = f"s-{user}-{purchase.get('order_id') or purchase['event_id']}"
        at = now - lead
        heapq.heappush(pending, (at, next(sequence), _click(purchase, "", item, at, session)))
        if recent and (h >> 20) % 100 < BROWSE_PERCENT:
            other = recent[(h >> 32) % len(recent)]
            if other != item:
                at_browse = at - 1 - (h >> 8) % 60  # up to a minute before the first click
                heapq.heappush(
                    pending,
                    (at_browse, next(sequence), _click(purchase, "-b", other, at_browse, session)),
                )
        recent.append(item)
    while pending:
        yield heapq.heappop(pending)[2]


def _click(purchase: Event, suffix: str, item: str, at: float, session: str) -> Event:
    return {
        "type": "click",
        "event_id": f"clk-{purchase['event_id']}{suffix}",
        "user_id": purchase["user_id"],
        "item_id": item,
        "timestamp": format_timestamp(at),
        "session_id": session,
    }


def _event_time(event: Event) -> float:
    return parse_timestamp(event["timestamp"])


def demo_stream(
    data_dir: Path | str | None = None,
    limit: int | None = None,
    *,
    seed: int = DEFAULT_SEED,
    skipped: Counter[str] | None = None,
) -> Iterator[Event]:
    """The mixed stream ``make run`` replays, lazily, in time order.

    Online Retail purchases, their simulated clicks (:func:`derived_clicks`) and
    the clothing reviews (synthetic users and times), merged with
    :func:`heapq.merge`. The purchase file is read twice in step (one reader
    feeds the clicks), so memory stays small and the first events come at once.
    """
    purchases = online_retail_purchases(data_dir, skipped=skipped)
    clicks = derived_clicks(online_retail_purchases(data_dir), seed=seed)
    reviews = clothing_reviews(data_dir, seed=seed, skipped=skipped)
    merged = heapq.merge(clicks, purchases, reviews, key=_event_time)
    return itertools.islice(merged, limit)


# ---------------------------------------------------------------------------
# CLI


def events(
    name: str,
    data_dir: Path | None = None,
    *,
    seed: int = DEFAULT_SEED,
    skipped: Counter[str] | None = None,
    split: str = "all",
) -> Iterator[Event]:
    """The events of dataset ``name`` (one of :data:`DATASETS`), in replay order;
    ``split`` picks the YOOCHOOSE part (``all``, ``train_tr``, ``train_valid``)."""
    if name == "yoochoose":
        paths = {part: _path(data_dir, rel) for part, rel in clickstreams.YOOCHOOSE_FILES.items()}
        return clickstreams.yoochoose_clicks(paths, split, skipped=skipped)
    if name == "diginetica":
        return clickstreams.diginetica_views(
            _path(data_dir, clickstreams.DIGINETICA_CSV), skipped=skipped
        )
    if name == "movielens":
        return movielens_reviews(data_dir, skipped=skipped)
    if name == "online-retail":
        return online_retail_purchases(data_dir, skipped=skipped)
    if name == "clothing":
        return clothing_reviews(data_dir, seed=seed, skipped=skipped)
    if name == "cdnow":
        return cdnow_purchases(data_dir, skipped=skipped)
    return demo_stream(data_dir, seed=seed, skipped=skipped)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedback-stream", description="Convert the shared datasets into contract JSONL."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser(
        "convert",
        help="convert a shared dataset into contract JSONL",
        description="Write one contract event per line (see docs/contract.md).",
    )
    convert.add_argument("dataset", choices=DATASETS)
    convert.add_argument("--out", type=Path, required=True, help="output JSONL file ('-' = stdout)")
    convert.add_argument("--limit", type=int, help="stop after N events")
    convert.add_argument(
        "--data-dir", type=Path,
        help="datasets folder (default: $FEEDBACK_DATA_DIR, else ../shared/data)",
    )
    convert.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of synthetic fields")
    convert.add_argument(
        "--split", choices=clickstreams.YOOCHOOSE_SPLITS, default="all",
        help="yoochoose only: train_tr, train_valid, or both in time order (all, the default; "
        "the summary then gives warmup_until, where train_valid starts)",
    )
    return parser


def convert(
    name: str,
    out: Path,
    *,
    limit: int | None,
    data_dir: Path | None,
    seed: int,
    split: str = "all",
) -> dict[str, Any]:
    """Write ``name`` as JSONL to ``out``; return the counts."""
    skipped: Counter[str] = Counter()
    selected = itertools.islice(
        events(name, data_dir, seed=seed, skipped=skipped, split=split), limit
    )
    written = 0
    stream = sys.stdout.buffer if str(out) == "-" else open(out, "wb")  # noqa: SIM115
    try:
        for event in selected:
            stream.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            written += 1
    finally:
        if stream is not sys.stdout.buffer:
            stream.close()
        else:
            stream.flush()
    counts: dict[str, Any] = {
        "dataset": name, "written": written, "skipped": dict(sorted(skipped.items()))
    }
    if name == "yoochoose" and split == "all":
        # Train on train_tr, validate on train_valid: evaluate --warmup-until this time.
        valid = _path(data_dir, clickstreams.YOOCHOOSE_FILES["train_valid"])
        counts["warmup_until"] = format_timestamp(clickstreams.yoochoose_first_time(valid))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 0:
        print("--limit must be >= 0", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    try:
        counts = convert(
            args.dataset, args.out, limit=args.limit, data_dir=args.data_dir, seed=args.seed,
            split=args.split,
        )
    except FileNotFoundError as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return 2
    counts["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 2)
    print(orjson.dumps(counts).decode(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
