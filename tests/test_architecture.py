"""The layers of docs/architecture.md, enforced: every ``import nlseg.X`` in the package (at any depth,
lazy imports included) points to a layer the importing layer may use."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nlseg"

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "registry": set(),
    "paths": set(),  # ~ and $VAR expansion, absolute recipe paths
    "safeload": set(),  # weights-only loading with nlseg's own refusal
    "ops": set(),
    "blocks": {"ops"},
    "backbones": {"errors"},
    "models": {"ops", "blocks", "backbones", "errors"},
    "data": {"errors", "config"},  # config only in data/build.py, the recipe -> data set step
    "config": {"errors"},  # names, option signatures and weights names come from nlseg.registry
    "engine": {"errors", "config", "ops", "blocks", "backbones", "models", "data"},
    "analysis": {"errors", "config", "ops", "blocks", "backbones", "models", "data", "engine"},
    "apps": {"errors", "config", "models", "data", "engine", "analysis"},
    "cli": {"errors", "config", "ops", "blocks", "backbones", "models", "data", "engine", "analysis", "apps"},
}
"""Layer -> the other layers it may import (itself always; the :data:`LEAVES` from any). The recipe checks in
``config`` read model names, option signatures, data set classes and weights names from ``nlseg.registry``."""

LEAVES = {"registry", "paths", "safeload"}
"""Modules on the standard library and torch alone, which every layer may import."""


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts[0] not in ("__init__", "__main__") else "cli"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.startswith("nlseg.")]
    return found


def test_every_import_points_to_an_allowed_layer() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        for line, module in _imports(path):
            target = module.split(".")[1]
            allowed = {layer, *LEAVES, *ALLOWED[layer]}
            if target in allowed or ".".join(module.split(".")[1:3]) in allowed:
                continue
            if layer == "data" and target == "config" and path.name != "build.py":
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
                continue
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) imports {module}")
    assert not wrong, "\n".join(wrong)


def test_data_reads_recipes_only_in_build() -> None:
    readers = [p.name for p in (PACKAGE / "data").glob("*.py") if any(m == "nlseg.config" for _, m in _imports(p))]
    assert readers == ["build.py"]


def test_argparse_lives_only_in_the_cli() -> None:
    users = sorted(
        str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if "argparse" in p.read_text()
    )
    assert users and all(u.startswith("nlseg/cli/") for u in users), users
