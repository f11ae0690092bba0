"""tools.mutation: the table of modules and the JSON line of ``make mutation``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import mutation
from tools.mutation import TARGETS, Target

REPO = Path(__file__).resolve().parents[2]


def test_every_module_and_test_of_the_table_exists() -> None:
    # Fails when a module moves without its row of the table following it.
    assert TARGETS
    for target in TARGETS:
        assert (REPO / target.path).is_file(), target.path
        for test in (*target.tests, *target.deselect):
            assert (REPO / test.split("::")[0]).is_file(), test
    names = [t.name for t in TARGETS]
    assert len(names) == len(set(names))


def test_a_second_row_of_a_module_is_named_by_its_part() -> None:
    erase = Target("stream/processor.py", ("t.py",), functions=("xǁProcessorǁerase",),
                   part="erase")
    assert (erase.module, erase.name) == ("stream.processor", "stream.processor:erase")
    rows = {t.name for t in TARGETS}
    assert {"stream.processor", "stream.processor:erase"} <= rows
    assert mutation.select(["stream.processor:erase"])[0].functions == ("xǁProcessorǁerase",)
    # The path alone names the row without a part.
    assert mutation.select(["stream/processor.py"])[0].part == ""


def test_exit_codes_are_classified_like_mutmut_does() -> None:
    assert [mutation.classify(c) for c in (1, 3, 0, 33, 5, None, 36, -24, -9, 2)] == [
        "killed", "killed", "survived", "survived", "survived", "survived",
        "timeout", "timeout", "timeout", "survived",
    ]


def test_only_the_listed_functions_count() -> None:
    target = Target("stream/processor.py", ("t.py",), functions=("xǁProcessorǁ_dead_letter",))
    codes = {
        "stream.processor.xǁProcessorǁ_dead_letter__mutmut_1": 1,
        "stream.processor.xǁProcessorǁ_dead_letter__mutmut_12": 0,
        "stream.processor.xǁProcessorǁhandle__mutmut_1": 0,
        "stream.processor.x_rfc3339__mutmut_2": 1,
    }
    assert mutation.module_results(codes, target) == {
        "stream.processor.xǁProcessorǁ_dead_letter__mutmut_1": "killed",
        "stream.processor.xǁProcessorǁ_dead_letter__mutmut_12": "survived",
    }
    everything = Target("stream/processor.py", ("t.py",))
    assert len(mutation.module_results(codes, everything)) == 4


def test_summary_adds_up_per_module_and_overall() -> None:
    results = {
        "stream.contract": {"a": "killed", "b": "killed", "c": "survived", "d": "timeout"},
        "stream.privacy": {"e": "killed", "f": "survived"},
    }
    assert mutation.summary(results) == {
        "mutants": 6, "killed": 3, "survived": 2, "timeout": 1,
        "by_module": {
            "stream.contract": {"mutants": 4, "killed": 2},
            "stream.privacy": {"mutants": 2, "killed": 1},
        },
    }


def test_the_last_line_printed_is_the_json_summary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {"stream.contract": {"m1": "killed", "m2": "survived"},
            "stream.privacy": {"m3": "timeout"}}
    monkeypatch.setattr(mutation, "run_target", lambda target, jobs: runs[target.module])
    assert mutation.main(["stream.contract", "stream.privacy"]) == 0
    out = capsys.readouterr()
    line = json.loads(out.out.strip().splitlines()[-1])
    assert list(line) == ["mutants", "killed", "survived", "timeout", "by_module"]
    assert (line["mutants"], line["killed"], line["survived"], line["timeout"]) == (3, 1, 1, 1)
    assert line["by_module"]["stream.privacy"] == {"mutants": 1, "killed": 0}
    assert "stream.contract: 1/2 killed" in out.err


def test_unknown_module_is_a_one_line_error() -> None:
    with pytest.raises(SystemExit, match=r"unknown module stream\.nothing"):
        mutation.main(["stream.nothing"])


def test_each_run_gets_the_module_and_its_tests_only() -> None:
    target = Target("stream/privacy.py", ("tests/stream/test_privacy.py",),
                    deselect=("tests/stream/test_privacy.py::test_slow",))
    config = mutation._mutmut_config(target)
    assert 'only_mutate = ["stream/privacy.py"]' in config
    assert 'pytest_add_cli_args_test_selection = ["tests/stream/test_privacy.py"]' in config
    assert '"--deselect", "tests/stream/test_privacy.py::test_slow"' in config


def test_function_keys_are_mutmuts_and_every_row_names_existing_functions() -> None:
    source = "def top(a):\n    return a\n\n\nclass C:\n    def m(self):\n        pass\n"
    assert mutation.function_spans(source) == {"x_top": (1, 2), "xǁCǁm": (6, 7)}
    row = Target("m.py", ("t.py",), functions=("xǁCǁ*",))
    assert mutation.target_lines(row, source) == {6, 7}
    assert mutation.target_lines(Target("m.py", ("t.py",)), source) is None
    for target in TARGETS:  # fails when a listed function is renamed
        mutation.target_lines(target, (REPO / target.path).read_text())


def test_a_row_that_matches_nothing_fails_with_one_line() -> None:
    renamed = Target("stream/processor.py", ("t.py",), functions=("xǁProcessorǁgone",))
    source = (REPO / renamed.path).read_text()
    with pytest.raises(SystemExit) as raised:
        mutation.target_lines(renamed, source)
    message = str(raised.value.code)
    assert "xǁProcessorǁgone" in message and "\n" not in message
    # A row whose module left no mutant (emptied, or every mutant of another module).
    with pytest.raises(SystemExit) as raised:
        mutation.row_results({"stream.other.x_f__mutmut_1": 1}, renamed)
    message = str(raised.value.code)
    assert "matched no mutants" in message and "\n" not in message
    assert mutation.row_results({"stream.processor.xǁProcessorǁgone__mutmut_1": 1}, renamed) == {
        "stream.processor.xǁProcessorǁgone__mutmut_1": "killed"}


def test_rows_run_two_at_a_time_and_a_failing_row_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[str, int]] = []

    def run(target: Target, jobs: int) -> dict[str, str]:
        seen.append((target.name, jobs))
        if target.name == "stream.auth":
            raise SystemExit("mutation: stream.auth matched no mutants")
        return {f"{target.name}.m": "killed"}

    monkeypatch.setattr(mutation, "run_target", run)
    mutation.main(["--jobs", "2", "stream.privacy", "stream.contract"])
    # One mutant at a time in each of the two rows under way; the JSON keeps the
    # order asked for.
    assert sorted(seen) == [("stream.contract", 1), ("stream.privacy", 1)]
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(line["by_module"]) == ["stream.privacy", "stream.contract"]
    with pytest.raises(SystemExit, match=r"stream\.auth matched no mutants"):
        mutation.main(["stream.privacy", "stream.auth", "stream.contract"])
