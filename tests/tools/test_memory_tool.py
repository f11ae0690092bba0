"""tools.memory on a small slice of the demo replay."""

from __future__ import annotations

from tests.shared_data import data_dir
from tools import memory


def test_memory_tool_reports_per_user_cost_and_the_bound() -> None:
    data = data_dir("online_retail")
    args = memory.build_parser().parse_args([
        "--events", "600", "--users", "300", "--eviction-users", "1200",
        "--retention-seconds", "86400", "--tick-events", "200", "--data-dir", str(data),
    ])
    r = memory.run(args)
    assert r["users"] == 300 and r["memory_bytes_per_user"] is not None
    assert r["eviction_users"] == 1200 and r["eviction_ticks"] == 6
    # Over three one-day horizons the users of the last one stay, give or take a tick.
    held = r["eviction_samples"][-1]["users_held"]
    assert 400 <= held <= 400 + 200
    # Everyone else is gone: the replay's users, the 300 of phase 2, the older arrivals.
    assert r["evicted_users"] == r["users_after_warmup"] + 300 + 1200 - held
    assert r["warmup_evicted_users"] == 0  # 600 events span less than a day
    assert r["warmup_hit_rate"] is not None


def test_memory_tool_traces_by_repository_file() -> None:
    data = data_dir("online_retail")
    args = memory.build_parser().parse_args([
        "--events", "300", "--users", "200", "--eviction-users", "0", "--trace",
        "--data-dir", str(data),
    ])
    r = memory.run(args)
    places = [place for place, _ in r["traced_top"]]
    assert r["traced_bytes_per_user"] > 0 and places
    # The project's own lines are named from the repository root.
    assert any(p.startswith(("models/", "stream/")) for p in places), places
