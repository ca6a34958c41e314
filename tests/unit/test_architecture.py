"""The package's modules import one another in one direction: a stage depends on the stages
before it, never back (module-level imports, TYPE_CHECKING ones included; an import inside a
function is a deliberate late binding and not counted)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src/wgmesh"


def modules_of(path: Path) -> set[str]:
    """The wgmesh modules (and names) a file imports, by full name: module-level imports,
    those under ``if TYPE_CHECKING:`` and ``try:`` included."""
    out = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + [n for h in node.handlers for n in h.body]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wgmesh"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("wgmesh.")}
    return out


def imports_of(path: Path) -> set[str]:
    """The stages (the package's modules and subpackages) a file imports."""
    return {m.split(".")[1] for m in modules_of(path) if m.startswith("wgmesh.")}


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


COMPILE = SRC / "compile"


def test_the_compile_stage_runs_one_way():
    """resolve (identities, rules) comes before the evaluator and the filters, which the
    compiler then uses: resolve imports neither, nor anything after the compile stage."""
    later = {f"wgmesh.compile.{m}" for m in ("evaluate", "filters", "paths", "compiler")}
    assert not modules_of(COMPILE / "resolve.py") & (later | {"wgmesh.render", "wgmesh.build"})
    for name in ("evaluate", "filters", "paths"):
        assert "wgmesh.compile.resolve" in modules_of(COMPILE / f"{name}.py"), name
    assert not imports_of(COMPILE / "compiler.py") & {"render", "build", "cli"}


def test_the_renderers_read_the_host_output_not_the_compiler():
    """render turns a HostOutput into files: of the compile stage it needs the types only."""
    for path in (SRC / "render").glob("*.py"):
        used = {m for m in modules_of(path) if m.startswith("wgmesh.compile.")}
        assert used <= {"wgmesh.compile.hostoutput", "wgmesh.compile.hostoutput.HostOutput",
                        "wgmesh.compile.hostoutput.Peer"}, (path.name, used)
        assert "build" not in imports_of(path), path.name


def test_the_compiler_holds_the_resolution_rather_than_being_one():
    from wgmesh.compile.compiler import Compiler
    from wgmesh.compile.resolve import Resolution

    assert Resolution not in Compiler.__mro__
