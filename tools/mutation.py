"""Mutation testing of the modules behind the README's promises (``make mutation``).

mutmut 3 breaks one thing at a time in a module (``<`` for ``<=``, a constant, a
dropped call...) and runs the tests that reach the broken function: a mutant no
test notices is a behaviour no test guards. Each module of :data:`TARGETS` runs
in its own copy of the sources (``var/mutation/<module>``) against only the test
files listed for it, so that the whole table fits in half an hour on two cores.

The last line printed is one JSON object::

    {"mutants", "killed", "survived", "timeout", "by_module": {module: {"mutants", "killed"}}}

``python -m tools.mutation stream.contract`` runs one module (one at a time is
what a shared machine can afford while a test is being written);
``--list`` prints the table. The surviving mutants of the last run of each module
are in ``var/mutation/<module>/survivors.txt`` (``mutmut show NAME`` in that
folder prints the diff of one).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "var" / "mutation"
PACKAGES = ("stream", "models", "tools")


@dataclass(frozen=True)
class Target:
    """One module to mutate and the tests that concern it.

    ``functions`` narrows the mutants to some functions of a large module
    (fnmatch patterns on mutmut's function keys: ``x_name`` for a function,
    ``xǁClassǁmethod`` for a method).
    """

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ("*",)
    deselect: tuple[str, ...] = ()  # slow tests of those files that guard something else
    part: str = ""  # names a second row of the same module: ``stream.processor:erase``

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    @property
    def name(self) -> str:
        """The row's name on the command line, in the JSON line and under var/mutation."""
        return f"{self.module}:{self.part}" if self.part else self.module


# The one table to update when a module moves. Test entries are pytest paths or node ids.
TARGETS: tuple[Target, ...] = (
    Target(
        "stream/contract.py",
        ("tests/stream/test_contract.py", "tests/stream/test_schemas.py"),
        deselect=(  # hypothesis sweeps (tests/stream/test_contract_fuzz.py) and a subprocess
            "tests/stream/test_schemas.py::test_schema_and_validator_agree_on_random_events",
            "tests/stream/test_contract.py::test_stream_package_import_does_not_load_faust",
        ),
    ),
    Target("stream/privacy.py", ("tests/stream/test_privacy.py",)),
    Target("stream/checkpoint.py", ("tests/stream/test_checkpoint.py",)),
    Target(
        "stream/commit_guard.py",
        ("tests/stream/faust/test_consumer.py", "tests/stream/test_commit_guard.py"),
    ),
    Target(
        "stream/faust/recovery.py",
        ("tests/stream/faust/test_recovery.py",
         # fetch_highwaters needs a broker: this one test starts the embedded one.
         "tests/integration/test_reliability_recovery.py"
         "::test_fetch_highwater_is_exact_where_list_offsets_is_not"),
    ),
    # The dead-letter path of the processor.
    Target(
        "stream/processor.py",
        # test_processor_erasure.py holds the dead-letter key's pseudonym.
        ("tests/stream/test_processor.py", "tests/stream/test_processor_erasure.py"),
        functions=("xǁProcessorǁdead_letter", "x__rfc3339"),
    ),
    # The stored profile: the de-duplication window and the profile's own fields.
    Target(
        "stream/stored_profile.py",
        ("tests/stream/test_stored_profile.py", "tests/stream/test_processor.py"),
    ),
    # Debounce.forget is reached by erasure: the owed recommendation is dropped.
    Target("stream/debounce.py",
           ("tests/stream/test_debounce.py", "tests/stream/test_processor_erasure.py")),
    Target("stream/eviction.py", ("tests/stream/test_eviction.py",)),
    # Erasure on request: the request/receipt contract, the worker's erase, the engine's.
    Target(
        "stream/erasure.py",
        ("tests/stream/test_erasure.py",),
        deselect=(  # a hypothesis sweep; the parametrised cases cover each rejection
            "tests/stream/test_erasure.py"
            "::test_fuzz_requests_decode_or_are_rejected_and_agree_with_the_schema",
        ),
    ),
    Target(
        "stream/processor.py",
        ("tests/stream/test_processor_erasure.py",),
        functions=("xǁProcessorǁerase",),
        part="erase",
    ),
    Target(
        "models/engine.py",
        ("tests/models/test_erasure.py", "tests/models/test_eviction.py"),
        functions=("xǁFeedbackEngineǁerase", "xǁFeedbackEngineǁforget"),
        part="erase",
    ),
    Target(  # the live session's items, which the engine's erase drops too
        "models/session.py",
        ("tests/models/test_erasure.py",),
        functions=("xǁSessionRecommenderǁerase",),
        part="erase",
    ),
    Target(
        "stream/auth.py",
        ("tests/stream/test_auth.py",),
        deselect=tuple(  # hypothesis sweeps: the enumerated cases cover the same branches
            f"tests/stream/test_auth.py::{t}" for t in (
                "test_fuzz_no_path_or_header_gets_past_without_a_valid_token",
                "test_fuzz_a_valid_token_passes_on_any_path",
                "test_fuzz_token_settings_parse_or_fail_with_a_named_value_error",
            )
        ),
    ),
    Target(
        "stream/dp.py",
        ("tests/stream/test_dp.py", "tests/stream/test_processor_dp.py"),
        deselect=tuple(  # thousands of releases each (20 s and more on a quiet machine)
            f"tests/stream/test_dp.py::{t}" for t in (
                "test_item_counts_on_neighbouring_datasets_differ_within_epsilon",
                "test_pair_counts_on_neighbouring_datasets_differ_within_epsilon",
                "test_popularity_list_on_neighbouring_datasets_differs_within_epsilon",
                "test_segment_release_on_neighbouring_datasets_differs_within_epsilon",
            )
        ),
    ),
)

# mutmut's exit codes of a mutant's test run (mutmut/__main__.py, status_by_exit_code):
# a failing or crashing test run kills; SIGXCPU, or SIGKILL past the CPU limit, is a timeout.
KILLED = frozenset({1, 3, 37, -11})
TIMEOUT = frozenset({24, -24, 36, 152, 255, -9})


def classify(exit_code: int | None) -> str:
    """``killed``, ``timeout`` or ``survived`` (no test reached it, or it was not run)."""
    if exit_code in KILLED:
        return "killed"
    if exit_code in TIMEOUT:
        return "timeout"
    return "survived"


def function_key(mutant: str, module: str) -> str:
    """``stream.contract.x__id__mutmut_3`` -> ``x__id``."""
    return re.sub(r"__mutmut_\d+$", "", mutant.removeprefix(module + "."))


def function_spans(source: str) -> dict[str, tuple[int, int]]:
    """mutmut's key of each function and method of a module -> its first and last line.

    mutmut mutates top-level functions (``x_name``) and the methods of top-level
    classes (``xǁClassǁname``), nothing nested deeper.
    """
    spans: dict[str, tuple[int, int]] = {}
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            spans[f"x_{node.name}"] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    spans[f"xǁ{node.name}ǁ{item.name}"] = (
                        item.lineno, item.end_lineno or item.lineno)
    return spans


def target_lines(target: Target, source: str) -> set[int] | None:
    """The lines of ``target``'s functions; None when the row takes the whole module.

    Raises SystemExit when a pattern names no function of the module: a renamed
    function would otherwise leave its row with nothing to test.
    """
    if target.functions == ("*",):
        return None
    spans = function_spans(source)
    lines: set[int] = set()
    for pattern in target.functions:
        keys = fnmatch.filter(spans, pattern)
        if not keys:
            raise SystemExit(
                f"mutation: {target.name}: no function of {target.path} matches {pattern} "
                "(renamed? update TARGETS in tools/mutation.py)"
            )
        for key in keys:
            first, last = spans[key]
            lines.update(range(first, last + 1))
    return lines


def module_results(
    exit_codes: Mapping[str, int | None], target: Target
) -> dict[str, str]:
    """Mutant name -> killed/timeout/survived, for the mutants of ``target``'s functions."""
    return {
        name: classify(code)
        for name, code in sorted(exit_codes.items())
        if any(fnmatch.fnmatchcase(function_key(name, target.module), f) for f in target.functions)
    }


def row_results(exit_codes: Mapping[str, int | None], target: Target) -> dict[str, str]:
    """:func:`module_results`, or SystemExit when the row has no mutant: a row
    that matches nothing would otherwise pass with 0 of 0 killed."""
    results = module_results(exit_codes, target)
    if not results:
        raise SystemExit(
            f"mutation: {target.name} matched no mutants in {target.path} "
            "(renamed or emptied? update TARGETS in tools/mutation.py)"
        )
    return results


def summary(results: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The JSON line of ``make mutation`` from each module's mutant -> outcome."""
    out: dict[str, Any] = {"mutants": 0, "killed": 0, "survived": 0, "timeout": 0}
    by_module = {}
    for module, outcomes in results.items():
        counts = {k: sum(1 for o in outcomes.values() if o == k) for k in
                  ("killed", "survived", "timeout")}
        out["mutants"] += len(outcomes)
        for k, v in counts.items():
            out[k] += v
        by_module[module] = {"mutants": len(outcomes), "killed": counts["killed"]}
    out["by_module"] = by_module
    return out


def _mutmut_config(target: Target) -> str:
    deselect = [a for d in target.deselect for a in ("--deselect", d)]

    def toml_list(items: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        f"source_paths = {toml_list(PACKAGES)}\n"
        f"only_mutate = {toml_list([target.path])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(target.tests)}\n"
        # The doctests of the copied packages are not the module's tests. The
        # unraisable-exception plugin runs gc.collect() several times at the end of
        # every pytest session, a fifth of each mutant's start-up cost; what it
        # reports is a warning, which fails no test here (no filterwarnings=error).
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:unraisableexception", '
        '"-o", "addopts=", '
        f'"--strict-markers"{"".join(f", {json.dumps(a)}" for a in deselect)}]\n'
        "use_git_change_detection = false\n"
    )


def prepare(target: Target) -> Path:
    """A fresh copy of the sources and tests with ``target``'s mutmut settings."""
    work = WORK / target.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in (*PACKAGES, "tests"):
        shutil.copytree(REPO / name, work / name, ignore=ignore)
    (work / "pyproject.toml").write_text(
        (REPO / "pyproject.toml").read_text() + _mutmut_config(target)
    )
    return work


_RUNNING: set[subprocess.Popen[bytes]] = set()  # the mutmut runs of the rows under way


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End one row's mutmut run and the mutants it forked."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()


def run_target(target: Target, jobs: int) -> dict[str, str]:
    """Run mutmut on one module; its mutants' outcomes."""
    if not (REPO / target.path).is_file():
        raise SystemExit(f"mutation: {target.path} not found: update TARGETS in tools/mutation.py")
    missing = [t for t in target.tests if not (REPO / t.split("::")[0]).exists()]
    if missing:
        raise SystemExit(f"mutation: test {missing[0]} of {target.name} not found")
    target_lines(target, (REPO / target.path).read_text())  # fails on a renamed function
    work = prepare(target)
    names = [] if target.functions == ("*",) else [
        f"{target.module}.{f}__mutmut_*" for f in target.functions
    ]
    # The copy lives elsewhere: its ../shared/data is not the datasets folder.
    from tools.datasets import default_data_dir

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "FEEDBACK_DATA_DIR": str(default_data_dir()), "MUTATION_ROW": target.name}
    env.pop("MUTANT_UNDER_TEST", None)
    cmd = [sys.executable, "-m", "tools.mutation", "--mutmut", "run",
           "--max-children", str(jobs), *names]
    with open(work / "mutmut.log", "wb") as out:
        # Its own process group: an interrupted run takes its forked mutants with it.
        proc = subprocess.Popen(
            cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        _RUNNING.add(proc)
        try:
            proc.wait()
        except BaseException:
            stop(proc)
            raise
        finally:
            _RUNNING.discard(proc)
    meta = work / "mutants" / (target.path + ".meta")
    if proc.returncode != 0 or not meta.is_file():
        tail = (work / "mutmut.log").read_text(errors="replace")[-2000:]
        raise SystemExit(
            f"mutation: mutmut failed on {target.name} (see {work}/mutmut.log)\n{tail}"
        )
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    results = row_results(codes, target)
    survivors = [n for n, o in results.items() if o == "survived"]
    (work / "survivors.txt").write_text("".join(f"{n}\n" for n in survivors))
    return results


def select(names: Sequence[str]) -> list[Target]:
    if not names:
        return list(TARGETS)
    by_name = {t.path: t for t in TARGETS if not t.part} | {t.name: t for t in TARGETS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(t.name for t in TARGETS)
        raise SystemExit(f"mutation: unknown module {unknown[0]} (known: {known})")
    return [by_name[n] for n in names]


def skip_clean_run() -> None:
    """Make mutmut skip its "clean tests" run when it has just collected its stats.

    mutmut runs the selected tests three times before the first mutant: to
    record which tests reach which function (the stats run, which stops the run
    when a test fails), again unmutated (the clean run), and once more with every
    mutated function raising (the forced-fail run, which stops at the first
    test). In a fresh copy the stats run always happens first, on the same code
    and tests, so the clean run repeats it: it is skipped then, and only then.
    """
    import mutmut
    from mutmut.__main__ import PytestRunner

    run_tests = PytestRunner.run_tests

    def run_tests_unless_clean(
        self: PytestRunner, *, mutant_name: str | None, tests: Iterable[str]
    ) -> int:
        clean = mutant_name is None and os.environ.get("MUTANT_UNDER_TEST") == ""
        if clean and mutmut.stats_time is not None:  # set by a full stats run only
            return 0
        return run_tests(self, mutant_name=mutant_name, tests=tests)

    PytestRunner.run_tests = run_tests_unless_clean  # type: ignore[method-assign]


class CollectedTests:
    """Each mutant's tests run from one collection made before the first mutant.

    mutmut forks a child per mutant that calls ``pytest.main``: a new pytest
    configuration, its plugins and a new collection of the test files each time,
    which costs more than the tests themselves on most rows (0.1 s to start and
    0.1 s to collect the 210 tests that reach ``stream.contract.event_from_dict``).
    Here mutmut's parent process configures pytest and collects the row's tests
    once, after its own three runs (stats, clean, forced fail); each mutant's child
    runs its tests from that collection with pytest's own run-test loop, so the
    fixtures, plugins, ``-x`` and the outcome are pytest's. A mutant whose tests
    are not all in the collection runs through ``pytest.main`` as before.
    """

    def __init__(self) -> None:
        self.session: Any = None
        self.items: dict[str, Any] = {}

    def collect(self, runner: Any) -> None:
        from _pytest.config import _prepareconfig
        from _pytest.main import Session
        from mutmut.__main__ import change_cwd

        # The arguments of mutmut's own runs, with output captured per process in
        # memory: the children of one parent would share the temporary files of
        # fd capture.
        args = ["--rootdir=.", "--tb=native", *runner._pytest_args_regular_run([]),
                *runner._pytest_add_cli_args, "--capture=sys"]
        os.environ["MUTANT_UNDER_TEST"] = ""
        with change_cwd("mutants"):
            config = _prepareconfig(args)
            session = Session.from_config(config)
            config._do_configure()
            config.hook.pytest_sessionstart(session=session)
            config.hook.pytest_collection(session=session)
        if session.testsfailed:  # a collection error: leave it to pytest.main
            return
        self.items = {item.nodeid: item for item in session.items}
        self.session = session

    def run(self, tests: Iterable[str]) -> int | None:
        """pytest's exit code of ``tests`` (1 when one fails); None when one is
        not in the collection."""
        items = [self.items.get(t) for t in tests]
        session = self.session
        if session is None or not items or None in items:
            return None
        from mutmut.__main__ import change_cwd

        devnull = os.open(os.devnull, os.O_WRONLY)  # the child's report is not read
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        session.items = items
        session.testsfailed = 0
        session.shouldfail = session.shouldstop = False
        try:
            with change_cwd("mutants"):
                try:
                    session.config.hook.pytest_runtestloop(session=session)
                except (session.Failed, session.Interrupted):
                    pass
                finally:
                    # What pytest.main does at the end of a session: the fixtures
                    # still set up (a broker, a server) are torn down.
                    session._setupstate.teardown_exact(None)
        except BaseException:  # pytest.main's INTERNAL_ERROR (3), which mutmut counts as killed
            return 3
        return 1 if session.testsfailed else 0


def run_mutants_from_one_collection() -> None:
    """Install :class:`CollectedTests` in mutmut (see there)."""
    import mutmut.__main__ as mm

    collected = CollectedTests()
    forced_fail = mm.run_forced_fail_test
    run_tests = mm.PytestRunner.run_tests

    def run_forced_fail_then_collect(runner: Any) -> None:
        forced_fail(runner)
        collected.collect(runner)

    def run_tests_collected(
        self: Any, *, mutant_name: str | None, tests: Iterable[str]
    ) -> int:
        if mutant_name is not None:
            code = collected.run(tests)
            if code is not None:
                return code
        return int(run_tests(self, mutant_name=mutant_name, tests=tests))

    mm.run_forced_fail_test = run_forced_fail_then_collect
    mm.PytestRunner.run_tests = run_tests_collected  # type: ignore[method-assign]


def mutmut_cli(argv: Sequence[str]) -> int:
    """mutmut's own command line, with the attribute it expects of pytest items.

    mutmut 3.7 is the newest release that accepts faust-streaming's ``click<8.4``; it
    reads ``item._nodeid``, which pytest 9 no longer sets (3.8 reads ``nodeid``).

    A row limited to some functions (``MUTATION_ROW`` names it) has only those
    functions' lines mutated, through mutmut's covered-lines filter: generating
    every mutant of a large module with libcst takes a minute (1,329 mutants of
    models/engine.py for the 27 of its erase row), and the mutants of the other
    functions would not be run anyway.
    """
    import _pytest.nodes
    import mutmut
    from mutmut.__main__ import cli

    if not hasattr(_pytest.nodes.Node, "_nodeid"):
        _pytest.nodes.Node._nodeid = property(lambda node: node.nodeid)  # type: ignore[attr-defined]
    skip_clean_run()
    run_mutants_from_one_collection()
    row = os.environ.get("MUTATION_ROW")
    if row:
        target = select([row])[0]
        lines = target_lines(target, Path(target.path).read_text())
        if lines is not None:
            # mutmut keys the filter by the absolute path of the file's copy in mutants/.
            mutmut._covered_lines = {str((Path("mutants") / target.path).absolute()): lines}
    cli.main(list(argv), prog_name="mutmut")
    return 0


def show_survivors(target: Target) -> None:
    """Print the diff of each surviving mutant of ``target``'s last run."""
    work = WORK / target.name
    names = (work / "survivors.txt").read_text().split()
    os.chdir(work)  # mutmut reads its settings from the folder it is imported in
    from mutmut.__main__ import get_diff_for_mutant

    for name in names:
        print(f"# {name}")
        print(get_diff_for_mutant(name, path=target.path))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--mutmut"]:
        return mutmut_cli(argv[1:])
    if argv[:1] == ["--survivors"]:
        for target in select(argv[1:]):
            show_survivors(target)
        return 0
    p = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="*", help="modules of the table (default: all)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")),
                   help="processes at work at once (env MUTATION_JOBS, default 2)")
    p.add_argument("--list", action="store_true", help="print the table and exit")
    args = p.parse_args(argv)
    targets = select(args.modules)
    if args.list:
        for t in targets:
            print(f"{t.name:28} {' '.join(t.tests)}")
        return 0
    results = run_rows(targets, max(1, args.jobs))
    print(json.dumps(summary({t.name: results[t.name] for t in targets})))
    return 0


def run_rows(targets: Sequence[Target], jobs: int) -> dict[str, dict[str, str]]:
    """Each row's outcomes, ``jobs`` rows at a time with one mutant each.

    A row spends a good part of its time in steps that use one process (copying,
    generating its mutants, the stats run, collecting its tests); with two rows
    under way, one row's mutants use the core another row's set-up leaves idle.
    The rows with the most to mutate start first, so that no long row starts last.
    """
    order = sorted(targets, key=lambda t: (t.functions == ("*",),
                                           (REPO / t.path).stat().st_size), reverse=True)
    results: dict[str, dict[str, str]] = {}

    def one(target: Target) -> None:
        start = time.monotonic()
        outcomes = run_target(target, max(1, jobs // min(jobs, len(targets))))
        results[target.name] = outcomes
        line = summary({target.name: outcomes})
        print(
            f"{target.name}: {line['killed']}/{line['mutants']} killed, "
            f"{line['survived']} survived, {line['timeout']} timeout "
            f"({time.monotonic() - start:.0f} s)",
            file=sys.stderr, flush=True,
        )

    pool = ThreadPoolExecutor(max_workers=min(jobs, len(targets)))
    futures = [pool.submit(one, t) for t in order]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()  # a row's failure (SystemExit with its one line) ends the run
    finally:
        for future in futures:
            future.cancel()
        for proc in list(_RUNNING):
            stop(proc)
        pool.shutdown(wait=True)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
