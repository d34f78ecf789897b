"""The sample nginx configuration: TLS on 443, plain HTTP only redirecting there, every proxied
location telling the workers how the request arrived, in the header Django's settings trust, and
body limits — the upload limit on the upload paths, 1 MiB elsewhere — answered in the API's JSON.
Where nginx is installed, a real nginx runs the sample in front of the application."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings

from tests.conftest import auth
from tests.test_workers import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def parse(text: str) -> list:
    """nginx configuration as nested lists: a directive is `[words]`, a block `[words, [children]]`."""
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|[{};]|[^\s{};]+", re.sub(r"#[^\n]*", "", text))
    stack: list[list] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].append(words)
            words = []
        elif token == "{":
            block = [*words, []]
            stack[-1].append(block)
            stack.append(block[-1])
            words = []
        elif token == "}":
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced nginx.conf"
    return stack[0]


def blocks(tree: list, name: str) -> list[list]:
    return [item for item in tree if item and item[0] == name and isinstance(item[-1], list)]


def directives(block: list, name: str) -> list[list[str]]:
    return [item[1:] for item in block if item and item[0] == name and not isinstance(item[-1], list)]


def servers() -> list[list]:
    return [server[-1] for server in blocks(parse(NGINX_CONF.read_text()), "server")]


def listens_on(server: list, port: str) -> list[list[str]]:
    return [words for words in directives(server, "listen") if words[0].rsplit(":", 1)[-1] == port]


def production_proxy_ssl_header() -> tuple[str, str]:
    """SECURE_PROXY_SSL_HEADER as a production process (not the test settings) sets it."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_", "CHAT_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(*s.SECURE_PROXY_SSL_HEADER, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)",
        ],
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "cozeproject.settings",
            "DJANGO_SECRET_KEY": "production-secret-key-" + "0123456789abcdef" * 3,
            "CHAT_DEMO": "1",
            "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    header, value, session_secure, csrf_secure = result.stdout.split()
    assert session_secure == csrf_secure == "True", "production cookies are Secure by default"
    return header, value


def test_plain_http_only_redirects_to_https():
    plain = [server for server in servers() if listens_on(server, "80")]
    assert plain, "a server on port 80"
    for server in plain:
        assert not blocks(server, "location") or all(
            directives(location[-1], "return") == [["301", "https://$host$request_uri"]]
            for location in blocks(server, "location")
        )
        assert not any(directives(location[-1], "proxy_pass") for location in blocks(server, "location"))


def test_tls_terminates_on_443_and_tells_the_workers_the_scheme():
    header, value = production_proxy_ssl_header()
    assert (header, value) == ("HTTP_X_FORWARDED_PROTO", "https")
    forwarded_header = header.removeprefix("HTTP_").replace("_", "-").lower()

    tls = [server for server in servers() if listens_on(server, "443")]
    assert tls, "a server on port 443"
    for server in tls:
        assert all("ssl" in words for words in listens_on(server, "443"))
        assert directives(server, "ssl_certificate") and directives(server, "ssl_certificate_key")
        proxied = [location for location in blocks(server, "location") if directives(location[-1], "proxy_pass")]
        assert proxied
        for location in proxied:
            headers = {words[0].lower(): words[1] for words in directives(location[-1], "proxy_set_header")}
            where = " ".join(location[1:-1])
            # Set by nginx on every request, so a client can't claim HTTPS by sending the header itself.
            assert headers.get(forwarded_header) == "$scheme", f"location {where} must set {forwarded_header}"
            # Without it the workers get the upstream's name as Host and answer 400.
            assert headers.get("host") == "$host", f"location {where} must pass Host"


def tls_server() -> list:
    return next(server for server in servers() if listens_on(server, "443"))


def locations(server: list) -> dict[str, list]:
    """The server's locations by their match (`= /api/files`, `/ws/`, `@upload_too_large`)."""
    return {" ".join(location[1:-1]): location[-1] for location in blocks(server, "location")}


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def json_answer(named_location: list) -> tuple[int, dict]:
    """What a named location that answers an error returns: its status and its JSON body."""
    ((status, body),) = directives(named_location, "return")
    assert directives(named_location, "default_type") == [["application/json"]]
    return int(status), json.loads(body.strip("'"))


UPLOAD_PATHS = {"/api/files": "@upload_too_large", "/v1/files/upload": "@coze_upload_too_large"}


def test_the_upload_paths_take_the_upload_limit_and_everything_else_1_mib():
    server = tls_server()
    by_match = locations(server)
    upload_limit = django_settings.CHAT_MAX_UPLOAD_BYTES + django_settings.CHAT_UPLOAD_BODY_OVERHEAD

    assert [nginx_size(size) for (size,) in directives(server, "client_max_body_size")] == [1024 * 1024]
    for path, named in UPLOAD_PATHS.items():
        location = by_match[f"= {path}"]
        assert [nginx_size(size) for (size,) in directives(location, "client_max_body_size")] == [upload_limit]
        assert directives(location, "error_page") == [["413", "=", named]]
        assert directives(location, "proxy_pass") == [["http://cozeproject"]]
    for match, location in by_match.items():
        if match.removeprefix("= ") not in UPLOAD_PATHS:
            assert not directives(location, "client_max_body_size"), f"location {match} raises the body limit"


def test_oversize_bodies_are_answered_in_the_apis_json_not_nginxs_html():
    server = tls_server()
    by_match = locations(server)
    size = f"{django_settings.CHAT_MAX_UPLOAD_BYTES / (1024 * 1024):g} MiB"

    assert directives(server, "error_page") == [["413", "=", "@payload_too_large"]]
    assert json_answer(by_match["@payload_too_large"]) == (
        413,
        {"detail": "The request body is larger than 1 MiB.", "code": "payload_too_large"},
    )
    assert json_answer(by_match["@upload_too_large"]) == (
        413,
        {"detail": f"The file is larger than the upload limit of {size}.", "code": "payload_too_large"},
    )
    # Coze's API keeps Coze's error shape: a body too large is its code 4000.
    assert json_answer(by_match["@coze_upload_too_large"]) == (
        413,
        {"code": 4000, "msg": f"The file is larger than the upload limit of {size}."},
    )


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx is not installed (apt-get install nginx-light)"
)


def nginx_site(tmp_path: Path, *, upstream_port: int = 8001, http_port: int = 80, https_port: int = 443) -> Path:
    """The sample as a runnable nginx configuration in `tmp_path`: a self-signed certificate, the
    given ports, the upstream at `upstream_port`, files and temporary bodies under `tmp_path`."""
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    self_signed = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*self_signed, "-subj", "/CN=chat.example.com", "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
    )
    site = NGINX_CONF.read_text()
    site = re.sub(r"/etc/letsencrypt/live/chat\.example\.com/fullchain\.pem", cert, site)
    site = re.sub(r"/etc/letsencrypt/live/chat\.example\.com/privkey\.pem", key, site)
    site = re.sub(
        r"(upstream cozeproject \{).*?(keepalive)",
        rf"\1\n    server 127.0.0.1:{upstream_port};\n    \2",
        site,
        flags=re.S,
    )
    site = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", site)  # IPv4 only: the test machine may have no IPv6
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
    (tmp_path / "site.conf").write_text(site)
    for folder in ("logs", "body", "proxy"):
        (tmp_path / folder).mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers write the bodies under tmp_path
    (tmp_path / "main.conf").write_text(
        f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
        f"    proxy_temp_path {tmp_path}/proxy;\n    include {tmp_path}/site.conf;\n}}\n"
    )
    return tmp_path / "main.conf"


@needs_nginx
def test_nginx_accepts_the_sample(tmp_path):
    main = nginx_site(tmp_path)

    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


@pytest.fixture
def through_nginx(asgi_server, tmp_path, settings):
    """An HTTPS client for a real nginx running the sample in front of the application."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "chat.example.com"]  # the sample's server_name
    https_port = free_port()
    main = nginx_site(tmp_path, upstream_port=asgi_server.port, http_port=free_port(), https_port=https_port)
    nginx = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
            break
        except OSError:
            assert nginx.poll() is None, nginx.stderr.read().decode()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    client = httpx.Client(
        base_url=f"https://127.0.0.1:{https_port}", verify=False, headers={"Host": "chat.example.com"}, timeout=60
    )
    yield client
    client.close()
    nginx.send_signal(signal.SIGQUIT)
    try:
        nginx.wait(10)
    except subprocess.TimeoutExpired:
        nginx.kill()
        nginx.wait(10)


def from_the_application(response: httpx.Response) -> bool:
    return "x-request-id" in response.headers  # set on every answer of the application, never by nginx


@needs_nginx
def test_through_nginx_an_upload_over_1_mib_reaches_the_application(through_nginx, api_key, simulator):
    content = b"line of text\n" * (2 * 1024 * 1024 // 13)  # 2 MiB: over the 1 MiB of other paths

    uploaded = through_nginx.post(
        "/api/files", files={"file": ("notes.txt", content, "text/plain")}, headers=auth(api_key)
    )
    coze_api = through_nginx.post("/v1/files/upload", files={"file": ("notes.txt", content, "text/plain")})

    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["bytes"] == len(content)
    assert coze_api.status_code != 413 and from_the_application(coze_api)


@needs_nginx
def test_through_nginx_oversize_bodies_get_the_apis_json_413(through_nginx, api_key):
    upload_limit = django_settings.CHAT_MAX_UPLOAD_BYTES + django_settings.CHAT_UPLOAD_BODY_OVERHEAD
    headers = {**auth(api_key), "Content-Type": "application/octet-stream"}

    upload = through_nginx.post("/api/files", content=b"x" * (upload_limit + 1), headers=headers)
    coze_upload = through_nginx.post("/v1/files/upload", content=b"x" * (upload_limit + 1), headers=headers)
    chat = through_nginx.post("/api/chat", content=b"x" * (1024 * 1024 + 1), headers=headers)
    just_under = through_nginx.post("/api/chat", content=b"x" * (1024 * 1024 - 1), headers=headers)

    for response in (upload, coze_upload, chat):
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/json"
        assert not from_the_application(response)  # refused by nginx, before the body was read
    assert upload.json()["code"] == chat.json()["code"] == "payload_too_large"
    assert "upload limit" in upload.json()["detail"] and "1 MiB" in chat.json()["detail"]
    assert coze_upload.json()["code"] == 4000
    assert just_under.status_code != 413 and from_the_application(just_under)
