"""Settings read from the environment (stream.settings)."""

from __future__ import annotations

import pytest

from stream.settings import Settings, SettingsError


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("0", False), ("true", True), ("false", False), ("off", False),
])
def test_recovery_guards_is_a_bool_read_as_1_0_or_true_false(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"FEEDBACK_RECOVERY_GUARDS": raw})
    assert settings.recovery_guards is expected


def test_recovery_guards_refuses_anything_else() -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_RECOVERY_GUARDS must be 1/0"):
        Settings.from_env({"FEEDBACK_RECOVERY_GUARDS": "2"})


def test_recovery_guards_are_on_by_default() -> None:
    assert Settings.from_env({}).recovery_guards is True
