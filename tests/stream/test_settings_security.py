"""The security settings reach both Kafka clients intact: the aiokafka clients of
the tools (``stream.kafka.client_kwargs``) and the Faust worker
(``stream.app.broker_credentials``, as Faust's aiokafka driver translates it).

No SASL broker is needed: the assertions are on the arguments the clients get.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from prometheus_client import CollectorRegistry

from stream.app import broker_credentials, build_app
from stream.kafka import client_kwargs
from stream.settings import Settings, SettingsError


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed CA certificate and a client certificate + key (PEM)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is part of the base image (Debian's openssl package)"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=feedback-stream-test", "-keyout", str(d / "client.key"),
         "-out", str(d / "client.pem")],
        check=True, capture_output=True,
    )
    return {
        "ssl_cafile": str(d / "client.pem"),
        "ssl_certfile": str(d / "client.pem"),
        "ssl_keyfile": str(d / "client.key"),
    }


def env(**values: str) -> dict[str, str]:
    return {f"FEEDBACK_{k.upper()}": v for k, v in values.items()}


def test_plaintext_by_default() -> None:
    s = Settings.from_env({})
    assert s.security_protocol == "PLAINTEXT"
    assert client_kwargs(s)["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in client_kwargs(s)
    assert broker_credentials(s) is None
    assert credentials_to_aiokafka_auth(broker_credentials(s)) == {
        "security_protocol": "PLAINTEXT"
    }


def test_http_endpoints_bind_to_loopback_by_default(tmp_path: Path) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path))
    assert s.web_host == "127.0.0.1"
    fa = build_app(s, registry=CollectorRegistry())
    assert fa.app.conf.web_bind == "127.0.0.1"
    exposed = Settings.from_env(env(web_host="0.0.0.0"), state_dir=str(tmp_path))
    assert exposed.web_host == "0.0.0.0"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism: str, tmp_path: Path) -> None:
    s = Settings.from_env(
        env(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
            sasl_username="svc-feedback", sasl_password="s3cret!"),
        state_dir=str(tmp_path),
    )
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_PLAINTEXT"
    assert kw["sasl_mechanism"] == mechanism
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("svc-feedback", "s3cret!")
    assert "ssl_context" not in kw

    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc-feedback", "s3cret!")
    assert auth["ssl_context"] is None
    # The Faust app is configured with exactly these credentials.
    fa = build_app(s, registry=CollectorRegistry())
    assert credentials_to_aiokafka_auth(fa.app.conf.broker_credentials) == auth


def test_sasl_ssl_with_client_certificate(tls_files: dict[str, str], tmp_path: Path) -> None:
    s = Settings.from_env(
        env(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
            sasl_username="svc", sasl_password="pw", **tls_files),
        state_dir=str(tmp_path),
    )
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    # Server certificates are verified against the configured CA, host names checked.
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(
        c.get("subject") == ((("commonName", "feedback-stream-test"),),)
        for c in ctx.get_ca_certs()
    )
    auth = credentials_to_aiokafka_auth(broker_credentials(s))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_ssl_only(tls_files: dict[str, str]) -> None:
    s = Settings.from_env(env(security_protocol="SSL", **tls_files))
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SSL" and isinstance(kw["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in kw
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "FEEDBACK_SASL_USERNAME and FEEDBACK_SASL_PASSWORD"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"},
         "FEEDBACK_SASL_USERNAME and FEEDBACK_SASL_PASSWORD"),
        ({"security_protocol": "SASL"}, "FEEDBACK_SECURITY_PROTOCOL must be one of"),
        ({"sasl_mechanism": "GSSAPI"}, "FEEDBACK_SASL_MECHANISM must be one of"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
         "TLS file not found: /nonexistent/ca.pem"),
    ],
)
def test_bad_security_settings_fail_at_start_up(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env(**values))


def test_secrets_are_not_in_the_settings_repr() -> None:
    s = Settings.from_env(
        env(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="hunter2-xyz",
            pseudonymise_key="k" * 32),
    )
    assert "hunter2-xyz" not in repr(s)
    assert "k" * 32 not in repr(s)
