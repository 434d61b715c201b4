"""The package's shape, read from its source: dependencies run one way, functions stay short, the declared Python suffices.

Imports are read with ``ast``, function-local ones included (a late import is still a
dependency), so these tests see what ``import`` would do without importing anything.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cleanface"
MAX_FUNCTION_LINES = 80

# Each layer may import only the layers listed for it (and itself); cleanface/errors.py, _atomic.py, _json.py and progress.py are shared by all.
ALLOWED = {
    "models": {"models"},
    "losses": {"losses"},
    "data": {"data"},
    "inference": {"inference", "models", "losses", "data"},
    "eval": {"eval", "inference", "models", "losses", "data"},
    "purify": {"purify", "inference", "models", "losses", "data"},
    "inversion": {"inversion", "inference", "models", "losses", "data"},
    "training": {"training", "eval", "inference", "models", "losses", "data"},
    "report": {"report", "data"},
}
SHARED = {"errors", "_atomic", "_json", "progress", "__init__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``cleanface`` module that ``path`` imports, anywhere in the file, as absolute dotted names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m.startswith("cleanface.") or m == "cleanface"}


def existing_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    """Module -> the existing cleanface modules it imports."""
    known = existing_modules()
    return {module_name(p): {m for m in imported_modules(p) if m in known} - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_read_from_source_see_late_imports() -> None:
    # the reader itself: top-level and function-local imports both count
    assert "cleanface.inference.run" in imported_modules(PACKAGE / "purify" / "runner.py")
    assert "cleanface.training.trainer" in imported_modules(PACKAGE / "pipeline" / "stages.py")


def test_layers_import_only_what_lies_below_them() -> None:
    wrong = []
    for module, targets in sorted(graph().items()):
        allowed = ALLOWED.get(layer(module))
        if allowed is None:
            continue  # pipeline (and the package root) sit on top
        for target in sorted(targets):
            if layer(target) not in allowed | SHARED:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the dependency direction (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_eval_purify_and_inversion_do_not_import_training_and_training_renders_no_report() -> None:
    g = graph()
    for module, targets in g.items():
        if layer(module) in ("eval", "purify", "inversion"):
            assert not {t for t in targets if layer(t) == "training"}, module
        if layer(module) == "training":
            assert not {t for t in targets if layer(t) == "report"}, module


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among ``edges`` (a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("subpackage", ["data", "purify", "inference", "training", "report", "eval", "losses", "models"])
def test_no_import_cycle_inside_a_subpackage(subpackage: str) -> None:
    prefix = f"cleanface.{subpackage}"
    inside = {m: {t for t in ts if t.startswith(prefix + ".")} for m, ts in graph().items() if m.startswith(prefix + ".")}
    assert find_cycle(inside) is None


def test_no_import_cycle_in_the_package() -> None:
    g = {m: {t for t in ts if t != "cleanface"} for m, ts in graph().items() if not m.endswith("__init__")}
    packages = {m for m in g if (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}
    assert find_cycle({m: ts - packages for m, ts in g.items() if m not in packages}) is None


def long_functions(path: Path, limit: int) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_is_longer_than_80_lines() -> None:
    found = [f for p in sorted(PACKAGE.rglob("*.py")) for f in long_functions(p, MAX_FUNCTION_LINES)]
    assert not found, "split these functions:\n" + "\n".join(found)


def test_decide_reads_as_a_list_of_rules() -> None:
    source = PACKAGE / "purify" / "decisions.py"
    decide = next(n for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.FunctionDef) and n.name == "decide")
    assert decide.end_lineno - decide.lineno + 1 <= 45


# Standard-library modules newer than some Python 3 releases, with the first version that has them.
NEW_STDLIB = {"tomllib": (3, 11), "graphlib": (3, 9), "zoneinfo": (3, 9)}


def declared_minimum() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert match, f"requires-python should be a plain lower bound, got {spec!r}"
    return 3, int(match.group(1))


def test_declared_python_has_every_stdlib_module_the_package_imports() -> None:
    minimum = declared_minimum()
    needs = []
    for path in sorted(list(PACKAGE.rglob("*.py")) + list((ROOT / "cli").glob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                first = NEW_STDLIB.get(name.split(".")[0])
                if first and first > minimum:
                    needs.append(f"{path.relative_to(ROOT)} imports {name} (Python {first[0]}.{first[1]}+)")
    assert not needs, f"pyproject.toml declares Python >={minimum[0]}.{minimum[1]} but:\n" + "\n".join(needs)
    assert sys.version_info[:2] >= minimum
