"""Smart HTTP on loopback for the tests: ``git http-backend`` behind a WSGI app over TLS, with HTTP Basic
auth that accepts exactly one token. ``delay`` slows every request so a test can look at the processes of a
clone while it runs."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USERNAME = "x-access-token"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def write_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


class GitHttpsRemote:
    def __init__(self, project_root: Path, token: str, *, delay: float = 0.0) -> None:
        self.project_root = project_root
        self.delay = delay
        self.expected = "Basic " + base64.b64encode(f"{USERNAME}:{token}".encode()).decode()
        self.requests: list[tuple[str, str, int]] = []
        certs = project_root.parent / "certs"
        certs.mkdir(exist_ok=True)
        self.ca_file, key_file = write_self_signed_cert(certs)
        self._server = make_server(
            "127.0.0.1", 0, self._app, server_class=_Server, handler_class=_QuietHandler
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self._server.server_port}/{name}"

    def __enter__(self) -> GitHttpsRemote:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != self.expected:
            self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], 401))
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"authentication required\n"]
        time.sleep(self.delay)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        cgi_env = {
            key: value for key, value in environ.items() if key.startswith("HTTP_") and isinstance(value, str)
        }
        cgi_env.update(
            GIT_PROJECT_ROOT=str(self.project_root),
            GIT_HTTP_EXPORT_ALL="1",
            GIT_CONFIG_NOSYSTEM="1",
            HOME=str(self.project_root),
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            PATH_INFO=environ["PATH_INFO"],
            QUERY_STRING=environ.get("QUERY_STRING", ""),
            REQUEST_METHOD=environ["REQUEST_METHOD"],
            CONTENT_TYPE=environ.get("CONTENT_TYPE", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=USERNAME,
            REMOTE_ADDR="127.0.0.1",
        )
        output = subprocess.run(
            ["git", "http-backend"], input=body, env=cgi_env, capture_output=True, timeout=30, check=False
        ).stdout
        separator = b"\r\n\r\n" if b"\r\n\r\n" in output else b"\n\n"
        head, _, payload = output.partition(separator)
        status, headers = "200 OK", []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            else:
                headers.append((name.strip(), value.strip()))
        self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], int(status.split()[0])))
        start_response(status, headers)
        return [payload]
