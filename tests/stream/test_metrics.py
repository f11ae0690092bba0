"""The metrics the worker declares, as Prometheus reads them."""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream.metrics import Metrics


def exposition() -> str:
    registry = CollectorRegistry()
    Metrics(registry)
    return generate_latest(registry).decode()


def test_build_info_names_what_runs() -> None:
    (line,) = [x for x in exposition().splitlines() if x.startswith("feedback_build_info{")]
    assert f'python="{platform.python_version()}"' in line
    for label in ("version", "faust", "river"):
        assert f'{label}="' in line and f'{label}="unknown"' not in line


def test_promtool_accepts_the_exposition() -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not on PATH: run ops/install-prometheus.sh")
    result = subprocess.run([tool, "check", "metrics"], input=exposition().encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
