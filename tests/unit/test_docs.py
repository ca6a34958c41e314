"""Docs that run: every command the README and docs/*.md show is in a ```sh block, and every
such block runs in a test, read from the file itself (tests/docmd.py), with the exit code
its comment claims. The controller's commands run here, in a repository made by `wgmesh
init` (the docs' `inventories/prod`) with the repository's example and lab inventories
beside it; the others run in the lab tests named below, which read their blocks the same way."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docmd import COMMAND, DOCS, REPO, Block, blocks, shell_blocks

BIN = Path(sys.executable).parent

# Where each block runs: "here" (in a site `wgmesh init` made), "project" (in a clone of this
# repository), or a test file that runs it by this key.
WHERE = {
    "README.md: ./dev.sh demo": "tests/lab/test_docs_lab.py",
    "README.md: ./dev.sh test": ".ci/run",
    "README.md: python3 -m venv ~/wgmesh-venv": "tests/lab/test_own_mesh.py",
    "README.md: .venv/bin/wgmesh lab status": "tests/lab/test_docs_lab.py",
    "README.md: ansible-playbook site.yml --check --diff": "tests/lab/test_docs_lab.py",
    "README.md: .venv/bin/wgmesh check  -i inventories/example": "here",
    "README.md: pip download -d wheels -r constraints.txt pip setuptools":
        "tests/lab/test_docs_lab.py",
    "docs/air-gap.md: .venv/bin/wgmesh kit --out /media/usb/wgmesh-kit":
        "tests/lab/test_docs_lab.py",
    "docs/air-gap.md: wgmesh kit-sign /media/usb/wgmesh-kit --key ann.key -i inventories/prod":
        "here",
    "docs/air-gap.md: sha256sum -c SHA256SUMS": "tests/lab/test_systemd.py",
    "docs/air-gap.md: sh install.sh --python-only /opt/wgmesh": "tests/lab/test_kit.py",
    "docs/devices.md: wgmesh device add alice-phone --owner alice@example.com -i "
    "inventories/prod --key-out alice-phone.key": "here",
    "docs/devices.md: wgmesh device config alice-phone --key-file alice-phone.key -i "
    "inventories/prod": "here",
    "docs/gitops.md: wgmesh plan -i inventories/prod --base origin/main": "here",
    "docs/gitops.md: echo '{\"src\": \"group:admins\", \"dst\": \"tag:db\", \"proto\": \"tcp\", "
    "\"port\": 5432}' | wgmesh eval -i inventories/prod": "here",
    "docs/graph.md: wgmesh graph -i inventories/lab --out mesh.html": "here",
    "docs/observability.md: promtool check rules docs/monitoring/alerts.yml": "project",
    "docs/observability.md: systemctl is-active wgmesh-monitor": "tests/lab/test_systemd.py",
    "docs/observability.md: wgmesh why home1 pub3 5432/tcp -i inventories/lab": "here",
    "docs/observability.md: wgmesh why home1 pub3 5432/tcp --live -i inventories/lab":
        "tests/lab/test_observability.py",
    "docs/scale.md: ansible-galaxy collection build --output-path dist": "project",
    "docs/scale.md: pip wheel --no-deps -w dist .": "project",
    "docs/scale.md: /opt/wgmesh/.venv/bin/wgmesh host enrol --pull "
    "git://git.example.net/mesh.git \\": "tests/lab/test_pull_signed.py",
    "docs/scale.md: wgmesh enrol web3 \"$WEB3_KEY\" -i inventories/prod": "here",
}


def test_commands_are_shown_in_sh_blocks_only():
    """A command in any other block would escape the tests below."""
    hidden = [f"{b.doc}:{b.line}: {line}" for path in DOCS for b in blocks(path)
              if b.lang != "sh" for line in b.lines if COMMAND.match(line)]
    assert hidden == []


def test_every_block_of_commands_has_a_place_where_it_runs():
    keys = [b.key for b in shell_blocks()]
    assert len(keys) == len(set(keys)), "two blocks start alike: their keys would be one"
    assert set(keys) == set(WHERE), (sorted(set(keys) - set(WHERE)), sorted(set(WHERE) - set(keys)))
    for key, where in WHERE.items():
        if where in ("here", "project"):
            continue
        text = (REPO / where).read_text()
        if where == ".ci/run":
            assert "./dev.sh test" in text
            continue
        # The file names the block in a string of its own (as block(KEY) reads it).
        strings = {n.value for n in ast.walk(ast.parse(text))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert key in strings, f"{where} does not run the block {key!r}"


# What a reader has in place of the docs' own: the USB stick's mount point, and on "a host"
# the install folder and trust file (here the site's).
PLACES = {"/media/usb": "usb", "/opt/wgmesh/.venv/bin/wgmesh": ".venv/bin/wgmesh",
          "/etc/wgmesh/trust.json": "trust.json"}


def signed_site_with_a_kit(site: Path, env: dict) -> None:
    """What docs/air-gap.md's signing block stands on: a kit on the stick, three admins
    (keys from `wgmesh admin keygen`) of whom two must sign, and a host's trust file."""
    from wgmesh import kit

    k = site / "usb/wgmesh-kit"
    for name, data in (("project.tar", b"project"), ("wheels/wgmesh-0.1-py3-none-any.whl",
                                                     b"wheel"), ("debs/nft_1_amd64.deb", b"deb")):
        (k / name).parent.mkdir(parents=True, exist_ok=True)
        (k / name).write_bytes(data)
    (k / "install.sh").write_text(kit.INSTALL)
    subprocess.run(["sh", "-c", "sha256sum $(find . -type f ! -name SHA256SUMS | sort) "
                    "| sed 's#  ./#  #' > SHA256SUMS"], cwd=k, check=True)
    admins = {}
    for name in ("ann", "ben", "cat"):
        out = subprocess.run(["wgmesh", "admin", "keygen", "--out", f"{name}.key"], cwd=site,
                             env=env, capture_output=True, text=True, check=True)
        admins[name] = out.stdout.split()[-1]
    mesh = site / "inventories/prod/mesh.yml"
    mesh.write_text(mesh.read_text() + "signing:\n  threshold: 2\n  admins:\n" + "".join(
        f"    {n}: {key}\n" for n, key in admins.items()))
    trust = subprocess.run(["wgmesh", "manifest", "trust", "-i", "inventories/prod"], cwd=site,
                           env=env, capture_output=True, text=True, check=True)
    (site / "trust.json").write_text(trust.stdout)


def web3_listed(site: Path, env: dict) -> None:
    """docs/scale.md: mesh.yml lists web3, and its host printed a key."""
    mesh = site / "inventories/prod/mesh.yml"
    mesh.write_text(mesh.read_text() + "  web3:\n    ansible_host: 198.51.100.13\n"
                    "    tags: [tag:web]\n")
    env["WEB3_KEY"] = "Q0VCv1s6m1Jd9u8Tn6j4rQ1y6n3fM2b0o0hC3Qx3v2M="


# What the prose around a block says is in place before it runs.
PREPARE = {"docs/scale.md: wgmesh enrol web3 \"$WEB3_KEY\" -i inventories/prod": web3_listed,
           "docs/air-gap.md: wgmesh kit-sign /media/usb/wgmesh-kit --key ann.key -i "
           "inventories/prod": signed_site_with_a_kit}


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
        text = cmd.text
        for place, here in PLACES.items():
            text = text.replace(place, here)
        script.append(f"{{ {text}\n}} >{tmp}/{i}.out 2>&1; echo $? >{tmp}/{i}.rc")
    subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, check=True,
                   timeout=600)
    return [(str(cmd), int((tmp / f"{i}.rc").read_text()), (tmp / f"{i}.out").read_text())
            for i, cmd in enumerate(block.commands)]


def project(tmp: Path) -> tuple[Path, dict]:
    """A clone of this repository at its commit (the project's own commands run in it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", HOME=str(tmp))
    clone = tmp / "wgmesh"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True,
                   capture_output=True)
    return clone, env


@pytest.mark.parametrize("key", [k for k, w in WHERE.items() if w in ("here", "project")],
                         ids=lambda k: k.split(":")[0] + ":" + k.split()[2])
def test_the_controllers_commands_run_as_shown(tmp_path, key):
    site, env = (project if WHERE[key] == "project" else sandbox)(tmp_path)
    [block] = [b for b in shell_blocks() if b.key == key]
    # A doc's blocks run in order in one site: run the ones above this one first.
    for earlier in shell_blocks():
        if earlier.doc == block.doc and earlier.line < block.line \
                and WHERE.get(earlier.key) == WHERE[key]:
            (tmp_path / "earlier").mkdir(exist_ok=True)
            run_block(earlier, site, env, tmp_path / "earlier")
    if key in PREPARE:
        PREPARE[key](site, env)
    (tmp_path / "out").mkdir()
    ran = run_block(block, site, env, tmp_path / "out")
    wrong = [(cmd, rc, out[-1500:]) for (cmd, rc, out), c in zip(ran, block.commands, strict=True)
             if rc != c.exit]
    assert wrong == [], wrong
    for cmd, _, out in ran:
        if "wgmesh eval" in cmd:
            assert '"allow": true' in out, out
