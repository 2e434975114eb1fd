"""The package layout: imports only point down the layers of docs/architecture.md."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "src" / "tvprompt"

# package -> packages it must never import (at module level or inside functions)
FORBIDDEN = {
    "models": {"zoo", "training", "evaluation", "demo", "serve", "cli", "integrations"},
    "data": {"models", "zoo", "training", "evaluation", "demo", "serve", "cli"},
    "tasks": {"models", "zoo", "training", "evaluation", "demo", "serve", "cli"},
    "zoo": {"training", "evaluation", "demo", "serve", "cli"},
    "training": {"evaluation", "zoo", "demo", "serve", "cli"},
    "evaluation": {"demo", "serve", "cli", "zoo"},
    "serve": {"cli", "demo"},
}


def _imported_packages(file: Path) -> set[str]:
    """First-level tvprompt packages that ``file`` imports, relative imports resolved."""
    module = file.relative_to(PKG).with_suffix("").parts
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        names: list[tuple[str, ...]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
                names = [(*target, a.name) for a in node.names] if not node.module else [target]
            elif node.module and node.module.split(".")[0] == "tvprompt":
                names = [tuple(node.module.split(".")[1:])]
        elif isinstance(node, ast.Import):
            names = [tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "tvprompt"]
        found.update(n[0] for n in names if n)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_the_layers(package):
    bad = []
    for file in sorted((PKG / package).rglob("*.py")):
        hits = _imported_packages(file) & FORBIDDEN[package]
        bad += [f"{file.relative_to(PKG)} imports tvprompt.{h}" for h in sorted(hits)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    fake = PKG / "models" / "families" / "llava.py"
    text = fake.read_text()
    assert "training" not in _imported_packages(fake)
    probe = PKG / "models" / "families" / "_probe_layout.py"
    probe.write_text("def f():\n    from ...training import loop  # noqa\n    from ... import zoo\n")
    try:
        assert _imported_packages(probe) >= {"training", "zoo"}
    finally:
        probe.unlink()
    assert fake.read_text() == text


def test_every_folder_is_a_package_with_a_docstring():
    for init in [PKG / p / "__init__.py" for p in ("training", "evaluation", "zoo", "models/families", "models/paper")]:
        assert ast.get_docstring(ast.parse(init.read_text())), init
