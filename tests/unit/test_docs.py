"""Docs that run: every command the README and docs/*.md show is in a ```sh block, and every
such block runs in a test, read from the file itself (tests/docmd.py), with the exit code
its comment claims. The controller's commands run here, in a repository made by `wgmesh
init` (the docs' `inventories/prod`) with the repository's example and lab inventories
beside it; the others run in the lab tests named below, which read their blocks the same way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docmd import COMMAND, DOCS, REPO, Block, blocks, shell_blocks

BIN = Path(sys.executable).parent

# Where each block runs: "here" (below), a test file that runs it by this key, or what it
# needs that no test here has (said, not hidden).
WHERE = {
    "README.md: ./dev.sh demo": "tests/lab/test_docs_lab.py",
    "README.md: ./dev.sh test": ".ci/run",
    "README.md: python3 -m venv ~/wgmesh-venv": "tests/lab/test_own_mesh.py",
    "README.md: .venv/bin/wgmesh lab status": "tests/lab/test_docs_lab.py",
    "README.md: ansible-playbook site.yml --check --diff": "tests/lab/test_docs_lab.py",
    "README.md: .venv/bin/wgmesh check  -i inventories/example": "here",
    "README.md: pip download -d wheels -r constraints.txt pip setuptools":
        "not yet: downloads every wheel (tests/lab/test_kit.py builds a kit that does)",
    "docs/air-gap.md: .venv/bin/wgmesh kit --out /media/usb/wgmesh-kit":
        "not yet: a kit of three Pythons (tests/lab/test_kit.py builds one of this Python)",
    "docs/air-gap.md: wgmesh kit-sign /media/usb/wgmesh-kit --key ann.key -i inventories/prod":
        "not yet: needs a kit and a signed mesh (tests/unit/test_kit_signing.py signs one)",
    "docs/air-gap.md: sha256sum -c SHA256SUMS":
        "not yet: installs Debian packages as root (tests/lab/test_kit.py installs a kit)",
    "docs/devices.md: wgmesh device add alice-phone --owner alice@example.com -i "
    "inventories/prod --key-out alice-phone.key": "here",
    "docs/devices.md: wgmesh device config alice-phone --key-file alice-phone.key -i "
    "inventories/prod": "here",
    "docs/gitops.md: wgmesh plan -i inventories/prod --base origin/main": "here",
    "docs/gitops.md: echo '{\"src\": \"group:admins\", \"dst\": \"tag:db\", \"proto\": \"tcp\", "
    "\"port\": 5432}' | wgmesh eval -i inventories/prod": "here",
    "docs/graph.md: wgmesh graph -i inventories/lab --out mesh.html": "here",
    "docs/scale.md: ansible-galaxy collection build --output-path dist":
        "not yet: tests/lab/test_collection.py builds and installs the collection its own way",
    "docs/scale.md: /opt/wgmesh/.venv/bin/wgmesh host enrol --pull "
    "git://git.example.net/mesh.git \\":
        "not yet: placeholders (<public key>); tests/lab/test_pull_signed.py enrols hosts",
}


def test_commands_are_shown_in_sh_blocks_only():
    """A command in any other block would escape the tests below."""
    hidden = [f"{b.doc}:{b.line}: {line}" for path in DOCS for b in blocks(path)
              if b.lang != "sh" for line in b.lines if COMMAND.match(line)]
    assert hidden == []


def test_every_block_of_commands_has_a_place_where_it_runs():
    keys = {b.key for b in shell_blocks()}
    # Keys are unique (a block is named by its file and first command) but for the two
    # scale.md blocks that start alike, which the one entry covers.
    assert keys == set(WHERE), (sorted(keys - set(WHERE)), sorted(set(WHERE) - keys))
    for key, where in WHERE.items():
        if where in ("here",) or where.startswith("not yet: "):
            continue
        text = (REPO / where).read_text()
        if where == ".ci/run":
            assert "./dev.sh test" in text
            continue
        assert key in text, f"{where} does not run the block {key!r}"


def sandbox(tmp: Path) -> tuple[Path, dict]:
    """A site repository as `wgmesh init` writes it, with the project's example and lab
    inventories and their policies, committed and pushed to an origin (so origin/main is a
    base for plan), a copy beside it as ../checkout-of-main, and .venv pointing at this
    Python's environment (the README's `.venv/bin/wgmesh`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", HOME=str(tmp), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    site = tmp / "site"
    subprocess.run([str(BIN / "wgmesh"), "init", str(site)], check=True, capture_output=True)
    for inv in ("example", "lab"):
        shutil.copytree(REPO / "inventories" / inv, site / "inventories" / inv)
    for pol in ("article.hujson", "lab.hujson"):
        shutil.copy(REPO / "policies" / pol, site / "policies" / pol)
    (site / ".venv").symlink_to(BIN.parent)
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."],
                 ["git", "commit", "-qm", "site"],
                 ["git", "clone", "-q", "--bare", ".", str(tmp / "origin.git")],
                 ["git", "remote", "add", "origin", str(tmp / "origin.git")],
                 ["git", "fetch", "-q", "origin"]):
        subprocess.run(argv, cwd=site, env=env, check=True, capture_output=True)
    shutil.copytree(site, tmp / "checkout-of-main", symlinks=True)
    return site, env


def run_block(block: Block, cwd: Path, env: dict, tmp: Path) -> list[tuple[str, int, str]]:
    """The block's commands in one shell, in order (a `cd` carries over), each with its
    exit code and output."""
    script = []
    for i, cmd in enumerate(block.commands):
        script.append(f"{{ {cmd.text}\n}} >{tmp}/{i}.out 2>&1; echo $? >{tmp}/{i}.rc")
    subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, check=True,
                   timeout=600)
    return [(str(cmd), int((tmp / f"{i}.rc").read_text()), (tmp / f"{i}.out").read_text())
            for i, cmd in enumerate(block.commands)]


@pytest.mark.parametrize("key", [k for k, w in WHERE.items() if w == "here"],
                         ids=lambda k: k.split(":")[0] + ":" + k.split()[2])
def test_the_controllers_commands_run_as_shown(tmp_path, key):
    site, env = sandbox(tmp_path)
    [block] = [b for b in shell_blocks() if b.key == key]
    # A doc's blocks run in order in one site: run the ones above this one first.
    for earlier in shell_blocks():
        if earlier.doc == block.doc and earlier.line < block.line \
                and WHERE.get(earlier.key) == "here":
            (tmp_path / "earlier").mkdir(exist_ok=True)
            run_block(earlier, site, env, tmp_path / "earlier")
    (tmp_path / "out").mkdir()
    ran = run_block(block, site, env, tmp_path / "out")
    wrong = [(cmd, rc, out[-1500:]) for (cmd, rc, out), c in zip(ran, block.commands, strict=True)
             if rc != c.exit]
    assert wrong == [], wrong
    for cmd, _, out in ran:
        if "wgmesh eval" in cmd:
            assert '"allow": true' in out, out
