"""No module over 600 lines and no function over 60 lines outside tests.

A module or function that must stay whole says why in a comment ``# size: REASON`` on the
line of its ``def`` (or the line above it), or, for a module, in its first ten lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("verity", "service", "ingest", "eval", "bench", "deploy")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
REASON = "# size:"


def _sources() -> list[Path]:
    return sorted(p for name in PACKAGES for p in (ROOT / name).rglob("*.py"))


def _has_reason(lines: list[str], lineno: int) -> bool:
    """Whether the ``def`` at 1-based ``lineno`` (or the line above it) gives a reason."""
    return any(REASON in lines[i] for i in (lineno - 2, lineno - 1) if 0 <= i < len(lines))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _long_functions(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > MAX_FUNCTION_LINES and not _has_reason(lines, first) \
                and not _has_reason(lines, node.lineno):
            found.append(f"{_name(path)}:{node.lineno} {node.name}() has {length} lines")
    return found


def test_sources_are_found() -> None:
    assert len(_sources()) > 50


def test_no_module_over_600_lines() -> None:
    long = []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_MODULE_LINES and not any(REASON in line for line in lines[:10]):
            long.append(f"{path.relative_to(ROOT)} has {len(lines)} lines")
    assert not long, "split these modules by responsibility, or say why in '# size:':\n" + "\n".join(long)


def test_no_function_over_60_lines() -> None:
    long = [row for path in _sources() for row in _long_functions(path)]
    assert not long, "split these functions, or say why in '# size:':\n" + "\n".join(long)


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "probe.py"
    path.write_text(f"def long() -> None:\n{body}\n", encoding="utf-8")
    assert _long_functions(path) == [f"probe.py:1 long() has {MAX_FUNCTION_LINES + 1} lines"]
    path.write_text(f"def long() -> None:  # size: a table\n{body}\n", encoding="utf-8")
    assert _long_functions(path) == []
