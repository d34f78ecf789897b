"""The benchmark runs outside Django (`python -m bench.run` is a plain script whose clients import
the adapter's transport before any settings exist): importing its modules must not need settings."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `python -m bench.run` and what it imports (its clients, servers, the waits and burst steps).
BENCH_MODULES = ["bench.run"]


def test_the_benchmark_imports_without_django_settings():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", script, *BENCH_MODULES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
