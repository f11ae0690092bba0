"""The edges a user meets, as ``python -m tools.edgecheck`` tries them: taken ports,
no broker, missing files, bad addresses, signals on ``run`` and ``broker``, ``consume``,
and readiness following the broker. Each case runs the real command line."""

from __future__ import annotations

import pytest

from tools import edgecheck

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", list(edgecheck.CASES))
def test_edge(name: str) -> None:
    result = edgecheck.run_case(name)
    assert result.ok, f"{name}: {result.seen}\n" + "\n".join(result.problems)
