"""The Coze client honours HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, through a real proxy.

The adapter gives httpx its own transport, which makes httpx ignore the proxy environment unless
the adapter mounts proxy transports itself; these tests run a small proxy (forwarding for
http:// targets, CONNECT tunnels for https://) and a TLS simulator, and check which way each
request went.
"""

import datetime
import socket
import socketserver
import threading
import time
import urllib.parse

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chat import coze
from chat.simulator import SimulatorConfig, create_app
from chat.simulator.server import bind_socket, uvicorn_config
from tests.conftest import COZE_TEST_TOKEN

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
TLS_HOST = "coze.proxy-test"  # resolvable by the proxy only, as Coze often is behind a corporate proxy


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        self.server.requests.append(f"{method} {target.split('?')[0]}")

        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((self.server.hosts.get(host, host), int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # Forwarding: absolute-form target to origin-form, one request per connection.
            url = urllib.parse.urlsplit(target)
            upstream = socket.create_connection((self.server.hosts.get(url.hostname, url.hostname), url.port or 80))
            path = url.path + (f"?{url.query}" if url.query else "")
            kept = [line for line in header_lines if not line.lower().startswith(("connection:", "proxy-"))]
            upstream.sendall("\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode())
        upstream.sendall(rest)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:  # either side gone: end both, as a proxy would
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(10)
        upstream.close()


class RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy on 127.0.0.1 that records each request (`POST http://h:p/path`, `CONNECT h:p`)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hosts: dict[str, str] | None = None):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.requests: list[str] = []
        self.hosts = hosts or {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def proxy_env(monkeypatch):
    """A clean proxy environment (whatever the machine running the tests has set is dropped)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture
def proxy():
    server = RecordingProxy(hosts={TLS_HOST: "127.0.0.1"})
    yield server
    server.shutdown()
    server.server_close()


def _certificate_for(hostname: str, directory) -> tuple[str, str]:
    """A self-signed certificate for `hostname`: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


@pytest.fixture(scope="module")
def tls_simulator(tmp_path_factory):
    """The simulator over HTTPS, as Coze is: yields (port, CA file the client must trust)."""
    cert_file, key_file = _certificate_for(TLS_HOST, tmp_path_factory.mktemp("tls"))
    sock = bind_socket("127.0.0.1", 0)
    app = create_app(SimulatorConfig(token=COZE_TEST_TOKEN))
    server = uvicorn.Server(uvicorn_config(app, log_config=None, ssl_certfile=cert_file, ssl_keyfile=key_file))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the TLS simulator did not start"
        time.sleep(0.01)
    yield sock.getsockname()[1], cert_file
    server.should_exit = True
    thread.join(10)


async def _whole_reply(message: str) -> str:
    upstream = await coze.achat_open(
        bot_id="1",
        user_id="u",
        conversation_id=None,
        messages=coze.build_messages(message=message, additional_messages=None),
    )
    try:
        return "".join([event.content async for event in upstream.events() if isinstance(event, coze.UpstreamDelta)])
    finally:
        await upstream.aclose()


@pytest.mark.asyncio
async def test_requests_to_an_http_coze_go_through_http_proxy(simulator, proxy, proxy_env):
    proxy_env.setenv("HTTP_PROXY", proxy.url)

    reply = await _whole_reply("through the proxy")

    assert "through the proxy" in reply
    assert proxy.requests == [f"POST {simulator.base_url}/v3/chat"]


@pytest.mark.asyncio
async def test_requests_to_an_https_coze_tunnel_through_https_proxy(settings, tls_simulator, proxy, proxy_env):
    port, ca_file = tls_simulator
    settings.COZE_BASE_URL = f"https://{TLS_HOST}:{port}"
    proxy_env.setenv("SSL_CERT_FILE", ca_file)
    proxy_env.setenv("HTTPS_PROXY", proxy.url)

    reply = await _whole_reply("tunnelled")

    assert "tunnelled" in reply
    assert proxy.requests == [f"CONNECT {TLS_HOST}:{port}"]


@pytest.mark.asyncio
async def test_all_proxy_applies_to_every_scheme(simulator, proxy, proxy_env):
    proxy_env.setenv("ALL_PROXY", proxy.url)

    await _whole_reply("all of them")

    assert proxy.requests == [f"POST {simulator.base_url}/v3/chat"]


@pytest.mark.asyncio
async def test_hosts_in_no_proxy_are_reached_directly(simulator, proxy, proxy_env):
    proxy_env.setenv("HTTP_PROXY", proxy.url)
    proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")

    reply = await _whole_reply("direct")

    assert "direct" in reply
    assert proxy.requests == []
