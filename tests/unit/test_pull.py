"""Pull mode's settings, the ansible-pull command it runs and the systemd timer it installs
(the run itself: tests/lab/test_pull_signed.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from wgmesh import pull
from wgmesh.errors import InputError


def test_settings_take_only_plain_values():
    conf = pull.settings("git://192.0.2.80/mesh.git", "web3", "inventories/prod")
    assert conf["branch"] == "main" and conf["every"] == 300
    for url in ("git@git.example.net:ops/mesh.git", "ssh://git@git.example.net:2222/ops/m.git",
                "https://git.example.net/ops/mesh.git", "file:///srv/git/mesh.git"):
        assert pull.settings(url, "web3", "inv")["url"] == url
    for url, node, inventory, branch in [
        ("git://h/m.git; reboot", "web3", "inv", "main"),
        ("git://h/m.git", "Web3", "inv", "main"),
        ("git://h/m.git", "web3", "../etc", "main"),
        ("git://h/m.git", "web3", "/etc/inv", "main"),
        ("git://h/m.git", "web3", "inv", "main --upload-pack=x"),
        ("-oProxyCommand=x", "web3", "inv", "main"),
        # A user or host beginning with "-" would reach ssh as an option.
        ("-oProxyCommand@h:m.git", "web3", "inv", "main"),
        ("git@-oProxyCommand:m.git", "web3", "inv", "main"),
        ("ssh://-oProxyCommand/m.git", "web3", "inv", "main"),
        ("ssh://-o@h/m.git", "web3", "inv", "main"),
        ("git@h:-u.git", "web3", "inv", "main"),
        ("ftp://h/m.git", "web3", "inv", "main"),
    ]:
        with pytest.raises(InputError):
            pull.settings(url, node, inventory, branch)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@example.com", *args], capture_output=True, text=True,
                          check=True).stdout


def test_the_host_checks_out_only_the_data_wgmesh_reads(tmp_path):
    """A commit's plays, roles, plugins, ansible.cfg and group_vars never reach the host's
    disk: only mesh.yml, its lockfile, its manifest and its policy (sparse checkout)."""
    repo = tmp_path / "repo"
    (repo / "inv/group_vars").mkdir(parents=True)
    (repo / "policies").mkdir()
    (repo / "playbooks").mkdir()
    (repo / "inv/mesh.yml").write_text(
        "plugin: wgmesh\npolicy: ../policies/p.hujson\nnodes:\n  web3:\n"
        "    ansible_host: 192.0.2.10\n    tags: [tag:web]\n")
    (repo / "inv/mesh.lock.yml").write_text("nodes: {}\n")
    (repo / "inv/group_vars/all.yml").write_text("x: \"{{ lookup('pipe', 'id') }}\"\n")
    (repo / "policies/p.hujson").write_text('{"acls": []}\n')
    (repo / "playbooks/pull.yml").write_text("- hosts: all\n")
    (repo / "ansible.cfg").write_text("[defaults]\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "site")
    conf = {**pull.settings(f"file://{repo}", "web3", "inv"),
            "checkout": str(tmp_path / "checkout")}
    inventory = pull.fetch_inputs(conf)
    assert inventory == tmp_path / "checkout/inv"
    files = sorted(str(p.relative_to(tmp_path / "checkout"))
                   for p in (tmp_path / "checkout").rglob("*")
                   if p.is_file() and ".git" not in p.parts)
    assert files == ["inv/mesh.lock.yml", "inv/mesh.yml", "policies/p.hujson"]
    # The inputs' commit is the one fetched (bundles record it).
    assert git(tmp_path / "checkout", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    # A policy outside the repository is not read.
    (repo / "inv/mesh.yml").write_text((repo / "inv/mesh.yml").read_text().replace(
        "../policies/p.hujson", "/etc/passwd.hujson"))
    git(repo, "commit", "-qam", "policy elsewhere")
    with pytest.raises(InputError, match="outside the repository"):
        pull.fetch_inputs(conf)
    # Nor one where Ansible reads variables (templates, which run code) or a pattern.
    for policy in ("group_vars/all", "../policies/*.hujson"):
        (repo / "inv/mesh.yml").write_text(re.sub(r"policy: \S+", f"policy: {policy}",
                                                  (repo / "inv/mesh.yml").read_text()))
        git(repo, "commit", "-qam", policy)
        with pytest.raises(InputError, match="not a plain path outside group_vars"):
            pull.fetch_inputs(conf)


def test_the_pull_play_is_the_installed_projects(tmp_path):
    conf = pull.settings("git://h/m.git", "web3", "inventories/prod", "release")
    argv = pull.pull_play_argv(conf, tmp_path / "project", tmp_path / "checkout/inv")
    assert argv[0].endswith("/ansible-playbook")
    assert argv[1:] == ["-c", "local", "-i", str(tmp_path / "checkout/inv/mesh.yml"),
                        "-l", "web3", str(tmp_path / "project/playbooks/pull.yml")]


def test_install_without_systemd_writes_the_settings_and_says_what_to_run(tmp_path):
    """Where systemd runs, the timer is installed and fires for real: a lab host that boots
    systemd shows it (tests/lab/test_systemd.py, the pull-mode test)."""
    conf = pull.settings("git://h/m.git", "web3", "inv", every=120)
    assert "OnUnitActiveSec=120" in pull.timer_unit(120)
    assert "host pull" in pull.service_unit()
    # Without systemd: the settings only, and what to run instead.
    said = pull.install(conf, tmp_path / "other.json", tmp_path / "none", systemd=False)
    assert "host pull --loop 120" in said and not (tmp_path / "none").exists()
    assert json.loads((tmp_path / "other.json").read_text()) == conf
