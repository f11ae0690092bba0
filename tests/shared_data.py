"""The shared datasets for the tests that replay real data.

A missing dataset fails the test with one line naming it: a suite that skips
silently would pass on a machine that cannot run half of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.datasets import default_data_dir


def data_dir(*names: str) -> Path:
    """``$FEEDBACK_DATA_DIR`` (else ``../shared/data``), holding each dataset folder ``names``."""
    root = default_data_dir()
    for name in names or ("",):
        if not (root / name).is_dir():
            pytest.fail(
                f"dataset {name or 'folder'} not found at {root / name}: "
                "set FEEDBACK_DATA_DIR to the shared datasets folder",
                pytrace=False,
            )
    return root
