"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

No engine runs on these machines, so the stack is checked by reading it: the
Compose schema (Debian's docker-compose v1 `config`, offline), pinned images,
ports, listeners, healthchecks, start order, mounted files, that the workers can
scale, and that every setting the containers pass exists in ``stream.settings``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.settings import Settings
from stream.topics import changelog_topic

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

SERVICES = {"kafka", "topics", "worker", "producer", "prometheus", "grafana"}
ONE_SHOT = {"topics", "producer"}  # run to completion: no healthcheck, no restart
# Variables the compose file passes that are not worker settings, and who reads them.
NON_SETTINGS_ENV = {
    "FEEDBACK_DATA_DIR",  # the producer's datasets folder (tools/datasets.py)
    "FEEDBACK_CHANGELOG_TOPIC",  # ops/kafka/create-topics.sh
    "FEEDBACK_DEADLETTER_RETENTION_MS",  # ops/kafka/create-topics.sh
    "FEEDBACK_ERASURE_RECEIPT_RETENTION_MS",  # ops/kafka/create-topics.sh
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(value: Any) -> Any:
    """Resolve ``${VAR:-default}`` with an empty environment, as Compose would."""
    if isinstance(value, str):
        previous = None
        while previous != value:  # defaults may themselves contain ${...}
            previous = value
            value = _VAR.sub(lambda m: m.group(2) if m.group(2) is not None else "", value)
        return value
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(raw_text: str) -> dict[str, Any]:
    return interpolate(yaml.safe_load(raw_text))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping (KEY: value)"
    return {k: str(v) for k, v in env.items()}


def host_port(spec: str) -> tuple[int, int]:
    """'9092:9092' -> (host, container)."""
    parts = str(spec).split(":")
    assert len(parts) == 2, f"port {spec!r}: expected HOST:CONTAINER bound to a fixed port"
    return int(parts[0]), int(parts[1])


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'INTERNAL://kafka:29092,EXTERNAL://:9092' -> {'INTERNAL': ('kafka', 29092), ...}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    """Schema, interpolation and references, checked by a real Compose implementation.

    Compose v1 (Debian) predates the top-level ``name:`` key, so it checks a copy
    without that one line; everything else is validated as written.
    """
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is not on PATH: run ops/install-prometheus.sh"
    text = COMPOSE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("name:")]
    assert len(lines) == len(text.splitlines()) - 1, "expected exactly one top-level name:"
    copy = REPO / ".compose-check.tmp.yml"  # same folder: relative paths keep their meaning
    copy.write_text("\n".join(lines) + "\n")
    try:
        result = subprocess.run(
            [tool, "-f", str(copy), "--project-directory", str(REPO), "config", "-q"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )
    finally:
        copy.unlink()
    assert result.returncode == 0, result.stderr + result.stdout
    assert "WARNING" not in result.stderr, result.stderr


def test_services_and_project_name(compose: dict[str, Any], services: dict) -> None:
    assert compose.get("name") == "feedback-stream"
    assert set(services) == SERVICES
    assert "version" not in compose, "the Compose spec ignores `version:`; leave it out"


def test_every_setting_has_a_default(raw_text: str) -> None:
    """`${VAR}` without a default would be empty (and warned about) on a bare `up`."""
    for match in re.finditer(r"\$\{([^}]*)\}", raw_text):
        assert ":-" in match.group(1), f"${{{match.group(1)}}} has no default (use ${{VAR:-x}})"
    code = [ln.split("#")[0] for ln in raw_text.splitlines()]
    no_sleep = [ln for ln in code if re.search(r"\bsleep\b", ln)]
    assert not no_sleep, f"start order must come from healthchecks, not sleep: {no_sleep}"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image"
        _, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image!r}: pin a full version"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["topics"]["image"] == services["kafka"]["image"]


def test_worker_image_tag_is_the_package_version(services: dict) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for name in ("worker", "producer"):
        assert services[name]["image"] == f"feedback-stream:{project['version']}"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile"
    assert (REPO / services["worker"]["build"]["context"] / "Dockerfile").is_file()
    assert "build" not in services["producer"], "one image, built once by the worker service"


def test_kafka_kraft_listeners(services: dict) -> None:
    env = env_of(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"], "KRaft storage needs a cluster id"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(bound) == set(protocols), "every listener needs a security protocol"
    assert controller in bound and controller not in advertised
    assert set(advertised) == set(bound) - {controller}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    voter_host, voter_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1].split(":")
    assert (voter_host, int(voter_port)) == ("kafka", bound[controller][1])
    for name in advertised:
        assert advertised[name][1] == bound[name][1], f"{name}: advertised port != bound port"

    # The containers' listener: what the workers bootstrap from, resolvable in the network.
    internal = {n for n, (h, _) in advertised.items() if h == "kafka"}
    assert len(internal) == 1
    (internal_name,) = internal
    bootstrap = f"kafka:{advertised[internal_name][1]}"
    for name in ("topics", "worker", "producer"):
        assert env_of(services[name])["FEEDBACK_BOOTSTRAP_SERVERS"] == bootstrap, name

    # The host listener: published on the host at the port it advertises.
    (external_name,) = set(advertised) - internal
    published = [host_port(p) for p in services["kafka"]["ports"]]
    assert published == [(advertised[external_name][1], bound[external_name][1])]
    assert advertised[external_name][0] == "localhost"

    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # one broker
    hc = " ".join(services["kafka"]["healthcheck"]["test"])
    assert f"localhost:{advertised[internal_name][1]}" in hc, "probe the listener workers use"
    assert "kafka-data" in " ".join(services["kafka"]["volumes"])


def test_healthchecks(services: dict) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} runs once"
            assert "healthcheck" not in svc
            continue
        hc = svc.get("healthcheck")
        assert hc, f"{name}: long-running service without a healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in hc, f"{name}: healthcheck without {key}"
        assert svc.get("restart") == "unless-stopped", name
    assert "/readyz" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])


def test_start_order_uses_conditions(services: dict) -> None:
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") in valid, f"{name} -> {dep}: no valid condition"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s missing check"
            if spec["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOT
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for name in ("worker", "producer"):
        assert services[name]["depends_on"]["topics"] == {
            "condition": "service_completed_successfully"
        }
    assert services["producer"]["depends_on"]["worker"] == {"condition": "service_healthy"}
    assert services["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}


def test_ports_and_profiles(services: dict) -> None:
    published = {}
    for name, svc in services.items():
        for spec in svc.get("ports", []):
            host, _ = host_port(spec)
            assert host not in published, f"host port {host} used by {published[host]} and {name}"
            published[host] = name
    assert sorted(published.values()) == ["grafana", "kafka", "prometheus"]
    assert [host_port(p) for p in services["prometheus"]["ports"]] == [(9090, 9090)]
    assert [host_port(p) for p in services["grafana"]["ports"]] == [(3000, 3000)]
    assert services["producer"]["profiles"] == ["replay"]
    assert all("profiles" not in s for n, s in services.items() if n != "producer")


def test_worker_is_scalable(services: dict) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed name forbids a second replica"
    assert "ports" not in worker, "a published host port clashes between replicas"
    assert int(worker["deploy"]["replicas"]) >= 2, "two or more workers share the group"
    env = env_of(worker)
    assert env["FEEDBACK_WEB_HOST"] == "0.0.0.0", "Prometheus scrapes from another container"
    assert [str(p) for p in worker["expose"]] == [env["FEEDBACK_WEB_PORT"]]
    assert "FEEDBACK_APP_ID" in env, "replicas join one consumer group: the app id"

    # Prometheus discovers every replica by Docker DNS, on the worker's web port.
    prom = yaml.safe_load((REPO / "ops/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "feedback-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert str(sd["port"]) == env["FEEDBACK_WEB_PORT"]
    assert "static_configs" not in job


def test_container_settings_exist_and_match_defaults(services: dict) -> None:
    """Every FEEDBACK_* variable is a real setting, with the same default as the code."""
    names = {f"FEEDBACK_{f.upper()}": f for f in vars(Settings())}
    defaults = Settings()
    container_specific = {"bootstrap_servers", "web_host", "state_dir", "web_port"}
    container_specific |= {"session_timeout_seconds", "heartbeat_seconds"}  # real Kafka
    for svc_name in ("topics", "worker", "producer"):
        for key, value in env_of(services[svc_name]).items():
            assert key.startswith("FEEDBACK_"), f"{svc_name}: {key}"
            if key in NON_SETTINGS_ENV:
                continue
            assert key in names, f"{svc_name}: {key} is not a setting of stream.settings"
            field = names[key]
            if field not in container_specific:
                assert value == str(getattr(defaults, field)), (
                    f"{svc_name}: {key} defaults to {value!r}, the code to "
                    f"{getattr(defaults, field)!r}"
                )
    # The settings must also validate as the container would read them.
    Settings.from_env(env_of(services["worker"]))


def test_topics_service_creates_every_topic(services: dict) -> None:
    topics = services["topics"]
    assert topics["entrypoint"][0] == "/bin/bash"
    script_in_container = topics["entrypoint"][1]
    (mount,) = [v for v in topics["volumes"] if v.split(":")[1] == script_in_container]
    script = REPO / mount.split(":")[0]
    assert mount.endswith(":ro")
    text = script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = env_of(topics)
    for var in (
        "FEEDBACK_TOPIC_CLICKS", "FEEDBACK_TOPIC_PURCHASES", "FEEDBACK_TOPIC_REVIEWS",
        "FEEDBACK_TOPIC_RECOMMENDATIONS", "FEEDBACK_TOPIC_ALERTS", "FEEDBACK_TOPIC_DEADLETTER",
        "FEEDBACK_TOPIC_ERASURE", "FEEDBACK_TOPIC_ERASURE_DONE", "FEEDBACK_CHANGELOG_TOPIC",
    ):
        assert re.search(rf'create "\$\{{{var}[:}}]', text), f"create-topics.sh skips {var}"
        assert var in env, f"topics service does not pass {var}"
    assert env["FEEDBACK_CHANGELOG_TOPIC"] == changelog_topic(Settings())
    changelog_line = text[text.index('create "${FEEDBACK_CHANGELOG_TOPIC'):]
    assert "cleanup.policy=compact" in changelog_line.split("\n\n")[0]
    assert '--partitions "$partitions"' in text and '--replication-factor "$replication"' in text
    assert "--if-not-exists" in text, "re-running `up` must not fail"
    assert "set -euo pipefail" in text


def test_mounted_files_exist(services: dict) -> None:
    named = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    for name, svc in services.items():
        for spec in svc.get("volumes", []):
            source, target, *mode = spec.split(":")
            if not source.startswith((".", "/")):
                assert source in named, f"{name}: volume {source} not declared"
                continue
            path = (REPO / source).resolve()
            if REPO in path.parents or path == REPO:
                assert path.exists(), f"{name}: mounts {source}, which is not in the repository"
                assert mode == ["ro"], f"{name}: configuration is mounted read-only"
            else:
                # Only the shared datasets live outside the repository (optional profile).
                assert name == "producer" and target == "/data" and mode == ["ro"], spec
                assert env_of(svc)["FEEDBACK_DATA_DIR"] == target
                assert f"--data-dir={target}" in services["producer"]["command"]


def test_prometheus_and_grafana_mounts_line_up(services: dict) -> None:
    prom_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    by_target = {t: s for s, t in prom_mounts.items()}
    config_flag = next(a for a in services["prometheus"]["command"] if "--config.file" in a)
    config_path = config_flag.split("=", 1)[1]
    assert config_path in by_target
    config = yaml.safe_load((REPO / by_target[config_path]).read_text())
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert in_container in by_target, f"rule file {rule_file} is not mounted"

    graf = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in graf["volumes"])
    provider = yaml.safe_load(
        (REPO / "ops/grafana/provisioning/dashboards/feedback-stream.yml").read_text()
    )
    dash_dir = provider["providers"][0]["options"]["path"]
    (dash_source,) = [s for s, t in mounts.items() if t == dash_dir]
    assert list((REPO / dash_source).glob("*.json")), "no dashboard JSON in the mounted folder"
    home = env_of(graf)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/")
    assert (REPO / dash_source / Path(home).name).is_file()
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load(
        (REPO / "ops/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    _, container_port = host_port(services["prometheus"]["ports"][0])
    assert ds["url"] == f"http://prometheus:{container_port}"
    assert env_of(graf)["GF_SECURITY_ADMIN_PASSWORD"], "credentials come from the environment"


# -- Dockerfile ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def test_dockerfile_base_is_pinned_python_311_slim(dockerfile: list) -> None:
    bases = [args.split()[0] for instr, args in dockerfile if instr == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?", base), base


def test_dockerfile_installs_the_package_and_runs_as_non_root(dockerfile: list) -> None:
    instrs = [i for i, _ in dockerfile]
    runs = " ".join(a for i, a in dockerfile if i == "RUN")
    assert "pip install ." in runs
    users = [a for i, a in dockerfile if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the worker must not run as root"
    last_from = max(i for i, x in enumerate(instrs) if x == "FROM")
    assert instrs.index("USER", last_from) < instrs.index("ENTRYPOINT")
    (health,) = [a for i, a in dockerfile if i == "HEALTHCHECK"]
    assert "/readyz" in health and "--start-period" in health
    assert dict(dockerfile)["ENTRYPOINT"] == '["feedback-stream"]'
    expose = [a for i, a in dockerfile if i == "EXPOSE"]
    assert expose == [str(Settings().web_port)]
    envs = " ".join(a for i, a in dockerfile if i == "ENV")
    assert "FEEDBACK_WEB_HOST=0.0.0.0" in envs, "127.0.0.1 is unreachable from outside"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "feedback-stream" in scripts


def test_dockerfile_copies_what_pip_install_needs(dockerfile: list) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in find["include"]}
    copied = set()
    for instr, args in dockerfile:
        if instr == "COPY" and not args.startswith("--from"):
            copied.update(Path(s).name for s in args.split()[:-1])
    assert packages <= copied, f"packages not copied into the image: {packages - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for name in copied:
        assert (REPO / name).exists(), f"COPY {name}: not in the repository"

    ignored = {
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    hidden = copied & ignored
    assert not hidden, f".dockerignore hides what the Dockerfile copies: {hidden}"
    assert {".git", ".venv"} <= ignored, "keep the build context small"


def test_topics_script_creates_what_the_worker_expects(services: dict, tmp_path: Path) -> None:
    """Run create-topics.sh with the topics service's environment and a stub
    kafka-topics.sh; the topics it creates are stream.topics.topic_specs()."""
    from stream.topics import topic_specs

    calls = tmp_path / "calls.txt"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n')
    stub.chmod(0o755)
    env = {**env_of(services["topics"]), "KAFKA_TOPICS_BIN": str(stub), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", str(REPO / "ops/kafka/create-topics.sh")],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    created = {}
    for line in calls.read_text().splitlines():
        args = line.split()
        if "--create" not in args:
            continue
        assert args[args.index("--bootstrap-server") + 1] == env["FEEDBACK_BOOTSTRAP_SERVERS"]
        assert "--if-not-exists" in args
        configs = dict(
            args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--config"
        )
        created[args[args.index("--topic") + 1]] = (
            int(args[args.index("--partitions") + 1]),
            int(args[args.index("--replication-factor") + 1]),
            configs,
        )
    expected = topic_specs(Settings.from_env(env_of(services["worker"])))
    assert set(created) == {s.name for s in expected}
    for spec in expected:
        partitions, replication, configs = created[spec.name]
        assert (partitions, replication) == (spec.partitions, spec.replication_factor)
        assert configs.get("cleanup.policy", "delete") == spec.config["cleanup.policy"]


def test_workers_advertise_a_routable_url_in_containers(
    services: dict, tmp_path: Path
) -> None:
    """Faust's table routing forwards a request to the owner's canonical URL; with
    several replicas each must advertise its own address, not the wildcard bind."""
    from prometheus_client import CollectorRegistry

    from stream.app import build_app

    env = {**env_of(services["worker"]), "FEEDBACK_STATE_DIR": str(tmp_path)}
    fa = build_app(Settings.from_env(env), registry=CollectorRegistry())
    assert str(fa.app.conf.web_bind) == "0.0.0.0", "listen on every interface"
    assert fa.app.conf.canonical_url.host not in ("0.0.0.0", "::", "127.0.0.1", "localhost")


def test_worker_secrets_come_from_an_env_file_whose_sample_holds_none(services: dict) -> None:
    worker = services["worker"]
    (env_file,) = worker["env_file"]
    sample = REPO / env_file
    assert sample.name.endswith(".sample") and sample.is_file()
    values = {}
    for line in sample.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    assert set(values) == {"FEEDBACK_API_TOKENS", "FEEDBACK_PSEUDONYMISE_KEY"}
    assert all(value == "" for value in values.values()), "the sample must hold no secret"
    for name in values:
        assert hasattr(Settings(), name.removeprefix("FEEDBACK_").lower())
        assert name not in env_of(worker), f"{name} belongs in the env file only"
    assert "secrets.env" in (REPO / ".gitignore").read_text().split()
