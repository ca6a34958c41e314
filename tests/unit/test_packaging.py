"""What the package and the collection declare about themselves holds: the licence they
name is the one the repository carries, and every link they publish is a real one."""

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_declared_licence_is_the_licence_file():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert declared == {"text": "Apache-2.0"} and galaxy["license"] == ["Apache-2.0"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_published_links_are_real_or_absent():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    links = [galaxy.get(k) for k in ("repository", "documentation", "homepage", "issues")]
    links += list(project.get("urls", {}).values())
    assert not [link for link in links if link and ".invalid" in link], links


def third_party_imports() -> set[str]:
    """The top-level modules the package and the plugins import that are neither the
    standard library's nor wgmesh's own (nor Ansible's plugin namespaces)."""
    import ast
    import sys

    found = set()
    for path in [*(REPO / "src/wgmesh").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names
            and m not in ("wgmesh", "ansible_collections", "__future__")}


def test_every_import_is_declared_and_every_declaration_imported():
    """pyproject's dependencies are exactly the distributions the code imports (ansible-core
    for `ansible`), so nothing is installed for nothing and nothing works by accident."""
    import re
    from importlib.metadata import packages_distributions

    dist_of = packages_distributions()
    imported = {dist_of[m][0].lower() for m in third_party_imports()}
    declared = {re.split(r"[=<>]", d)[0].lower() for d in
                tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert imported == declared, (imported, declared)
