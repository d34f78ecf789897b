# Sourced by scripts/serve, scripts/test and scripts/manage: make sure .venv exists with requirements.txt
# (everything, development and tests included) installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating virtualenv $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when a requirements file changed since the last install: requirements.txt
# includes requirements/runtime.txt (`-r`), so hash every file pip reads, not just the top one.
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum requirements.txt requirements/*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo ">> installing requirements.txt"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -r requirements.txt
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
