"""Every documented way to start the server listens with a backlog that takes a burst of connects.

daphne started with `-b`/`-p` listens through Twisted's default backlog of 50: a burst of 1,000
connects overflows it, and the kernel resets or drops the rest (a fifth of the streams were lost
when tried). So each daphne command in the Procfile, scripts/, the systemd units and the docs
must set `backlog=` in its endpoint string; uvicorn's own default is 2048, and one that sets
`--backlog` must not set it lower. The burst itself is in the benchmark (`bench/server_burst.py`).

None of them takes the client's address from X-Forwarded-For itself: the application does, from
the proxies in CHAT_TRUSTED_PROXIES only (tests/test_client_address.py runs them).
"""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TWISTED_DEFAULT_BACKLOG = 50
UVICORN_DEFAULT_BACKLOG = 2048
MIN_BACKLOG = 1024


def listen_backlogs(command: str) -> list[int]:
    """The listen backlog of each socket a daphne or uvicorn command line opens."""
    words = shlex.split(command)
    names = [Path(word).name for word in words]
    if "daphne" in names:
        words = words[names.index("daphne") + 1 :]
        endpoints = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-e", "--endpoint")]
        endpoints += [word.split("=", 1)[1] for word in words if word.startswith("--endpoint=")]
        backlogs = []
        for endpoint in endpoints:
            # Twisted endpoint strings: `tcp:port=8000:interface=0.0.0.0:backlog=4096`, `\:` escapes a colon.
            options = dict(part.split("=", 1) for part in re.split(r"(?<!\\):", endpoint)[1:] if "=" in part)
            backlogs.append(int(options.get("backlog", TWISTED_DEFAULT_BACKLOG)))
        # -b/-p (or nothing at all) add a listener built by daphne itself, with Twisted's default.
        if any(word in ("-b", "--bind", "-p", "--port") for word in words) or not endpoints:
            backlogs.append(TWISTED_DEFAULT_BACKLOG)
        return backlogs
    if "uvicorn" in names:
        for i, word in enumerate(words[:-1]):
            if word == "--backlog":
                return [int(words[i + 1])]
        return [UVICORN_DEFAULT_BACKLOG]
    raise ValueError(f"not a daphne or uvicorn command: {command}")


def procfile_commands() -> list[str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("web:")]


def script_commands() -> list[str]:
    return [
        line.strip().removeprefix("exec ")
        for script in sorted((ROOT / "scripts").iterdir())
        for line in script.read_text().splitlines()
        if re.match(r"\s*(exec\s+)?(daphne|uvicorn)\s", line)
    ]


def systemd_commands() -> list[str]:
    return [
        line.split("=", 1)[1]
        for unit in sorted((ROOT / "deploy").glob("*.service"))
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=") and re.search(r"\b(daphne|uvicorn)\s", line)
    ]


def documented_commands() -> list[str]:
    """Commands in the README's and docs' code: bash blocks and inline code starting with the server's name.

    Not docs/performance.md: it records what the benchmark ran, including the old `-b`/`-p` command
    it starts on purpose as the reference; the benchmark's own servers are checked from its code."""
    commands = []
    docs = [doc for doc in sorted((ROOT / "docs").glob("*.md")) if doc.name != "performance.md"]
    for doc in [ROOT / "README.md", *docs]:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
            commands += [line for line in block.splitlines() if re.match(r"(daphne|uvicorn)\s", line)]
        commands += [" ".join(span.split()) for span in re.findall(r"`((?:daphne|uvicorn) [^`]+)`", text)]
    return commands


def test_the_parser_reads_twisted_defaults_and_endpoint_strings():
    # The Procfile before this check: daphne's own listener, Twisted's backlog of 50.
    assert listen_backlogs("daphne -b 0.0.0.0 -p ${PORT:-8000} --proxy-headers cozeproject.asgi:application") == [50]
    assert listen_backlogs("daphne cozeproject.asgi:application") == [50]
    assert listen_backlogs("daphne -e tcp:port=8000:interface=0.0.0.0 cozeproject.asgi:application") == [50]
    assert listen_backlogs("/x/bin/daphne -v 0 -e tcp:port=%i:interface=\\:\\:1:backlog=4096 app:application") == [4096]
    assert listen_backlogs("daphne -e tcp:port=1:backlog=4096 -p 2 app:application") == [4096, 50]
    assert listen_backlogs("uvicorn app:application --backlog 512") == [512]
    assert listen_backlogs("uvicorn app:application") == [2048]


def benchmark_commands() -> list[str]:
    from bench.procs import Server

    return [
        shlex.join(Server(kind=kind, app="bench.bare:application", env={}).command()) for kind in ("daphne", "uvicorn")
    ]


@pytest.mark.parametrize(
    "source, commands",
    [
        ("Procfile", procfile_commands()),
        ("scripts/", script_commands()),
        ("deploy/*.service", systemd_commands()),
        ("README.md and docs/", documented_commands()),
        ("the benchmark's servers", benchmark_commands()),
    ],
)
def test_every_server_command_takes_a_burst_of_connects(source, commands):
    assert any(re.search(r"\bdaphne\s", command) for command in commands), f"{source} starts no daphne"
    for command in commands:
        assert min(listen_backlogs(command)) >= MIN_BACKLOG, f"{source}: {command!r} listens with a short backlog"


def trusts_forwarded_headers(command: str) -> bool:
    """Whether the server itself would take the client's address from X-Forwarded-For: daphne with
    `--proxy-headers` (from any peer), uvicorn unless `--no-proxy-headers` (from 127.0.0.1 at least)."""
    words = shlex.split(command)
    names = [Path(word).name for word in words]
    if "daphne" in names:
        return "--proxy-headers" in words
    return "--no-proxy-headers" not in words


def test_the_parser_tells_which_servers_trust_forwarded_headers():
    assert trusts_forwarded_headers("daphne -b 0.0.0.0 -p ${PORT:-8000} --proxy-headers cozeproject.asgi:application")
    assert not trusts_forwarded_headers("daphne -e tcp:port=8000:backlog=4096 cozeproject.asgi:application")
    assert trusts_forwarded_headers("uvicorn cozeproject.asgi:application --backlog 4096")
    assert not trusts_forwarded_headers("uvicorn cozeproject.asgi:application --no-proxy-headers")


@pytest.mark.parametrize(
    "source, commands",
    [
        ("Procfile", procfile_commands()),
        ("scripts/", script_commands()),
        ("deploy/*.service", systemd_commands()),
        ("README.md and docs/", documented_commands()),
    ],
)
def test_no_server_command_takes_the_client_address_from_headers_itself(source, commands):
    # The application does, from CHAT_TRUSTED_PROXIES only (cozeproject/asgi.py).
    for command in commands:
        assert not trusts_forwarded_headers(command), f"{source}: {command!r} trusts X-Forwarded-For itself"
