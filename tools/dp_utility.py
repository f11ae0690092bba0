"""``feedback-stream dp-utility``: what differential privacy costs the published lists.

Replays a shared dataset into per-user contributions, the same ones the worker
reads from its engine, then releases the popularity list through
:class:`stream.dp.DPPublisher` ``--runs`` times and compares each with the
exact list (top-k by distinct users, no noise, no bounding): the overlap of
the two top-k sets. Also the error of the noisy buyer counts of those items
(item summaries), bounding included, and what the neighbour release (similar
items, "bought together" on item pages) shows: its threshold, how many pairs
clear it, and the exact customer count of the most common pair.

    feedback-stream dp-utility --dataset online-retail --epsilon 1 --k 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from stream.dp import DPConfig, DPPublisher, UserContribution, distinct_counts, user_pairs
from tools.datasets import DATASETS, events

HISTORY = 20  # the engine's default history_size: the sequence pairs are read from


def contributions(events: Iterable[Any]) -> list[UserContribution]:
    """Per-user distinct items by kind and recent sequence, as the engine keeps them."""
    bought: dict[str, dict[str, None]] = {}
    reviewed: dict[str, dict[str, None]] = {}
    viewed: dict[str, dict[str, None]] = {}
    sequence: dict[str, deque[str]] = {}
    for e in events:
        user, item, kind = e["user_id"], e["item_id"], e.get("type")
        if kind == "purchase" and e.get("quantity", 1) <= 0:
            continue
        target = {"purchase": bought, "review": reviewed, "click": viewed}.get(kind)
        if target is None:
            continue
        target.setdefault(user, {})[item] = None
        if kind != "click":
            sequence.setdefault(user, deque(maxlen=HISTORY)).append(item)
    users = sorted(set(bought) | set(reviewed) | set(viewed))
    return [
        UserContribution(
            u,
            bought=list(bought.get(u, ())),
            reviewed=list(reviewed.get(u, ())),
            viewed=list(viewed.get(u, ())),
            sequence=list(sequence.get(u, ())),
        )
        for u in users
    ]


def measure(
    users: list[UserContribution], epsilon: float, k: int, runs: int, max_items: int
) -> dict[str, Any]:
    """Overlap of the DP top-``k`` with the exact one over ``runs`` releases."""
    exact_counts = distinct_counts([*u.bought, *u.reviewed] for u in users)
    exact = [item for item, _ in exact_counts.most_common(k)]
    config = DPConfig(
        epsilon=epsilon, top_k=k, interval_seconds=0.0, max_items_per_user=max_items
    )
    catalogue = sorted({i for u in users for i in (*u.bought, *u.reviewed, *u.viewed)})
    publisher = DPPublisher(lambda: users, config, domain=lambda: catalogue)
    overlaps: list[float] = []
    errors: list[float] = []
    released_pairs: list[int] = []
    for _ in range(runs):
        overlaps.append(len(set(publisher.popular()) & set(exact)) / k)
        errors.extend(
            abs(summary["buyers"] - exact_counts[summary["item_id"]])
            for summary in publisher.item_summaries(exact)
        )
        released_pairs.append(sum(map(len, publisher.all_neighbours().values())) // 2)
    pairs = distinct_counts(
        user_pairs(u.user_id, u.sequence, config.max_pairs_per_user) for u in users
    )
    assert publisher.ledger is not None
    return {
        "users": len(users),
        "items": len(exact_counts),
        "epsilon": epsilon,
        "k": k,
        "runs": runs,
        "top_k_overlap_mean": round(statistics.fmean(overlaps), 3),
        "top_k_overlap_min": round(min(overlaps), 3),
        "top_k_overlap_max": round(max(overlaps), 3),
        "exact_kth_count": exact_counts[exact[-1]] if exact else 0,
        "max_items_per_user": max_items,
        "buyers_abs_error_median": statistics.median(errors) if errors else None,
        "neighbour_threshold": publisher.neighbour_threshold(),
        "exact_top_pair_customers": max(pairs.values(), default=0),
        "pairs_released_mean": round(statistics.fmean(released_pairs), 1),
        "epsilon_spent": publisher.ledger.by_release(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedback-stream dp-utility",
        description="Overlap of the differentially private top-k popular items with the exact "
        "top-k on a shared dataset (docs/privacy.md).",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="online-retail")
    parser.add_argument("--epsilon", type=float, default=1.0, help="epsilon per release (1)")
    parser.add_argument("--k", type=int, default=20, help="length of the popularity list (20)")
    parser.add_argument("--runs", type=int, default=20, help="releases to average over (20)")
    parser.add_argument(
        "--max-items-per-user", type=int, default=DPConfig.max_items_per_user,
        help="per-user bound of the item summaries' counts",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="default: $FEEDBACK_DATA_DIR or ../shared/data"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.epsilon > 0) or args.k < 1 or args.runs < 1 or args.max_items_per_user < 1:
        print(
            "dp-utility: --epsilon must be > 0, --k, --runs, --max-items-per-user >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        users = contributions(events(args.dataset, args.data_dir))
    except FileNotFoundError as exc:
        print(f"dp-utility: {exc}", file=sys.stderr)
        return 2
    if not users:
        print(f"dp-utility: no user in dataset {args.dataset}", file=sys.stderr)
        return 2
    result = {"dataset": args.dataset, **measure(
        users, args.epsilon, args.k, args.runs, args.max_items_per_user
    )}
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(
            f"{args.dataset}: {result['users']} users, {result['items']} items; "
            f"DP top-{args.k} popular at epsilon={args.epsilon:g} overlaps the exact top-{args.k} "
            f"by {result['top_k_overlap_mean']:.1%} on average over {args.runs} releases "
            f"(min {result['top_k_overlap_min']:.0%}, max {result['top_k_overlap_max']:.0%}); "
            f"buyer counts of those items: median absolute error "
            f"{result['buyers_abs_error_median']} (bound {args.max_items_per_user} items/user); "
            f"pairs bought together: {result['pairs_released_mean']} released on average "
            f"(threshold {result['neighbour_threshold']} customers; the most common pair has "
            f"{result['exact_top_pair_customers']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
