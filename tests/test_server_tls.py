"""http.tls on `stratus serve`: HTTPS with an openssl-made certificate, mutual TLS,
minimumtls, and the settings refused at start-up with their key named.

Each server is a real `python -m chalicelib serve` subprocess on a free loopback port,
stopped by its process group whatever happens (tests/servers.py)."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests

from .oci_client import Registry, random_bytes, unique_repo
from .servers import ROOT, free_port, process
from .tls_certs import Certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _env(root: Path, certs: Certificates, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "STRATUS_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "REGISTRY_HTTP_SECRET": "test-secret",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root),
        # the acceptance: these two variables alone turn HTTPS on
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(certs.server_cert),
        "REGISTRY_HTTP_TLS_KEY": str(certs.server_key),
        **extra,
    })
    return env


@contextmanager
def https_server(tmp_path: Path, certs: Certificates, **extra: str) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}"]
    log = tmp_path / f"serve-{port}.log"
    with process(argv, port, _env(tmp_path / "data", certs, **extra), log_path=log, cwd=ROOT, inherit_env=False):
        yield f"https://127.0.0.1:{port}"
    # refused handshakes and plain HTTP on the TLS port are a client's errors: no traceback
    assert "Traceback" not in log.read_text(), log.read_text()


def _handshake(port: int, certs: Certificates, cert: Optional[tuple[Path, Path]] = None,
               maximum: Optional[ssl.TLSVersion] = None) -> str:
    """GET /v2/ over a TLS connection made by hand: the status line, or the error's class
    name when the handshake (or the first read, where TLS 1.3 reports a refused client
    certificate) fails."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    if maximum is not None:
        context.maximum_version = maximum
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = tls.recv(4096)
                if not data:
                    return "closed"
                return data.split(b"\r\n", 1)[0].decode()
    except ssl.SSLError:  # a refused handshake: an alert, or the server hanging up (SSLEOFError)
        return "SSLError"
    except (ConnectionResetError, BrokenPipeError) as exc:
        return type(exc).__name__


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("server", ["uvicorn", "granian", "gunicorn"])
def test_tls_variables_serve_https_and_a_push(tmp_path, certs, server):
    with https_server(tmp_path, certs, STRATUS_SERVER=server) as url:
        registry = Registry(url)
        registry.session.verify = str(certs.ca)
        registry.session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace verify
        repo = unique_repo("tls")
        data = random_bytes(300_000)  # larger than one TLS record, over several reads
        start = registry.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202
        assert start.headers["Location"].startswith(url + "/")  # the scheme the client used
        digest = registry.push_blob(repo, data)
        pulled = registry.blob(repo, digest)
        # a blob on disk goes out with sendfile on plain HTTP: under TLS it must be encrypted
        assert pulled.status_code == 200 and pulled.content == data
        registry.close()
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP gets no answer
            requests.get(url.replace("https:", "http:") + "/v2/", timeout=10)


@pytest.mark.parametrize("server", ["uvicorn", "granian", "gunicorn"])
def test_mutual_tls_refuses_a_client_without_a_certificate_the_cas_signed(tmp_path, certs, server):
    with https_server(tmp_path, certs, STRATUS_SERVER=server, REGISTRY_HTTP_TLS_CLIENTCAS=f"[{certs.ca}]") as url:
        port = _port(url)
        assert _handshake(port, certs) != "HTTP/1.1 200 OK"
        assert _handshake(port, certs, (certs.stranger_cert, certs.stranger_key)) != "HTTP/1.1 200 OK"
        assert _handshake(port, certs, (certs.client_cert, certs.client_key)) == "HTTP/1.1 200 OK"
        answer = requests.get(url + "/v2/", verify=str(certs.ca), cert=(str(certs.client_cert), str(certs.client_key)),
                              timeout=10)
        assert answer.status_code == 200


def test_minimumtls_tls13_refuses_a_tls12_client(tmp_path, certs):
    with https_server(tmp_path, certs, REGISTRY_HTTP_TLS_MINIMUMTLS="tls1.3") as url:
        port = _port(url)
        assert _handshake(port, certs, maximum=ssl.TLSVersion.TLSv1_2) == "SSLError"
        assert _handshake(port, certs, maximum=ssl.TLSVersion.TLSv1_3) == "HTTP/1.1 200 OK"


def test_minimumtls_default_accepts_tls12(tmp_path, certs):
    with https_server(tmp_path, certs) as url:
        assert _handshake(_port(url), certs, maximum=ssl.TLSVersion.TLSv1_2) == "HTTP/1.1 200 OK"


def test_ciphersuites_limit_tls12_suites(tmp_path, certs):
    """The server's key is ECDSA: with only an RSA suite allowed, a TLS 1.2 client finds none."""
    rsa_only = "[TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]"
    with https_server(tmp_path, certs, REGISTRY_HTTP_TLS_CIPHERSUITES=rsa_only) as url:
        assert _handshake(_port(url), certs, maximum=ssl.TLSVersion.TLSv1_2) == "SSLError"
    ecdsa = "[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]"
    with https_server(tmp_path, certs, REGISTRY_HTTP_TLS_CIPHERSUITES=ecdsa) as url:
        assert _handshake(_port(url), certs, maximum=ssl.TLSVersion.TLSv1_2) == "HTTP/1.1 200 OK"


def _refused(tmp_path: Path, certs: Certificates, **extra: str) -> str:
    env = _env(tmp_path / "data", certs, **extra)
    done = subprocess.run([sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{free_port()}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize("variables, message", [
    ({"REGISTRY_HTTP_TLS_MINIMUMTLS": "tls1.4"}, "http.tls.minimumtls (from REGISTRY_HTTP_TLS_MINIMUMTLS): expected"),
    ({"REGISTRY_HTTP_TLS_MINIMUMTLS": "tls1.0"}, "http.tls.minimumtls (from REGISTRY_HTTP_TLS_MINIMUMTLS): not supp"),
    ({"REGISTRY_HTTP_TLS_CLIENTAUTH": "request-client-cert"}, "http.tls.clientauth (from REGISTRY_HTTP_TLS_CLIENTAUTH)"),
    ({"REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL": "ops@example.com"}, "http.tls.letsencrypt.email (from"),
    ({"REGISTRY_HTTP_TLS_CIPHERSUITES": "[TLS_RSA_WITH_RC4_128_SHA]"}, "http.tls.ciphersuites (from"),
    ({"REGISTRY_HTTP_TLS_CERTIFICATE": "/nonexistent/cert.pem"}, "http.tls.certificate: cannot read /nonexistent"),
    ({"REGISTRY_HTTP_TLS_KEY": "/nonexistent/key.pem"}, "http.tls.key: cannot read /nonexistent"),
    ({"REGISTRY_HTTP_TLS_CLIENTCAS": "[/nonexistent/ca.pem]"}, "http.tls.clientcas.0: cannot load"),
    ({"STRATUS_SERVER": "granian", "REGISTRY_HTTP_TLS_CIPHERSUITES": "[TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]"},
     "http.tls.ciphersuites: not supported by STRATUS_SERVER=granian"),
])
def test_tls_settings_that_cannot_be_served_stop_the_start_naming_the_key(tmp_path, certs, variables, message):
    stderr = _refused(tmp_path, certs, **variables)
    assert f"configuration error: {message}" in stderr, stderr


def test_a_key_that_does_not_match_the_certificate_is_named(tmp_path, certs):
    stderr = _refused(tmp_path, certs, REGISTRY_HTTP_TLS_KEY=str(certs.client_key))
    assert "configuration error: http.tls.certificate: " in stderr and "private key" in stderr, stderr
