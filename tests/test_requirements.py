"""The two install sets: `requirements.txt` installs everything (development and tests), and
`requirements/runtime.txt`, which it includes, is what a deployment installs and serves with."""

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "requirements" / "runtime.txt"
# The packages of the server itself; tests/, bench/ and scripts are not deployed code.
RUNTIME_CODE = ("chat", "cozeproject", "sessions_admin", "manage.py")
DEVELOPMENT_ONLY = {
    *("playwright", "greenlet", "psutil", "hypothesis", "ruff", "import-linter"),
    *("pytest", "pytest-django", "pytest-asyncio", "pytest-timeout"),
}


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def requirements_of(path: Path) -> dict[str, Requirement]:
    """Requirements of a file, following `-r` includes as pip does."""
    found: dict[str, Requirement] = {}
    for line in requirement_lines(path):
        if line.startswith("-r "):
            found.update(requirements_of(path.parent / line[3:].strip()))
        else:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def installed_closure(requirements: dict[str, Requirement]) -> set[str]:
    """The distributions pip installs for `requirements`, read from this (complete) environment."""
    seen: set[str] = set()
    pending = [(name, frozenset(req.extras)) for name, req in requirements.items()]
    while pending:
        name, extras = pending.pop()
        if name in seen and not extras:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            dependency = Requirement(spec)
            wanted = dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            )
            if wanted:
                pending.append((canonicalize_name(dependency.name), frozenset(dependency.extras)))
    return seen


def top_level_imports(paths) -> set[str]:
    modules: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


def runtime_sources():
    for name in RUNTIME_CODE:
        path = ROOT / name
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def test_requirements_txt_installs_the_runtime_set_and_the_development_tools():
    assert "-r requirements/runtime.txt" in requirement_lines(ROOT / "requirements.txt")
    everything = requirements_of(ROOT / "requirements.txt")
    runtime = requirements_of(RUNTIME)

    assert set(runtime) <= set(everything)
    assert DEVELOPMENT_ONLY <= set(everything)
    assert all(str(req.specifier).startswith("==") for req in everything.values()), "pin every requirement"


def test_the_runtime_set_has_no_development_tools():
    runtime = requirements_of(RUNTIME)

    assert not DEVELOPMENT_ONLY & installed_closure(runtime)


def test_every_module_the_server_imports_comes_with_the_runtime_set():
    closure = installed_closure(requirements_of(RUNTIME))
    providers = metadata.packages_distributions()
    local = {"chat", "cozeproject", "sessions_admin", "tests", "bench"}

    missing = {}
    for module in top_level_imports(runtime_sources()) - local - set(sys.stdlib_module_names):
        dists = {canonicalize_name(dist) for dist in providers.get(module, [])}
        if not dists & closure:
            missing[module] = sorted(dists) or ["not installed"]
    assert not missing, f"imported by the server but not installed by requirements/runtime.txt: {missing}"


def run_venv_script(tmp_path: Path, venv: Path) -> list[str]:
    """Source scripts/_venv.sh in a copy of the repository's install files, with a fake pip that
    records what it was asked; returns the pip calls."""
    env = {**os.environ, "VENV": str(venv)}
    subprocess.run(
        ["bash", "-c", f"source {tmp_path / 'scripts' / '_venv.sh'}"], env=env, check=True, capture_output=True
    )
    log = venv / "pip.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_the_dev_virtualenv_is_reinstalled_when_any_requirements_file_changes(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_venv.sh", tmp_path / "scripts" / "_venv.sh")
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("python", "pip"):
        fake = venv / "bin" / tool
        fake.write_text(f'#!/bin/sh\necho "$*" >> "{venv}/pip.log"\n' if tool == "pip" else "#!/bin/sh\n")
        fake.chmod(0o755)

    assert "install --quiet -r requirements.txt" in run_venv_script(tmp_path, venv)
    assert run_venv_script(tmp_path, venv) == []  # nothing changed: no reinstall

    runtime = tmp_path / "requirements" / "runtime.txt"
    runtime.write_text(runtime.read_text() + "example-runtime-package==1.0\n")
    assert "install --quiet -r requirements.txt" in run_venv_script(tmp_path, venv)
    assert run_venv_script(tmp_path, venv) == []


def test_deployment_files_install_the_runtime_set():
    texts = {path: (ROOT / path).read_text() for path in ("README.md", "deploy/cozeproject-migrate.service")}
    for path, text in texts.items():
        installs = re.findall(r"pip install [^\n`]*-r (\S+)", text)
        assert "requirements/runtime.txt" in installs, f"{path} should install requirements/runtime.txt"
