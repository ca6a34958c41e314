"""Pull mode and signed changes on a lab of their own.

The site's repository (this project's plays, roles and plugins, an inventory whose mesh.yml
has a signing section, its lockfile, policy and manifest) is served by `git daemon` on the
lab host `web`, inside the lab. Every host is enrolled as a host in pull mode would be (its
key made on it, the admins' trust installed, the public key pinned by `wgmesh enrol`) and
applies its own part with `wgmesh host pull` (the pull play of the project installed from the
kit, on the commit's data). A push run from the same commit then changes nothing and every
host's state is byte for byte what the pull left. Code a commit carries never runs on a host.

Signed changes, on pub2 pulling: a properly signed change applies; a tampered policy, a
manifest signed by too few admins, an old manifest served again, and a manifest signed by an
admin a signed change removed are each refused by the host with nothing changed on it. A
pipeline that compiles a bundle from a tampered policy and hands it to the module with the
signed manifest is refused too.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, ansible_env
from docmd import block
from meshlab import GIT_URL, MeshLab, publish, recap, serve_git, snapshot
from nacl.signing import SigningKey

from wgmesh import signing
from wgmesh.build import build

pytestmark = pytest.mark.lab

WGMESH = str(BIN / "wgmesh")
# Hosts run wgmesh from the offline kit's wheels, in a venv of the hosts' own Python made
# where the lab hosts see it (their /tmp, /root, /run, /etc are their own; /var shows through).
HOST_SIDE = Path("/var/tmp/wgmesh-wgp")
HOST_WGMESH = str(HOST_SIDE / ".venv/bin/wgmesh")
ADMINS = ("ann", "ben", "cat")
WIDEN = ('"dst": ["tag:db:5432"]', '"dst": ["tag:db:5432", "tag:db:8080"]')


def git(repo, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         check=True, env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                                          "GIT_COMMITTER_NAME": "t",
                                          "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin"})
    return out.stdout


def wg(repo, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([WGMESH, *args, "-i", str(repo / "inventories/site")],
                         capture_output=True, text=True)
    assert out.returncode == 0 or not check, out.stdout + out.stderr
    return out


class Site:
    """The repository, the lab, and the way a change reaches the hosts."""

    def __init__(self, tmp, lab: MeshLab):
        self.tmp, self.lab, self.repo = tmp, lab, tmp / "repo"

    def commit(self, message: str) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        publish(self.lab, self.repo)

    def sign(self, *admins: str) -> None:
        wg(self.repo, "manifest", "create")
        for name in admins:
            wg(self.repo, "manifest", "sign", "--key", str(self.tmp / f"{name}.key"))

    def pull(self, node: str) -> subprocess.CompletedProcess:
        return self.lab.run(node, HOST_WGMESH, "host", "pull", timeout=300, check=False)

    def state(self, node: str) -> dict:
        s = snapshot(self.lab, node)
        s["bundle"] = self.lab.run(node, "cat", "/var/lib/wgmesh/bundle.json").stdout
        s["trust"] = self.lab.run(node, "cat", "/etc/wgmesh/trust.json").stdout
        return s


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pull")
    (tmp / "lab").mkdir()
    lab = MeshLab(tmp / "lab", "wgp")
    lab.lab.down()
    shutil.rmtree(HOST_SIDE, ignore_errors=True)
    kit = subprocess.run([WGMESH, "kit", "--out", str(tmp / "kit"), "--no-debs"],
                         capture_output=True, text=True, timeout=600)
    assert kit.returncode == 0, kit.stderr
    install = subprocess.run(["sh", str(tmp / "kit/install.sh"), "--python-only",
                              str(HOST_SIDE)], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PATH": f"/usr/bin:{os.environ['PATH']}"})
    assert install.returncode == 0, install.stdout + install.stderr
    lab.lab.up()
    try:
        yield from _enrolled_site(Site(tmp, lab))
    finally:
        lab.lab.down()
        shutil.rmtree(HOST_SIDE, ignore_errors=True)


def _enrolled_site(s: Site):
    tmp, lab, repo = s.tmp, s.lab, s.repo
    repo.mkdir()
    for part in ("ansible.cfg", "playbooks", "roles", "plugins", "policies", "site.yml"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / part)
    mesh = yaml.safe_load((REPO / "inventories/lab/mesh.yml").read_text())
    del mesh["lockfile"]  # committed beside mesh.yml, as a real site keeps it
    admins = {}
    for name in ADMINS:
        admins[name] = subprocess.run([WGMESH, "admin", "keygen", "--out",
                                       str(tmp / f"{name}.key")], capture_output=True,
                                      text=True, check=True).stdout.strip()
    mesh["signing"] = {"threshold": 2, "admins": admins}
    (repo / "inventories/site").mkdir(parents=True)
    (repo / "inventories/site/mesh.yml").write_text(yaml.safe_dump(mesh, sort_keys=False))
    git(repo, "init", "-q", "-b", "main")
    wg(repo, "lock")
    trust = wg(repo, "manifest", "trust").stdout
    # Enrolment: each host makes its key, installs the trust, keeps its pull settings...
    # (home2 without a trust file: its first run installs the one mesh.yml states.)
    # docs/scale.md's command as shown, with this lab's values for the reader's own.
    [enrol] = block("docs/scale.md: /opt/wgmesh/.venv/bin/wgmesh host enrol --pull "
                    "git://git.example.net/mesh.git \\").commands
    for node in lab.mesh_nodes:
        text = (enrol.text.replace("/opt/wgmesh", str(HOST_SIDE))
                .replace("git://git.example.net/mesh.git", GIT_URL)
                .replace("web3", node).replace("inventories/prod", "inventories/site")
                .replace("trust.json", "/dev/stdin"))
        if node == "home2":
            text = text.replace(" --trust /dev/stdin", "")
        out = lab.run(node, "sh", "-c", f"{text} --every 30", stdin=trust)
        assert "no systemd here" in out.stderr
        # ...and an admin pins the public key it printed, for a pull request.
        wg(repo, "enrol", node, out.stdout.strip())
    s.sign("ann", "ben")
    serve_git(lab)
    s.commit("the mesh, signed by ann and ben")
    yield s


def test_pull_then_push_from_one_commit_leave_the_same_state(site):
    lab = site.lab
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, site.pull(n)))
               for n in lab.mesh_nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for node, out in results.items():
        assert out.returncode == 0, f"{node}: {out.stdout[-2500:]}{out.stderr[-1000:]}"
    lab.settle()
    pulled = {n: site.state(n) for n in lab.mesh_nodes}
    commit = git(site.repo, "rev-parse", "HEAD").strip()[:12]
    for node, state in pulled.items():
        bundle = json.loads(state["bundle"])
        assert bundle["commit"] == commit and bundle["name"] == node
        trust = json.loads(state["trust"])
        assert trust["serial"] == 1 and sorted(trust["admins"]) == list(ADMINS), node
    plan = json.loads(wg(site.repo, "render", "--all", "--json").stdout)
    # carol (group:ops) may reach tag:db; cafe1 is behind the symmetric NAT: through the relay.
    ping = lab.run("cafe1", "ping", "-c", "2", "-w", "10",
                   plan["hosts"]["pub2"]["addresses"][0], check=False)
    assert ping.returncode == 0, ping.stdout

    push = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(lab.topology_file), "-i",
         str(site.repo / "inventories/site"), "site.yml"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=ansible_env())
    assert push.returncode == 0, push.stdout[-3000:]
    counts = recap(push.stdout)
    assert all(counts[n]["changed"] == 0 for n in lab.mesh_nodes), counts
    pushed = {n: site.state(n) for n in lab.mesh_nodes}
    assert pushed == pulled


def test_the_commits_code_never_runs_on_a_host(site):
    """Whoever can push changes the pull play, a role task, a plugin and ansible.cfg, each
    to run a command as root, unsigned: the host runs none of it (it runs the project it
    installed from the kit, on the commit's data alone), and stays as it was."""
    lab, repo = site.lab, site.repo
    assert site.pull("pub2").returncode == 0
    start = site.state("pub2")
    pwn = "touch /root/pwned-{}"
    pull_play = repo / "playbooks/pull.yml"
    pull_play.write_text(pull_play.read_text().replace(
        "  roles:\n", "  pre_tasks:\n    - name: Own the host\n      ansible.builtin.command: "
        + pwn.format("play") + "\n      changed_when: true\n  roles:\n", 1))
    task = repo / "roles/wgmesh/tasks/main.yml"
    task.write_text(task.read_text().replace(
        "---\n", "---\n- name: Own the host\n  ansible.builtin.command: "
        + pwn.format("role") + "\n  changed_when: true\n\n", 1))
    plugin = repo / "plugins/action/wgmesh_compile.py"
    plugin.write_text(f"import os\nos.system({pwn.format('plugin')!r})\n" + plugin.read_text())
    (repo / "ansible.cfg").write_text((repo / "ansible.cfg").read_text().replace(
        "roles_path = roles\n", "roles_path = /nonexistent\n", 1))
    site.commit("code that owns every host, unsigned")
    try:
        out = site.pull("pub2")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
        assert lab.run("pub2", "sh", "-c", "ls /root/pwned-* 2>/dev/null; true").stdout == ""
        assert site.state("pub2") == start
        # Not even on the host's disk: only the files wgmesh reads are checked out.
        checkout = lab.run("pub2", "sh", "-c", "cd /var/lib/wgmesh/pull && find . -path "
                           "./.git -prune -o -type f -print | sort").stdout.split()
        assert checkout == ["./inventories/site/manifest.json",
                            "./inventories/site/mesh.lock.yml", "./inventories/site/mesh.yml",
                            "./policies/lab.hujson"]
    finally:
        git(repo, "checkout", "HEAD~1", "--", "playbooks", "roles", "plugins", "ansible.cfg")
        site.commit("the project's code back")


def test_signed_changes_apply_and_everything_else_is_refused(site):
    lab, repo = site.lab, site.repo
    policy = repo / "policies/lab.hujson"
    assert WIDEN[0] in policy.read_text()
    assert site.pull("pub2").returncode == 0
    start = site.state("pub2")

    def refused(why: str) -> None:
        out = site.pull("pub2")
        assert out.returncode != 0 and why in out.stdout, out.stdout[-3000:]
        assert site.state("pub2") == start  # nothing changed on the host

    # A tampered policy (committed by someone without the admins' keys): the host's own
    # compile finds it is not what the manifest states.
    policy.write_text(policy.read_text().replace(*WIDEN))
    site.commit("widen, unsigned")
    refused("does not state these inputs")
    # Signed by one admin of the two needed.
    site.sign("ann")
    site.commit("widen, signed by ann only")
    refused("1 valid signature(s) (ann), 2 needed")
    # (Serial 3 next: the one-signature manifest took serial 2.)
    # Properly signed: applies, here by the runner the lab uses where systemd would run the
    # timer (`wgmesh host pull --loop`).
    site.sign("ann", "cat")
    site.commit("widen, signed by ann and cat")
    loop = lab.start("pub2", [HOST_WGMESH, "host", "pull", "--loop", "5"])
    try:
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = loop.stdout.readline()
            seen.append(line)
            if line.startswith("wgmesh host pull: the pull play exited"):
                break
    finally:
        lab.stop(loop)
    assert "the pull play exited 0" in seen[-1], "".join(seen)[-3000:]
    assert json.loads(site.state("pub2")["trust"])["serial"] == 3
    table = lab.run("pub2", "nft", "list", "table", "inet", "wgmesh").stdout
    assert "8080" in table and "8080" not in start["table"]
    start = site.state("pub2")
    # The old manifest and inputs served again (a rollback to the narrower policy).
    git(repo, "checkout", "HEAD~3", "--", "inventories/site", "policies")
    site.commit("replay serial 1")
    refused("manifest serial 1 is lower than serial 3")
    git(repo, "checkout", "HEAD~1", "--", "inventories/site", "policies")
    site.commit("back to serial 3")
    # A signed change removes cat; cat's signature is then worth nothing on the host.
    mesh_file = repo / "inventories/site/mesh.yml"
    mesh = yaml.safe_load(mesh_file.read_text())
    del mesh["signing"]["admins"]["cat"]
    mesh_file.write_text(yaml.safe_dump(mesh, sort_keys=False))
    site.sign("ann", "ben")
    site.commit("cat leaves the admins")
    out = site.pull("pub2")
    assert out.returncode == 0, out.stdout[-3000:]
    trust = json.loads(site.state("pub2")["trust"])
    assert trust["serial"] == 4 and sorted(trust["admins"]) == ["ann", "ben"]
    start = site.state("pub2")
    # A manifest with cat's signature: the admin it names is gone. Made by hand here, as a
    # compromised pipeline with cat's old key would (cat is no longer in mesh.yml).
    policy.write_text(policy.read_text().replace(WIDEN[1], WIDEN[0]))
    site.sign("ann")
    manifest_file = repo / "inventories/site/manifest.json"
    data = json.loads(manifest_file.read_text())
    cat = SigningKey(base64.b64decode((site.tmp / "cat.key").read_text()))
    data["signatures"]["cat"] = base64.b64encode(
        cat.sign(signing.canonical(data["manifest"])).signature).decode()
    manifest_file.write_text(json.dumps(data))
    site.commit("narrow, signed by ann and the removed cat")
    refused("signed by cat, not an admin this host trusts")
    # Signing switched off in mesh.yml: the host still takes only signed manifests.
    mesh = yaml.safe_load(mesh_file.read_text())
    del mesh["signing"]
    mesh_file.write_text(yaml.safe_dump(mesh, sort_keys=False))
    site.commit("no more signing")
    refused("this host takes only bundles of a signed manifest")
    git(repo, "checkout", "HEAD~1", "--", "inventories/site")
    site.commit("signing back")


def test_a_bundle_not_compiled_from_the_signed_inputs_is_refused_by_the_module(site):
    """A compromised pipeline: it compiles a wider policy and hands the bundle to the module
    with the signed manifest, skipping the controller's own check."""
    lab, repo = site.lab, site.repo
    before = site.state("pub1")
    inv = site.tmp / "evil"
    shutil.copytree(repo / "inventories/site", inv)
    (inv / "mesh.yml").write_text((inv / "mesh.yml").read_text().replace(
        "../../policies/lab.hujson", str(site.tmp / "evil.hujson")))
    (site.tmp / "evil.hujson").write_text(
        (repo / "policies/lab.hujson").read_text().replace('"acls": [', '"acls": [\n'
        '    {"action": "accept", "src": ["*"], "dst": ["*:*"]},', 1))
    b = build(inv, run_tests=False)
    bundle = b.bundle("pub1")
    args = json.dumps({"bundle": bundle, "manifest": b.manifest,
                       "key_file": "/etc/wireguard/wg0.key"})
    run = subprocess.run([str(BIN / "ansible"), "-i", str(lab.topology_file), "pub1", "-m",
                          "wgmesh_apply", "-a", args], capture_output=True, text=True,
                         cwd=REPO, env=ansible_env(), timeout=120)
    assert run.returncode != 0
    assert "does not list this bundle for pub1" in run.stdout, run.stdout[-2000:]
    assert site.state("pub1") == before
