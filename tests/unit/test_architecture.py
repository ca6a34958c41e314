"""The package's modules import one another in one direction: a stage depends on the stages
before it, never back (module-level imports, TYPE_CHECKING ones included; an import inside a
function is a deliberate late binding and not counted)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src/wgmesh"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):  # if TYPE_CHECKING: ...
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + [n for h in node.handlers for n in h.body]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("wgmesh."):
                out.add(node.module.split(".")[1])
            elif node.module == "wgmesh":
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("wgmesh.")}
    return out


def test_no_module_of_the_package_imports_back_into_one_that_imports_it():
    graph = {p.stem: imports_of(p) for p in SRC.glob("*.py")}
    # A package (the CLI, the lab) is one stage: what any of its files imports.
    for package in (p.parent for p in SRC.glob("*/__init__.py")):
        graph[package.name] = set().union(*map(imports_of, package.glob("*.py"))) - {
            package.name}
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt in graph and len(path) < 30:
                walk(nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    assert sorted(set(cycles)) == []


def test_the_compile_stage_runs_one_way():
    """resolve (identities, rules) comes before the evaluator and the filters, which the
    compiler then uses: resolve imports neither."""
    assert not imports_of(SRC / "resolve.py") & {"evaluate", "filters", "compiler", "render"}
    assert "resolve" in imports_of(SRC / "evaluate.py") & imports_of(SRC / "filters.py")


def test_the_renderers_read_the_host_output_not_the_compiler():
    """render turns a HostOutput into files: it needs the types, never the compile stage."""
    for path in (SRC / "render").glob("*.py"):
        assert not imports_of(path) & {"compiler", "resolve", "build"}, path.name


def test_the_compiler_holds_the_resolution_rather_than_being_one():
    from wgmesh.compiler import Compiler
    from wgmesh.resolve import Resolution

    assert Resolution not in Compiler.__mro__
