"""Package conventions that a reader of the code relies on, checked on the source itself."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "saf_ref"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _cross_module_private_uses(path: Path) -> list[str]:
    """``from saf_ref.x import _y`` and ``mod._y`` where ``mod`` is a saf_ref module bound by an import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saf_ref"):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)  # may be a module (from saf_ref import determinism)
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.name.startswith("saf_ref") and a.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            if node.value.id in modules:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_underscore_names():
    offenders = {
        str(path.relative_to(PACKAGE.parent)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if (uses := _cross_module_private_uses(path))
    }
    assert not offenders, offenders


def test_the_scan_finds_a_private_import(tmp_path):
    """The scan is not vacuous: both forms are reported."""
    sample = tmp_path / "sample.py"
    sample.write_text("from saf_ref.bits.ieee import _hidden\nfrom saf_ref import determinism\n"
                      "determinism._secret()\n")  # fmt: skip
    assert _cross_module_private_uses(sample) == [
        "line 1: from saf_ref.bits.ieee import _hidden",
        "line 3: determinism._secret",
    ]
