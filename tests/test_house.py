"""The house's rules, read from the code itself: no import circles, stages import downward only,
project imports at module level, heavy optional dependencies only inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hepdeploy"

# Floors, from the ground up. A module imports its own floor or lower ones; the four stages
# (and the model zoo, a source of models) import none of each other, except convert -> model_zoo
# (a zoo network is exported to its source format before it is converted).
GROUND = {"errors", "steps", "progress", "build_view", "environment", "variants", "fsutil", "tf_support", "spec", "compare", "metrics",
          "plan_compat", "sampling", "data", "artifacts", "ntuple", "weaver", "memory", "graph_bounds",
          "preprocess_spec", "lifetime", "platforms", "judgement", "frameworks", "registry", "__init__"}
FLOORS = {"ground": 0, "backend": 1, "model_zoo": 2, "convert": 3, "optimize": 3, "validate": 3, "triton": 3,
          "perf": 4, "serve_check": 4, "gate": 4, "serving": 4, "tune": 4, "build_page": 4, "pipeline": 5, "cli": 6, "__main__": 7}
ALLOWED_ACROSS = {("convert", "model_zoo"), ("serving", "perf")}  # serving measures through perf
# Imported only inside the functions that need them, so `import hepdeploy.<anything>` stays light
# and works without the optional extras.
HEAVY = {"torch", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxslim", "modelopt", "tensorrt",
         "tritonclient", "matplotlib", "h5py", "uproot", "awkward", "polygraphy", "onnx_graphsurgeon", "google"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, known: set[str]) -> list[str]:
    """hepdeploy modules an import statement loads (``from pkg import module`` counts as the module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "hepdeploy"]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("hepdeploy"):
        names = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return names or [node.module]
    return []


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, (_, tree) in modules.items():
        graph[name] = {target for node in ast.walk(tree) for target in _imported(node, known)
                       if target in known and target != name}
    return graph


def _floor(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1:
        return "ground", FLOORS["ground"]
    top = parts[1]
    if top in GROUND:
        return "ground", FLOORS["ground"]
    return top, FLOORS[top]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    circles = _circles(_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_floor() -> None:
    for module in _graph():
        _floor(module)  # a KeyError names a new top-level module that needs a floor here


def test_imports_run_downward_and_stages_do_not_import_each_other() -> None:
    wrong = []
    for module, targets in _graph().items():
        room, floor = _floor(module)
        for target in targets:
            target_room, target_floor = _floor(target)
            if target_room == room:
                continue
            if target_floor > floor or (target_floor == floor and (room, target_room) not in ALLOWED_ACROSS):
                wrong.append(f"{module} -> {target}")
            elif target_floor == floor - 1 and floor == 3 and target_room == "model_zoo" \
                    and (room, target_room) not in ALLOWED_ACROSS:
                wrong.append(f"{module} -> {target} (only convert reads the model zoo)")
    assert not wrong, "imports that run up or across: " + ", ".join(sorted(wrong))


@pytest.mark.parametrize("rule", ["project imports at module level", "heavy dependencies inside functions"])
def test_import_placement(rule: str) -> None:
    wrong = []
    for module, (path, tree) in _modules().items():
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(sub) for f in functions for sub in ast.walk(f)}
        guarded = {id(sub) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                   for sub in ast.walk(n)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else \
                [(node.module or "").split(".")[0]]
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if rule == "project imports at module level" and "hepdeploy" in roots and id(node) in inside:
                wrong.append(where)
            if rule == "heavy dependencies inside functions" and HEAVY & set(roots) \
                    and id(node) not in inside and id(node) not in guarded:
                wrong.append(f"{where} ({', '.join(sorted(HEAVY & set(roots)))})")
    assert not wrong, f"{rule}: " + ", ".join(wrong)


# Functions allowed past the size rule (at most 80 lines, at most 8 parameters; cli/ aside, where a
# click command takes one parameter per option), each with its reason.
SIZE_EXCEPTIONS: dict[str, str] = {}
MAX_LINES, MAX_PARAMETERS = 80, 8


def _function_sizes() -> list[tuple[str, int, int]]:
    """(module.function, lines, parameters) of every function outside cli/ (self and cls not counted)."""
    found = []
    for name, (path, tree) in _modules().items():
        if ".cli" in name or name.endswith("__main__"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                named = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                count = len(named) + bool(arguments.vararg) + bool(arguments.kwarg)
                if named and named[0].arg in ("self", "cls"):
                    count -= 1
                found.append((f"{name}.{node.name}", node.end_lineno - node.lineno + 1, count))  # type: ignore[operator]
    return found


def test_functions_are_short_and_take_few_parameters() -> None:
    too_big = [f"{where}: {lines} lines, {count} parameters" for where, lines, count in _function_sizes()
               if (lines > MAX_LINES or count > MAX_PARAMETERS) and where not in SIZE_EXCEPTIONS]
    assert not too_big, "split these (or add them to SIZE_EXCEPTIONS with the reason): " + "; ".join(too_big)
    unused = set(SIZE_EXCEPTIONS) - {where for where, lines, count in _function_sizes()
                                     if lines > MAX_LINES or count > MAX_PARAMETERS}
    assert not unused, f"exceptions that are no longer needed: {sorted(unused)}"
