"""execution-environment.yml: `ansible-builder create` makes a build context holding every
Python and system dependency, the collection and the wgmesh wheel, and its Python pins are
pyproject.toml's (so the image cannot drift from what the tests ran)."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ansible_builder_creates_the_build_context(tmp_path):
    dist = tmp_path / "dist"
    out = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                          str(dist)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    source = tmp_path / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stderr
    shutil.copy(REPO / "execution-environment.yml", tmp_path)
    context = tmp_path / "context"
    out = subprocess.run([str(BIN / "ansible-builder"), "create", "-f",
                          str(tmp_path / "execution-environment.yml"), "-c", str(context),
                          "--output-filename", "Containerfile"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr

    containerfile = (context / "Containerfile").read_text()
    assert "ansible-core==2.19.14" in containerfile
    assert "pip install --no-deps /build/wgmesh/wgmesh-0.1.0-py3-none-any.whl" in containerfile
    built = {p.name for p in (context / "_build/wgmesh").iterdir()}
    assert {"wgmesh-mesh-0.1.0.tar.gz", "wgmesh-0.1.0-py3-none-any.whl"} <= built
    requirements = (context / "_build/requirements.txt").read_text().split()
    with open(REPO / "pyproject.toml", "rb") as fh:
        pins = tomllib.load(fh)["project"]["dependencies"]
    assert sorted(requirements) == sorted(p for p in pins if not p.startswith("ansible-core"))
    bindep = (context / "_build/bindep.txt").read_text()
    assert "openssh-client [platform:dpkg]" in bindep and "git-core [platform:rpm]" in bindep
    galaxy = yaml.safe_load((context / "_build/requirements.yml").read_text())
    assert galaxy["collections"] == [{"name": "/build/wgmesh/wgmesh-mesh-0.1.0.tar.gz",
                                      "type": "file"}]
