"""The security settings reach both Kafka clients intact: the aiokafka clients of
the tools (``stream.kafka.client_kwargs``) and the Faust worker
(``stream.app.broker_credentials``, as Faust's aiokafka driver translates it).

No SASL broker is needed: the assertions are on the arguments the clients get,
and a TLS handshake against a local listener that requires a client certificate
shows the certificate is really presented (Tansu serves neither TLS nor SASL,
docs/testing.md).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
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


# -- a real TLS handshake: a local listener that requires a client certificate --------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost and a client certificate it signed."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is part of the base image (Debian's openssl package)"
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *key, "-days", "2", "-subj", "/CN=feedback-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "feedback-stream-client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        run("req", *key, "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return d


def handshake(pki: Path, client: ssl.SSLContext) -> str | None:
    """Connect ``client`` to a listener that requires a certificate signed by the
    test CA; the common name of the client certificate it saw, or None if refused."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki / "server.pem", pki / "server.key")
    server.load_verify_locations(pki / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    seen: list[str | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    subject = dict(x[0] for x in tls.getpeercert()["subject"])
                    seen.append(subject["commonName"])
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                seen.append(None)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(2)
        except (ssl.SSLError, OSError):
            pass
        thread.join(10)
    return seen[0] if seen else None


def pki_settings(pki: Path, protocol: str = "SSL", with_certificate: bool = True) -> Settings:
    files = {"ssl_cafile": str(pki / "ca.pem")}
    if with_certificate:
        files |= {"ssl_certfile": str(pki / "client.pem"), "ssl_keyfile": str(pki / "client.key")}
    sasl = {"sasl_username": "svc", "sasl_password": "pw"} if protocol.startswith("SASL") else {}
    return Settings.from_env(env(security_protocol=protocol, **files, **sasl))


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_handshake_presents_the_client_certificate(pki: Path, protocol: str) -> None:
    s = pki_settings(pki, protocol)
    # The tools' aiokafka clients and the Faust worker build their contexts apart.
    tools_context = client_kwargs(s)["ssl_context"]
    worker_context = credentials_to_aiokafka_auth(broker_credentials(s))["ssl_context"]
    assert handshake(pki, tools_context) == "feedback-stream-client"
    assert handshake(pki, worker_context) == "feedback-stream-client"


def test_the_listener_refuses_a_client_without_certificate(pki: Path) -> None:
    # The control: the listener really requires one, so the test above can fail.
    s = pki_settings(pki, with_certificate=False)
    assert handshake(pki, client_kwargs(s)["ssl_context"]) is None
