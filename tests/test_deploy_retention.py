"""deploy/ runs retention daily: a oneshot service for prune_chat_data and a timer for it, which
systemd itself accepts."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "deploy" / "cozeproject-prune.service"
TIMER = ROOT / "deploy" / "cozeproject-prune.timer"
WORKER = ROOT / "deploy" / "cozeproject@.service"


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(path)
    return parser


def test_the_service_prunes_without_asking_with_the_workers_settings():
    service, worker = unit(SERVICE), unit(WORKER)
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("manage.py prune_chat_data --noinput")
    for key in ("User", "WorkingDirectory", "EnvironmentFile"):
        assert service["Service"][key] == worker["Service"][key], key


def test_the_timer_starts_it_daily_and_catches_up():
    timer = unit(TIMER)["Timer"]
    assert timer["OnCalendar"].startswith("*-*-* ")
    assert timer["Persistent"] == "true"
    assert unit(TIMER)["Install"]["WantedBy"] == "timers.target"
    assert TIMER.stem == SERVICE.stem  # a timer starts the service of its own name


def test_systemd_accepts_both_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Where this checkout and its virtualenv are, as root: the sample's paths and user don't exist here.
    text = SERVICE.read_text().replace("/srv/cozeproject/.venv/bin/python", str(ROOT / ".venv" / "bin" / "python"))
    text = text.replace("/srv/cozeproject/.env", "-/srv/cozeproject/.env").replace("/srv/cozeproject", str(ROOT))
    text = text.replace("=cozeproject\n", "=root\n")
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(TIMER, tmp_path / TIMER.name)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
