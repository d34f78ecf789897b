"""The repository stands on its own: its documentation links only to files inside it, nothing
refers to texts or paths of the machine it was written on, and every setting is documented."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Spelled in pieces so that this file does not match itself.
SHARED, CONTRACT, WORK, HOME = "../" + "shared", "API" + ".md", "/" + "work/", "/" + "home/"
OUTSIDE_REFERENCES = {
    "a text beside the repository": re.compile(r"\.\./" + "shared"),
    "an external copy of the contract (use docs/api.md)": re.compile(r"(?<![\w/.-])" + "API" + r"\.md\b"),
    "a machine path": re.compile(r"(?<![\w.~-])/(?:" + "work|home|root|Users" + r")/"),
}

INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)


def tracked_files() -> list[Path]:
    """The repository's files: tracked, plus new ones not yet added (but not ignored ones)."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def links(markdown: str) -> list[str]:
    """Link targets of a Markdown text, leaving out code blocks and code spans."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def link_problem(source: Path, target: str) -> str | None:
    """Why `target`, linked from `source`, does not resolve inside the repository (None if it does)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None  # a URL (https:, mailto:): not a file of this repository
    path_part, _, anchor = target.partition("#")
    if path_part.startswith("/"):
        return "absolute path; link relative to the file"
    resolved = (source.parent / path_part).resolve() if path_part else source
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return "outside the repository"
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and anchor not in github_anchors(resolved.read_text()):
        return f"no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


def test_markdown_links_resolve_inside_the_repository():
    broken = []
    for source in markdown_files():
        for target in links(source.read_text()):
            problem = link_problem(source, target)
            if problem:
                broken.append(f"{source.relative_to(ROOT)}: ({target}) {problem}")
    assert not broken, "broken or outside links:\n" + "\n".join(broken)


def test_the_link_check_sees_what_it_must():
    """The checker itself: a link beside the repository, a missing file and a missing heading fail."""
    readme = ROOT / "README.md"
    text = f"[contract]({SHARED}/x.md) `[code](nowhere.md)` [ok](docs/api.md#3-errors) [bad](docs/api.md#4-nothing)"
    found = links(text)
    assert found == [f"{SHARED}/x.md", "docs/api.md#3-errors", "docs/api.md#4-nothing"]
    assert link_problem(readme, found[0]) == "outside the repository"
    assert link_problem(readme, found[1]) is None
    assert link_problem(readme, found[2]).startswith("no heading")
    assert link_problem(readme, "docs/missing.md") == "no such file"
    assert link_problem(readme, "/srv/x.md").startswith("absolute path")


def test_no_tracked_file_refers_outside_the_repository():
    found = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary, or deleted in the work tree
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in OUTSIDE_REFERENCES.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:100]}")
    assert not found, "references outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [f"see {SHARED}/x.md", f"{CONTRACT} §3", f"{WORK}venv/bin/python -m bench.run", f"cd {HOME}alice/cozeproject"],
)
def test_outside_references_are_recognised(line):
    assert any(pattern.search(line) for pattern in OUTSIDE_REFERENCES.values())


@pytest.mark.parametrize(
    "line",
    [
        "docs/api.md §3",
        "[docs/api.md](docs/api.md)",
        "/srv/cozeproject/.venv/bin/daphne",
        # A URL whose path has a "work" segment is not a machine path (spelt in two parts on purpose).
        "https://example.com/" + "work/x",
    ],
)
def test_repository_references_pass(line):
    assert not any(pattern.search(line) for pattern in OUTSIDE_REFERENCES.values())


# --- every setting is documented ---------------------------------------------------------------

SETTING_READ = re.compile(r"\benv(?:_bool|_number|_list|\.str|\.db_url|\.bool|\.int)\(\s*\"([A-Z][A-Z0-9_]+)\"")


def settings_variables() -> set[str]:
    """The environment variables cozeproject/settings.py reads, plus the one chat/runtime/metrics.py does."""
    names = set(SETTING_READ.findall((ROOT / "cozeproject" / "settings.py").read_text()))
    assert {"DJANGO_SECRET_KEY", "COZE_API_TOKEN", "DATABASE_URL"} <= names, "the settings reader changed"
    return names | {"PROMETHEUS_MULTIPROC_DIR"}


def table_variables(markdown: str) -> set[str]:
    """Variables named in the first cell of Markdown table rows."""
    return {
        name
        for row in re.findall(r"^\|([^|\n]+)\|", markdown, re.MULTILINE)
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)
    }


@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
def test_every_setting_is_in_the_configuration_tables(document):
    missing = settings_variables() - table_variables((ROOT / document).read_text())
    assert not missing, f"{document} does not document {sorted(missing)}"


def test_env_example_lists_every_setting():
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    missing = settings_variables() - listed
    assert not missing, f".env.example does not list {sorted(missing)}"


# --- docs/api.md is kept in step with the code ---------------------------------------------------


def api_doc() -> str:
    return (ROOT / "docs" / "api.md").read_text()


def test_the_error_tables_are_the_error_codes_of_the_code():
    from chat.domain.errors import ERROR_CODES

    documented = {code: int(status) for code, status in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", api_doc(), re.M)}

    assert documented == {code: status for code, (status, _detail, _retryable) in ERROR_CODES.items()}


def test_every_route_is_in_the_reference():
    from django.urls import URLPattern, get_resolver

    def shape(path: str) -> str:
        return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)

    documented = {shape(path) for path in re.findall(r"`(?:[A-Z]+ )?(/[^`\s]*)", api_doc())}
    routes = [
        "/" + str(pattern.pattern)
        for pattern in get_resolver().url_patterns
        if isinstance(pattern, URLPattern)  # includes (admin/, accounts/) are Django's own pages
    ]
    browser_only = {"/favicon.ico"}
    missing = [route for route in routes if shape(route) not in documented and route not in browser_only]
    assert not missing, f"docs/api.md does not mention {missing}"


def test_the_architecture_page_names_every_package_of_chat():
    """docs/architecture.md says what each package owns; a new package must take its line there."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    packages = {path.parent.name for path in (ROOT / "chat").glob("*/__init__.py")}
    assert packages >= {"domain", "coze", "turn", "transports"}, "the layout changed"
    missing = {name for name in packages if f"`chat/{name}/`" not in page}
    assert not missing, f"docs/architecture.md does not describe {sorted(missing)}"


def test_the_readme_examples_follow_the_port_the_server_was_given():
    """./scripts/serve honours HOST and PORT: an example with a fixed port says where it comes from."""
    lines = (ROOT / "README.md").read_text().splitlines()
    fixed = [(lines[i - 1], line) for i, line in enumerate(lines) if re.search(r":8000\b", line)]

    unexplained = [line for before, line in fixed if "PORT" not in before + line]
    assert fixed and not unexplained, unexplained
