"""The sample nginx configuration: TLS on 443, plain HTTP only redirecting there, and every proxied
location telling the workers how the request arrived, in the header Django's settings trust."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_accepts_the_sample(tmp_path):
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
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "logs").mkdir()
    (tmp_path / "main.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {tmp_path}/site.conf;\n}}\n"
    )

    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "main.conf")], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
