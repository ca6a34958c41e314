"""Pull mode's settings, the ansible-pull command it runs and the systemd timer it installs
(the run itself: tests/lab/test_pull_signed.py)."""

from __future__ import annotations

import json
import os

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


def test_ansible_pull_runs_the_pull_play_limited_to_the_node():
    argv = pull.ansible_pull_argv(pull.settings("git://h/m.git", "web3", "inventories/prod",
                                                "release"))
    assert argv[0].endswith("/ansible-pull")
    assert argv[1:] == ["-U", "git://h/m.git", "-C", "release", "-d", pull.CHECKOUT, "--clean",
                        "-i", "inventories/prod", "-l", "web3", "playbooks/pull.yml"]


def test_install_writes_the_settings_and_starts_the_timer(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    conf = pull.settings("git://h/m.git", "web3", "inv", every=120)
    units = tmp_path / "units"
    units.mkdir()
    said = pull.install(conf, tmp_path / "pull.json", units, systemd=True)
    assert "wgmesh-pull.timer started" in said
    assert json.loads((tmp_path / "pull.json").read_text()) == conf
    assert "OnUnitActiveSec=120" in (units / "wgmesh-pull.timer").read_text()
    assert "host pull" in (units / "wgmesh-pull.service").read_text()
    assert calls.read_text().splitlines() == ["daemon-reload", "enable --now wgmesh-pull.timer"]
    # Without systemd: the settings only, and what to run instead.
    said = pull.install(conf, tmp_path / "other.json", tmp_path / "none", systemd=False)
    assert "host pull --loop 120" in said and not (tmp_path / "none").exists()
