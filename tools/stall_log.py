"""``python -m tools.stall_log WORKER_LOG``: what held a worker's event loop, summed by place.

A worker run with ``FEEDBACK_LOOP_STALL_LOG_SECONDS`` (``stream/stall.py``) logs
the stack its event loop was running once the loop has had no turn for that
long, then the stall's whole length and the CPU time the loop's thread used
meanwhile. This reads those records (``--since``/``--until``: a window of the
log's clock, ``HH:MM:SS``) and prints one row per place: the task that ran
(the coroutine the loop was driving), the innermost frame of this repository
and the innermost frame of all, with the stalls' count, wall seconds (sum and
max) and CPU seconds (sum). Wall time includes whatever the machine did
meanwhile; CPU time is the loop thread's own work, which other jobs on the
machine do not inflate (they only stretch it in wall time).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_HEAD = re.compile(
    r"^\[\d{4}-\d\d-\d\d (?P<t>\d\d:\d\d:\d\d)[^\]]*\] \[\d+\] \[WARNING\] "
    r"event loop without a turn for")
_OVER = re.compile(
    r"^\[\d{4}-\d\d-\d\d (?P<t>\d\d:\d\d:\d\d)[^\]]*\] \[\d+\] \[WARNING\] "
    r"event loop stall over: no turn for (?P<wall>[\d.]+) s"
    r"(?:, (?P<cpu>[\d.]+) s of CPU)?")
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in (?P<func>\S+)')
_OWN = ("/stream/", "/models/", "/tools/", "/tests/")


@dataclass
class Stall:
    at: str
    frames: list[tuple[str, str]] = field(default_factory=list)
    wall: float | None = None
    cpu: float | None = None

    def place(self) -> tuple[str, str, str]:
        """(task, innermost frame of this repository, innermost frame)."""
        def name(f: tuple[str, str]) -> str:
            path, func = f
            # From the first of this repository's folders in the path on.
            at = min((i for i in map(path.rfind, _OWN) if i >= 0), default=-1)
            return f"{path[at + 1:] if at >= 0 else path.rsplit('/', 1)[-1]}:{func}"

        frames = list(self.frames)
        # The loop's callback: the frames after asyncio's Handle._run; the task
        # is the first of them in this repository, else the callback itself.
        # Without one, the loop was between callbacks (in its selector, say): it
        # did have its turn, and the machine did not run it.
        start = next((i + 1 for i, f in enumerate(frames)
                      if f[0].endswith("asyncio/events.py") and f[1] == "_run"), len(frames))
        under = frames[start:]
        own = [f for f in under if any(o in f[0] for o in _OWN) and "-packages/" not in f[0]]
        task = own[0] if own else (under[0] if under else None)
        return (name(task) if task else "-", name(own[-1]) if own else "-",
                name(frames[-1]) if frames else "-")


def parse(lines: Iterable[str]) -> list[Stall]:
    """The stalls of a worker log, each with its stack and, once logged, its length."""
    stalls: list[Stall] = []
    open_: Stall | None = None
    in_stack = False
    for line in lines:
        m = _HEAD.match(line)
        if m:
            open_ = Stall(m["t"])
            stalls.append(open_)
            in_stack = True
            continue
        if in_stack and open_ is not None:
            f = _FRAME.match(line)
            if f:
                open_.frames.append((f["file"], f["func"]))
                continue
            if line.startswith("    "):  # a frame's source line
                continue
            in_stack = False
        m = _OVER.match(line)
        if m and open_ is not None and open_.wall is None:
            open_.wall = float(m["wall"])
            open_.cpu = float(m["cpu"]) if m["cpu"] else None
            open_ = None
    return stalls


def summarise(stalls: Sequence[Stall]) -> list[tuple[tuple[str, str, str], int, float, float,
                                                         float | None]]:
    """Per place: (place, count, wall sum, wall max, CPU sum or None), by wall sum."""
    rows: dict[tuple[str, str, str], list[Stall]] = {}
    for s in stalls:
        rows.setdefault(s.place(), []).append(s)
    out = []
    for place, group in rows.items():
        walls = [s.wall or 0.0 for s in group]
        cpus = [s.cpu for s in group if s.cpu is not None]
        out.append((place, len(group), sum(walls), max(walls), sum(cpus) if cpus else None))
    out.sort(key=lambda r: -r[2])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.stall_log",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("log", type=Path, help="a worker's log (the bench's worker-0.log)")
    p.add_argument("--since", default="", help="first HH:MM:SS of the log's clock to count")
    p.add_argument("--until", default="99", help="last HH:MM:SS to count")
    p.add_argument("--top", type=int, default=15, help="rows to print")
    args = p.parse_args(argv)
    try:
        with open(args.log, encoding="utf-8", errors="replace") as f:
            stalls = [s for s in parse(f) if args.since <= s.at <= args.until]
    except OSError as exc:
        print(f"cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return 2
    rows = summarise(stalls)
    walls = [s.wall or 0.0 for s in stalls]
    cpus = [s.cpu for s in stalls if s.cpu is not None]
    print(f"{len(stalls)} stalls, {sum(walls):.3f} s wall"
          + (f", {sum(cpus):.3f} s CPU" if cpus else ""))
    print(f"{'count':>5} {'wall s':>7} {'max s':>6} {'CPU s':>6}  task / repository frame / leaf")
    for (task, own, leaf), n, wall, top, cpu in rows[: args.top]:
        c = f"{cpu:6.3f}" if cpu is not None else "     -"
        print(f"{n:5d} {wall:7.3f} {top:6.3f} {c}  {task} / {own} / {leaf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
