"""The tree says how the code flows, and these checks keep it true: chalicelib's layers (the
contracts in .importlinter, run with import-linter), no module over MAX_LINES unless it is one
idea that needs it, and tests that share code only through tests/support."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.support.util import ROOT

MAX_LINES = 400
# Modules over MAX_LINES, each one idea that would be harder to read cut in two.
ONE_IDEA = {
    "chalicelib/intake/csvfile.py": "pure CSV reading: encoding, dialect, header, URL column, rows",
}


def test_chalicelib_imports_follow_the_layers():
    lint = ROOT / ".venv" / "bin" / "lint-imports"
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    run = subprocess.run([*command, "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "chalicelib").rglob("*.py")))
def test_no_module_is_too_long_to_read(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES or path in ONE_IDEA, f"{path} has {lines} lines: split it by reason to change"


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_tests_share_code_only_through_tests_support():
    offenders = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "support" in path.relative_to(ROOT / "tests").parts:
            continue
        bad = sorted(m for m in _imported_modules(path)
                     if m.startswith("tests.") and not m.startswith("tests.support"))
        if bad:
            offenders[path.relative_to(ROOT).as_posix()] = bad
    assert offenders == {}


def test_every_module_says_why_it_exists():
    missing = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "chalicelib").rglob("*.py"))
               if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []
