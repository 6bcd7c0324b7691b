"""Imports point one way: commands -> orchestration -> capabilities -> foundations -> base.

Every `import` in the package (module level and inside functions) is an edge; the test fails on any
cycle and on any edge from a lower layer to a higher one."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kdistill"
COMMANDS = {"kdistill", "kdistill.cli", "kdistill.__main__", "kdistill.evaluation.command", "kdistill.cache.command",
            "kdistill.export.cli", "kdistill.report.command", "kdistill.losses.bench", "kdistill.losses.bench_cuda", "kdistill.train.bench_step", "kdistill.students.design",
            "kdistill.cli_args", "kdistill.config_command", "kdistill.api",
            "kdistill.students.map_command"}
LAYERS = [  # (rank, module prefixes); higher ranks may import lower ones only
    (3, ("kdistill.distill", "kdistill.preflight", "kdistill.rundir", "kdistill.dry_run")),
    (2, ("kdistill.sources", "kdistill.teacher", "kdistill.data", "kdistill.students", "kdistill.train",
         "kdistill.evaluation", "kdistill.report", "kdistill.export", "kdistill.generate",
         "kdistill.cache.writer", "kdistill.cache.reader", "kdistill.cache.signal", "kdistill.cache.inspect",
         "kdistill.model_card")),
    (1, ("kdistill.losses", "kdistill.cache", "kdistill.modeling", "kdistill.model_files", "kdistill.hardware",
         "kdistill.config", "kdistill.config_generate", "kdistill.config_rollout", "kdistill.sandbox", "kdistill.console", "kdistill.lazy",
         "kdistill.activations")),
    (0, ("kdistill.fsutil", "kdistill.errors")),
]


def rank(module: str) -> int:
    if module in COMMANDS:
        return 4
    best = max(((len(p), r) for r, prefixes in LAYERS for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    if best is not None:
        return best[1]  # the longest matching prefix decides (kdistill.cache.writer before kdistill.cache)
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py")


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


def test_no_import_cycle():
    graph, state, stack = edges(), {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(w):] + [w]))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v)


def test_imports_point_down():
    upward = [f"{a} (layer {rank(a)}) imports {b} (layer {rank(b)})"
              for a, deps in edges().items() for b in deps if rank(b) > rank(a)]
    assert not upward, "\n".join(upward)
