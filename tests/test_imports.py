"""Imports point one way: commands -> api -> run -> capabilities -> foundations -> base.

Every `import` in the package (module level and inside functions) is an edge. Each folder of the package
has a rank (FOLDERS); the test fails on an edge from a lower rank to a higher one, on any cycle between
modules, and on any cycle between folders (two capabilities that import each other)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kdistill"
FOLDERS = {  # higher ranks may import lower ones; folders of one rank may import each other without a cycle
    "commands": 5, "__init__": 5, "__main__": 5,
    "api": 4,
    "run": 3,
    "sources": 2, "data": 2, "students": 2, "train": 2, "evaluation": 2, "report": 2, "export": 2, "cache": 2,
    "losses": 1, "config": 1, "models": 1,
    "base": 0,
}
ROOT_MODULES = {"__init__", "__main__", "api"}  # what a user imports; everything else lives in a folder


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(module: str) -> int:
    name = folder(module)
    assert name in FOLDERS, f"{module}: folder {name!r} has no rank in tests/test_imports.py"
    return FOLDERS[name]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edges() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    mod = ".".join(base[:len(base) - node.level + 1] + ([mod] if mod else []))
                found |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        # a package's __init__ re-exporting its children is not an upward edge
        graph[name] = {m for m in found if m in files and m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = "done"
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_folders():
    folders: dict[str, set[str]] = {}
    for a, deps in edges().items():
        folders.setdefault(folder(a), set()).update(folder(b) for b in deps if folder(b) != folder(a))
    cycle = find_cycle(folders)
    assert cycle is None, "folders import each other: " + " -> ".join(cycle)


def test_imports_point_down():
    upward = [f"{a} (rank {rank(a)}) imports {b} (rank {rank(b)})"
              for a, deps in edges().items() for b in deps if rank(b) > rank(a)]
    assert not upward, "\n".join(upward)


def test_the_package_root_holds_only_what_a_user_imports():
    modules = {p.stem for p in ROOT.glob("*.py")}
    assert modules <= ROOT_MODULES, f"modules at the package root besides {sorted(ROOT_MODULES)}: {modules - ROOT_MODULES}"
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"} <= set(FOLDERS)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
