"""The house rules of docs/architecture.md that import-linter can't state: chat/ keeps its code in
packages (at most three top-level modules besides __init__ and apps), and no module outside the
simulator grows past 450 lines — a module that does is two responsibilities waiting to be split."""

from pathlib import Path

CHAT = Path(__file__).resolve().parent.parent / "chat"
MAX_LINES = 450
TOP_LEVEL_ALLOWED = 3


def test_chat_keeps_its_code_in_packages():
    top_level = sorted(p.name for p in CHAT.glob("*.py") if p.name not in ("__init__.py", "apps.py"))
    assert len(top_level) <= TOP_LEVEL_ALLOWED, f"chat/ has top-level modules {top_level}; move them into a package"


def test_no_module_outside_the_simulator_passes_the_size_limit():
    too_long = {
        str(path.relative_to(CHAT.parent)): lines
        for path in CHAT.rglob("*.py")
        if "simulator" not in path.relative_to(CHAT).parts and "migrations" not in path.relative_to(CHAT).parts
        for lines in [len(path.read_text(encoding="utf-8").splitlines())]
        if lines > MAX_LINES
    }
    assert not too_long, f"split these by responsibility (over {MAX_LINES} lines): {too_long}"
