"""The house as written down: what each package may import (the import contracts in
pyproject.toml, checked by import-linter), and the size of its rooms."""

import subprocess
import sys
from pathlib import Path

from tests.live import ROOT

MAX_MODULE_LINES = 400
MAX_SCRIPT_LINES = 600
MAX_TOP_LEVEL_MODULES = 20


def test_every_import_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_is_over_400_lines():
    modules = [
        path
        for folder in ("chat", "project", "deploy", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if "migrations" not in path.parts
    ]
    too_big = {str(p.relative_to(ROOT)): lines(p) for p in modules if lines(p) > MAX_MODULE_LINES}
    assert too_big == {}


def test_no_page_script_is_over_600_lines():
    scripts = (ROOT / "chat" / "static").rglob("*.js")
    too_big = {
        str(p.relative_to(ROOT)): lines(p)
        for p in scripts
        if "vendor" not in p.parts and lines(p) > MAX_SCRIPT_LINES
    }
    assert too_big == {}


def test_the_app_has_at_most_20_modules_at_its_top():
    top = [p.name for p in (ROOT / "chat").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)


# Test folders beyond the app's packages: whole processes (deployment), the page in a
# browser (page), and the benchmark's guard (bench).
TEST_FOLDERS_OUTSIDE_THE_APP = {"deployment", "page", "bench"}
# At the top of tests/: the house itself, and the protocol (chat/protocol.py).
TOP_LEVEL_TESTS = {"architecture", "protocol"}


def test_tests_mirror_the_packages():
    packages = {p.parent.name for p in (ROOT / "chat").glob("*/__init__.py")}
    folders = {p.parent.name for p in (ROOT / "tests").glob("*/test_*.py")}
    assert folders - packages - TEST_FOLDERS_OUTSIDE_THE_APP == set()
    loose = [p.name for p in (ROOT / "tests").glob("test_*.py")]
    assert all(name.removeprefix("test_").removesuffix(".py") in TOP_LEVEL_TESTS for name in loose)
