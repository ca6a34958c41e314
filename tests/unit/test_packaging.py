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
