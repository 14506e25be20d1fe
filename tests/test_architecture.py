"""The package's imports point one way: stages -> library -> kernels -> reference -> bottom.

Walks every module's imports (AST, function-level ones included) and fails on an import cycle, on
an import upward or sideways between layers, and on an import inside a function without a comment
saying why (only optional heavy dependencies justify one)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mlff_distill"
# Higher layers may import lower ones; within a layer, a package imports only itself.
LAYERS = {
    "cli": 6,
    "stages": 5,
    "evaluation": 4,
    "sampling": 3,
    "labeling": 3,
    "student": 3,
    "teachers": 2,
    "kernels": 1,
    "reference": 0.5,
}
BOTTOM = {"store", "contacts", "data", "tracking", "logs", "config_check", "settings", "calculator_pool"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported package module, line, inside a function) for each import of this package."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module:
                names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
            for name in names:
                if name in known:
                    found.append((name, child.lineno, in_function))
            if names and not any(name in known for name in names):
                found.append((names[0], child.lineno, in_function))  # third-party, for the comment rule
            visit(child, inside)

    visit(tree, False)
    return found


def layer(module: str) -> tuple[str, float]:
    """(group, rank) of a package module: its subpackage or bottom module."""
    part = module.split(".")[1] if "." in module else "__init__"
    if part in LAYERS:
        return part, LAYERS[part]
    assert part in BOTTOM | {"__init__"}, f"{module}: not in any layer; add it to LAYERS or BOTTOM"
    return "bottom", 0


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {
        name: {imported for imported, _, _ in imports_of(path, known) if imported in known}
        for name, path in modules().items()
    }


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_imports_point_down():
    upward = []
    for module, imported in sorted((m, i) for m, targets in graph().items() for i in targets):
        (group, rank), (target_group, target_rank) = layer(module), layer(imported)
        if group == target_group or target_rank < rank:
            continue
        upward.append(f"{module} imports {imported}")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_function_level_imports_say_why():
    known = set(modules())
    silent = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for imported, line, in_function in imports_of(path, known):
            if not in_function:
                continue
            above = line - 2  # the comment may head a block of imports
            while above >= 0 and (not lines[above].strip() or lines[above].strip().startswith(("import ", "from "))):
                above -= 1
            if "#" not in lines[line - 1] and not (above >= 0 and "#" in lines[above]):
                silent.append(f"{name}:{line} imports {imported} inside a function without a comment")
    assert not silent, "\n".join(silent)


def test_the_walker_sees_what_it_checks():
    edges = graph()
    assert "mlff_distill.student.model" in edges["mlff_distill.student.calculator"]
    assert any(target.startswith("mlff_distill.student") for target in edges["mlff_distill.stages.train"])
