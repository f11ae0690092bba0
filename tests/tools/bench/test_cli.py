"""The bench command line refuses bad arguments before starting anything.

Nothing here is timed.
"""

from __future__ import annotations

from tools.bench import main


def test_cli_refuses_unknown_references() -> None:
    assert main(["--references", "raw,bogus"]) == 2
    assert main(["--events", "10"]) == 2
