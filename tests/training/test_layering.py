"""Dependencies point one way (design.md): inference uses training, training never imports inference."""
from __future__ import annotations

import ast
from pathlib import Path

import nnunet_vl

PACKAGE = Path(nnunet_vl.__file__).parent


def imported_modules(source: str, package: str) -> set[str]:
    """Every module `source` (a module of `package`) imports, at top level or inside functions; relative imports
    resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imports_from(layer: str, forbidden: str) -> dict[str, list[str]]:
    found = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
        bad = sorted(m for m in imported_modules(path.read_text(encoding="utf-8"), package) if m == forbidden or m.startswith(forbidden + "."))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_training_never_imports_inference():
    assert list((PACKAGE / "training").glob("*.py"))  # the walk sees the package
    assert imports_from("training", "nnunet_vl.inference") == {}


def test_networks_never_import_training_or_inference():
    assert imports_from("networks", "nnunet_vl.training") == {}
    assert imports_from("networks", "nnunet_vl.inference") == {}


def test_the_check_sees_function_level_and_relative_imports():
    source = "import os\n\ndef f():\n    from nnunet_vl.inference.predictor import nnUNetPredictorVL\n" \
             "    from ..inference import show\n"
    names = imported_modules(source, "nnunet_vl.training")
    assert {"nnunet_vl.inference.predictor", "nnunet_vl.inference", "nnunet_vl.inference.show"} <= names
