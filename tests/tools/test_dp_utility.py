"""feedback-stream dp-utility: the DP popularity list against the exact one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.dp_utility import contributions, main, measure


def events() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for u in range(60):
        for i in range(u % 7 + 1):  # item i bought by the users with u % 7 >= i
            out.append({"type": "purchase", "user_id": f"u{u}", "item_id": f"i{i}", "quantity": 1})
    out.append({"type": "purchase", "user_id": "u0", "item_id": "i9", "quantity": -1})  # a return
    out.append({"type": "click", "user_id": "u0", "item_id": "i8"})
    return out


def test_contributions_keep_distinct_positive_items_by_kind() -> None:
    users = {u.user_id: u for u in contributions(events())}
    assert users["u6"].bought == [f"i{i}" for i in range(7)]
    assert "i9" not in users["u0"].bought and users["u0"].viewed == ["i8"]


def test_overlap_is_one_at_a_huge_epsilon_and_lower_at_a_tiny_one() -> None:
    users = contributions(events())
    exact = measure(users, epsilon=1e4, k=3, runs=5, max_items=20)
    assert exact["top_k_overlap_mean"] == 1.0
    assert exact["epsilon_spent"] == {"popularity": 5e4, "items": 5e4, "neighbours": 5e4}
    # i0 -> i1 -> ... -> i6: six pairs, the first used by the 51 users with u % 7 >= 1
    assert exact["pairs_released_mean"] == 6 and exact["exact_top_pair_customers"] == 51
    noisy = measure(users, epsilon=1e-3, k=3, runs=30, max_items=20)
    assert noisy["top_k_overlap_mean"] < 1.0


def test_a_missing_dataset_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    assert main(["--epsilon", "0"]) == 2
