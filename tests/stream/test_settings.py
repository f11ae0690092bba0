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


def test_item_sharing_settings_are_validated() -> None:
    import pytest

    from stream.settings import Settings, SettingsError

    period = Settings.from_env({"FEEDBACK_ITEM_MODEL_PERIOD_SECONDS": "2.5"})
    assert period.item_model_period_seconds == 2.5
    with pytest.raises(SettingsError, match="FEEDBACK_ITEM_MODEL_PERIOD_SECONDS"):
        Settings.from_env({"FEEDBACK_ITEM_MODEL_PERIOD_SECONDS": "0"})
    with pytest.raises(SettingsError, match="FEEDBACK_TOPIC_ITEM_MODEL names the same topic"):
        Settings.from_env({"FEEDBACK_TOPIC_ITEM_MODEL": "feedback.item-updates"})
    with pytest.raises(SettingsError, match="FEEDBACK_TOPIC_GLOBALS must be 1-249"):
        Settings.from_env({"FEEDBACK_TOPIC_GLOBALS": "bad topic"})


def test_quality_sample_is_a_share_in_0_1() -> None:
    assert Settings.from_env({}).quality_sample == 0.1
    assert Settings.from_env({"FEEDBACK_QUALITY_SAMPLE": "1"}).quality_sample == 1.0
    for bad in ("0", "-0.1", "1.5", "nan"):
        with pytest.raises(SettingsError, match="FEEDBACK_QUALITY_SAMPLE must be > 0 and <= 1"):
            Settings.from_env({"FEEDBACK_QUALITY_SAMPLE": bad})


def test_the_neighbour_release_delta_is_read_and_checked() -> None:
    assert Settings.from_env({"FEEDBACK_DP_DELTA": "1e-7"}).dp_config.delta == 1e-7
    for bad in ("0", "0.01", "-1e-6"):
        with pytest.raises(SettingsError, match=r"FEEDBACK_DP_DELTA must be > 0 and < 0\.001"):
            Settings.from_env({"FEEDBACK_DP_DELTA": bad})


@pytest.mark.parametrize("raw", ["-1", "11"])
def test_the_table_standbys_are_bounded(raw: str) -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_TABLE_STANDBY_REPLICAS must be >= 0"):
        Settings.from_env({"FEEDBACK_TABLE_STANDBY_REPLICAS": raw})


@pytest.mark.parametrize("raw", ["0", "6", "soon"])
def test_the_fetch_wait_is_validated(raw: str) -> None:
    with pytest.raises(SettingsError, match="FEEDBACK_FETCH_MAX_WAIT_SECONDS"):
        Settings.from_env({"FEEDBACK_FETCH_MAX_WAIT_SECONDS": raw})
