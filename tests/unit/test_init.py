"""`wgmesh init`: a site repository that checks, parses and plans with no edit, whose role,
modules and plugins come from the installed package (the collection wgmesh.mesh on Python's
path), and which never overwrites anything."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from wgmesh import cli

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def site_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    # A home of its own: no collection installed for this user can stand in for the package's.
    env.update(HOME=str(home), PATH=f"{BIN}:{env['PATH']}", ANSIBLE_NOCOLOR="1")
    return env


def test_init_writes_a_repository_that_works_as_written(tmp_path, capsys):
    site = tmp_path / "my-mesh"
    assert cli.main(["init", str(site)]) == 0
    written = {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    assert written == {"ansible.cfg", "site.yml", "requirements.txt", ".gitignore",
                       "inventories/prod/mesh.yml", "inventories/prod/group_vars/all.yml",
                       "policies/prod.hujson", ".github/workflows/wgmesh.yml",
                       ".gitlab-ci.yml"}
    assert "wgmesh==0.1.0" in (site / "requirements.txt").read_text().splitlines()
    env = site_env(tmp_path)
    check = subprocess.run([str(BIN / "wgmesh"), "check"], cwd=site, env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0 and "ok: 3 nodes, 2 rules, 2 policy tests passed" in \
        check.stdout, check.stdout + check.stderr
    graph = subprocess.run([str(BIN / "ansible-inventory"), "--graph"], cwd=site, env=env,
                           capture_output=True, text=True)
    assert graph.returncode == 0, graph.stderr
    assert "@tag_db:" in graph.stdout and "|--db1" in graph.stdout
    plays = subprocess.run([str(BIN / "ansible-playbook"), "site.yml", "--list-tasks"],
                           cwd=site, env=env, capture_output=True, text=True)
    assert plays.returncode == 0, plays.stdout + plays.stderr
    assert "wgmesh.mesh.wgmesh : Make the host's WireGuard key" in plays.stdout
    # The policy sits outside the inventory: Ansible never tries to parse it.
    assert "policy.hujson" not in graph.stderr


def test_init_never_overwrites(tmp_path, capsys):
    (tmp_path / "site").mkdir()
    (tmp_path / "site/ansible.cfg").write_text("mine\n")
    assert cli.main(["init", str(tmp_path / "site")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "site/ansible.cfg").read_text() == "mine\n"


def test_the_wheel_carries_the_whole_collection(tmp_path):
    subprocess.run([str(BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp_path), str(REPO)], check=True,
                   capture_output=True)
    [wheel] = tmp_path.glob("wgmesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    prefix = "ansible_collections/wgmesh/mesh/"
    carried = {n[len(prefix):] for n in names if n.startswith(prefix)}
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "roles", "plugins",
                              "playbooks", "meta"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert carried == set(tracked)
    assert {f"wgmesh/scaffold/{f}" for f in ("ansible.cfg", "gitignore", "policy.hujson",
                                             "github-workflow.yml")} <= names

