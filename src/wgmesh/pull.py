"""Pull mode: a host applies its own part of the mesh from the repository.

The engine is Ansible's own, ``ansible-pull``: it checks the repository out on the host and
runs ``playbooks/pull.yml`` there with the local connection, limited to the host's node name.
That play runs the same role as a push run: the host compiles only its own bundle from the
committed mesh.yml, lockfile and policy (checking it against the signed manifest in a signed
mesh) and applies it with the same module. No controller holds a key to the host.

``wgmesh host enrol --pull URL --node NAME --inventory PATH`` keeps the settings in
/etc/wgmesh/pull.json and, where systemd runs, starts a timer for ``wgmesh host pull``;
elsewhere ``wgmesh host pull --loop SECONDS`` runs under whatever supervises the host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from wgmesh import grammar
from wgmesh.errors import InputError, Problem, write_atomic

CONFIG = Path("/etc/wgmesh/pull.json")
CHECKOUT = "/var/lib/wgmesh/pull"
UNIT_DIR = Path("/etc/systemd/system")
# git URLs as ansible-pull's git module takes them, without spaces or shell characters
# (ansible-pull builds its command line as text), of the schemes git fetches over, and with
# no part that begins with "-": a user or host that did would reach ssh as an option
# (-oProxyCommand=...).
URL = re.compile(r"(?:git|ssh|https?)://(?:[A-Za-z0-9_][A-Za-z0-9._~%+-]{0,63}@)?"
                 r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?"
                 r"(?:/[A-Za-z0-9._~:@/%+-]{0,400})?|"
                 r"file:///[A-Za-z0-9._~][A-Za-z0-9._~/%+-]{0,400}|"
                 r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}:"
                 r"[A-Za-z0-9._~+][A-Za-z0-9._~/+-]{0,299}", re.ASCII)
BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", re.ASCII)
RELATIVE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}", re.ASCII)


def settings(url: str, node: str, inventory: str, branch: str = "main",
             every: int = 300) -> dict:
    problems = []

    def bad(what: str, value: str, fix: str) -> None:
        problems.append(Problem(str(CONFIG), 0, 0, what, f"{value[:80]!r} is not valid", fix))

    if not URL.fullmatch(url):
        bad("url", url, "a git URL: git://host/repo.git, ssh://host/repo.git, "
            "https://host/repo.git, file:///path or user@host:repo (no part beginning with -)")
    if not grammar.matches(grammar.NODE_NAME, node):
        bad("node", node, "the host's node name in mesh.yml")
    if not RELATIVE.fullmatch(inventory) or ".." in inventory.split("/"):
        bad("inventory", inventory, "the inventory folder inside the repository, e.g. "
            "inventories/prod")
    if not BRANCH.fullmatch(branch) or ".." in branch:
        bad("branch", branch, "a branch, tag or commit, e.g. main")
    if not 10 <= every <= 86400:
        bad("every", str(every), "seconds between runs, 10 to 86400")
    if problems:
        raise InputError(problems)
    return {"url": url, "node": node, "inventory": inventory, "branch": branch,
            "every": every, "checkout": CHECKOUT}


def ansible_pull_argv(conf: dict) -> list[str]:
    """ansible-pull from wgmesh's own environment. The inventory is relative: ansible-pull
    passes it only once it exists, i.e. inside the checkout (it fetches with localhost)."""
    return [str(Path(sys.executable).parent / "ansible-pull"), "-U", conf["url"],
            "-C", conf["branch"], "-d", conf["checkout"], "--clean",
            "-i", conf["inventory"], "-l", conf["node"], "playbooks/pull.yml"]


def run_once(conf: dict) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_NOCOLOR"] = "1"
    # From / so the relative inventory is found only inside the checkout; the checkout's
    # ansible.cfg (plugins, roles) applies to the play.
    return subprocess.run(ansible_pull_argv(conf), cwd="/", env=env).returncode


def run(config: Path = CONFIG, loop: int | None = None) -> int:
    conf = json.loads(config.read_text())
    conf = settings(conf["url"], conf["node"], conf["inventory"], conf["branch"],
                    conf["every"])
    while True:
        rc = run_once(conf)
        if loop is None:
            return rc
        print(f"wgmesh host pull: ansible-pull exited {rc}; next run in {loop} s", flush=True)
        time.sleep(loop)


def service_unit() -> str:
    wgmesh = Path(sys.executable).parent / "wgmesh"
    return ("[Unit]\nDescription=wgmesh pull mode: apply this host's part of the mesh from "
            "the repository\nWants=network-online.target\nAfter=network-online.target\n\n"
            f"[Service]\nType=oneshot\nExecStart={wgmesh} host pull\n")


def timer_unit(every: int) -> str:
    return ("[Unit]\nDescription=wgmesh pull mode, every few minutes\n\n"
            f"[Timer]\nOnBootSec=60\nOnUnitActiveSec={every}\nRandomizedDelaySec="
            f"{max(1, every // 10)}\n\n[Install]\nWantedBy=timers.target\n")


def install(conf: dict, config: Path = CONFIG, unit_dir: Path = UNIT_DIR,
            systemd: bool | None = None) -> str:
    """Write the settings; where systemd runs, the timer (enabled and started)."""
    config.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config, json.dumps(conf, indent=1, sort_keys=True) + "\n", 0o644)
    if systemd is None:
        systemd = os.path.isdir("/run/systemd/system")
    if not systemd:
        return (f"no systemd here: run `{Path(sys.executable).parent / 'wgmesh'} host pull "
                f"--loop {conf['every']}` under the host's supervisor")
    write_atomic(unit_dir / "wgmesh-pull.service", service_unit(), 0o644)
    write_atomic(unit_dir / "wgmesh-pull.timer", timer_unit(conf["every"]), 0o644)
    for argv in (["systemctl", "daemon-reload"],
                 ["systemctl", "enable", "--now", "wgmesh-pull.timer"]):
        subprocess.run(argv, check=True)
    return "systemd timer wgmesh-pull.timer started"
