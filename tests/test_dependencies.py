"""Every package the project imports is declared in pyproject.toml, so a fresh install has it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {normalise(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]) for requirement in requirements}


def third_party_imports(folder: Path) -> dict[str, str]:
    """{top-level module: a file importing it} for every import of `folder` outside the standard library."""
    local = {p.stem for p in folder.glob("*.py")} | {"hf_cnn_ft"}
    found: dict[str, str] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("folder", "extras"),
    [
        ("hf_cnn_ft", ("export", "openvino", "executorch", "litert", "app", "tune")),
        ("tests", ("export", "app", "tune", "dev")),
    ],
)
def test_every_imported_package_is_declared(folder, extras):
    distributions = importlib.metadata.packages_distributions()
    allowed = declared(*extras)
    missing = []
    for module, where in sorted(third_party_imports(ROOT / folder).items()):
        if module == "httpx":  # the fallback transport of an older huggingface_hub (httpx2 is declared)
            continue
        providers = {normalise(d) for d in distributions.get(module, [module])}
        if not providers & allowed:
            missing.append(f"{module} (imported in {where}; provided by {', '.join(sorted(providers))})")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)
